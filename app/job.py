"""One run of the job: plan, download, publish, record; with retries and a truthful exit code."""

from __future__ import annotations

import contextlib
import datetime as dt
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

import paramiko
from loguru import logger

from app import interrupt
from app.catchup import fetch_due
from app.config import Settings
from app.errors import EXIT_MEANINGS, EXIT_OK, JobError, TransientError
from app.lifecycle import Lifecycle, LifecycleTally
from app.planning import Backlog, Planner
from app.recording import RecordKeeper
from app.reporting.report import (
    RetryRecord,
    RunReport,
    SkippedFile,
    StuckFile,
    counters_since,
    last_success,
    outcome,
    read_report,
    so_far,
    stalled_runs,
)
from app.results import TransferResult
from app.retry import RetryPolicy
from app.server import inflight, profile
from app.server.remote import Connection, HostKeyVerifier, connect, list_entries, load_private_key
from app.storage.fsutil import ensure_dir, remove_stale_temps
from app.storage.retention import apply_retention
from app.storage.state import LedgerEntry, LedgerTail, read_ledger_tail
from app.streaks import next_streaks, skip_command, streaks_from_json, stuck
from app.tally import FileTally, file_reports, total_kept
from app.timestamps import iso
from app.transfer import MAX_MISMATCHES


@dataclass
class RunSummary:
    fetched: list[TransferResult] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    retries: list[RetryRecord] = field(default_factory=list)
    recorded: dict[str, LedgerEntry] = field(default_factory=dict)  # seconds and bytes across attempts
    tallies: dict[str, FileTally] = field(default_factory=dict)  # every file tried, finished or not
    backlog: Backlog = field(default_factory=Backlog)
    lifecycle: LifecycleTally = field(default_factory=LifecycleTally)
    ssh: dict[str, str] | None = None  # the algorithms of the last SSH session with the server
    server_profile: dict[str, Any] | None = None  # what the last session learned of the server
    # Whether the run got as far as a plan: only then does a file that did not fail
    # this run end its failure streak (app/streaks.py).
    planned: bool = False


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
        self.planner = Planner(settings, dry_run, out)
        self.criteria = self.planner.criteria
        self.summary = RunSummary()
        self.records = RecordKeeper(settings, self.criteria)
        self.lifecycle = Lifecycle(settings, self.summary.lifecycle)

    # -- entry point --------------------------------------------------------

    def run(self) -> int:
        """One run. Except in a dry run, the caller holds the run lock (app/__main__.py
        keeps it until the report, metrics and alerts are out)."""
        key = load_private_key(self.s)
        verifier = HostKeyVerifier(self.s, record=not self.dry_run)
        # The local state is checked before any login: a damaged ledger or record fails
        # every run the same way, and partners lock accounts after repeated logins.
        self.records.read_ahead()
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
        with self.lifecycle:
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
            lessons = inflight.lessons_learned()
            try:
                return attempt()
            except TransientError as exc:
                # A stop request shows up as a dropped connection: report it as what it is.
                interrupt.check()
                # Bytes received and then thrown away (a small file restarts from 0)
                # are no progress: only a partial that grew or a completed file is.
                # So is a lower number of reads in flight learned from the server's failure.
                if total_kept(self.summary.tallies) > mark or inflight.lessons_learned() > lessons:
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
        self.summary.ssh = conn.negotiated.as_dict() if conn.negotiated else None
        with interrupt.on_interrupt(conn.abort):
            return self._session(conn, target)

    def _session(self, conn: Connection, target: str) -> int:
        try:
            logger.info("connected to {}", target)
            snap = self.records.snapshot(list_entries(conn, self.s))
            if not self.dry_run:
                snap = self.records.repair(snap)
            plan = self.planner.plan(
                snap.entries,
                snap.ordered,
                snap.record,
                snap.last_key,
                # Skipped files (``sftp-ipi skip``) are passed like delivered ones.
                snap.ledger.passed,
                self.summary.failed,
                snap.ledger.publishers,
            )
            self.summary.backlog = self.planner.backlog
            self.summary.planned = True
            if self.dry_run:
                return EXIT_OK
            self.records.track(snap)
            try:
                fetch_due(
                    conn,
                    self.s,
                    plan.due,
                    self.summary.tallies,
                    self.summary.failed,
                    self._recorded,
                    names=snap.names,
                    lifecycle=self.lifecycle,
                )
            except BaseException:
                # Whatever stopped the run, what is already published gets recorded.
                with contextlib.suppress(JobError):
                    self.records.commit()
                raise
            snap = self.records.commit()
            self.lifecycle.after_commit(conn, snap.ledger, snap.entries)
        finally:
            failing = sys.exc_info()[1] is not None
            self.summary.server_profile = profile.of(conn).to_json()
            conn.close()
            self.records.sync_record(failing=failing)
        if self.summary.failed:
            names = ", ".join(sorted(self.summary.failed))
            raise JobError(f"{len(self.summary.failed)} file(s) failed: {names}")
        return EXIT_OK

    # -- one file -----------------------------------------------------------

    def _recorded(self, done: LedgerEntry, result: TransferResult) -> None:
        """A file verified and published by app/catchup.py: recorded at the next group commit."""
        self.summary.recorded[done.name] = done
        self.summary.fetched.append(result)
        self.records.recorded(done)


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
        ledger = read_ledger_tail(settings.ledger_path)
    except JobError:
        ledger = LedgerTail(newest=None, newest_mtime=None, skips=())
    newest = ledger.newest
    finished_at = iso(finished)
    previous = read_report(settings.report_path)
    streaks = next_streaks(
        streaks_from_json((previous or {}).get("failure_streaks")), summary.failed, summary.planned, finished_at
    )
    mismatches = sum(t.mismatches >= MAX_MISMATCHES for t in summary.tallies.values())
    lifecycle = summary.lifecycle
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
        last_success_at=last_success(exit_code, finished_at, previous),
        last_completed_file=newest.name if newest else None,
        last_completed_at=newest.completed_at if newest else None,
        newest_completed_mtime=ledger.newest_mtime,
        held_back=list(summary.backlog.held_back),
        late=list(summary.backlog.late),
        due_remaining=summary.backlog.due_remaining,
        due_names=list(summary.backlog.due_names),
        due_stalled_runs=stalled_runs(summary.backlog.due_remaining, previous),
        verification_mismatches=mismatches,
        verification_mismatches_total=so_far("verification_mismatches_total", mismatches, previous),
        decrypt_failed=dict(lifecycle.decrypt_failed),
        remote_after_failed=dict(lifecycle.remote_after_failed),
        decrypt_failures_total=so_far("decrypt_failures_total", len(lifecycle.decrypt_failed), previous),
        remote_after_failures_total=so_far("remote_after_failures_total", len(lifecycle.remote_after_failed), previous),
        ssh=summary.ssh,
        files_delivered_total=so_far("files_delivered_total", sum(f.completed for f in files), previous),
        bytes_received_total=so_far("bytes_received_total", sum(f.bytes_transferred for f in files), previous),
        failed_files_total=so_far("failed_files_total", len(summary.failed), previous),
        retries_total=so_far("retries_total", len(summary.retries), previous),
        counters_since=counters_since(iso(started), previous),
        server_profile=summary.server_profile,
        failure_streaks={name: streak.to_json() for name, streak in streaks.items()},
        stuck=[
            StuckFile(s.name, s.runs, s.since, s.last_error, skip_command(s))
            for s in stuck(streaks, settings.stuck_after_runs)
        ],
        skipped=[SkippedFile(n.name, n.reason, n.by, n.at) for n in ledger.skips],
    )


def log_stuck(report: RunReport) -> None:
    """Name each stuck file with the command that passes it: the way out of a feed that
    one unreadable file has stopped."""
    for file in report.stuck:
        logger.bind(file=file.name, stuck_runs=file.runs).warning(
            "{}: stuck: failed the same way on {} runs in a row (since {}): {}; if it cannot be fixed on the"
            " server, pass it with: {}",
            file.name,
            file.runs,
            file.since,
            file.error,
            file.command,
        )


def log_server_profile(summary: RunSummary) -> None:
    """Say once per run, before its summary line, what the job learned about the server."""
    if summary.server_profile is not None:
        logger.bind(server_profile=summary.server_profile).info(
            "server profile: {}", profile.render(summary.server_profile)
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
        # An exit 0 must not read as "all delivered" while files wait.
        + (f"; {len(summary.backlog.held_back)} held back" if summary.backlog.held_back else "")
        + (f"; {len(summary.backlog.late)} late" if summary.backlog.late else "")
        + (f"; {summary.backlog.due_remaining} more due" if summary.backlog.due_remaining else "")
    )
