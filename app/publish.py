"""Atomic publication of a verified file into SERVER_DIR.

Readers of SERVER_DIR see either no file or the complete one: the copy is made
under a hidden temporary name, fsynced, read back and checked against the
download's SHA-256, and only then renamed to its final name.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from app import interrupt
from app.errors import LocalStorageError
from app.fsutil import open_exclusive, replace_durably, storage_error, temp_path
from app.transfer import hash_file

# Upper bound for one copy_file_range/sendfile call.
_COPY_BLOCK = 64 * 1024 * 1024


def already_published(final: Path, size: int, sha256: str) -> bool:
    try:
        st = final.lstat()
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(st.st_mode) or st.st_size != size:
        return False
    return hash_file(final).hexdigest() == sha256


def _copy(src_fd: int, dst_fd: int, size: int) -> None:
    copied = 0
    while copied < size:
        interrupt.check()
        try:
            n = os.copy_file_range(src_fd, dst_fd, min(_COPY_BLOCK, size - copied))
        except OSError:
            # Not supported between these file systems: fall back to sendfile.
            n = os.sendfile(dst_fd, src_fd, copied, min(_COPY_BLOCK, size - copied))
        if n == 0:
            raise OSError("source file ended early")
        copied += n


def publish(source: Path, server_dir: Path, size: int, mtime: int, sha256: str) -> bool:
    """Make SERVER_DIR/<name> an exact copy of ``source``. Returns False if it already was."""
    final = server_dir / source.name
    try:
        if already_published(final, size, sha256):
            return False
    except OSError as exc:
        raise storage_error("inspect", final, exc) from None

    tmp = temp_path(final)
    try:
        with open(source, "rb") as src:
            dst_fd = open_exclusive(tmp)
            try:
                _copy(src.fileno(), dst_fd, size)
                os.fsync(dst_fd)
            finally:
                os.close(dst_fd)
        if hash_file(tmp).hexdigest() != sha256:
            raise LocalStorageError(f"the copy in SERVER_DIR {tmp} does not match the verified download")
        os.utime(tmp, (mtime, mtime))
        replace_durably(tmp, final)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise storage_error("publish", final, exc) from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return True
