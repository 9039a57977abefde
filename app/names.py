"""Validation of file names that come from the server before they touch a local path."""

from __future__ import annotations

# Linux's NAME_MAX; a longer name cannot be created locally anyway.
MAX_NAME_BYTES = 255


def invalid_name_reason(name: str) -> str | None:
    """Why ``name`` must not be used as a local file name, or None if it is safe."""
    if not name:
        return "empty name"
    if name in (".", ".."):
        return "a relative directory reference"
    if name.startswith("."):
        return "a hidden name (leading '.')"
    if "/" in name or "\\" in name:
        return "contains a path separator"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "contains control characters"
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        return "not valid UTF-8"
    if len(encoded) > MAX_NAME_BYTES:
        return f"longer than {MAX_NAME_BYTES} bytes"
    if name.endswith((".part", ".part.json")):
        return "collides with the job's partial-download names"
    return None
