"""Validation of file names that come from the server before they touch a local path."""

from __future__ import annotations

import unicodedata

# Linux's NAME_MAX; a longer name cannot be created locally anyway.
MAX_NAME_BYTES = 255

# Bidirectional marks, embeddings, overrides and isolates: harmless to a file
# system, but they make a name display as another (``evil\u202egpj.IPI``) in a
# terminal, a log viewer or a ticket, so an operator would be shown a lie.
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _is_control(c: str) -> bool:
    # C0, DEL and C1 (U+0080-U+009F): U+009B alone is a terminal escape (CSI).
    # The line and paragraph separators (U+2028, U+2029) end a line in many viewers,
    # so a name holding one could forge a log line.
    return ord(c) < 32 or 127 <= ord(c) <= 159 or unicodedata.category(c) in ("Zl", "Zp")


def invalid_name_reason(name: str) -> str | None:
    """Why ``name`` must not be used as a local file name, or None if it is safe."""
    if not name:
        return "empty name"
    if not name.strip():
        # Invisible in a log line, and indistinguishable from a blank LAST_FILE_RECORD.
        return "only white space"
    if name in (".", ".."):
        return "a relative directory reference"
    if name.startswith("."):
        return "a hidden name (leading '.')"
    if "/" in name or "\\" in name:
        return "contains a path separator"
    # Printable ASCII, the usual case, holds none of the characters below: a backlog
    # of thousands of names skips the per-character Unicode lookups.
    if not (name.isascii() and name.isprintable()):
        if any(_is_control(c) for c in name):
            return "contains control characters"
        if any(c in BIDI_CONTROLS for c in name):
            return "contains bidirectional text controls"
        if any(unicodedata.category(c) == "Cf" for c in name):
            # Zero-width spaces and joiners, soft hyphens, a BOM: invisible in a log line or
            # a terminal, so two different names would be shown as one.
            return "contains invisible format characters"
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        return "not valid UTF-8"
    if len(encoded) > MAX_NAME_BYTES:
        return f"longer than {MAX_NAME_BYTES} bytes"
    if name.endswith((".part", ".part.json")):
        return "collides with the job's partial-download names"
    return None


def _plain(c: str) -> bool:
    return c.isprintable() and c not in BIDI_CONTROLS and unicodedata.category(c) != "Cf" and c not in "\\'\""


def shown(name: str) -> str:
    """``name`` as it may be written to a terminal or a log.

    An ordinary name is shown as it is. Any other is quoted, with every character
    that is not plainly printable (controls, bidirectional and other format
    characters, lone surrogates) as a Python escape: the log shows what the server
    sent, never what it would make a terminal display.
    """
    if name and all(_plain(c) for c in name):
        return name
    return "'" + "".join(c if _plain(c) else _escape(c) for c in name) + "'"


def _escape(c: str) -> str:
    if c in "\\'\"":
        return "\\" + c
    return c.encode("unicode_escape", "backslashreplace").decode("ascii")
