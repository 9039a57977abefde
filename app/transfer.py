"""Resumable, pipelined, verified download of one remote file into LOCAL_DIR.

On disk, while a download is under way:

* ``<name>.part`` holds a prefix of the remote file, always exact: bytes are
  appended in file order, so a kill at any instant leaves a valid prefix.
* ``<name>.part.json`` records the remote size and mtime the prefix was taken
  from. It is written (atomically) before the first byte, so a partial without
  it is never trusted.

Only a complete, checked file is renamed to ``<name>``; it keeps the remote
mtime, which is how a later run recognises it as complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from loguru import logger

from app import interrupt
from app.config import Settings
from app.errors import RemoteFileError
from app.fsutil import BackgroundFsync, atomic_write, open_exclusive, storage_error, temp_path, write_all
from app.names import invalid_name_reason
from app.pipeline import open_for_reading, read_range
from app.progress import Progress
from app.remote import Connection, remote_errors, remote_path, stat_entry
from app.selection import RemoteEntry

# fsync the partial every so often, so that after a power cut at most this much
# is re-fetched, without paying an fsync per chunk.
CHECKPOINT_BYTES = 64 * 1024 * 1024
# Files up to this size are fetched whole into a temp file, without resume
# state: fetching one again costs less than keeping that state for it.
WHOLE_FILE_MAX = 1024 * 1024
# Block size for hashing local files; large enough for sequential reads.
HASH_BLOCK = 1024 * 1024


@dataclass(frozen=True)
class TransferResult:
    """What one file's download produced; the ledger, summary and report read it."""

    name: str
    size: int
    mtime: int
    sha256: str
    bytes_transferred: int
    seconds: float
    resumed_from: int


@dataclass(frozen=True)
class Paths:
    final: Path
    part: Path
    meta: Path

    PART_SUFFIX = ".part"

    @classmethod
    def for_name(cls, local_dir: Path, name: str) -> Paths:
        # Planning already drops unsafe names; this keeps any other caller honest.
        reason = invalid_name_reason(name)
        if reason is not None:
            raise RemoteFileError(f"refusing remote file name {name!r}: {reason}")
        return cls(
            final=local_dir / name,
            part=local_dir / f"{name}{cls.PART_SUFFIX}",
            meta=local_dir / f"{name}{cls.PART_SUFFIX}.json",
        )


def hash_file(path: Path, limit: int | None = None) -> hashlib._Hash:
    digest = hashlib.sha256()
    remaining = limit
    with open(path, "rb") as fh:
        while remaining is None or remaining > 0:
            interrupt.check()
            block = fh.read(HASH_BLOCK if remaining is None else min(HASH_BLOCK, remaining))
            if not block:
                break
            digest.update(block)
            if remaining is not None:
                remaining -= len(block)
    return digest


def complete_local(paths: Paths, entry: RemoteEntry) -> bool:
    """True if LOCAL_DIR already holds this exact remote version, complete."""
    try:
        st = paths.final.lstat()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise storage_error("inspect", paths.final, exc) from None
    return stat.S_ISREG(st.st_mode) and st.st_size == entry.size and int(st.st_mtime) == entry.mtime


def read_partial_meta(paths: Paths) -> tuple[int, int] | None:
    """The remote (size, mtime) a partial was taken from, or None if unknown."""
    try:
        meta = json.loads(paths.meta.read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    values = (meta.get("size"), meta.get("mtime")) if isinstance(meta, dict) else (None, None)
    # Anything but two whole numbers >= 0 (1e400, "12", true) is damage: unknown,
    # so the partial starts again.
    if all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        return values  # type: ignore[return-value]
    return None


def _discard_partial(paths: Paths) -> None:
    for path in (paths.part, paths.meta):
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise storage_error("remove", path, exc) from None


def _start_partial(paths: Paths, entry: RemoteEntry) -> None:
    _discard_partial(paths)
    meta = json.dumps({"name": entry.name, "size": entry.size, "mtime": entry.mtime}).encode()
    # Not fsynced: metadata lost in a power cut only makes the next run start
    # this file again; it can never make a partial be trusted wrongly.
    atomic_write(paths.meta, meta, "partial-download metadata", durable=False)
    try:
        os.close(open_exclusive(paths.part))
    except OSError as exc:
        raise storage_error("create", paths.part, exc) from None


class Counter:
    """Bytes received from the server for one file, across every attempt in a run."""

    def __init__(self) -> None:
        self.value = 0


def _resume_offset(conn: Connection, settings: Settings, entry: RemoteEntry, paths: Paths) -> int:
    """How much of the partial can be kept; 0 after discarding it."""
    meta = read_partial_meta(paths)
    try:
        st = paths.part.lstat()
        # Anything but a regular file (a planted symlink, say) is never written through.
        have = st.st_size if stat.S_ISREG(st.st_mode) else -1
        if have < 0:
            meta = None
    except FileNotFoundError:
        have = -1
    except OSError as exc:
        raise storage_error("inspect", paths.part, exc) from None
    log = logger.bind(file=entry.name)
    if meta is None or have < 0:
        if have >= 0 or meta is not None or paths.part.is_symlink():
            log.warning("{}: partial download without its metadata; starting again", entry.name)
        _start_partial(paths, entry)
        return 0
    if meta != (entry.size, entry.mtime):
        log.warning(
            "{}: remote file changed since the partial was taken (size {} -> {}, mtime {} -> {});"
            " discarding {} bytes and starting again",
            entry.name, meta[0], entry.size, meta[1], entry.mtime, have,
        )  # fmt: skip
        _start_partial(paths, entry)
        return 0
    if have > entry.size:
        log.warning("{}: partial is larger than the remote file; starting again", entry.name)
        _start_partial(paths, entry)
        return 0
    if have and not _prefix_matches(conn, settings, entry, paths, have):
        log.warning("{}: the remote bytes before the resume point differ from ours; starting again", entry.name)
        _start_partial(paths, entry)
        return 0
    return have


def _prefix_matches(conn: Connection, settings: Settings, entry: RemoteEntry, paths: Paths, have: int) -> bool:
    """Re-read the last RESUME_VERIFY_BYTES before ``have`` from the server and compare.

    Catches a file rewritten in place with the same size and mtime, which the
    metadata check alone cannot see.
    """
    window = min(settings.resume_verify_bytes, have)
    if window == 0:
        return True
    with (
        remote_errors(f"verify resume point of {entry.name!r}", conn=conn),
        open_for_reading(conn.sftp, remote_path(settings, entry.name)) as handle,
    ):
        size, probe = _request_size(conn, settings)
        theirs = b"".join(
            read_range(conn.sftp, handle, have - window, have, size, settings.pipeline_depth, probe=probe)
        )
    try:
        with open(paths.part, "rb") as fh:
            fh.seek(have - window)
            ours = fh.read(window)
    except OSError as exc:
        raise storage_error("read", paths.part, exc) from None
    return theirs == ours


def _request_size(conn: Connection, settings: Settings) -> tuple[int, bool]:
    """CHUNK_SIZE, lowered to the server's announced read limit; and whether the
    reader still has to discover the limit itself."""
    limit = conn.read_limit.get()
    if limit is None:
        return settings.chunk_size, True
    return min(settings.chunk_size, limit), False


def download(conn: Connection, settings: Settings, entry: RemoteEntry, counter: Counter) -> TransferResult:
    """Bring ``entry`` into LOCAL_DIR complete and checked, resuming any partial."""
    paths = Paths.for_name(settings.local_dir, entry.name)
    started = time.monotonic()
    received_before = counter.value
    log = logger.bind(file=entry.name)

    if complete_local(paths, entry):
        # Left by a run that stopped between download and publish: keep it.
        _discard_partial(paths)
        try:
            existing = hash_file(paths.final).hexdigest()
        except OSError as exc:
            raise storage_error("read", paths.final, exc) from None
        log.info("{}: already complete in LOCAL_DIR, not downloading it again", entry.name)
        return TransferResult(entry.name, entry.size, entry.mtime, existing, 0, 0.0, entry.size)

    if entry.size <= WHOLE_FILE_MAX:
        # Too small to be worth resuming: no partial, no metadata, just a hidden
        # temp file (removed at start-up if a run dies) renamed when complete.
        _discard_partial(paths)
        target, offset, digest = temp_path(paths.final), 0, hashlib.sha256()
        try:
            fd = open_exclusive(target)
        except OSError as exc:
            raise storage_error("create", target, exc) from None
    else:
        target = paths.part
        offset = _resume_offset(conn, settings, entry, paths)
        if offset:
            log.info("{}: resuming at byte {} of {}", entry.name, offset, entry.size)
        try:
            digest = hash_file(paths.part, offset)
            fd = os.open(paths.part, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise storage_error("open", paths.part, exc) from None
    try:
        _fill(conn, settings, entry, fd, offset, digest, counter, target)
    except BaseException:
        if target != paths.part:
            target.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)

    try:
        if target.stat().st_size != entry.size:
            raise RemoteFileError(f"{entry.name}: downloaded size differs from the remote size {entry.size}")
        os.utime(target, (entry.mtime, entry.mtime))
        # The data is fsynced; the rename need not be: if a power cut undoes it,
        # the next run finds the complete partial, verifies it and renames again.
        # SERVER_DIR, which consumers read, gets a durable rename in publish.
        os.replace(target, paths.final)
        paths.meta.unlink(missing_ok=True)
    except OSError as exc:
        raise storage_error("finish", paths.final, exc) from None
    seconds = time.monotonic() - started
    return TransferResult(
        name=entry.name,
        size=entry.size,
        mtime=entry.mtime,
        sha256=digest.hexdigest(),
        bytes_transferred=counter.value - received_before,
        seconds=seconds,
        resumed_from=offset,
    )


def _fill(
    conn: Connection,
    settings: Settings,
    entry: RemoteEntry,
    fd: int,
    offset: int,
    digest: hashlib._Hash,
    counter: Counter,
    target: Path,
) -> None:
    """Write the rest of the file into ``fd`` from ``offset``, re-check the remote, fsync."""
    try:
        os.ftruncate(fd, offset)
        os.lseek(fd, offset, os.SEEK_SET)
    except OSError as exc:
        raise storage_error("prepare", target, exc) from None
    if offset < entry.size:
        progress = Progress(entry.name, entry.size, offset)
        position = offset
        since_sync = 0
        checkpoints: BackgroundFsync | None = None  # started at the first checkpoint: small files need none
        try:
            with (
                remote_errors(f"download {entry.name!r}", conn=conn),
                open_for_reading(conn.sftp, remote_path(settings, entry.name)) as handle,
            ):
                size, probe = _request_size(conn, settings)
                for chunk in read_range(
                    conn.sftp, handle, offset, entry.size, size, settings.pipeline_depth, check_end=True, probe=probe
                ):
                    interrupt.check()
                    try:
                        write_all(fd, chunk)
                    except OSError as exc:
                        raise storage_error("write", target, exc) from None
                    since_sync += len(chunk)
                    if since_sync >= CHECKPOINT_BYTES:
                        checkpoints = checkpoints or BackgroundFsync(fd, target)
                        checkpoints.request()
                        since_sync = 0
                    digest.update(chunk)
                    position += len(chunk)
                    counter.value += len(chunk)
                    progress.update(position)
        finally:
            if checkpoints is not None:
                checkpoints.close()
        progress.finish()
    with remote_errors(f"re-check remote file {entry.name!r}", conn=conn):
        after = stat_entry(conn, settings, entry.name)
    if (after.size, after.mtime) != (entry.size, entry.mtime):
        raise RemoteFileError(
            f"remote file {entry.name!r} changed during the download"
            f" (size {entry.size} -> {after.size}, mtime {entry.mtime} -> {after.mtime}); not recording it"
        )
    try:
        os.fsync(fd)
    except OSError as exc:
        raise storage_error("write", target, exc) from None
