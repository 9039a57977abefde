"""SHA-256 of local files: the transfer, publishing and the audit all hash the same way."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from app import interrupt

# Block size for hashing local files; large enough for sequential reads.
HASH_BLOCK = 1024 * 1024


def hash_file(path: Path, limit: int | None = None, on_block: Callable[[int], None] | None = None) -> hashlib._Hash:
    """SHA-256 of ``path`` (its first ``limit`` bytes), read in blocks; ``on_block``
    hears each block's length, for a progress display."""
    digest = hashlib.sha256()
    remaining = limit
    with open(path, "rb") as fh:
        while remaining is None or remaining > 0:
            interrupt.check()
            block = fh.read(HASH_BLOCK if remaining is None else min(HASH_BLOCK, remaining))
            if not block:
                break
            digest.update(block)
            if on_block is not None:
                on_block(len(block))
            if remaining is not None:
                remaining -= len(block)
    return digest
