"""Group durability: many finished files made durable by one sync, then published together.

One fsync per small file costs a journal commit each; a backlog of thousands of
files pays for thousands. Here a group of files is written to its temps with
no fsync each, and then

    1. made durable at once: one ``syncfs(2)`` per file system the group is on (it
       writes every dirty page and commits the journal once). It is called on a
       directory held open since before the run wrote anything, and since Linux
       5.8 it reports every writeback error on that file system since its last
       call through that descriptor: a failed write of any file of the group fails
       the group (one of another program on that file system does too, which errs
       on the safe side). Before 5.8 syncfs reports no errors, so ``fdatasync`` of
       each temp follows it: there is nothing left to write, and it reports the
       file's own errors. Where ``syncfs`` is missing, ``fdatasync`` of each does it
       all, in one batch after the writeout (git's ``core.fsyncMethod=batch``);
    2. renamed to its final names, every file of the group;
    3. its directories fsynced once, so the renames survive a power cut too.

The promise of one file at a time holds: no final name exists before its bytes
are durable, because no rename starts before step 1 has returned for the whole
group. A kill between the steps leaves temps, which the next run's start-up
removes (their holder is gone) and whose files it fetches again.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from app.storage.fsutil import storage_error

# Seconds to pause between the sync and the renames, for the kill -9 campaign to land
# kills in that window (tests/test_catchup.py); 0 outside tests.
PAUSE_ENV = "SFTPIPI_TEST_PAUSE_BEFORE_RENAMES"

_syncfs: Callable[[int], int] | None = None
_syncfs_looked_up = False


def _libc_syncfs() -> Callable[[int], int] | None:
    """libc's syncfs, or None where there is none (os.syncfs does not exist)."""
    global _syncfs, _syncfs_looked_up
    if not _syncfs_looked_up:
        _syncfs_looked_up = True
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
            func = libc.syncfs
            func.argtypes = [ctypes.c_int]
            func.restype = ctypes.c_int
            _syncfs = func
    return _syncfs


def syncfs(fd: int) -> bool:
    """syncfs(2) the file system holding ``fd``; False where the call does not exist.
    A failure of the call itself (EIO, say) raises OSError."""
    func = _libc_syncfs()
    if func is None:
        return False
    if func(fd) != 0:
        code = ctypes.get_errno()
        if code == errno.ENOSYS:
            return False
        raise OSError(code, os.strerror(code))
    return True


@dataclass(frozen=True)
class Rename:
    """One rename of a group: ``temp`` to ``final``, both in ``directory`` (held open as ``dir_fd``)."""

    dir_fd: int
    temp: str
    final: str


@dataclass(frozen=True)
class Written:
    """A temp file written but not yet durable: its open descriptor and where it lives."""

    fd: int
    path: Path


def _syncfs_reports_errors(release: str) -> bool:
    """Whether this kernel's syncfs(2) reports writeback errors (Linux 5.8 and later)."""
    try:
        major, minor = (int(part) for part in release.split("-")[0].split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (5, 8)


SYNCFS_REPORTS_ERRORS = _syncfs_reports_errors(os.uname().release)


def make_durable(files: Sequence[Written], filesystems: Sequence[tuple[int, Path]]) -> str:
    """Make every file of ``files`` durable; returns how ("syncfs", "syncfs+fdatasync"
    or "fdatasync"). ``filesystems``: one directory per file system the files are on,
    held open since before they were written (syncfs reports the errors since then).

    Raises LocalStorageError naming the file (or file system) whose bytes may not be on disk.
    """
    synced = False
    for fd, path in filesystems:
        try:
            synced = syncfs(fd)
        except OSError as exc:
            raise storage_error("write to", path, exc) from None
        if not synced:
            break
    if synced and SYNCFS_REPORTS_ERRORS:
        return "syncfs"
    for w in files:
        # After a syncfs nothing is left to write: this reports the file's own errors.
        try:
            os.fdatasync(w.fd)
        except OSError as exc:
            raise storage_error("write", w.path, exc) from None
    return "syncfs+fdatasync" if synced else "fdatasync"


def pause_for_tests() -> None:
    """The test hook between the sync and the renames (PAUSE_ENV)."""
    pause = os.environ.get(PAUSE_ENV)
    if pause:
        time.sleep(float(pause))


def rename_all(renames: Iterable[Rename], on_each: Callable[[Rename], None] | None = None) -> None:
    """Rename every temp to its final name; ``on_each`` hears each one done."""
    for r in renames:
        try:
            os.replace(r.temp, r.final, src_dir_fd=r.dir_fd, dst_dir_fd=r.dir_fd)
        except OSError as exc:
            raise storage_error("publish", Path(r.final), exc) from None
        if on_each is not None:
            on_each(r)


def sync_dirs(dirs: Iterable[tuple[int, Path]]) -> None:
    """fsync each directory (held open) once: the group's renames become durable."""
    for fd, path in dirs:
        try:
            os.fsync(fd)
        except OSError as exc:
            raise storage_error("sync", path, exc) from None


class Directories:
    """Directories held open for a run: renames relative to them skip the path walk,
    and their fsync needs no open each time."""

    def __init__(self) -> None:
        self._fds: dict[Path, int] = {}

    def fd(self, directory: Path) -> int:
        fd = self._fds.get(directory)
        if fd is None:
            try:
                fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError as exc:
                raise storage_error("open", directory, exc) from None
            self._fds[directory] = fd
        return fd

    def held(self, directories: Iterable[Path]) -> list[tuple[int, Path]]:
        return [(self.fd(d), d) for d in dict.fromkeys(directories)]

    def filesystems(self, directories: Iterable[Path]) -> list[tuple[int, Path]]:
        """One held directory per file system among ``directories``."""
        by_device: dict[int, tuple[int, Path]] = {}
        for fd, path in self.held(directories):
            try:
                by_device.setdefault(os.fstat(fd).st_dev, (fd, path))
            except OSError as exc:
                raise storage_error("inspect", path, exc) from None
        return list(by_device.values())

    def close(self) -> None:
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()
