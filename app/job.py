"""One run of the job: plan, download, publish, record; with retries and a truthful exit code."""

from __future__ import annotations

import contextlib
import datetime as dt
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

import paramiko
from loguru import logger

from app import interrupt
from app.catchup import fetch_due
from app.config import Settings
from app.errors import (
    EXIT_MEANINGS,
    EXIT_OK,
    ConfigError,
    JobError,
    TransientError,
)
from app.fsutil import ensure_dir, fsync_dir, remove_stale_temps, translate_os_errors
from app.names import shown
from app.remote import Connection, HostKeyVerifier, connect, list_entries, load_private_key
from app.report import RetryRecord, RunReport, iso, last_success, outcome, read_report
from app.retention import apply_retention
from app.retry import RetryPolicy
from app.selection import (
    Criteria,
    Ordered,
    OrderKey,
    Plan,
    RemoteEntry,
    SkipReason,
    UnplaceableRecordError,
    advance_record,
    make_plan,
    order,
    record_key,
)
from app.state import Ledger, LedgerEntry, append_ledger, read_ledger, read_record, write_record
from app.tally import FileTally, file_reports, total_kept
from app.transfer import TransferResult

# Skipped files named one by one in the log, per reason, before they are counted.
SKIPS_NAMED = 20

# Files published within this many seconds share one fsync of SERVER_DIR and of
# the ledger: with hundreds of small files due, fsyncs dominate the run.
GROUP_COMMIT_SECONDS = 1.0


@dataclass
class RunSummary:
    fetched: list[TransferResult] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    retries: list[RetryRecord] = field(default_factory=list)
    recorded: dict[str, LedgerEntry] = field(default_factory=dict)  # seconds and bytes across attempts
    tallies: dict[str, FileTally] = field(default_factory=dict)  # every file tried, finished or not


@dataclass
class _Snapshot:
    """What one attempt learned from the server and the local state."""

    entries: list[RemoteEntry]
    ordered: Ordered
    ledger: Ledger
    record: str | None
    last_key: OrderKey | None


class Job:
    def __init__(
        self,
        settings: Settings,
        *,
        dry_run: bool = False,
        out: TextIO | None = None,
        sleep: Callable[[float], None] = interrupt.sleep,
    ) -> None:
        self.s = settings
        self.dry_run = dry_run
        self.out = out
        self.sleep = sleep
        self.criteria = Criteria(
            pattern=settings.file_pattern,
            order_by=settings.order_by,
            mode=settings.select_mode,
            min_age=settings.min_file_age,
        )
        self.summary = RunSummary()
        self._unsynced_record: str | None = None
        self._uncommitted: list[LedgerEntry] = []
        self._last_commit = time.monotonic()

    # -- entry point --------------------------------------------------------

    def run(self) -> int:
        """One run. Except in a dry run, the caller holds the run lock (app/__main__.py
        keeps it until the report, metrics and alerts are out)."""
        key = load_private_key(self.s)
        verifier = HostKeyVerifier(self.s, record=not self.dry_run)
        if self.dry_run:
            return self._with_retries(lambda: self._attempt(key, verifier))
        for label, directory in (
            ("LOCAL_DIR", self.s.local_dir),
            ("SERVER_DIR", self.s.server_dir),
            ("the LAST_FILE_RECORD directory", self.s.last_file_record.parent),
            ("the LEDGER_FILE directory", self.s.ledger_path.parent),
        ):
            ensure_dir(directory, label)
        for directory in {self.s.local_dir, self.s.server_dir, self.s.last_file_record.parent}:
            for path in remove_stale_temps(directory):
                logger.info("removed {} left by an interrupted run", path)
        code = self._with_retries(lambda: self._attempt(key, verifier))
        apply_retention(
            self.s.ledger_path, self.s.local_dir, self.s.server_dir, self.s.local_retention, dt.datetime.now(dt.UTC)
        )
        return code

    def _with_retries(self, attempt: Callable[[], int]) -> int:
        policy = RetryPolicy(self.s.retry_max_tries, self.s.retry_max_time, self.s.retry_backoff_factor, time.monotonic)
        number = 1
        while True:
            interrupt.check()
            mark = total_kept(self.summary.tallies)
            try:
                return attempt()
            except TransientError as exc:
                # A stop request shows up as a dropped connection: report it as what it is.
                interrupt.check()
                # Bytes received and then thrown away (a small file restarts from 0)
                # are no progress: only a partial that grew or a completed file is.
                if total_kept(self.summary.tallies) > mark:
                    policy.progressed()
                delay = policy.next_delay()
                if delay is None or self.dry_run:  # a dry run is a quick look: one attempt
                    raise JobError(f"{exc}; giving up after {policy.failures} attempt(s) without progress") from None
                # Only retries actually made are recorded; the last error is the run's error.
                self.summary.retries.append(RetryRecord(number, str(exc), round(delay, 3)))
                logger.bind(attempt=number, delay=round(delay, 2)).warning(
                    "attempt {} failed: {}; retrying in {:.1f} s", number, exc, delay
                )
                self.sleep(delay)
                number += 1

    # -- one connection -----------------------------------------------------

    def _attempt(self, key: paramiko.PKey | None, verifier: HostKeyVerifier) -> int:
        target = f"{self.s.sftp_host}:{self.s.sftp_port}"
        logger.info("connecting to {} as {}", target, self.s.sftp_user)
        conn = connect(self.s, key, verifier)
        with interrupt.on_interrupt(conn.abort):
            return self._session(conn, target)

    def _session(self, conn: Connection, target: str) -> int:
        try:
            logger.info("connected to {}", target)
            snap = self._snapshot(conn)
            if not self.dry_run:
                snap = self._repair_record(snap)
            plan = make_plan(snap.ordered, self.criteria, snap.last_key, snap.ledger.names, time.time())
            plan = self._without_failed(plan)
            self._log_plan(plan, snap)
            if self.dry_run:
                self._print_plan(plan, snap)
                return EXIT_OK
            self._snap = snap
            try:
                fetch_due(conn, self.s, plan.due, self.summary.tallies, self.summary.failed, self._recorded)
            except BaseException:
                # Whatever stopped the run, what is already published gets recorded.
                with contextlib.suppress(JobError):
                    self._commit(self._snap)
                raise
            self._commit(self._snap)
        finally:
            failing = sys.exc_info()[1] is not None
            conn.close()
            if self._unsynced_record is not None:
                record, self._unsynced_record = self._unsynced_record, None
                try:
                    write_record(self.s.last_file_record, record)
                except JobError:
                    # Never hide the error that is already ending the run.
                    if not failing:
                        raise
        if self.summary.failed:
            names = ", ".join(sorted(self.summary.failed))
            raise JobError(f"{len(self.summary.failed)} file(s) failed: {names}")
        return EXIT_OK

    def _snapshot(self, conn: Connection) -> _Snapshot:
        entries = list_entries(conn, self.s)
        ledger = read_ledger(self.s.ledger_path)
        if ledger.damaged_lines:
            logger.warning("{}: skipped {} damaged line(s)", self.s.ledger_path, ledger.damaged_lines)
        record = read_record(self.s.last_file_record)
        listed = {e.name: e.mtime for e in entries}
        try:
            last_key = record_key(record, self.s.order_by, listed, ledger.mtimes)
        except UnplaceableRecordError as exc:
            raise ConfigError(f"LAST_FILE_RECORD={self.s.last_file_record}: {exc}") from None
        return _Snapshot(entries, order(entries, self.criteria), ledger, record, last_key)

    def _repair_record(self, snap: _Snapshot) -> _Snapshot:
        """A run killed between the ledger append and the record write left the
        record behind the ledger: move it forward now."""
        return self._advance(snap, snap.ledger.names, repaired=True)

    def _advance(self, snap: _Snapshot, completed: frozenset[str], *, repaired: bool = False) -> _Snapshot:
        new = advance_record(snap.ordered, self.criteria, snap.last_key, snap.record, completed)
        if new is None or new == snap.record:
            return snap
        # Not fsynced per file: a record lost in a power cut lags the (fsynced)
        # ledger and is moved forward by the next run. The session's last write
        # is made durable in _session.
        write_record(self.s.last_file_record, new, durable=False)
        self._unsynced_record = new
        if repaired:
            logger.info("LAST_FILE_RECORD moved from {} to {} to match the ledger", snap.record, new)
        listed = {e.name: e.mtime for e in snap.entries}
        last_key = record_key(new, self.s.order_by, listed, snap.ledger.mtimes)
        return _Snapshot(snap.entries, snap.ordered, snap.ledger, new, last_key)

    def _without_failed(self, plan: Plan) -> Plan:
        """Files that failed for good earlier in this run are not tried again in it."""
        if not self.summary.failed:
            return plan
        due = tuple(e for e in plan.due if e.name not in self.summary.failed)
        return Plan(due, plan.skipped, plan.unmatched, plan.skipped_by_reason)

    # -- one file -----------------------------------------------------------

    def _recorded(self, done: LedgerEntry, result: TransferResult) -> None:
        """A file verified and published by app/catchup.py: recorded at the next group commit."""
        self._uncommitted.append(done)
        self.summary.recorded[done.name] = done
        self.summary.fetched.append(result)
        if time.monotonic() - self._last_commit >= GROUP_COMMIT_SECONDS:
            self._snap = self._commit(self._snap)

    def _commit(self, snap: _Snapshot) -> _Snapshot:
        """Record the files published since the last commit, in the order durability needs:
        their SERVER_DIR renames first, then their ledger lines, then the record.

        Grouping saves two fsyncs per file when many small files are due; a run
        killed before a commit leaves published files unrecorded, and the next run
        records them without fetching them again (they are complete in LOCAL_DIR
        and identical in SERVER_DIR).
        """
        self._last_commit = time.monotonic()
        if not self._uncommitted:
            return snap
        with translate_os_errors("sync SERVER_DIR", self.s.server_dir):
            fsync_dir(self.s.server_dir)
        append_ledger(self.s.ledger_path, *self._uncommitted)
        ledger = Ledger((*snap.ledger.entries, *self._uncommitted), snap.ledger.damaged_lines)
        self._uncommitted = []
        snap = _Snapshot(snap.entries, snap.ordered, ledger, snap.record, snap.last_key)
        return self._advance(snap, ledger.names)

    # -- reporting ----------------------------------------------------------

    def _log_plan(self, plan: Plan, snap: _Snapshot) -> None:
        # Each run repeats these, so a directory full of odd names must not flood
        # the log: the first few are named, the rest counted.
        named: dict[SkipReason, int] = {}
        for skip in plan.skipped:
            if skip.reason in (SkipReason.NO_DATE, SkipReason.TOO_YOUNG, SkipReason.UNSAFE_NAME):
                named[skip.reason] = named.get(skip.reason, 0) + 1
                if named[skip.reason] <= SKIPS_NAMED:
                    logger.bind(file=shown(skip.name)).warning("{}: skipped, {}", shown(skip.name), skip.reason.value)
        for reason, count in named.items():
            if count > SKIPS_NAMED:
                logger.warning("{} more file(s) skipped: {}", count - SKIPS_NAMED, reason.value)
        logger.bind(due=[e.name for e in plan.due]).info(
            "plan: {} due ({}); last completed: {}; {} listed, {} skipped, {} not matching {}",
            len(plan.due),
            ", ".join(e.name for e in plan.due) or "nothing",
            snap.record or "none",
            len(snap.entries),
            len(plan.skipped),
            plan.unmatched,
            self.s.file_pattern,
        )

    def _print_plan(self, plan: Plan, snap: _Snapshot) -> None:
        out = self.out
        if out is None:
            return
        print(f"last completed file: {snap.record or 'none'}", file=out)
        if plan.due:
            for entry in plan.due:
                print(f"would download: {entry.name} ({entry.size} bytes)", file=out)
        else:
            print("nothing due", file=out)
        quiet = {SkipReason.NOT_AFTER_RECORD, SkipReason.COMPLETED}
        for skip in plan.skipped:
            if skip.reason not in quiet:
                print(f"skip: {shown(skip.name)}: {skip.reason.value}", file=out)
        for reason in quiet:
            count = plan.skipped_by_reason.get(reason, 0)
            if count:
                print(f"skip: {count} file(s) {reason.value}", file=out)
        if plan.unmatched:
            print(f"ignored: {plan.unmatched} entries not matching FILE_PATTERN={self.s.file_pattern}", file=out)


def build_report(
    settings: Settings,
    summary: RunSummary,
    exit_code: int,
    error: str | None,
    started: dt.datetime,
    finished: dt.datetime,
) -> RunReport:
    """The run report, from the run's own results and the ledger."""
    files = file_reports(summary.tallies, summary.fetched, summary.recorded)
    try:
        entries = read_ledger(settings.ledger_path).entries
    except JobError:
        entries = ()
    newest = entries[-1] if entries else None
    finished_at = iso(finished)
    return RunReport(
        started_at=iso(started),
        finished_at=finished_at,
        duration_seconds=round((finished - started).total_seconds(), 3),
        exit_code=exit_code,
        outcome=outcome(exit_code),
        ok=exit_code == EXIT_OK,
        sftp_host=settings.sftp_host,
        files=files,
        failed=dict(summary.failed),
        retries=list(summary.retries),
        error=error,
        last_success_at=last_success(exit_code, finished_at, read_report(settings.report_path)),
        last_completed_file=newest.name if newest else None,
        last_completed_at=newest.completed_at if newest else None,
        newest_completed_mtime=max((e.mtime for e in entries if e.mtime is not None), default=None),
    )


def summary_line(summary: RunSummary, exit_code: int, seconds: float) -> str:
    received = sum(t.received for t in summary.tallies.values())
    unfinished = [t for t in summary.tallies.values() if t.name not in summary.recorded]
    rate = received / seconds / 1e6 if seconds > 0 else 0.0
    names = ", ".join(r.name for r in summary.fetched) or "none"
    meaning = EXIT_MEANINGS.get(exit_code, "unknown")
    kept = ""
    if unfinished:
        kept = f" ({sum(t.kept for t in unfinished)} bytes kept of {len(unfinished)} unfinished file(s))"
    return (
        f"run finished: exit {exit_code} ({meaning}); fetched {len(summary.fetched)} file(s) [{names}],"
        f" {received} bytes transferred{kept} in {seconds:.1f} s ({rate:.2f} MB/s);"
        f" {len(summary.retries)} retr{'y' if len(summary.retries) == 1 else 'ies'};"
        f" {len(summary.failed)} failed"
    )
