"""Group durability: many finished files made durable by one sync, then published together.

One fsync per small file costs a journal commit each; a backlog of thousands of
files pays for thousands. Here a group of files is written to its temps with
no fsync each, and then

    1. made durable at once: one ``syncfs(2)`` per file system the group is on (it
       writes every dirty page and commits the journal once), then ``fdatasync`` of
       each temp, which finds nothing left to write and only reports the file's own
       writeback errors (``syncfs`` reports them per file system, and before Linux
       5.8 not at all). Where ``syncfs`` is missing, ``fdatasync`` of each does it all,
       in one batch after the writeout (git's ``core.fsyncMethod=batch``);
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
PAUSE_ENV = "SFTP_IPI_TEST_PAUSE_BEFORE_RENAMES"

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


def make_durable(files: Sequence[Written], *, use_syncfs: bool = True) -> str:
    """Make every file of ``files`` durable; returns how ("syncfs" or "fdatasync").

    Raises LocalStorageError naming the first file whose bytes may not be on disk.
    """
    how = "fdatasync"
    if use_syncfs and files:
        # One descriptor per file system the group is on.
        by_device: dict[int, Written] = {}
        for w in files:
            try:
                by_device.setdefault(os.fstat(w.fd).st_dev, w)
            except OSError as exc:
                raise storage_error("write", w.path, exc) from None
        try:
            if all(syncfs(w.fd) for w in by_device.values()):
                how = "syncfs"
        except OSError as exc:
            first = next(iter(by_device.values()))
            raise storage_error("write", first.path, exc) from None
    for w in files:
        # After syncfs nothing is left to write: this only reports the file's own errors.
        try:
            os.fdatasync(w.fd)
        except OSError as exc:
            raise storage_error("write", w.path, exc) from None
    return how


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

    def close(self) -> None:
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()
