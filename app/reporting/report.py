"""The run report: one JSON document per run, written atomically; status, metrics
and alerts are all built from it (and from the ledger), never from log lines."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from loguru import logger

from app.errors import EXIT_MEANINGS, EXIT_OK
from app.storage.fsutil import atomic_write
from app.storage.state import is_timestamp

SCHEMA_VERSION = 1
# Skipped files named one by one in the log, per reason, before they are counted;
# status names as many held-back and due files before it counts the rest.
SKIPS_NAMED = 20


@dataclass(frozen=True)
class RetryRecord:
    attempt: int
    reason: str
    delay_seconds: float


@dataclass(frozen=True, slots=True)
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
    verified_by: str | None = None  # how it was proven against the server, once complete


@dataclass(frozen=True)
class HeldFile:
    """A file that is due, or would be, and was not delivered: why, and since when."""

    name: str
    reason: str
    since: str | None  # when the job first listed it (ISO 8601 UTC)


@dataclass(frozen=True)
class StuckFile:
    """A due file that failed the same way on STUCK_AFTER_RUNS runs or more in a row."""

    name: str
    runs: int
    since: str  # when the first failed run of the streak finished
    error: str  # the latest failure
    command: str  # the ``sftp-ipi skip`` command that passes it


@dataclass(frozen=True)
class SkippedFile:
    """A file passed by ``sftp-ipi skip``, never delivered."""

    name: str
    reason: str
    by: str
    at: str


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
    held_back: list[HeldFile] = field(default_factory=list)
    late: list[HeldFile] = field(default_factory=list)
    # Files left for a later run (SELECT_MODE=next): how many, and the first 100 by name.
    due_remaining: int = 0
    due_names: list[str] = field(default_factory=list)
    # Consecutive runs, this one included, that ended with files due and no fewer than
    # the run before: a backlog that does not shrink (the alert rules read it).
    due_stalled_runs: int = 0
    # Files failed because the server's evidence contradicted them twice: this run's, and
    # every run's so far (carried over from the previous report, for a counter metric).
    verification_mismatches: int = 0
    verification_mismatches_total: int = 0
    # File lifecycle (app/lifecycle.py): this run's failures, name -> reason, and the
    # counts over all runs so far (carried over from the previous report, for the
    # counter metrics the alert rules read).
    decrypt_failed: dict[str, str] = field(default_factory=dict)
    remote_after_failed: dict[str, str] = field(default_factory=dict)
    decrypt_failures_total: int = 0
    remote_after_failures_total: int = 0
    # The algorithms of the run's last SSH session with the server: {kex, cipher, mac, host_key_type}.
    ssh: dict[str, str] | None = None
    # Counters over every run so far (carried over from the previous report, like the
    # totals above), exported as Prometheus counters; ``counters_since`` is when they
    # started from zero: their ``_created``. A lost or damaged report starts them again.
    files_delivered_total: int = 0
    bytes_received_total: int = 0
    failed_files_total: int = 0
    retries_total: int = 0
    counters_since: str | None = None
    # What the job learned about the server (app/server/profile.py): read limit, reads in
    # flight, open files allowed, digests, exec, rename semantics, removal after reading.
    server_profile: dict[str, Any] | None = None
    # Per-file failure streaks (app/streaks.py), carried over to the next run's report:
    # name -> {reason_class, runs, since, last_error}.
    failure_streaks: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The files among them stuck for STUCK_AFTER_RUNS runs or more, and the files
    # passed by ``sftp-ipi skip`` (from the ledger).
    stuck: list[StuckFile] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    version: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = _plain(self)
        return data


def _plain(value: Any) -> Any:
    """``dataclasses.asdict`` without its deep copy of every leaf: a report names every
    held-back file, 50,000 of them for a busy listing, and asdict took seconds."""
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    names = _FIELDS.get(type(value))
    if names is None:
        if not is_dataclass(value):
            return value  # str, int, float, bool, None
        names = _FIELDS[type(value)] = tuple(f.name for f in fields(value))
    return {name: _plain(getattr(value, name)) for name in names}


_FIELDS: dict[type, tuple[str, ...]] = {}


def _optional(kind: type | tuple[type, ...]) -> Any:
    return lambda v: v is None or isinstance(v, kind)


def _optional_time(value: object) -> bool:
    # Metrics and status compute with these times: a damaged one ("last Tuesday")
    # must not get past the reader.
    return value is None or is_timestamp(value)


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _held_files(value: object) -> bool:
    return isinstance(value, list) and all(
        isinstance(item, dict)
        and isinstance(item.get("name"), str)
        and isinstance(item.get("reason"), str)
        and _optional(str)(item.get("since"))
        for item in value
    )


# The fields that status, alerts and the next run read, and what each must be; a
# report from an older version may lack the newer ones.
_REPORT_CHECKS: dict[str, Any] = {
    "exit_code": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "ok": lambda v: isinstance(v, bool),
    "outcome": _optional(str),
    "finished_at": _optional_time,
    "error": _optional(str),
    "last_success_at": _optional_time,
    "last_completed_file": _optional(str),
    "last_completed_at": _optional_time,
    "held_back": lambda v: v is None or _held_files(v),
    "late": lambda v: v is None or _held_files(v),
    "due_remaining": lambda v: _count(v),
    "due_stalled_runs": lambda v: _count(v),
    "due_names": lambda v: isinstance(v, list) and all(isinstance(n, str) for n in v),
    "verification_mismatches_total": lambda v: _count(v),
    "decrypt_failures_total": lambda v: _count(v),
    "remote_after_failures_total": lambda v: _count(v),
    "ssh": lambda v: v is None or (isinstance(v, dict) and all(isinstance(x, str) for x in v.values())),
    "files_delivered_total": lambda v: _count(v),
    "bytes_received_total": lambda v: _count(v),
    "failed_files_total": lambda v: _count(v),
    "retries_total": lambda v: _count(v),
    "counters_since": _optional_time,
    "server_profile": _optional(dict),
    "failure_streaks": _optional(dict),
    "stuck": lambda v: isinstance(v, list) and all(isinstance(i, dict) and isinstance(i.get("name"), str) for i in v),
    "skipped": lambda v: isinstance(v, list) and all(isinstance(i, dict) and isinstance(i.get("name"), str) for i in v),
}
_REQUIRED = ("exit_code", "ok")


def read_report(path: Path) -> dict[str, Any] | None:
    """The last run's report, or None if there is none.

    The report is rebuilt by every run, so a damaged one (bad JSON, wrong types)
    is treated as absent, with a warning naming the file: its only loss is the
    carried-over ``last_success_at``.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        logger.warning("run report {} ignored: cannot read it ({})", path, exc.__class__.__name__)
        return None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        data = None
    if not isinstance(data, dict) or not all(key in data for key in _REQUIRED):
        logger.warning("run report {} ignored: damaged (not a run report)", path)
        return None
    bad = [key for key, check in _REPORT_CHECKS.items() if key in data and not check(data[key])]
    if bad:
        logger.warning("run report {} ignored: damaged ({} has the wrong type)", path, bad[0])
        return None
    return data


def write_report(path: Path, report: RunReport) -> None:
    # One field per line, for a reader with less or grep; each value compact, because
    # json's indentation runs its pure-Python encoder, half a second for a report that
    # names 50,000 held-back files.
    atomic_write(path, report_chunks(report), "REPORT_FILE")


def report_chunks(report: RunReport) -> Iterator[bytes]:
    """The report's bytes, as ``to_json`` and ``json.dumps`` give them, a field at a
    time and a list's items one at a time: the plain form of a backlog's 50,000 file
    entries, with its JSON and that JSON's copies, was the run's peak memory."""
    yield b"{\n"
    for i, name in enumerate(_field_names(report)):
        value = getattr(report, name)
        yield (",\n" if i else "").encode() + f"  {json.dumps(name)}: ".encode()
        if isinstance(value, list):
            # json.dumps of a list is its items' json.dumps, joined by ", ".
            yield b"["
            for j, item in enumerate(value):
                yield (", " if j else "").encode() + json.dumps(_plain(item)).encode()
            yield b"]"
        else:
            yield json.dumps(_plain(value)).encode()
    yield b"\n}\n"


def _field_names(value: Any) -> tuple[str, ...]:
    names = _FIELDS.get(type(value))
    if names is None:
        names = _FIELDS[type(value)] = tuple(f.name for f in fields(value))
    return names


def outcome(exit_code: int) -> str:
    return EXIT_MEANINGS.get(exit_code, "unknown")


def last_success(exit_code: int, finished_at: str, previous: dict[str, Any] | None) -> str | None:
    """This run's end if it succeeded, else the previous report's last success."""
    if exit_code == EXIT_OK:
        return finished_at
    value = (previous or {}).get("last_success_at")
    return value if isinstance(value, str) else None


def so_far(key: str, this_run: int, previous: dict[str, Any] | None) -> int:
    """A count over every run so far, this one included: the previous report's ``key`` plus ``this_run``."""
    value = (previous or {}).get(key)
    return this_run + (value if isinstance(value, int) else 0)


def stalled_runs(due_remaining: int, previous: dict[str, Any] | None) -> int:
    """How many runs in a row, this one included, left files due and no fewer than the
    run before; 0 once the backlog is gone or shrank."""
    before = (previous or {}).get("due_remaining")
    if due_remaining == 0 or not isinstance(before, int) or due_remaining < before:
        return 0
    count = (previous or {}).get("due_stalled_runs")
    return (count if isinstance(count, int) else 0) + 1


def counters_since(started_at: str, previous: dict[str, Any] | None) -> str:
    """When the counters carried in the reports started from zero: the previous report's
    moment, or this run's start when there is no previous report to carry them over."""
    value = (previous or {}).get("counters_since")
    return value if isinstance(value, str) and previous is not None else started_at
