"""Local state: LAST_FILE_RECORD (the watermark), the ledger of completed files, the
observations of listed files, the run lock.

Any of these files may be damaged (edited by hand, truncated, left by another
version). Each reader returns a valid value or raises one ConfigError naming the
file (and line); never anything else.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from app import interrupt
from app.errors import ConfigError, LockedError
from app.names import invalid_name_reason
from app.selection import Observation
from app.storage.fsutil import atomic_write, fsync_dir, storage_error

# What Windows editors put at the start of a text file; never part of a name.
_BOM = "\ufeff"
# Ledger mtimes and sizes beyond this are not from any file system (and would
# overflow the float arithmetic of ages and rates).
_MAX_INT = 2**63
_SHA256 = re.compile(r"[0-9a-f]{64}")
REMOTE_AFTER_STATES = ("pending", "done", "failed")
OBSERVATIONS_VERSION = 1


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One completed file, as appended to the JSON-lines ledger."""

    name: str
    size: int  # bytes received and verified
    mtime: int | None  # as the server claimed it when the file was fetched; None if it sent none
    sha256: str
    bytes_transferred: int
    seconds: float
    completed_at: str
    # How the file was proven against the server (app/server/proof.py); None in lines
    # written before source proof existed.
    verified_by: str | None = None
    # REMOTE_AFTER of this delivery: "pending" when recorded (the action follows the
    # ledger commit), then "done" or "failed" by a later RemoteAfterNote; None: keep.
    remote_after: str | None = None
    # DECRYPT=gpg: what SERVER_DIR received (the plaintext, under the name without
    # the suffix); name, size and sha256 above stay those of the encrypted download.
    published_as: str | None = None
    plaintext_size: int | None = None
    plaintext_sha256: str | None = None


def as_published(entry: LedgerEntry) -> LedgerEntry:
    """What SERVER_DIR received for ``entry``: with DECRYPT=gpg, the plaintext under
    the name without the suffix (LOCAL_DIR keeps both); otherwise the entry itself."""
    if entry.published_as is None or entry.plaintext_size is None or entry.plaintext_sha256 is None:
        return entry
    return replace(entry, name=entry.published_as, size=entry.plaintext_size, sha256=entry.plaintext_sha256)


def read_record(path: Path) -> str | None:
    """The last completed file's name, or None before the first completion.

    The format is the original script's: the bare name, optionally followed by
    a newline. Only that line terminator (``\\n`` or ``\\r\\n``) and a leading
    UTF-8 BOM are stripped: any other character, a trailing space included, is
    part of the name, so every valid name round-trips exactly.
    """
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"LAST_FILE_RECORD={path}: cannot read it ({exc.__class__.__name__})") from None
    name = text.removeprefix(_BOM)
    name = name.removesuffix("\n").removesuffix("\r") if name.endswith("\n") else name
    if not name:
        return None
    reason = invalid_name_reason(name)
    if reason:
        raise ConfigError(f"LAST_FILE_RECORD={path} does not hold a file name: {reason}")
    return name


def write_record(path: Path, name: str, *, durable: bool = True) -> None:
    # No valid name starts with a BOM (names.py refuses invisible format characters),
    # so the one read_record strips is always an editor's.
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
class RemoteAfterNote:
    """A ledger line saying what REMOTE_AFTER did for the latest entry of ``name``.

    The latest note after a file's entry gives that entry its ``remote_after``
    ("done" or "failed"); ``outcome`` is app/server/remote_after.py's status.
    """

    name: str
    remote_after: str
    outcome: str
    reason: str
    at: str
    event: str = "remote_after"  # what tells this line from a LedgerEntry's


@dataclass(frozen=True)
class SkipNote:
    """A ledger line passing a file that is never delivered (``sftp-ipi skip``): a file
    the server cannot serve would otherwise stop SELECT_MODE=next for good.

    The job takes the file for done when it plans and moves LAST_FILE_RECORD, but it is
    not delivered: it is not among ``Ledger.names``, and ``audit`` expects no copy of it.
    A later entry or refetch note for the same name ends the skip.
    """

    name: str
    reason: str
    at: str
    by: str  # SUDO_USER over USER: the person, not the account sudo ran the command as
    host: str
    # As the last listing saw it; the mtime places the file under ORDER_BY=mtime
    # should LAST_FILE_RECORD come to name it. None where unknown.
    size: int | None = None
    mtime: int | None = None
    event: str = "skipped"  # what tells this line from a LedgerEntry's


@dataclass(frozen=True)
class Ledger:
    entries: tuple[LedgerEntry, ...]
    damaged_lines: int = 0
    # Refetch requests not yet followed by a new entry for their file.
    refetch_pending: tuple[RefetchNote, ...] = ()
    # Files passed by ``sftp-ipi skip`` and not delivered or refetched since, in ledger order.
    skips: tuple[SkipNote, ...] = ()

    @property
    def names(self) -> frozenset[str]:
        """The delivered files."""
        return frozenset(e.name for e in self.entries)

    @property
    def skipped(self) -> dict[str, SkipNote]:
        """Each skipped file's name -> its note: passed, never delivered."""
        return {note.name: note for note in self.skips}

    @property
    def passed(self) -> frozenset[str]:
        """What planning and the watermark take for done: the delivered and the skipped files."""
        return self.names | frozenset(note.name for note in self.skips)

    @property
    def publishers(self) -> dict[str, tuple[str, ...]]:
        """Each name published to SERVER_DIR -> the remote names whose deliveries took it,
        in ledger order. Two remote names under one published name (``X`` and ``X.gpg``
        with DECRYPT=gpg) mean the second overwrote the first: the job refuses that
        (app/claims.py), and ``audit`` reports a ledger that holds it anyway."""
        found: dict[str, list[str]] = {}
        for entry in self.entries:
            holders = found.setdefault(as_published(entry).name, [])
            if entry.name not in holders:
                holders.append(entry.name)
        return {name: tuple(holders) for name, holders in found.items()}

    @property
    def mtimes(self) -> dict[str, int]:
        """Where each completed file stands under ORDER_BY=mtime: the mtime it had when
        it was fetched, but never later than when it was fetched. A date ahead of our
        clock (a server clock ahead, a file dated 2100) would otherwise leave every file
        that arrives after it behind the watermark, as late, never delivered."""
        found = {e.name: min(e.mtime, _epoch(e.completed_at)) for e in self.entries if e.mtime is not None}
        # A skipped file can become LAST_FILE_RECORD, and must keep a place after it is
        # gone from the server; by the same rule, never later than when it was skipped.
        for note in self.skips:
            if note.mtime is not None and note.name not in found:
                found[note.name] = min(note.mtime, _epoch(note.at))
        return found

    def mtimes_of(self, name: str) -> dict[str, int]:
        """``mtimes`` for ``name`` alone (empty if it has none), without parsing every entry."""
        for e in reversed(self.entries):
            if e.name == name and e.mtime is not None:
                return {name: min(e.mtime, _epoch(e.completed_at))}
        for note in self.skips:
            if note.name == name and note.mtime is not None:
                return {name: min(note.mtime, _epoch(note.at))}
        return {}


def _epoch(timestamp: str) -> int:
    when = dt.datetime.fromisoformat(timestamp)
    # The job writes UTC with its offset; a hand-made line without one is taken as UTC too.
    return int((when if when.tzinfo else when.replace(tzinfo=dt.UTC)).timestamp())


def _is_int(value: object, low: int = 0) -> bool:
    # bool is an int to Python, never to the ledger.
    return isinstance(value, int) and not isinstance(value, bool) and low <= value < _MAX_INT


def _is_seconds(value: object) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0 <= value < _MAX_INT
    )


def is_timestamp(value: object) -> bool:
    """An ISO 8601 time, as the job writes them; the state and report readers check with it."""
    if not isinstance(value, str):
        return False
    try:
        dt.datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


# One check per LedgerEntry field (a test keeps them in step).
LEDGER_CHECKS: dict[str, tuple[Any, str]] = {
    "name": (lambda v: isinstance(v, str) and invalid_name_reason(v) is None, "a valid file name"),
    "size": (_is_int, "a whole number >= 0"),
    # None: the server sent no mtime, and none was made up (see transfer).
    "mtime": (lambda v: v is None or _is_int(v), "a whole number >= 0 or null"),
    "sha256": (lambda v: isinstance(v, str) and _SHA256.fullmatch(v) is not None, "64 lowercase hex digits"),
    "bytes_transferred": (_is_int, "a whole number >= 0"),
    "seconds": (_is_seconds, "a number >= 0"),
    "completed_at": (is_timestamp, "an ISO 8601 time"),
    "verified_by": (lambda v: v is None or (isinstance(v, str) and bool(v.strip())), "a proof method or null"),
    "remote_after": (lambda v: v in (None, *REMOTE_AFTER_STATES), "pending, done, failed or null"),
    "published_as": (lambda v: v is None or LEDGER_CHECKS["name"][0](v), "a valid file name or null"),
    "plaintext_size": (lambda v: v is None or _is_int(v), "a whole number >= 0 or null"),
    "plaintext_sha256": (lambda v: v is None or LEDGER_CHECKS["sha256"][0](v), "64 lowercase hex digits or null"),
}
# Fields older versions did not write: a line without them is still valid.
LEDGER_OPTIONAL = frozenset({"verified_by", "remote_after", "published_as", "plaintext_size", "plaintext_sha256"})

# One check per RemoteAfterNote field.
REMOTE_AFTER_CHECKS: dict[str, tuple[Any, str]] = {
    "name": LEDGER_CHECKS["name"],
    "remote_after": (lambda v: v in ("done", "failed"), "done or failed"),
    "outcome": (lambda v: isinstance(v, str) and bool(v), "an outcome"),
    "reason": (lambda v: isinstance(v, str), "a string"),
    "at": (is_timestamp, "an ISO 8601 time"),
}


# One check per SkipNote field.
SKIP_CHECKS: dict[str, tuple[Any, str]] = {
    "name": LEDGER_CHECKS["name"],
    "reason": (lambda v: isinstance(v, str) and bool(v.strip()), "a reason"),
    "at": (is_timestamp, "an ISO 8601 time"),
    "by": (lambda v: isinstance(v, str), "a string"),
    "host": (lambda v: isinstance(v, str), "a string"),
    "size": (lambda v: v is None or _is_int(v), "a whole number >= 0 or null"),
    "mtime": (lambda v: v is None or _is_int(v), "a whole number >= 0 or null"),
}
SKIP_OPTIONAL = frozenset({"size", "mtime"})

# One check per RefetchNote field.
REFETCH_CHECKS: dict[str, tuple[Any, str]] = {
    "name": LEDGER_CHECKS["name"],
    "requested_at": (is_timestamp, "an ISO 8601 time"),
    "requested_by": (lambda v: isinstance(v, str), "a string"),
}


def _checked(
    data: dict[str, Any], checks: dict[str, tuple[Any, str]], optional: frozenset[str] = frozenset()
) -> dict[str, Any]:
    for key, (check, meaning) in checks.items():
        if key not in data:
            if key in optional:
                continue
            raise ValueError(f"no {key!r}")
        if not check(data[key]):
            raise ValueError(f"{key!r} is not {meaning}")
    # Fields a newer version may add are ignored, so that going back a version works.
    return {key: data[key] for key in checks if key in data}


_Item = LedgerEntry | RefetchNote | RemoteAfterNote | SkipNote


def _ledger_item(line: bytes) -> _Item:
    """One ledger line, validated field by field; ValueError says what is wrong."""
    try:
        data = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ValueError("not a JSON object") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    if data.get("refetch") is True:
        return RefetchNote(**_checked(data, REFETCH_CHECKS))
    if data.get("event") == "remote_after":
        return RemoteAfterNote(**_checked(data, REMOTE_AFTER_CHECKS))
    if data.get("event") == "skipped":
        return SkipNote(**_checked(data, SKIP_CHECKS, SKIP_OPTIONAL))
    return LedgerEntry(**_checked(data, LEDGER_CHECKS, LEDGER_OPTIONAL))


def _torn(line: bytes) -> bool:
    """A line cut short by a crash mid-append: an object that never got its closing brace.

    Every ledger line is written whole and ends with ``}``; a later append closes a
    torn one off with a newline, so it can sit anywhere in the file.
    """
    text = line.strip()
    return text.startswith(b"{") and not text.endswith(b"}")


def read_ledger(path: Path) -> Ledger:
    """All entries. A line torn by a crash mid-append is counted and skipped; any other
    line that is not a valid entry is a ConfigError naming the file and line: the
    ledger is what keeps a file from being fetched twice, so it is never guessed at."""
    lines = _LedgerLines(path)
    items = list(lines)
    skips = _skips_in_force(items)
    entries, pending = _apply_refetches(_apply_remote_after(items))
    return Ledger(entries=entries, damaged_lines=lines.damaged, refetch_pending=pending, skips=skips)


@dataclass(frozen=True)
class LedgerTail:
    """What the run report needs of the ledger (``read_ledger_tail``)."""

    newest: LedgerEntry | None  # the latest entry no refetch note has cancelled
    newest_mtime: int | None  # the latest mtime among those entries
    skips: tuple[SkipNote, ...]  # as Ledger.skips


def read_ledger_tail(path: Path) -> LedgerTail:
    """``read_ledger``'s newest entry, newest mtime and skips, with the same checks, in
    memory that does not grow with the ledger: after a backlog of 50,000 files, the
    report's reading every entry again was the largest part of the run's peak memory.

    Two passes: an entry counts unless a refetch note of its name comes after it, which
    only the first pass can tell (the notes are few; the entries are not)."""
    lines = _LedgerLines(path)
    last_refetch: dict[str, int] = {}
    for at, item in enumerate(lines):
        if isinstance(item, RefetchNote):
            last_refetch[item.name] = at
    newest: LedgerEntry | None = None
    newest_mtime: int | None = None

    def entries() -> Iterator[_Item]:
        nonlocal newest, newest_mtime
        for at, item in enumerate(lines):
            if isinstance(item, LedgerEntry) and at > last_refetch.get(item.name, -1):
                newest = item
                if item.mtime is not None and (newest_mtime is None or item.mtime > newest_mtime):
                    newest_mtime = item.mtime
            elif isinstance(item, RemoteAfterNote) and newest is not None and item.name == newest.name:
                # As _apply_remote_after: the note is about its file's latest entry, the newest.
                newest = replace(newest, remote_after=item.remote_after)
            yield item

    skips = _skips_in_force(entries())
    return LedgerTail(newest=newest, newest_mtime=newest_mtime, skips=skips)


class _LedgerLines:
    """The ledger's items in file order, read a line at a time (a backlog's ledger has
    50,000 lines) and validated as they are read; iterable more than once. Torn lines
    are counted in ``damaged``; any other bad line is a ConfigError naming its number."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.damaged = 0

    def __iter__(self) -> Iterator[_Item]:
        self.damaged = 0
        try:
            fh = open(self.path, "rb")  # noqa: SIM115 - closed below; the OSError of open() is told apart
        except FileNotFoundError:
            return
        except OSError as exc:
            raise self._unreadable(exc) from None
        with fh:
            number = 0
            while True:
                try:
                    line = fh.readline()
                except OSError as exc:
                    raise self._unreadable(exc) from None
                if not line:
                    return
                number += 1
                if not line.strip():
                    continue
                try:
                    item = _ledger_item(line)
                except ValueError as exc:
                    if _torn(line):
                        self.damaged += 1
                        continue
                    raise ConfigError(
                        f"ledger {self.path}:{number}: {exc}; repair or remove that line"
                        " (see docs/operations.md, State files)"
                    ) from None
                yield item

    def _unreadable(self, exc: OSError) -> ConfigError:
        # Exit 2, as for LAST_FILE_RECORD: a state file that cannot be read fails
        # every run the same way until someone fixes it (its owner, its mode).
        reason = os.strerror(exc.errno) if exc.errno else exc.__class__.__name__
        return ConfigError(f"ledger {self.path}: cannot read it ({reason})")


def _skips_in_force(items: Iterable[_Item]) -> tuple[SkipNote, ...]:
    """Each name's latest skip note, unless a delivery or a refetch note of that name came after it."""
    latest: dict[str, SkipNote] = {}
    for item in items:
        if isinstance(item, SkipNote):
            latest.pop(item.name, None)  # ledger order: the latest note last
            latest[item.name] = item
        elif isinstance(item, (LedgerEntry, RefetchNote)):
            latest.pop(item.name, None)
    return tuple(latest.values())


def _apply_remote_after(items: list[_Item]) -> list[LedgerEntry | RefetchNote]:
    """Give each file's latest entry the state of the latest RemoteAfterNote after it;
    a note with no entry before it says nothing (a remote action needs a delivery)."""
    out: list[LedgerEntry | RefetchNote] = []
    latest: dict[str, tuple[int, LedgerEntry]] = {}  # name -> its latest entry, and where it is in out
    for item in items:
        if isinstance(item, RemoteAfterNote):
            if item.name in latest:
                at, entry = latest[item.name]
                latest[item.name] = at, replace(entry, remote_after=item.remote_after)
                out[at] = latest[item.name][1]
            continue
        if isinstance(item, SkipNote):
            continue  # read by _skips_in_force
        if isinstance(item, LedgerEntry):
            latest[item.name] = len(out), item
        out.append(item)
    return out


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


def append_ledger(path: Path, *entries: _Item) -> None:
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


def read_observations(path: Path) -> dict[str, Observation] | None:
    """The observations of the last run, or None if there are none."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"observations {path}: cannot read it ({exc.__class__.__name__})") from None
    try:
        data = json.loads(raw.decode("utf-8"))
        if not isinstance(data, dict) or data.get("version") != OBSERVATIONS_VERSION:
            raise ValueError("not a version 1 observations file")
        files = data.get("files")
        if not isinstance(files, dict):
            raise ValueError("no 'files' object")
        return {name: _observation(name, value) for name, value in files.items()}
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ConfigError(f"observations {path}: {exc}") from None


def _observation(name: str, value: object) -> Observation:
    if not name or not isinstance(value, dict):
        raise ValueError(f"entry {name!r} is not an object")
    first, stable = value.get("first_seen"), value.get("stable_since")
    size, mtime, late = value.get("size"), value.get("mtime"), value.get("late")
    if not (_is_seconds(first) and _is_seconds(stable)):
        raise ValueError(f"entry {name!r}: first_seen and stable_since must be times")
    if not ((size is None or _is_int(size)) and (mtime is None or _is_int(mtime)) and isinstance(late, bool)):
        raise ValueError(f"entry {name!r}: size, mtime or late has the wrong type")
    return Observation(float(first), float(stable), size, mtime, late)  # type: ignore[arg-type]


def write_observations(path: Path, observations: Mapping[str, Observation]) -> None:
    # Not fsynced: a lost or damaged file is rebuilt from the next listing.
    # Built by hand: asdict's deep copy is the slowest part with 100,000 names listed.
    files = {
        name: {
            "first_seen": o.first_seen,
            "stable_since": o.stable_since,
            "size": o.size,
            "mtime": o.mtime,
            "late": o.late,
        }
        for name, o in observations.items()
    }
    data = json.dumps({"version": OBSERVATIONS_VERSION, "files": files}, separators=(",", ":")) + "\n"
    atomic_write(path, data.encode("utf-8"), "observations", durable=False)


def lock_holder(fd: int) -> int | None:
    """The PID the holder wrote into the lock file, None if it has not (yet) or it is unreadable."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def run_in_progress(path: Path) -> int | None:
    """The PID of the run holding the lock at ``path`` (0 if it wrote none), None if no run holds it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        try:
            # A shared lock is refused while a run holds the exclusive one; it never blocks a run for long.
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return lock_holder(fd) or 0
        except OSError:
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


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
            holder = lock_holder(fd)
            os.close(fd)
            by = f" by PID {holder}" if holder is not None else ""
            raise LockedError(f"another run is in progress (lock {self.path} is held{by})") from None
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
