"""``sftp-ipi refetch NAME...``: make delivered files due again, without editing state by hand.

Under the run lock, for each named file:

* LOCAL_DIR's copy is removed: a complete local file with the remote size and
  mtime is otherwise taken as already downloaded, so a file rewritten on the
  server with the same size and mtime would never really be fetched again;
* LAST_FILE_RECORD moves back to the last delivered file ordered before the
  earliest named one (only if it is not already before it);
* the ledger gets one line per file, ``{"name", "refetch": true, "requested_at",
  "requested_by"}``, which takes the file out of the completed set.

The next run then fetches each named file once and records it again. Files
between the moved record and the old one stay skipped, because they are still in
the ledger's completed set; the record moves forward over them as before. The
published copy in SERVER_DIR stays readable until the new one replaces it
atomically.

A file passed by ``sftp-ipi skip`` is refetched the same way, without a LOCAL_DIR
copy to remove: the refetch note ends its skip, and the next run fetches it.

The order of the writes makes a crash at any point harmless: until the ledger
line is written, the next run's record repair moves the record forward again,
as if nothing had been asked.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import os
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TextIO

from loguru import logger

from app.config import StateSettings
from app.errors import EXIT_OK, ConfigError
from app.selection import OrderKey, UnplaceableRecordError, order_key, record_key
from app.storage.fsutil import atomic_write, storage_error
from app.storage.partial import Paths
from app.storage.state import (
    LOCK_WAIT_SECONDS,
    Ledger,
    LedgerEntry,
    RefetchNote,
    SkipNote,
    append_ledger,
    read_ledger,
    read_record,
    run_lock_waiting,
    write_record,
)
from app.timestamps import iso


@dataclass(frozen=True)
class RefetchPlan:
    files: tuple[LedgerEntry, ...]  # the latest entry of each file to fetch again
    already_due: tuple[RefetchNote, ...]  # asked for before, not fetched yet
    record_before: str | None
    record_after: str | None
    unskipped: tuple[SkipNote, ...] = ()  # skipped files to fetch after all


class _Placed(Protocol):
    """What places a file in the order: a ledger entry's or a skip note's name and mtime."""

    @property
    def name(self) -> str: ...

    @property
    def mtime(self) -> int | None: ...


# -- pure -------------------------------------------------------------------------------


def _key(entry: _Placed, order_by: str) -> OrderKey:
    key = order_key(entry.name, entry.mtime, order_by)
    if key is None:
        raise ConfigError(f"{entry.name}: ORDER_BY={order_by} cannot place it (no YYYYMMDD date in the name)")
    return key


def rewound_record(
    record: str | None,
    files: Sequence[_Placed],
    remaining: Iterable[LedgerEntry],
    order_by: str,
    ledger_mtimes: Mapping[str, int],
) -> str | None:
    """Where LAST_FILE_RECORD must stand so that ``files`` are after it: the latest
    remaining delivered file before the earliest of them (None: before everything);
    the record itself when it is already before them."""
    earliest = min(_key(entry, order_by) for entry in files)
    if record is None:
        return None
    try:
        current = record_key(record, order_by, {}, ledger_mtimes)
    except UnplaceableRecordError as exc:
        raise ConfigError(f"LAST_FILE_RECORD: {exc}") from None
    if current is None or current < earliest:
        return record
    before = [
        (key, entry.name)
        for entry in remaining
        if (key := order_key(entry.name, entry.mtime, order_by)) is not None and key < earliest
    ]
    return max(before)[1] if before else None


def plan_refetch(names: Sequence[str], ledger: Ledger, record: str | None, order_by: str) -> RefetchPlan:
    """What refetching ``names`` changes; a ConfigError naming every name the ledger does not know."""
    latest = {entry.name: entry for entry in ledger.entries}
    pending = {note.name: note for note in ledger.refetch_pending}
    skipped = ledger.skipped
    wanted = list(dict.fromkeys(names))
    unknown = [name for name in wanted if name not in latest and name not in pending and name not in skipped]
    if unknown:
        raise ConfigError(f"not in the ledger, so never delivered: {', '.join(unknown)}; nothing changed")
    files = tuple(latest[name] for name in wanted if name in latest)
    # A skipped file may also have a refetch note before its skip: the skip is what holds it.
    unskipped = tuple(skipped[name] for name in wanted if name in skipped and name not in latest)
    already = tuple(pending[name] for name in wanted if name in pending and name not in skipped)
    after = record
    targets: tuple[_Placed, ...] = (*files, *unskipped)
    if targets:
        taken = {target.name for target in targets}
        remaining = (entry for entry in ledger.entries if entry.name not in taken)
        after = rewound_record(record, targets, remaining, order_by, ledger.mtimes)
    return RefetchPlan(files=files, already_due=already, record_before=record, record_after=after, unskipped=unskipped)


# -- I/O --------------------------------------------------------------------------------


def requester() -> str:
    """user@host, for the ledger note; a uid where the account has no name (containers)."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = f"uid {os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def _local_copies(local_dir: Path, names: Iterable[str]) -> list[Path]:
    found = []
    for name in names:
        paths = Paths.for_name(local_dir, name)
        for path in (paths.final, paths.part, paths.meta):
            if os.path.lexists(path):
                found.append(path)
    return found


def _remove(paths: Iterable[Path]) -> None:
    for path in paths:
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise storage_error("remove", path, exc) from None


def _write_record(path: Path, name: str | None) -> None:
    if name is None:
        # An empty record reads as "nothing completed yet".
        atomic_write(path, b"", "LAST_FILE_RECORD")
    else:
        write_record(path, name)


def refetch(settings: StateSettings, names: Sequence[str], *, dry_run: bool, out: TextIO) -> int:
    # A dry run changes nothing, so it need not wait for a run in progress.
    lock = contextlib.nullcontext() if dry_run else run_lock_waiting(settings.lock_path, LOCK_WAIT_SECONDS)
    with lock:
        ledger = read_ledger(settings.ledger_path)
        plan = plan_refetch(names, ledger, read_record(settings.last_file_record), settings.order_by)
        targets: list[_Placed] = [*plan.files, *plan.unskipped]
        copies = _local_copies(settings.local_dir, (target.name for target in targets))
        would = "would " if dry_run else ""
        for note in plan.already_due:
            print(f"already due: {note.name} (refetch asked {note.requested_at} by {note.requested_by})", file=out)
        for entry in plan.files:
            print(f"{would}refetch: {entry.name} (delivered {entry.completed_at}, sha256 {entry.sha256})", file=out)
        for skipped in plan.unskipped:
            print(
                f"{would}refetch: {skipped.name} (skipped {skipped.at} by {skipped.by}: {skipped.reason};"
                " fetched after all)",
                file=out,
            )
        for path in copies:
            print(f"{would}remove LOCAL_DIR copy: {path}", file=out)
        moved = plan.record_after != plan.record_before
        if moved:
            print(
                f"{would}move LAST_FILE_RECORD: {plan.record_before or 'none'} -> {plan.record_after or 'none'}",
                file=out,
            )
        if dry_run or not targets:
            return EXIT_OK

        by, at = requester(), iso(dt.datetime.now(dt.UTC))
        _remove(copies)
        if moved:
            _write_record(settings.last_file_record, plan.record_after)
        append_ledger(settings.ledger_path, *(RefetchNote(e.name, at, by) for e in targets))
        # LOG_FILE keeps who asked for what; the console already has it above.
        log = logger.bind(_file_only=True, requested_by=by)
        for target in targets:
            log.info("refetch of {} requested by {}: due again at the next run", target.name, by)
        if moved:
            log.info("LAST_FILE_RECORD moved from {} to {} for the refetch", plan.record_before, plan.record_after)
    return EXIT_OK
