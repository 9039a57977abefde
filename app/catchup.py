"""Catching up: the due files of one run, small ones several at once over the one connection.

After an outage the backlog is many small files, and one after another each pays
its own round trips (open, read, re-stat). paramiko's SFTPClient has one reader;
``read_range`` already keeps many reads of one file in flight. Here one loop does
that across files: each small file is a small state machine

    OPEN sent -> handle -> READs (and one byte past the end) in flight -> end confirmed
    -> CLOSE and STAT sent together -> STAT compared -> fsync, rename -> published

and the loop waits for the next reply, whatever file it concerns, and hands it
to its file by request number. Up to CONCURRENT_FILES files are in flight within
one budget of bytes, so memory stays bounded however many are open.

Files that need resume state (larger than WHOLE_FILE_MAX, or listed without a
size or mtime) and files already complete in LOCAL_DIR go through
``transfer.download`` one at a time, in plan order, after the small ones before
them are done: a large file's own pipeline already fills the link
(bench/RESULTS.md), and its resume verification stays in one place.

Files may complete in any order; each is published and handed to ``record`` as
it completes, and the job moves LAST_FILE_RECORD only over consecutive ones.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import hashlib
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loguru import logger
from paramiko import Message, SSHException
from paramiko.sftp import SFTP_EOF, SFTP_NO_SUCH_FILE, SFTP_PERMISSION_DENIED

from app import interrupt
from app.config import Settings
from app.errors import LocalStorageError, RemoteFileError
from app.lifecycle import Lifecycle
from app.progress import Progress
from app.results import TransferResult
from app.selection import RemoteEntry
from app.server import proof
from app.server.bandwidth import throttle_for
from app.server.inflight import ENDED_EARLY, HUNG_UP, STALLED
from app.server.pipeline import (
    MAX_AHEAD,
    Outbox,
    Replies,
    close_later,
    receive,
    reply_attrs,
    reply_data,
    reply_handle,
    reply_status,
    request_open,
    request_read,
    request_stat,
)
from app.server.remote import Connection, remote_errors, remote_path
from app.storage import group_durability as group
from app.storage.fsutil import storage_error, write_all
from app.storage.partial import Paths
from app.storage.publish import Staged, can_clone, publish, stage
from app.storage.space import Room, needs
from app.storage.state import LedgerEntry
from app.tally import FileTally
from app.transfer import (
    WHOLE_FILE_MAX,
    changed_reason,
    complete_local,
    download,
    removed_after_read,
    request_size,
    start_partial,
    start_whole,
    transfer_result,
)

Record = Callable[[LedgerEntry, TransferResult], None]

# Files up to this size with no partial yet are fetched together with others; a
# quarter of the default budget of bytes in flight (64 requests of OpenSSH's
# 255 KiB), so that several are in flight at once. Above 1 MiB (WHOLE_FILE_MAX)
# they are written to a partial as they arrive, so a cut keeps what came, and
# the next attempt resumes through transfer.download. Larger files fill a link
# with their own pipeline (bench/RESULTS.md).
TOGETHER_MAX = 4 * 1024 * 1024

# Threads that write, fsync and publish finished files: concurrent fsyncs share
# the file system's journal commits (on ext4 here, 16 at once cost 1.4 ms per
# small file instead of 7.5 ms one after another); a few already get most of it.
FINISHERS = 8

# Files written to their temps and waiting for their group's one sync, at most: each
# holds two descriptors (LOCAL_DIR's temp, SERVER_DIR's) until renamed. A group is
# whatever waits when the previous group's sync is over, so it grows with the
# time the sync takes (bench/RESULTS.md).
GROUP_MAX_FILES = 128

# Status codes that concern the file itself; any other refusal of a second open
# is taken for a server that allows one open file per session, and so is
# PERMISSION_DENIED while other files are open (the file is then tried alone).
_FILE_STATUSES = {SFTP_NO_SUCH_FILE: errno.ENOENT, SFTP_PERMISSION_DENIED: errno.EACCES}

# The kinds of request that are READs, counted against the reads in flight; "again" is
# a read that ended early under pipelining, asked again alone.
_READS = frozenset({"read", "end", "again"})


def fetch_due(
    conn: Connection,
    settings: Settings,
    due: Sequence[RemoteEntry],
    tallies: dict[str, FileTally],
    failed: dict[str, str],
    record: Record,
    *,
    names: frozenset[str],
    lifecycle: Lifecycle,
) -> None:
    """Fetch, verify and publish every file of ``due``, handing each completed one to
    ``record``. A file that fails alone is named in ``failed``; outside
    SELECT_MODE=all the first failure ends the batch. ``names`` is the listing (where
    checksum files are found); ``lifecycle`` prepares each file for publishing."""
    keep_going = settings.select_mode == "all"
    scheduler = _Scheduler(conn, settings, tallies, failed, record, lifecycle)
    small: list[RemoteEntry] = []
    for entry in due:
        interrupt.check()
        if _fetched_together(settings, entry) and not _proven_or_decrypted_alone(
            conn, settings, entry, names, lifecycle
        ):
            small.append(entry)
            continue
        if small and not scheduler.run(small, keep_going):
            return
        small = []
        # Measured afresh for each file fetched alone: the ones before it are on disk now.
        make_room(Room.measured(settings.local_dir, settings.server_dir), settings, entry, lifecycle)
        tally = tallies.setdefault(entry.name, FileTally(entry.name))
        _announce(entry)
        try:
            result = download(conn, settings, entry, tally, names)
            record(*deliver(settings, entry, result, tally, lifecycle))
        except RemoteFileError as exc:
            _failed(failed, entry, exc)
            if not keep_going:
                return
    if small:
        scheduler.run(small, keep_going)


def make_room(room: Room, settings: Settings, entry: RemoteEntry, lifecycle: Lifecycle) -> None:
    """Raise LocalStorageError (exit 5), before anything of ``entry`` is written, if it
    cannot fit in LOCAL_DIR and SERVER_DIR (app/storage/space.py); a file listed
    without a size is read to its end, and checked by the disk itself."""
    if entry.size is None:
        return
    try:
        paths = Paths.for_name(settings.local_dir, entry.name)
    except RemoteFileError:
        return  # refused, and reported, by the download
    if complete_local(paths, entry):
        kept = entry.size
    else:
        try:
            kept = paths.part.lstat().st_size if entry.size > WHOLE_FILE_MAX else 0
        except OSError:
            kept = 0
    method = settings.publish_method
    shares = method == "hardlink" or (
        method in ("reflink", "auto") and room.same_file_system and can_clone(settings.local_dir, settings.server_dir)
    )
    room.take(
        entry.name,
        needs(entry.size, min(kept, entry.size), decrypts=lifecycle.decrypts(entry.name), shares_blocks=shares),
    )


def _fetched_together(settings: Settings, entry: RemoteEntry) -> bool:
    """Small enough to fetch whole (transfer.download keeps no resume state for it),
    and not already complete in LOCAL_DIR. A name refused here is refused, and
    reported, by transfer.download."""
    if entry.size is None or entry.mtime is None or entry.size > TOGETHER_MAX:
        return False
    try:
        paths = Paths.for_name(settings.local_dir, entry.name)
    except RemoteFileError:
        return False
    # A partial left by an earlier attempt is resumed (and verified) by transfer.download.
    return not complete_local(paths, entry) and (entry.size <= WHOLE_FILE_MAX or not paths.part.exists())


def _proven_or_decrypted_alone(
    conn: Connection, settings: Settings, entry: RemoteEntry, names: frozenset[str], lifecycle: Lifecycle
) -> bool:
    """A file whose proof takes requests of its own (a server digest, a checksum file,
    REMOTE_HASH_COMMAND), or that is decrypted before publishing, goes through
    transfer.download and the job's thread alone: the finishing threads neither
    talk to the server nor run gpg."""
    return proof.needs_own_requests(conn, settings, entry.name, names) or lifecycle.decrypts(entry.name)


def _announce(entry: RemoteEntry) -> None:
    size = "an unknown number of" if entry.size is None else entry.size
    logger.bind(file=entry.name).info("{}: downloading {} bytes", entry.name, size)


def _failed(failed: dict[str, str], entry: RemoteEntry, exc: RemoteFileError) -> None:
    # A stop request can surface as a file's failure: report it as what it is.
    interrupt.check()
    failed[entry.name] = str(exc)
    logger.bind(file=entry.name).error("{}: {}", entry.name, exc)


def deliver(
    settings: Settings, entry: RemoteEntry, result: TransferResult, tally: FileTally, lifecycle: Lifecycle
) -> tuple[LedgerEntry, TransferResult]:
    """Publish a verified, proven download to SERVER_DIR (decrypted first where
    DECRYPT says so); its ledger line, not yet committed."""
    _log_verified(result)
    ready = lifecycle.prepare(result)
    method = publish(ready.path, settings.server_dir, ready.size, result.mtime, ready.sha256, settings.publish_method)
    _log_published(entry.name, method)
    return ledger_entry(entry, result, tally, ready.ledger_fields), result


def _log_verified(result: TransferResult) -> None:
    logger.bind(file=result.name, sha256=result.sha256, size=result.size, verified_by=result.verified_by).info(
        "{}: verified {} bytes, sha256 {}, by {}", result.name, result.size, result.sha256, result.verified_by
    )


def _log_published(name: str, method: str | None) -> None:
    if method is None:
        logger.bind(file=name).info("{}: already identical in SERVER_DIR", name)
    else:
        logger.bind(file=name, method=method).info("{}: published to SERVER_DIR ({})", name, method)


def ledger_entry(entry: RemoteEntry, result: TransferResult, tally: FileTally, fields: dict[str, Any]) -> LedgerEntry:
    """The ledger line of a published file, not yet committed."""
    return LedgerEntry(
        name=entry.name,
        size=result.size,
        mtime=result.mtime,
        sha256=result.sha256,
        bytes_transferred=tally.received,
        seconds=round(time.monotonic() - tally.started, 3),
        completed_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        verified_by=result.verified_by,
        **fields,
    )


@dataclass(eq=False)
class _Small:
    """One file in flight: its SFTP requests and its bytes. Up to WHOLE_FILE_MAX they
    are held in memory until verified (within the scheduler's budget), then written
    in one go; a larger file is written to its partial (``fd``) as they arrive."""

    entry: RemoteEntry
    size: int
    tally: FileTally
    paths: Paths
    fd: int = -1  # the partial, open for writing; -1 for a file held in memory
    digest: hashlib._Hash = field(default_factory=hashlib.sha256)  # of a partial's bytes
    started: float = field(default_factory=time.monotonic)
    received_before: int = 0
    chunks: list[bytes] = field(default_factory=list)  # in file order
    handle: bytes | None = None
    position: int = 0  # bytes in ``chunks``
    ready: dict[int, bytes] = field(default_factory=dict)  # replies ahead of ``position``
    reads: int = 0  # READs in flight
    todo: deque[tuple[str, int, int]] = field(default_factory=deque)  # READs not yet sent: (kind, offset, length)
    end_confirmed: bool = False


# A published file: its ledger line, its result, and how SERVER_DIR got it (None: already identical).
_Published = tuple[LedgerEntry, TransferResult, str | None]


@dataclass(eq=False)
class _Staged:
    """A verified file written to its temps (LOCAL_DIR's ``target``, open as ``fd``;
    SERVER_DIR's ``copy``, None if an identical file is there already), not yet durable."""

    f: _Small
    target: Path
    fd: int
    result: TransferResult
    copy: Staged | None

    def written(self) -> list[group.Written]:
        """What the group's sync must make durable."""
        own = [group.Written(self.fd, self.target)]
        return own if self.copy is None else [*own, group.Written(self.copy.held, self.copy.tmp)]

    def close(self) -> None:
        """Renamed: the temps' descriptors are no longer needed to hold them."""
        with contextlib.suppress(OSError):
            os.close(self.fd)
        if self.copy is not None:
            with contextlib.suppress(OSError):
                os.close(self.copy.held)

    def discard(self) -> None:
        """Not published: the temps go (a partial stays, a valid prefix for the next attempt)."""
        self.close()
        if self.target != self.f.paths.part:
            with contextlib.suppress(OSError):
                self.target.unlink()
        if self.copy is not None:
            self.copy.discard()


class _RefusedError(Exception):
    """The server refused an open while other files were open."""


class _Scheduler:
    def __init__(
        self,
        conn: Connection,
        settings: Settings,
        tallies: dict[str, FileTally],
        failed: dict[str, str],
        record: Record,
        lifecycle: Lifecycle,
    ) -> None:
        self.conn = conn
        self.lifecycle = lifecycle
        self.sftp = conn.sftp
        self.s = settings
        self.tallies = tallies
        self.failed = failed
        self.record = record
        self.limit = 1 if conn.one_open_file else settings.concurrent_files
        self.sink = Replies()
        # Request number -> (file, kind, offset, length); kind is open, read, end or stat.
        self.pending: dict[int, tuple[_Small, str, int, int]] = {}
        self.active: list[_Small] = []
        # Files refused PERMISSION_DENIED while others were open, to be tried alone:
        # name -> the server's words.
        self.alone: dict[str, str] = {}
        self.size = settings.chunk_size
        self.probing = True
        # READs in flight across files, within conn.reads.limit (PIPELINE_DEPTH, lowered by
        # the server's failures under it); the most at once, for what a failure happened with.
        self.reading = 0
        self.peak = 0
        # Reads that got end-of-file before the listed end while others were in flight:
        # asked again one at a time, once nothing else is in flight.
        self.again: deque[tuple[_Small, int, int]] = deque()
        self.early = (0, 0)  # (reads in flight, reads ended early), told once one proves early
        # BANDWIDTH_LIMIT: the run's one bucket, shared with transfer.download.
        self.throttle = throttle_for(settings)
        # PUBLISH_METHOD=auto: cleared once a clone fails, so later files skip the try.
        self.try_clone = True

    def run(self, entries: Sequence[RemoteEntry], keep_going: bool) -> bool:
        """Fetch ``entries`` (all to be fetched together); False if a failure ends the batch.
        The files before the first that cannot fit in LOCAL_DIR and SERVER_DIR are
        fetched; then its LocalStorageError (exit 5) is raised."""
        entries, refusal = self._fitting(entries)
        self.queue = deque(entries)
        self.place = {e.name: n for n, e in enumerate(entries)}
        self.next_place = 0  # the first file in plan order not yet recorded or failed
        self.settled: set[int] = set()  # places after it that are
        self.results: dict[int, _Published] = {}  # verified and published, by place
        self.keep_going = keep_going
        self.size, self.probing = request_size(self.conn, self.s)
        # The memory bound: bytes of admitted, unfinished files (each is fetched whole).
        budget = min(self.s.pipeline_depth * self.size, MAX_AHEAD)
        self.count, self.done_files, self.done_bytes = len(entries), 0, 0
        self.progress = Progress(f"0/{self.count} files", sum(e.size or 0 for e in entries), 0)
        self.finishing: dict[Future[_Staged], _Small] = {}
        # Written to their temps, waiting for a group's sync; the groups being published.
        self.staged: list[_Staged] = []
        self.grouping: dict[Future[list[tuple[int, _Published]]], list[_Staged]] = {}
        self.dirs = group.Directories()
        try:
            # Held from before anything is written: each group's syncfs reports the
            # writeback errors since the last (see group_durability).
            self.filesystems = self.dirs.filesystems([self.s.local_dir, self.s.server_dir])
            with (
                ThreadPoolExecutor(max_workers=min(self.limit, FINISHERS), thread_name_prefix="finish") as self.pool,
                remote_errors(f"fetch {self.count} file(s)"),
                Outbox(self.sftp) as self.outbox,
            ):
                try:
                    while self.queue or self.active or self.finishing or self.staged or self.grouping:
                        interrupt.check()
                        held = sum(f.size for f in (*self.active, *self.finishing.values()))
                        while self.queue and len(self.active) < self.limit:
                            if self.active and held + (self.queue[0].size or 0) > budget:
                                break
                            if len(self.staged) >= GROUP_MAX_FILES:
                                break  # their descriptors stay open until the group's sync
                            if self.queue[0].name in self.alone:
                                # Tried again alone: after the files in flight, before any other.
                                if not self.active:
                                    held += self._start(self.queue.popleft())
                                break
                            held += self._start(self.queue.popleft())
                        # Every request made since the last wait goes out before the next.
                        with self._lesson_on_failure():
                            self._pump()
                            self.outbox.flush()
                            if self.active:
                                receive(self.sftp)
                        if not self.active:
                            running: list[Future[Any]] = [*self.finishing, *self.grouping]
                            wait(running, interrupt.POLL_SECONDS, FIRST_COMPLETED)
                        for num in list(self.sink.got):
                            if not self._dispatch(num):
                                return False
                        # The replies' follow-ups (reads, closes, stats) go out before
                        # recording, whose group commit may wait on fsyncs.
                        with self._lesson_on_failure():
                            self._pump()
                            self.outbox.flush()
                        if not self._collect(only_done=True):
                            return False
                finally:
                    # What is already published gets recorded, whatever stops the batch.
                    with contextlib.suppress(BaseException):
                        self._collect(only_done=False)
        finally:
            for f in list(self.active):
                self._drop(f)
            # Staged after the batch stopped (the pool has waited for them), or not
            # published because it stopped: their temps go.
            for future in self.finishing:
                if not future.cancelled() and future.exception() is None:
                    self.staged.append(future.result())
            self.finishing.clear()
            for staged in self.staged:
                staged.discard()
            self.staged.clear()
            self.dirs.close()
        self.progress.finish()
        if refusal is not None:
            raise refusal
        return True

    def _fitting(self, entries: Sequence[RemoteEntry]) -> tuple[Sequence[RemoteEntry], LocalStorageError | None]:
        """The files of ``entries`` up to the first that cannot fit, and why it cannot. One
        measure for the batch: none of its files is on disk yet, so each is checked
        against what the ones before it will take."""
        room = Room.measured(self.s.local_dir, self.s.server_dir)
        for n, entry in enumerate(entries):
            try:
                make_room(room, self.s, entry, self.lifecycle)
            except LocalStorageError as exc:
                return entries[:n], exc
        return entries, None

    @contextlib.contextmanager
    def _lesson_on_failure(self) -> Iterator[None]:
        """Around sending and waiting: a server that stalls or hangs up with many reads in
        flight lowers the reads in flight for the rest of the run (the job reconnects)."""
        try:
            yield
        except (OSError, EOFError, SSHException) as exc:
            unanswered = sum(1 for n, p in self.pending.items() if p[1] in _READS and n not in self.sink.got)
            self.conn.reads.lower(STALLED if isinstance(exc, TimeoutError) else HUNG_UP, self.peak, unanswered)
            raise

    def _pump(self) -> None:
        """Send queued READs of the files in flight, oldest file first, while fewer than
        the server's reads in flight are out. A read to ask again goes out alone."""
        while self.again and self.again[0][0] not in self.active:
            self.again.popleft()
        if self.again:
            if not self.reading:
                f, offset, length = self.again.popleft()
                self._send(f, "again", offset, length)
            return
        limit = self.conn.reads.limit
        for f in self.active:
            while f.todo and self.reading < limit:
                kind, offset, length = f.todo.popleft()
                self._send(f, kind, offset, length)
            if self.reading >= limit:
                break
        self.peak = max(self.peak, self.reading)

    def _collect(self, *, only_done: bool) -> bool:
        """Group the files written to their temps, and record the files whose group is
        published, in plan order (so the ledger reads oldest first, as one at a time
        would write it); with ``only_done=False``, wait for all, publish what is
        staged and record every one. False if a failure ends the batch.

        Their log lines are written here, by the loop's thread: from the finishing
        threads, they queued on the logger's lock (bench/RESULTS.md)."""
        going = True
        for future in [fu for fu in self.finishing if fu.done() or not only_done]:
            f = self.finishing.pop(future)
            try:
                self.staged.append(future.result())
            except RemoteFileError as exc:
                self._settle(f)
                _failed(self.failed, f.entry, exc)
                going = going and self.keep_going
        for gf in [fu for fu in self.grouping if fu.done() or not only_done]:
            del self.grouping[gf]
            self.results.update(gf.result())
        # One group at a time: what waits while a group syncs is the next group, so
        # groups grow as large as the sync is slow.
        # A stop request is served at once: what is staged is not published (and goes).
        while self.staged and not self.grouping and (only_done or interrupt.requested() is None):
            batch, self.staged = self.staged[:GROUP_MAX_FILES], self.staged[GROUP_MAX_FILES:]
            if only_done:
                self.grouping[self.pool.submit(self._publish_group, batch)] = batch
            else:
                self.results.update(self._publish_group(batch))
        while self.results and (not only_done or min(self.results) == self.next_place):
            place = min(self.results)
            done, result, method = self.results.pop(place)
            _log_verified(result)
            _log_published(done.name, method)
            self.record(done, result)
            self._settle_place(place)
            self.done_files += 1
            self.progress.name = f"{self.done_files}/{self.count} files"
            self.progress.update(self.done_bytes)
        return going

    def _settle(self, f: _Small) -> None:
        """``f`` failed: files after it in the plan need not wait for it to be recorded."""
        self._settle_place(self.place[f.entry.name])

    def _settle_place(self, place: int) -> None:
        self.settled.add(place)
        while self.next_place in self.settled:
            self.settled.discard(self.next_place)
            self.next_place += 1

    def _dispatch(self, num: int) -> bool:
        """Hand one reply to its file; False if a failure ends the batch."""
        t, msg = self.sink.got.pop(num)
        f, kind, offset, length = self.pending.pop(num)
        if kind in _READS:
            self.reading -= 1
        if f not in self.active:
            return True  # a late reply for a file that already failed
        before = f.position
        try:
            self._step(f, kind, offset, length, t, msg)
        except _RefusedError:
            self._drop(f)
            # Back in its place in the plan, so files are still fetched oldest first.
            self.queue = deque(sorted((f.entry, *self.queue), key=lambda e: self.place[e.name]))
            return True
        except RemoteFileError as exc:
            self._drop(f)
            self._settle(f)
            _failed(self.failed, f.entry, exc)
            return self.keep_going
        self.done_bytes += f.position - before
        self.progress.update(self.done_bytes)
        return True

    def _start(self, entry: RemoteEntry) -> int:
        if entry.size is None:  # _fetched_together admits listed sizes only
            raise RemoteFileError(f"{entry.name}: no listed size, cannot be fetched together")
        _announce(entry)
        tally = self.tallies.setdefault(entry.name, FileTally(entry.name))
        tally.size = entry.size
        paths = Paths.for_name(self.s.local_dir, entry.name)
        f = _Small(entry, entry.size, tally, paths, received_before=tally.received)
        if f.size > WHOLE_FILE_MAX:
            start_partial(paths, entry)
            try:
                # Readable too: SERVER_DIR's copy is made from this descriptor.
                f.fd = os.open(paths.part, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError as exc:
                raise storage_error("open", paths.part, exc) from None
        self.active.append(f)
        self._send(f, "open", 0, 0)
        return f.size

    def _send(self, f: _Small, kind: str, offset: int, length: int) -> None:
        path = remote_path(self.s, f.entry.name)
        if kind == "open":
            num = request_open(self.sftp, self.sink, path)
        elif kind == "stat":
            num = request_stat(self.sftp, self.sink, path)
        else:
            if f.handle is None:  # reads are sent only after the open's reply gave the handle
                raise RemoteFileError(f"{f.entry.name}: read before the file was open")
            if self.throttle is not None:
                # What is held goes out before waiting for the bucket.
                self.outbox.flush()
                self.throttle(length)
            num = request_read(self.sftp, self.sink, f.handle, offset, length)
            f.reads += 1
            self.reading += 1
        self.pending[num] = (f, kind, offset, length)

    def _step(self, f: _Small, kind: str, offset: int, length: int, t: int, msg: Message) -> None:
        """Advance ``f`` by one reply; once it is verified, hand it to the finishing threads."""
        status = reply_status(t, msg)
        name = f.entry.name
        if kind == "open":
            handle = reply_handle(t, msg)
            if handle is None:
                self._refused_open(f, status)
                raise RemoteFileError(f"download {name!r}: server did not open it")
            f.handle = handle
            if f.entry.name in self.alone:
                # Refused while others were open, opened alone: a limit of the server's.
                self._one_at_a_time(f, self.alone.pop(f.entry.name))
            f.tally.resume_offsets.append(0)
            # Sent by _pump, within the reads in flight the server copes with.
            for start in range(0, f.size, self.size):
                f.todo.append(("read", start, min(self.size, f.size - start)))
            # One byte past the listed end must come back as end-of-file, or the
            # file is longer than listed; sent with the reads, it costs no round trip.
            f.todo.append(("end", f.size, 1))
            return
        if kind == "stat":
            attrs = reply_attrs(t, msg)
            if attrs is None and status is not None and status[0] == SFTP_NO_SUCH_FILE:
                # Every byte and the end of file arrived, then the server removed it.
                removed_after_read(self.conn, name, f.position)
            elif attrs is None:
                raise RemoteFileError(f"re-check remote file {name!r}: {status[1] if status else 'no attributes'}")
            else:
                mtime = None if attrs.st_mtime is None else int(attrs.st_mtime)
                reason = changed_reason(f.entry, f.position, attrs.st_size, mtime)
                if reason is not None:
                    raise RemoteFileError(reason)
            self._network_done(f)
            return
        f.reads -= 1
        data = reply_data(t, msg)
        if kind == "end":
            if data:
                raise RemoteFileError(f"the file is longer than its listed size of {f.size} bytes")
            # An empty DATA reply carries no byte past the end either (see below).
            if data is None and (status is None or status[0] != SFTP_EOF):
                raise RemoteFileError(f"server refused a read: {status[1] if status else 'unexpected reply'}")
            f.end_confirmed = True
        elif not data:
            # An EOF status, or an empty DATA reply (taken for the end by pipeline._read
            # too): asking again would get the same answer, forever.
            if data is not None or (status is not None and status[0] == SFTP_EOF):
                if kind == "read" and self.peak > 1:
                    # Perhaps a server that ends reads early under many in flight (AWS
                    # Transfer): asked again alone before the file is judged short.
                    self.again.append((f, offset, length))
                    self.early = (self.peak, self.early[1] + 1)
                    return
                raise RemoteFileError(f"file ended at byte {offset}, before its listed size of {f.size}")
            raise RemoteFileError(f"server refused a read: {status[1] if status else 'unexpected reply'}")
        else:
            if kind == "again" and self.early[1]:
                # Data where the burst got end-of-file: the server ended those reads early.
                self.conn.reads.lower(ENDED_EARLY, *self.early)
                self.early, self.peak = (0, 0), 0
            self._take(f, offset, length, data)
        if f.position == f.size and f.end_confirmed and not f.reads and f.handle is not None:
            # The close needs no reply; the second stat goes with it.
            close_later(self.sftp, f.handle)
            f.handle = None
            if self.conn.removes_after_read:
                # Nothing to stat on a server that removes what it served.
                removed_after_read(self.conn, name, f.position)
                self._network_done(f)
            else:
                self._send(f, "stat", 0, 0)
        return

    def _network_done(self, f: _Small) -> None:
        """The network part is done: the rest runs beside the next files' transfers."""
        self.active.remove(f)
        self.finishing[self.pool.submit(self._stage, f)] = f

    def _refused_open(self, f: _Small, status: tuple[int, str] | None) -> None:
        code, text = status if status is not None else (-1, "unexpected reply")
        if code == SFTP_PERMISSION_DENIED and len(self.active) > 1 and f.entry.name not in self.alone:
            # Perhaps the server's "a file transfer is in progress" rather than the file's
            # own permissions: it is tried again alone before it is judged (see _step).
            self.alone[f.entry.name] = text
            raise _RefusedError()
        if code in _FILE_STATUSES:
            raise RemoteFileError(f"download {f.entry.name!r}: {os.strerror(_FILE_STATUSES[code])}")
        if len(self.active) > 1:
            # Opens already sent behind this one are refused too: they are tried again, quietly.
            self._one_at_a_time(f, text)
            raise _RefusedError()
        raise RemoteFileError(f"download {f.entry.name!r}: {text}")

    def _one_at_a_time(self, f: _Small, text: str) -> None:
        if self.limit > 1:
            self.limit = 1
            self.conn.one_open_file = True
            logger.bind(file=f.entry.name).warning(
                "the server refused to open {} while other files were open ({}); fetching one file at a"
                " time for the rest of this run",
                f.entry.name,
                text,
            )

    def _take(self, f: _Small, offset: int, length: int, data: bytes) -> None:
        """Keep one read's reply and write what is now contiguous, in file order."""
        if len(data) > length:
            raise RemoteFileError(f"server sent {len(data)} bytes for a read of {length}")
        if self.probing and data:
            # The first reply tells the server's read limit (see pipeline.read_range).
            self.size, self.probing = min(self.size, len(data)), False
        rest = offset + len(data)
        follow: list[tuple[str, int, int]] = []
        while rest < offset + length:
            # A short reply: the rest in pieces of the server's read limit (as pipeline._read
            # asks), not of this reply, which may be far shorter (1 byte: a READ per byte).
            piece = min(self.size, offset + length - rest)
            follow.append(("read", rest, piece))
            rest += piece
        # Ahead of the file's other reads, so the write position does not wait behind them.
        f.todo.extendleft(reversed(follow))
        f.ready[offset] = data
        while f.position in f.ready:
            chunk = f.ready.pop(f.position)
            if f.fd < 0:
                f.chunks.append(chunk)
            else:
                try:
                    write_all(f.fd, chunk)
                except OSError as exc:
                    raise storage_error("write", f.paths.part, exc) from None
                f.digest.update(chunk)
                f.tally.kept = f.position + len(chunk)
            f.position += len(chunk)
            f.tally.received += len(chunk)

    def _stage(self, f: _Small) -> _Staged:
        """In a helper thread, so that local file system work never holds up the
        transfers: write the verified bytes to LOCAL_DIR's temp in one write and
        SERVER_DIR's copy beside its final name, neither fsynced yet (a group of them
        is, in ``_publish_group``)."""
        paths = f.paths
        if f.fd >= 0:
            target, fd, digest = paths.part, f.fd, f.digest
            f.fd = -1
        else:
            target, fd = start_whole(paths, readable=True)
            digest = hashlib.sha256()
        try:
            try:
                if f.chunks:
                    data = b"".join(f.chunks)
                    f.chunks.clear()
                    write_all(fd, data)
                    digest.update(data)
                if f.entry.mtime is not None:
                    os.utime(fd, (f.entry.mtime, f.entry.mtime))
            except OSError as exc:
                raise storage_error("write", target, exc) from None
            # Fetched together only when size and mtime are all the proof there is.
            result = transfer_result(
                f.entry, f.position, digest, f.tally, 0, f.started, f.received_before, verified_by=proof.SIZE_MTIME
            )
            method = self.s.publish_method
            copy = stage(
                target,
                fd,
                self.s.server_dir / f.entry.name,
                result.size,
                result.mtime,
                result.sha256,
                method,
                try_clone=self.try_clone,
            )
            if copy is not None and copy.method == "copy" and method == "auto":
                self.try_clone = False  # these file systems cannot clone: not tried again this run
        except BaseException:
            os.close(fd)
            if target != paths.part:  # a partial stays: it is a valid prefix
                target.unlink(missing_ok=True)
            raise
        return _Staged(f, target, fd, result, copy)

    def _publish_group(self, batch: list[_Staged]) -> list[tuple[int, _Published]]:
        """In a helper thread: make ``batch`` durable with one sync, then give every
        file its final names (LOCAL_DIR's, then SERVER_DIR's) and sync the
        directories once. No final name exists before its bytes are durable."""
        renamed = 0
        try:
            group.make_durable([w for s in batch for w in s.written()], self.filesystems)
            group.pause_for_tests()
            local = self.dirs.fd(self.s.local_dir)
            server = self.dirs.fd(self.s.server_dir)
            published: list[tuple[int, _Published]] = []
            for s in batch:
                f = s.f
                group.rename_all([group.Rename(local, s.target.name, f.paths.final.name)])
                renamed += 1
                if s.target == f.paths.part:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(f.paths.meta.name, dir_fd=local)
                f.tally.kept, f.tally.completed, f.tally.prefix = f.position, True, None
                ready = self.lifecycle.prepare(s.result)
                if ready.path != f.paths.final:
                    raise LocalStorageError(f"{f.entry.name}: a decrypted file is published alone, not in a group")
                if s.copy is not None:
                    group.rename_all([group.Rename(server, s.copy.tmp.name, s.copy.final.name)])
                method = None if s.copy is None else s.copy.method
                done = ledger_entry(f.entry, s.result, f.tally, ready.ledger_fields)
                published.append((self.place[f.entry.name], (done, s.result, method)))
            group.sync_dirs(self.dirs.held([self.s.server_dir, self.s.local_dir]))
            return published
        finally:
            for s in batch[renamed:]:
                s.discard()
            for s in batch[:renamed]:
                s.close()

    def _drop(self, f: _Small) -> None:
        """Forget a file that failed or was cut short: its temp goes, nothing is kept."""
        if f in self.active:
            self.active.remove(f)
        if f.handle is not None:
            # On a dead connection the close cannot go out; the run reports the connection.
            with contextlib.suppress(Exception):
                close_later(self.sftp, f.handle)
            f.handle = None
        f.chunks.clear()
        if f.fd < 0:
            f.tally.kept = 0
            return
        # The partial is a valid prefix: kept for the next attempt, which resumes it.
        os.close(f.fd)
        f.fd = -1
        f.tally.remember_prefix(f.paths.part, f.position, f.digest)
