"""Per-file bookkeeping across the attempts of one run: what was received, what is
kept on disk, where each attempt resumed, and the running digest of the kept prefix.

The job's retry decisions (progress is bytes *kept*) and the run report (which
names unfinished files too) both read these tallies.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from app.reporting.report import FileReport
from app.results import TransferResult
from app.storage.blocks import BlockDigests

if TYPE_CHECKING:
    from app.storage.state import LedgerEntry


@dataclass
class PrefixDigest:
    """SHA-256 of a partial's first ``offset`` bytes, valid only for the file it was
    taken from, unchanged since (same inode, size and modification time)."""

    offset: int
    identity: tuple[int, int, int, int]  # st_dev, st_ino, st_size, st_mtime_ns
    digest: hashlib._Hash
    blocks: BlockDigests | None = None  # the same bytes' per-block digests, where known


def _identity(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = path.lstat()
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


@dataclass(slots=True)
class FileTally:
    """One file's bytes and time across every attempt of this run."""

    name: str
    size: int | None = None  # as the server last claimed it; None if it sent none
    received: int = 0  # bytes received from the server, every attempt
    kept: int = 0  # bytes of it held on disk now (a partial, or the whole file once complete)
    resume_offsets: list[int] = field(default_factory=list)  # where each attempt started
    completed: bool = False
    started: float = field(default_factory=time.monotonic)
    prefix: PrefixDigest | None = None
    mismatches: int = 0  # downloads the server's evidence contradicted (app/server/proof.py)

    def digest_of_prefix(self, path: Path, offset: int) -> hashlib._Hash | None:
        """A copy of the remembered digest of ``path``'s first ``offset`` bytes, if the
        file is still exactly as it was when the digest was remembered."""
        prefix = self.prefix
        if prefix is None or prefix.offset != offset or _identity(path) != prefix.identity:
            return None
        return prefix.digest.copy()

    def blocks_of_prefix(self, path: Path, offset: int) -> BlockDigests | None:
        """A copy of the remembered block digests of the same prefix, on the same terms."""
        prefix = self.prefix
        if prefix is None or prefix.blocks is None or self.digest_of_prefix(path, offset) is None:
            return None
        return prefix.blocks.copy()

    def remember_prefix(
        self, path: Path, offset: int, digest: hashlib._Hash, blocks: BlockDigests | None = None
    ) -> None:
        """Keep ``digest`` (of ``path``'s first ``offset`` bytes) for the next attempt,
        so a resume does not read the whole kept prefix again."""
        identity = _identity(path)
        if identity is None or identity[2] != offset or (blocks is not None and blocks.position != offset):
            self.prefix = None
            return
        self.prefix = PrefixDigest(offset, identity, digest.copy(), blocks.copy() if blocks is not None else None)


def total_kept(tallies: dict[str, FileTally]) -> int:
    """What the run has to show for itself: bytes kept beyond where each file's first
    attempt started (a partial found at start-up is not this run's doing), plus one
    per completed file (so completing a file already on disk counts too)."""
    return sum(
        t.kept - (t.resume_offsets[0] if t.resume_offsets else 0) + (1 if t.completed else 0) for t in tallies.values()
    )


def file_reports(
    tallies: Mapping[str, FileTally], fetched: Iterable[TransferResult], recorded: Mapping[str, LedgerEntry]
) -> list[FileReport]:
    """One report entry per file the run worked on, in the order it did: finished
    ones with their checksum, unfinished ones with what was received and is kept."""
    results = {r.name: r for r in fetched}
    files = []
    for tally in tallies.values():
        result = results.get(tally.name)
        done = recorded.get(tally.name)
        seconds = done.seconds if done else time.monotonic() - tally.started
        files.append(
            FileReport(
                name=tally.name,
                size=result.size if result else tally.size,
                seconds=round(seconds, 3),
                mb_per_s=round(tally.received / seconds / 1e6, 3) if seconds > 0 else 0.0,
                resumed_from=tally.resume_offsets[-1] if tally.resume_offsets else 0,
                sha256=result.sha256 if result else None,
                bytes_transferred=tally.received,
                bytes_kept=tally.kept,
                resume_offsets=list(tally.resume_offsets),
                completed=done is not None,
                verified_by=result.verified_by if result else None,
            )
        )
    return files
