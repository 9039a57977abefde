"""The run report: one JSON document per run, written atomically; status, metrics
and alerts are all built from it (and from the ledger), never from log lines."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from app.errors import EXIT_MEANINGS, EXIT_OK
from app.fsutil import atomic_write

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class RetryRecord:
    attempt: int
    reason: str
    delay_seconds: float


@dataclass(frozen=True)
class FileReport:
    """One file the run worked on, finished (``completed``: published and recorded) or not."""

    name: str
    size: int | None  # bytes received when complete; else the listed size (None if unlisted)
    seconds: float
    mb_per_s: float
    resumed_from: int  # where the last attempt started
    sha256: str | None  # None until complete
    bytes_transferred: int  # received from the server, every attempt of this run
    bytes_kept: int = 0  # held on disk at the end of the run (a partial, or the whole file)
    resume_offsets: list[int] = field(default_factory=list)  # where each attempt started
    completed: bool = True


@dataclass(frozen=True)
class RunReport:
    started_at: str
    finished_at: str
    duration_seconds: float
    exit_code: int
    outcome: str
    ok: bool
    sftp_host: str
    files: list[FileReport] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    retries: list[RetryRecord] = field(default_factory=list)
    error: str | None = None
    last_success_at: str | None = None
    last_completed_file: str | None = None
    last_completed_at: str | None = None
    newest_completed_mtime: int | None = None
    version: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat(timespec="seconds")


def read_report(path: Path) -> dict[str, Any] | None:
    """The last run's report, or None if there is none (or it is unreadable)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_report(path: Path, report: RunReport) -> None:
    atomic_write(path, (json.dumps(report.to_json(), indent=2) + "\n").encode("utf-8"), "REPORT_FILE")


def outcome(exit_code: int) -> str:
    return EXIT_MEANINGS.get(exit_code, "unknown")


def last_success(exit_code: int, finished_at: str, previous: dict[str, Any] | None) -> str | None:
    """This run's end if it succeeded, else the previous report's last success."""
    if exit_code == EXIT_OK:
        return finished_at
    value = (previous or {}).get("last_success_at")
    return value if isinstance(value, str) else None
