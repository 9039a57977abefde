"""Atomic publication of a verified file into SERVER_DIR.

Readers of SERVER_DIR see either no file or the complete one: the new file is
made under a hidden temporary name, fsynced, and only then renamed to its final
name. How the temporary file gets its data is PUBLISH_METHOD:

* ``copy``: copy_file_range (sendfile where unsupported), then read back and
  compare with the download's SHA-256.
* ``reflink``: a copy-on-write clone (FICLONE) sharing the verified blocks: no
  data is read or written, so there is nothing new to read back.
* ``hardlink`` (opt-in): a second name for LOCAL_DIR's file. Both names share
  one inode, so a consumer that edits the published file in place edits the
  local copy too; that is why it is never chosen automatically.
* ``auto``: reflink where the file system can clone, copy otherwise.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from app import interrupt
from app.errors import LocalStorageError
from app.hashing import hash_file
from app.storage.fsutil import BackgroundFsync, create_temp, hold, storage_error, temp_path

# Upper bound for one copy_file_range/sendfile call, so an interrupt is seen between calls.
_COPY_BLOCK = 64 * 1024 * 1024
# Below this, overlapping the fsync with the read-back costs more (a thread) than it saves.
_OVERLAP_MIN = 8 * 1024 * 1024
# One read-back pread: bounded, as the files staged are small (catchup.TOGETHER_MAX).
_READ_BACK_BLOCK = 1024 * 1024
# linux/fs.h: _IOW(0x94, 9, int)
FICLONE = 0x40049409
# What a file system (or a pair of them) says when it cannot clone.
_NO_CLONE = {errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS}


def already_published(final: Path, source: Path, size: int, sha256: str) -> bool:
    try:
        st = final.lstat()
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(st.st_mode) or st.st_size != size:
        return False
    src = source.stat()
    if (st.st_dev, st.st_ino) == (src.st_dev, src.st_ino):
        return True  # a hard link to the verified file
    return hash_file(final).hexdigest() == sha256


def _copy(src_fd: int, dst_fd: int, size: int) -> None:
    copied = 0
    use_sendfile = False
    while copied < size:
        interrupt.check()
        count = min(_COPY_BLOCK, size - copied)
        if use_sendfile:
            n = os.sendfile(dst_fd, src_fd, copied, count)
        else:
            try:
                n = os.copy_file_range(src_fd, dst_fd, count, copied, copied)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                use_sendfile = True  # explicit offsets make the switch safe mid-file
                continue
        if n == 0:
            raise OSError(errno.EIO, "source file ended early")
        copied += n


def _clone(src_fd: int, dst_fd: int) -> bool:
    """Clone the whole file; False where the file system cannot."""
    try:
        fcntl.ioctl(dst_fd, FICLONE, src_fd)
    except OSError as exc:
        if exc.errno in _NO_CLONE:
            return False
        raise
    return True


# (LOCAL_DIR's device, SERVER_DIR's device) -> whether a file of one clones into the other.
_CLONES: dict[tuple[int, int], bool] = {}


def can_clone(source_dir: Path, target_dir: Path) -> bool:
    """Whether a file in ``source_dir`` can be cloned into ``target_dir``: tried once per
    pair of file systems with two hidden temp files of one byte (swept at start-up if
    a run dies between). The free-space check asks it, so that a copy-on-write file
    system is not asked for room for a second copy it will never write."""
    try:
        key = (os.stat(source_dir).st_dev, os.stat(target_dir).st_dev)
    except OSError:
        return False
    if key not in _CLONES:
        _CLONES[key] = _try_clone(source_dir, target_dir)
    return _CLONES[key]


def _try_clone(source_dir: Path, target_dir: Path) -> bool:
    made: list[tuple[Path, int]] = []
    try:
        made.append(create_temp(source_dir / "clone-probe"))
        os.write(made[0][1], b"x")
        # The temp is open for writing only; a clone reads its source.
        made.append((made[0][0], os.open(made[0][0], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)))
        made.append(create_temp(target_dir / "clone-probe"))
        return _clone(made[1][1], made[2][1])
    except OSError:
        return False
    finally:
        for path, fd in made:
            with contextlib.suppress(OSError):
                path.unlink()
            os.close(fd)


def _fill(source: Path, tmp: Path, dst_fd: int, method: str, size: int, sha256: str) -> str:
    """Give ``tmp`` (open as ``dst_fd``) the verified bytes of ``source``; returns the method used."""
    with open(source, "rb") as src:
        used = "reflink" if method in ("auto", "reflink") and _clone(src.fileno(), dst_fd) else "copy"
        if used == "copy" and method == "reflink":
            raise LocalStorageError(f"PUBLISH_METHOD=reflink: the file system of {tmp.parent} cannot clone files")
        if used == "copy":
            _copy(src.fileno(), dst_fd, size)
            # A large copy is written to disk while it is read back and checked.
            syncing = BackgroundFsync(dst_fd, tmp) if size >= _OVERLAP_MIN else None
            if syncing is not None:
                syncing.request()
            try:
                matches = hash_file(tmp).hexdigest() == sha256
            finally:
                if syncing is not None:
                    syncing.close()
            if not matches:
                raise LocalStorageError(f"the copy {tmp} in SERVER_DIR does not match the verified download")
        # For a copy, this returns at once when the helper's fsync covered it all.
        os.fsync(dst_fd)
    return used


def _make_temp(source: Path, final: Path, method: str, size: int, sha256: str) -> tuple[Path, int, str]:
    """The temp file, filled; the descriptor that holds it as ours (see fsutil); the method used."""
    if method == "hardlink":
        # Held before the name exists: the temp is a second name of the held inode.
        held = hold(source)
        tmp = temp_path(final)
        try:
            os.link(source, tmp)
        except BaseException:
            os.close(held)
            raise
        return tmp, held, "hardlink"
    tmp, held = create_temp(final)
    try:
        return tmp, held, _fill(source, tmp, held, method, size, sha256)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        os.close(held)
        raise


def _already_there(final: Path, source: Path, size: int, sha256: str) -> bool:
    """Whether ``final`` already holds ``source``'s verified bytes (nothing to publish)."""
    try:
        return already_published(final, source, size, sha256)
    except OSError as exc:
        raise storage_error("inspect", final, exc) from None


def _publish_error(method: str, final: Path, exc: OSError) -> LocalStorageError:
    """What a failed publication of ``final`` is reported as."""
    if method == "hardlink" and exc.errno == errno.EXDEV:
        return LocalStorageError("PUBLISH_METHOD=hardlink: LOCAL_DIR and SERVER_DIR are on different file systems")
    return storage_error("publish", final, exc)


def publish(
    source: Path, server_dir: Path, size: int, mtime: int | None, sha256: str, method: str = "auto"
) -> str | None:
    """Make SERVER_DIR/<name> hold exactly ``source``'s verified bytes.

    The file's data is fsynced before the rename, so the name never shows an
    incomplete file; the rename itself becomes durable at the caller's next
    ``fsync_dir(server_dir)``, which must come before the file is recorded as
    done (the job groups several files into one). ``mtime`` is the remote one
    (None if the server sent none). Returns the method used, or
    None if an identical file was already there.
    """
    final = server_dir / source.name
    if _already_there(final, source, size, sha256):
        return None

    tmp: Path | None = None
    held: int | None = None
    try:
        tmp, held, used = _make_temp(source, final, method, size, sha256)
        # Without a remote mtime the copy keeps its own, as the download did.
        if used != "hardlink" and mtime is not None:
            os.utime(tmp, (mtime, mtime))
        os.replace(tmp, final)
    except OSError as exc:
        _discard(tmp)
        raise _publish_error(method, final, exc) from None
    except BaseException:
        _discard(tmp)
        raise
    finally:
        # Only now, renamed or removed, does the temp stop being ours.
        if held is not None:
            os.close(held)
    return used


@dataclass
class Staged:
    """A copy in SERVER_DIR under its temp name, filled and checked but not yet
    durable (app/storage/group_durability.py makes a group of them durable, then
    renames them). ``held`` holds the temp as ours (see fsutil) until then."""

    tmp: Path
    final: Path
    held: int
    method: str

    def discard(self) -> None:
        _discard(self.tmp)
        with contextlib.suppress(OSError):
            os.close(self.held)


def stage(
    source: Path,
    source_fd: int,
    final: Path,
    size: int,
    mtime: int | None,
    sha256: str,
    method: str = "auto",
    *,
    try_clone: bool = True,
) -> Staged | None:
    """``final``'s new content under a temp name beside it, from ``source`` (open as
    ``source_fd``, readable), checked but not fsynced: as ``publish`` without its
    fsync and rename, which the caller does for a whole group. None if an identical
    file is already there. ``try_clone=False`` skips a clone already known to fail
    on these file systems (PUBLISH_METHOD=auto)."""
    if _already_there(final, source, size, sha256):
        return None
    tmp: Path | None = None
    held: int | None = None
    try:
        if method == "hardlink":
            held = hold(source)
            tmp = temp_path(final)
            os.link(source, tmp)
            return Staged(tmp, final, held, "hardlink")
        tmp, held = create_temp(final, readable=True)
        clone = method == "reflink" or (method == "auto" and try_clone)
        used = "reflink" if clone and _clone(source_fd, held) else "copy"
        if used == "copy" and method == "reflink":
            raise LocalStorageError(f"PUBLISH_METHOD=reflink: the file system of {final.parent} cannot clone files")
        if used == "copy":
            _copy(source_fd, held, size)
            # Read back through the same descriptor: what a reader will get.
            if _hash_fd(held, size) != sha256:
                raise LocalStorageError(f"the copy {tmp} in SERVER_DIR does not match the verified download")
        if mtime is not None:
            os.utime(held, (mtime, mtime))
        return Staged(tmp, final, held, used)
    except OSError as exc:
        _discard(tmp)
        if held is not None:
            os.close(held)
        raise _publish_error(method, final, exc) from None
    except BaseException:
        _discard(tmp)
        if held is not None:
            os.close(held)
        raise


def _hash_fd(fd: int, size: int) -> str:
    """SHA-256 of the first ``size`` bytes of ``fd`` (read with pread, so its offset stays)."""
    digest = hashlib.sha256()
    done = 0
    while done < size:
        block = os.pread(fd, min(_READ_BACK_BLOCK, size - done), done)
        if not block:
            break
        digest.update(block)
        done += len(block)
    return digest.hexdigest()


def _discard(tmp: Path | None) -> None:
    if tmp is not None:
        with contextlib.suppress(OSError):
            tmp.unlink()
