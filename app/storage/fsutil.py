"""Durable, atomic local file operations shared by transfer, publish and state.

Every file that others can observe is written under a temporary name in the
same directory, fsynced, then renamed over its final name, and the directory
is fsynced so that the rename itself survives a power cut.

A temp file is held with a shared flock by its writer until it is renamed or
removed. Several jobs may share a directory (two feeds publishing into one
SERVER_DIR, or keeping their state side by side), each with its own run lock:
a job cleaning up at start-up removes only the temps nobody holds, that is,
those whose writer is gone.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import pwd
import secrets
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from app.errors import ConfigError, LocalStorageError
from app.names import MAX_NAME_BYTES

# Temporary names are hidden and carry this marker, so a later run can recognise
# and remove the leftovers of a killed one.
TEMP_MARKER = ".sftp-ipi-tmp"

# Created files get 0o666 & ~umask; the umask is set once at start-up.
_FILE_MODE = 0o666


def temp_path(final: Path) -> Path:
    return final.with_name(fitting_name(final.name, prefix=".", suffix=f".{secrets.token_hex(4)}{TEMP_MARKER}"))


def fitting_name(name: str, *, prefix: str = "", suffix: str = "") -> str:
    """``prefix + name + suffix``; where that exceeds NAME_MAX bytes, ``name`` is
    replaced by its SHA-256, so names derived from any valid name can be created.

    The digest is deterministic, so a later run finds the same derived name; the
    real name is kept inside whatever the derived file holds (partial metadata).
    """
    full = f"{prefix}{name}{suffix}"
    if len(full.encode("utf-8", "surrogateescape")) <= MAX_NAME_BYTES:
        return full
    return f"{prefix}{hashlib.sha256(name.encode('utf-8', 'surrogateescape')).hexdigest()}{suffix}"


def is_temp_name(name: str) -> bool:
    return name.startswith(".") and name.endswith(TEMP_MARKER)


def storage_error(action: str, path: Path, exc: OSError) -> LocalStorageError:
    """A one-line LocalStorageError naming the path and the cause."""
    reason = os.strerror(exc.errno) if exc.errno else exc.__class__.__name__
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        reason = "no space left on device"
    return LocalStorageError(f"cannot {action} {path}: {reason}")


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_dir(directory: Path, label: str) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise storage_error(f"create {label}", directory, exc) from None
    if not os.access(directory, os.W_OK | os.X_OK):
        # access() says only "no"; a read-only mount is fixed elsewhere than a mode or an owner.
        reason = "read-only file system" if _on_read_only_mount(directory) else "permission denied"
        raise LocalStorageError(f"cannot write to {label} {directory}: {reason}")


def _on_read_only_mount(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def open_exclusive(path: Path, *, readable: bool = False) -> int:
    """Create ``path`` for writing (and reading, if ``readable``); never follows or
    reuses an existing entry."""
    access = os.O_RDWR if readable else os.O_WRONLY
    return os.open(path, access | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, _FILE_MODE)


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def replace_durably(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` over ``final`` (both in one directory) and persist the rename."""
    os.replace(tmp, final)
    fsync_dir(final.parent)


def create_temp(final: Path, *, readable: bool = False) -> tuple[Path, int]:
    """A new temp file beside ``final``, open for writing (and reading, if
    ``readable``: its bytes can then be read back without another open) and held as ours.

    Keep the descriptor open until the temp is renamed or removed: closing it
    ends the hold, and a cleaner may then take the temp for a leftover.
    """
    while True:
        tmp = temp_path(final)
        fd = open_exclusive(tmp, readable=readable)
        try:
            # Blocks only while a cleaner that got here between the create and
            # this line holds it; that cleaner then removed it, so start afresh.
            fcntl.flock(fd, fcntl.LOCK_SH)
            if _names(tmp, fd):
                return tmp, fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def hold(path: Path) -> int:
    """Hold an existing file as a temp's content, for a temp made by os.link:
    the hold is on the inode, which the temp name shares. Close the result to end it."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _names(path: Path, fd: int) -> bool:
    """Whether ``path`` is still a name of the file open as ``fd``."""
    try:
        named = os.lstat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


def atomic_write(final: Path, data: bytes | Iterable[bytes], label: str, *, durable: bool = True) -> None:
    """Replace ``final`` with ``data`` so readers see the old or the new file, never a mix.

    ``data`` may come in chunks (the run report after a backlog is tens of MB, and
    holding it whole besides its parts was part of the run's peak memory); a chunk
    that fails to come (its producer raises) leaves ``final`` as it was.

    ``durable=False`` skips the fsyncs: still atomic for every reader and across a
    killed process, but a power cut may bring back the old content. Only for
    files the job can rebuild.
    """
    try:
        tmp, fd = create_temp(final)
    except OSError as exc:
        raise storage_error(f"write {label}", final, exc) from None
    try:
        try:
            keep_ownership(final, fd, label)
            _write_chunks(fd, data)
            if durable:
                os.fsync(fd)
                replace_durably(tmp, final)
            else:
                os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
    except OSError as exc:
        raise storage_error(f"write {label}", final, exc) from None
    finally:
        os.close(fd)


# Chunks are gathered to this size before each write: one write per chunk of a report
# (one per file entry) would be 50,000 system calls.
_WRITE_BLOCK = 1 << 20


def _write_chunks(fd: int, data: bytes | Iterable[bytes]) -> None:
    if isinstance(data, bytes):
        write_all(fd, data)
        return
    block = bytearray()
    for chunk in data:
        block += chunk
        if len(block) >= _WRITE_BLOCK:
            write_all(fd, block)
            block.clear()
    write_all(fd, block)


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def keep_ownership(final: Path, fd: int, label: str) -> None:
    """Give the new file open as ``fd`` the owner, group and mode of the ``final`` it replaces.

    A day-2 command run with sudo would otherwise leave a root-owned state file
    that the service user's next run cannot read or replace. Where the owner
    cannot be kept (not root, and not the owner), a ConfigError names the user to run as.
    """
    try:
        old = os.stat(final)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise storage_error(f"read {label}", final, exc) from None
    new = os.fstat(fd)
    if (old.st_uid, old.st_gid) != (new.st_uid, new.st_gid):
        try:
            os.fchown(fd, old.st_uid, old.st_gid)
        except PermissionError:
            owner = _user_name(old.st_uid)
            raise ConfigError(
                f"{label} {final} belongs to {owner}; a copy written by {_user_name(os.geteuid())} would not:"
                f" run this as {owner} (e.g. sudo -u {owner} ...); nothing changed"
            ) from None
    os.fchmod(fd, stat.S_IMODE(old.st_mode))


def remove_stale_temps(directory: Path) -> list[Path]:
    """Delete the temp files whose writer is gone (killed, or crashed).

    A temp some other process still holds is left alone, whichever job it
    belongs to; so is anything that is not a plain file or link.
    """
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return [directory / name for name in names if is_temp_name(name) and _remove_abandoned(directory / name)]


def _remove_abandoned(path: Path) -> bool:
    try:
        # O_NONBLOCK: a FIFO under a temp name must not hang the start-up.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            return False
        # A symbolic link is nothing a writer holds; it can only be a leftover.
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            return True
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # its writer is alive
        if not _names(path, fd):
            return False  # renamed away (published) since we opened it
        path.unlink()
        return True
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        return False
    finally:
        os.close(fd)


@contextlib.contextmanager
def translate_os_errors(action: str, path: Path) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise storage_error(action, path, exc) from None


class BackgroundFsync:
    """fsync a file in a helper thread, so a writer never waits for the disk mid-stream.

    An fsync error is kept and raised by ``check``/``close``: Linux reports a
    failed writeback once per file, so an error swallowed here could let a
    later fsync succeed over lost data.
    """

    def __init__(self, fd: int, path: Path) -> None:
        self._fd = fd
        self._path = path
        self._wake = threading.Event()
        self._pending = False
        self._stopping = False
        self._error: OSError | None = None
        self._after: Callable[[], None] | None = None
        self._thread = threading.Thread(target=self._run, name="fsync", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            # A request made before close() is still served, so close() reports its outcome.
            if self._pending:
                self._pending = False
                after, self._after = self._after, None
                try:
                    os.fsync(self._fd)
                except OSError as exc:
                    self._error = exc
                    return
                if after is not None:
                    after()
            # A request that came in during that fsync is served first (the wake
            # flag it set is cleared at the top of the loop).
            if self._stopping and not self._pending:
                return

    def request(self, after: Callable[[], None] | None = None) -> None:
        """fsync soon; then call ``after`` (in the helper thread), which may record
        what that fsync made durable. A request not yet served drops the earlier
        one's ``after``: the later fsync covers its bytes too."""
        self.check()
        self._after = after
        self._pending = True
        self._wake.set()

    def check(self) -> None:
        if self._error is not None:
            raise storage_error("write", self._path, self._error)

    def close(self) -> None:
        """Stop the helper (after any fsync in progress) and raise its error, if any."""
        self._stopping = True
        self._wake.set()
        self._thread.join()
        self.check()
