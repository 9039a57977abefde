"""Per-block SHA-256 digests of a partial download's prefix, kept in its sidecar.

A partial's bytes can change on the local disk between runs (a flipped bit, a lost
write, an edit by hand) without changing its size or mtime; the sampled comparison
with the server sees such a change only where a sample happens to land. The digests
recorded when the bytes were made durable let a resume re-hash the prefix locally (a
disk read, far cheaper than the network) and keep only the blocks that still match.

Pure bookkeeping and local reads; a leaf that imports nothing of the job.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

from app import interrupt

# 1 MiB: a damaged block costs at most this much fetched again, and the sidecar
# holds 64 hex digits per block (about 66 KB per GiB of partial).
BLOCK_SIZE = 1024 * 1024


@dataclass(frozen=True)
class Recorded:
    """What a sidecar says about its partial's first ``covered`` bytes: one digest per
    BLOCK_SIZE block, the last one of a shorter block where ``covered`` ends mid-block."""

    covered: int
    blocks: tuple[str, ...]

    def as_json(self) -> dict[str, object]:
        return {"block_size": BLOCK_SIZE, "covered": self.covered, "blocks": list(self.blocks)}

    @classmethod
    def from_json(cls, meta: object) -> Recorded | None:
        """The digests in a parsed sidecar, or None if it has none (an older partial)
        or they do not add up (damage: the partial is then proven as if it had none)."""
        if not isinstance(meta, dict) or meta.get("block_size") != BLOCK_SIZE:
            return None
        covered, blocks = meta.get("covered"), meta.get("blocks")
        if not isinstance(covered, int) or isinstance(covered, bool) or covered < 0 or not isinstance(blocks, list):
            return None
        if len(blocks) != -(-covered // BLOCK_SIZE):
            return None
        if not all(isinstance(b, str) and len(b) == 64 for b in blocks):
            return None
        return cls(covered, tuple(blocks))


@dataclass
class BlockDigests:
    """Running per-block digests of a file written from its start, in order."""

    done: list[str] = field(default_factory=list)
    current: hashlib._Hash = field(default_factory=hashlib.sha256)
    position: int = 0

    def update(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            room = BLOCK_SIZE - self.position % BLOCK_SIZE
            piece, view = view[:room], view[room:]
            self.current.update(piece)
            self.position += len(piece)
            if self.position % BLOCK_SIZE == 0:
                self.done.append(self.current.hexdigest())
                self.current = hashlib.sha256()

    def snapshot(self) -> Recorded:
        blocks = list(self.done)
        if self.position % BLOCK_SIZE:
            blocks.append(self.current.hexdigest())
        return Recorded(self.position, tuple(blocks))

    def copy(self) -> BlockDigests:
        return BlockDigests(list(self.done), self.current.copy(), self.position)


def check_prefix(fd: int, have: int, recorded: Recorded | None) -> tuple[int, hashlib._Hash, BlockDigests]:
    """Re-hash the first ``have`` bytes of the open file ``fd`` against ``recorded``.

    Returns how many of them to keep (``have``, or the start of the first block that
    does not match its digest, or that ends beyond ``have``: bytes recorded and gone),
    with the SHA-256 and the block digests of those bytes. Bytes beyond what was
    recorded are kept unchecked: the caller proves them as it would without a record.
    """
    whole, blocks = hashlib.sha256(), BlockDigests()
    index = 0
    while blocks.position < have:
        interrupt.check()
        start = blocks.position
        data = os.pread(fd, min(BLOCK_SIZE, have - start), start)
        if not data:  # shorter than ``have``: keep what is there
            break
        if recorded is not None and start < recorded.covered:
            end = min(start + BLOCK_SIZE, recorded.covered)
            if start + len(data) < end or hashlib.sha256(data[: end - start]).hexdigest() != recorded.blocks[index]:
                return start, whole, blocks
        whole.update(data)
        blocks.update(data)
        index += 1
    return blocks.position, whole, blocks
