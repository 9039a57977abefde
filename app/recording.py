"""The run's record keeping: the ledger and LAST_FILE_RECORD, read once per attempt and
moved forward as files are published, in the order durability needs.

app/job.py drives the attempts and their sessions with the server; this module holds
what those attempts share about the local state: the state read before the first login,
the files published but not yet in the ledger, and a record written but not yet fsynced.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from functools import cached_property

from loguru import logger

from app.config import Settings
from app.errors import ConfigError, JobError
from app.selection import (
    Criteria,
    Ordered,
    OrderKey,
    RemoteEntry,
    UnplaceableRecordError,
    advance_record,
    order,
    record_key,
)
from app.storage.fsutil import fsync_dir, translate_os_errors
from app.storage.state import Ledger, LedgerEntry, append_ledger, read_ledger, read_record, write_record

# Files published within this many seconds share one fsync of SERVER_DIR and of
# the ledger: with hundreds of small files due, fsyncs dominate the run.
GROUP_COMMIT_SECONDS = 1.0


@dataclass
class Snapshot:
    """What one attempt learned from the server and the local state."""

    entries: list[RemoteEntry]
    ordered: Ordered
    ledger: Ledger
    record: str | None
    last_key: OrderKey | None

    @cached_property
    def names(self) -> frozenset[str]:
        """Every name listed, companions included (checksum files, ready markers)."""
        return frozenset(e.name for e in self.entries)


class RecordKeeper:
    """The ledger and LAST_FILE_RECORD across the attempts of one run.

    One instance lives as long as the run: files published in an attempt whose commit
    failed are still committed by a later attempt.
    """

    # The snapshot the session's files are recorded against, set by track().
    snap: Snapshot

    def __init__(self, settings: Settings, criteria: Criteria) -> None:
        self.s = settings
        self.criteria = criteria
        self._unsynced_record: str | None = None
        self._state_read: tuple[Ledger, str | None] | None = None  # read before connecting, for the first attempt
        self._uncommitted: list[LedgerEntry] = []
        self._last_commit = time.monotonic()

    def read_ahead(self) -> None:
        """Read the state now, for the first attempt's snapshot; a ConfigError if it is damaged."""
        self._state_read = self._read_state()

    def _read_state(self) -> tuple[Ledger, str | None]:
        """The ledger and LAST_FILE_RECORD, each valid or a ConfigError naming the file (and line)."""
        ledger = read_ledger(self.s.ledger_path)
        if ledger.damaged_lines:
            logger.warning("{}: skipped {} damaged line(s)", self.s.ledger_path, ledger.damaged_lines)
        return ledger, read_record(self.s.last_file_record)

    def snapshot(self, entries: list[RemoteEntry]) -> Snapshot:
        """The local state placed in the server's listing ``entries``."""
        # The first attempt uses what was read before connecting; a later one reads
        # again, since the attempts before it may have recorded files.
        state, self._state_read = self._state_read, None
        ledger, record = state if state is not None else self._read_state()
        try:
            last_key = self._record_key(record, entries, ledger)
        except UnplaceableRecordError as exc:
            raise ConfigError(f"LAST_FILE_RECORD={self.s.last_file_record}: {exc}") from None
        return Snapshot(entries, order(entries, self.criteria, ledger.mtimes), ledger, record, last_key)

    def _record_key(self, record: str | None, entries: list[RemoteEntry], ledger: Ledger) -> OrderKey | None:
        if record is None:
            return None
        # Only the record's own mtimes are read: maps of every listed and completed file,
        # rebuilt at every group commit, made the cost per file grow with the backlog.
        listed = {e.name: e.mtime for e in entries if e.name == record}
        return record_key(record, self.s.order_by, listed, ledger.mtimes_of(record), self.criteria.date_pattern)

    def repair(self, snap: Snapshot) -> Snapshot:
        """A run killed between the ledger append and the record write left the
        record behind the ledger: move it forward now."""
        return self._advance(snap, snap.ledger.passed, repaired=True)

    def _advance(self, snap: Snapshot, completed: frozenset[str], *, repaired: bool = False) -> Snapshot:
        new = advance_record(snap.ordered, self.criteria, snap.last_key, snap.record, completed)
        if new is None or new == snap.record:
            return snap
        # Not fsynced per file: a record lost in a power cut lags the (fsynced)
        # ledger and is moved forward by the next run. The session's last write
        # is made durable by sync_record().
        write_record(self.s.last_file_record, new, durable=False)
        self._unsynced_record = new
        if repaired:
            logger.info("LAST_FILE_RECORD moved from {} to {} to match the ledger", snap.record, new)
        last_key = self._record_key(new, snap.entries, snap.ledger)
        return Snapshot(snap.entries, snap.ordered, snap.ledger, new, last_key)

    def track(self, snap: Snapshot) -> None:
        """Record the session's files against ``snap`` from now on."""
        self.snap = snap

    def recorded(self, done: LedgerEntry) -> None:
        """A file verified and published: recorded at the next group commit."""
        self._uncommitted.append(done)
        if time.monotonic() - self._last_commit >= GROUP_COMMIT_SECONDS:
            self.commit()

    def commit(self) -> Snapshot:
        """Record the files published since the last commit, in the order durability needs:
        their SERVER_DIR renames first, then their ledger lines, then the record.

        Grouping saves two fsyncs per file when many small files are due; a run
        killed before a commit leaves published files unrecorded, and the next run
        records them without fetching them again (they are complete in LOCAL_DIR
        and identical in SERVER_DIR).
        """
        self._last_commit = time.monotonic()
        if not self._uncommitted:
            return self.snap
        with translate_os_errors("sync SERVER_DIR", self.s.server_dir):
            fsync_dir(self.s.server_dir)
        append_ledger(self.s.ledger_path, *self._uncommitted)
        old = self.snap
        ledger = dataclasses.replace(old.ledger, entries=(*old.ledger.entries, *self._uncommitted))
        self._uncommitted = []
        snap = Snapshot(old.entries, old.ordered, ledger, old.record, old.last_key)
        self.snap = self._advance(snap, ledger.passed)
        return self.snap

    def sync_record(self, *, failing: bool) -> None:
        """Make the session's last record write durable. While an error is already
        ending the run (``failing``), a failure here is not raised over it."""
        if self._unsynced_record is not None:
            record, self._unsynced_record = self._unsynced_record, None
            try:
                write_record(self.s.last_file_record, record)
            except JobError:
                # Never hide the error that is already ending the run.
                if not failing:
                    raise
