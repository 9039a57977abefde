"""Local state: LAST_FILE_RECORD (the watermark), the ledger of completed files, the run lock."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from app import interrupt
from app.errors import ConfigError, LockedError
from app.fsutil import atomic_write, fsync_dir, storage_error
from app.names import invalid_name_reason


@dataclass(frozen=True)
class LedgerEntry:
    """One completed file, as appended to the JSON-lines ledger."""

    name: str
    size: int  # bytes received and verified
    mtime: int | None  # as the server claimed it when the file was fetched; None if it sent none
    sha256: str
    bytes_transferred: int
    seconds: float
    completed_at: str


def read_record(path: Path) -> str | None:
    """The last completed file's name, or None before the first completion.

    The format is the original script's: the bare name, optionally followed by
    a newline.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"LAST_FILE_RECORD={path}: cannot read it ({exc.__class__.__name__})") from None
    name = text.strip()
    if not name:
        return None
    reason = invalid_name_reason(name)
    if reason:
        raise ConfigError(f"LAST_FILE_RECORD={path} does not hold a file name: {reason}")
    return name


def write_record(path: Path, name: str, *, durable: bool = True) -> None:
    atomic_write(path, (name + "\n").encode("utf-8"), "LAST_FILE_RECORD", durable=durable)


@dataclass(frozen=True)
class RefetchNote:
    """A ledger line asking for a completed file to be fetched again (``sftp-ipi refetch``).

    It takes the file out of the completed set until a later entry records it again.
    """

    name: str
    requested_at: str
    requested_by: str
    refetch: bool = True  # what tells this line from a LedgerEntry's


@dataclass(frozen=True)
class Ledger:
    entries: tuple[LedgerEntry, ...]
    damaged_lines: int = 0
    # Refetch requests not yet followed by a new entry for their file.
    refetch_pending: tuple[RefetchNote, ...] = ()

    @property
    def names(self) -> frozenset[str]:
        return frozenset(e.name for e in self.entries)

    @property
    def mtimes(self) -> dict[str, int]:
        return {e.name: e.mtime for e in self.entries if e.mtime is not None}


def read_ledger(path: Path) -> Ledger:
    """All intact entries. A line torn by a crash mid-append is counted and skipped."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return Ledger(entries=())
    except OSError as exc:
        raise storage_error("read the ledger", path, exc) from None
    items: list[LedgerEntry | RefetchNote] = []
    damaged = 0
    for line in raw.splitlines():
        if not line.strip():
            continue
        try:
            items.append(_ledger_item(json.loads(line)))
        except (ValueError, TypeError):
            damaged += 1
    entries, pending = _apply_refetches(items)
    return Ledger(entries=entries, damaged_lines=damaged, refetch_pending=pending)


def _ledger_item(data: object) -> LedgerEntry | RefetchNote:
    if not isinstance(data, dict):
        raise TypeError("not a JSON object")
    if data.get("refetch") is True:
        return RefetchNote(**data)
    return LedgerEntry(**data)


def _apply_refetches(
    items: list[LedgerEntry | RefetchNote],
) -> tuple[tuple[LedgerEntry, ...], tuple[RefetchNote, ...]]:
    """Drop the entries a later refetch note cancels; return the entries left and
    the notes that no newer entry has answered yet."""
    last_note: dict[str, tuple[int, RefetchNote]] = {}
    for i, item in enumerate(items):
        if isinstance(item, RefetchNote):
            last_note[item.name] = (i, item)
    entries = tuple(
        item
        for i, item in enumerate(items)
        if isinstance(item, LedgerEntry) and i > last_note.get(item.name, (-1, None))[0]
    )
    if not last_note:
        return entries, ()
    done = {e.name for e in entries}
    return entries, tuple(note for _, note in last_note.values() if note.name not in done)


def append_ledger(path: Path, *entries: LedgerEntry | RefetchNote) -> None:
    """Append entries durably, in one write. A torn line from an earlier crash is
    closed off first, so a new entry never fuses with it."""
    line = b"".join((json.dumps(asdict(e), sort_keys=True) + "\n").encode("utf-8") for e in entries)
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        if size == 0:
            fsync_dir(path.parent)
    except OSError as exc:
        raise storage_error("append to the ledger", path, exc) from None


class RunLock:
    """An exclusive flock on a file beside LAST_FILE_RECORD.

    The kernel drops the lock when the holder exits, however it dies, so a
    stale lock cannot exist; the file itself is never deleted (deleting it
    would let two runs lock two different inodes).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o666)
        except OSError as exc:
            raise storage_error("open the run lock", self.path, exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockedError(f"another run is in progress (lock {self.path} is held)") from None
        except OSError as exc:
            os.close(fd)
            raise storage_error("lock", self.path, exc) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# How long audit and refetch wait for a run in progress: long enough for a run
# that is finishing; short enough that, during a long download, they say so
# instead of appearing to hang.
LOCK_WAIT_SECONDS = 60.0
# How often a waiting command tries the lock again: cheap, and quick enough for a person.
LOCK_POLL_SECONDS = 0.5


@contextlib.contextmanager
def run_lock_waiting(path: Path, seconds: float, sleep: Callable[[float], None] = interrupt.sleep) -> Iterator[None]:
    """Hold the run lock, after waiting up to ``seconds`` for the run holding it to end."""
    if not path.exists():
        # Every run creates the lock file and leaves it: without it, no run has ever
        # started, and there is no state to protect (nor a directory to put it in).
        yield
        return
    lock = RunLock(path)
    deadline = time.monotonic() + seconds
    while True:
        try:
            lock.acquire()
            break
        except LockedError:
            if time.monotonic() >= deadline:
                raise
            sleep(LOCK_POLL_SECONDS)
    try:
        yield
    finally:
        lock.release()
