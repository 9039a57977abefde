"""What a download produced: the one value the ledger, the summary, the report and the metrics read."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TransferResult:
    """What one file's download produced; the ledger, summary and report read it."""

    name: str
    size: int  # bytes received and verified
    mtime: int | None  # as the server claimed it; None if it sent none
    sha256: str
    bytes_transferred: int
    seconds: float
    resumed_from: int
    verified_by: str | None = None  # how the file was proven against the server (app/server/proof.py)
