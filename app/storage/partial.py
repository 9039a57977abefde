"""Where a download in progress lives in LOCAL_DIR, and what its metadata says.

``<name>.part`` holds a prefix of the remote file and ``<name>.part.json`` its remote
size, mtime and block digests (the transfer writes them). Where
``<name>.part.json`` would exceed NAME_MAX, both use the SHA-256 of the name instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from app.errors import RemoteFileError
from app.names import invalid_name_reason
from app.storage.fsutil import fitting_name


@dataclass(frozen=True)
class Paths:
    final: Path
    part: Path
    meta: Path

    PART_SUFFIX = ".part"
    META_SUFFIX = ".part.json"

    @classmethod
    def for_name(cls, local_dir: Path, name: str) -> Paths:
        # Planning already drops unsafe names; this keeps any other caller honest.
        reason = invalid_name_reason(name)
        if reason is not None:
            raise RemoteFileError(f"refusing remote file name {name!r}: {reason}")
        # Both derived names shorten together, so one is always found beside the other.
        base = fitting_name(name, suffix=cls.META_SUFFIX).removesuffix(cls.META_SUFFIX)
        return cls(
            final=local_dir / name,
            part=local_dir / f"{base}{cls.PART_SUFFIX}",
            meta=local_dir / f"{base}{cls.META_SUFFIX}",
        )


def read_partial_meta(paths: Paths) -> tuple[int, int] | None:
    """The remote (size, mtime) a partial was taken from, or None if unknown."""
    try:
        meta = json.loads(paths.meta.read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    values = (meta.get("size"), meta.get("mtime")) if isinstance(meta, dict) else (None, None)
    # Anything but two whole numbers >= 0 (1e400, "12", true) is damage: unknown,
    # so the partial starts again.
    if all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        return values  # type: ignore[return-value]
    return None


def partial_name(paths: Paths) -> str:
    """The remote name a partial belongs to, as its metadata records it (a long
    name's partial has a derived name); the partial's own name otherwise."""
    try:
        name = json.loads(paths.meta.read_bytes()).get("name")
    except (OSError, ValueError, AttributeError, RecursionError):
        name = None
    # Damaged metadata may name anything: only a safe name whose partial this is counts.
    safe = isinstance(name, str) and invalid_name_reason(name) is None
    return name if safe and Paths.for_name(paths.final.parent, name).part == paths.part else paths.final.name
