"""Resumable, pipelined, verified download of one remote file into LOCAL_DIR.

On disk, while a download is under way:

* ``<name>.part`` holds a prefix of the remote file, always exact: bytes are
  appended in file order, so a kill at any instant leaves a valid prefix.
* ``<name>.part.json`` records the remote size and mtime the prefix was taken
  from. It is written (atomically) before the first byte, so a partial without
  it is never trusted. It also records a SHA-256 per 1 MiB block of the prefix
  (app/storage/blocks.py), rewritten after each checkpoint's fsync and when an
  attempt stops: a resume re-hashes the local prefix against them first, and
  discards from the first block that no longer matches.

Only a complete, checked file is renamed to ``<name>``; it keeps the remote
mtime, which is how a later run recognises it as complete.

Where ``<name>.part.json`` would exceed NAME_MAX, both derived names use the
SHA-256 of the name instead (``<sha256>.part``); the metadata keeps the real name.

Server metadata is a claim: a file listed without a size is read to its end and
checked by a second stat; one without a size or an mtime is fetched whole on
every attempt (a partial could not be tied to one version of it) and keeps the
local time of its download, never a made-up mtime.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import secrets
import stat
import time
from collections.abc import Collection, Mapping
from pathlib import Path

from loguru import logger

from app import interrupt
from app.config import Settings
from app.errors import RemoteFileError, RemoteMissingError
from app.hashing import hash_file
from app.progress import Progress
from app.results import TransferResult
from app.selection import RemoteEntry
from app.server import proof
from app.server.bandwidth import request_cap, throttle_for
from app.server.pipeline import open_for_reading, read_range, read_ranges
from app.server.remote import Connection, remote_errors, remote_path, stat_entry
from app.storage.blocks import BlockDigests, Recorded, check_prefix
from app.storage.fsutil import (
    BackgroundFsync,
    atomic_write,
    create_temp,
    fitting_name,
    fsync_dir,
    open_exclusive,
    storage_error,
    write_all,
)
from app.storage.partial import Paths, read_partial_meta
from app.tally import FileTally

# fsync the partial every so often, so that after a power cut at most this much
# is re-fetched, without paying an fsync per chunk.
CHECKPOINT_BYTES = 64 * 1024 * 1024
# Files up to this size are fetched whole into a temp file, without resume
# state: fetching one again costs less than keeping that state for it.
WHOLE_FILE_MAX = 1024 * 1024
# Before resuming, the kept prefix is compared with the server's bytes: its first
# block, one block at an unpredictable place in each of SAMPLE_STRATA equal
# slices of it, and the last RESUME_VERIFY_BYTES. One block per slice means any
# difference spanning two slices is always seen, at a cost of 17 small reads in
# one pipelined batch; a smaller difference is seen with probability about
# SAMPLE_BLOCK / slice. Only a server digest of the prefix (issue 11) sees all.
SAMPLE_BLOCK = 16 * 1024
SAMPLE_STRATA = 16
# A download the server's evidence contradicts is fetched once more in the same run;
# the second contradiction fails the file: a mismatch is never retried into success.
MAX_MISMATCHES = 2
# A partial this run wrote itself, unchanged on disk since (the tally knows), from a
# remote file whose size and mtime still match: its prefix was read from the server
# minutes ago, so reconnecting only re-reads this much before the resume point, to
# catch a rewrite there; the full sample is for partials the run found.
RECHECK_BYTES = SAMPLE_BLOCK


def complete_local(paths: Paths, entry: RemoteEntry) -> bool:
    """True if LOCAL_DIR already holds this exact remote version, complete.

    Recognised by size and mtime, so never for a file the server listed without
    either: a stale local file could match whatever was guessed.
    """
    if entry.size is None or entry.mtime is None:
        return False
    try:
        st = paths.final.lstat()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise storage_error("inspect", paths.final, exc) from None
    return stat.S_ISREG(st.st_mode) and st.st_size == entry.size and int(st.st_mtime) == entry.mtime


def read_partial_blocks(paths: Paths) -> Recorded | None:
    """The block digests a partial's metadata records, or None (none, or damaged)."""
    try:
        return Recorded.from_json(json.loads(paths.meta.read_bytes()))
    except (OSError, ValueError, RecursionError):
        return None


def write_partial_meta(paths: Paths, entry: RemoteEntry, recorded: Recorded) -> None:
    meta = {"name": entry.name, "size": entry.size, "mtime": entry.mtime, **recorded.as_json()}
    # Not fsynced: metadata lost in a power cut only makes the next run start this
    # file again, or check fewer blocks; it can never make a partial be trusted
    # wrongly (block digests newer than the bytes only discard the bytes).
    atomic_write(paths.meta, json.dumps(meta).encode(), "partial-download metadata", durable=False)


def record_blocks(paths: Paths, entry: RemoteEntry, recorded: Recorded) -> None:
    """Rewrite a partial's block digests, best effort: a failure leaves the older
    record, which still matches a prefix of the bytes."""
    try:
        write_partial_meta(paths, entry, recorded)
    except Exception as exc:  # noqa: BLE001 - never fails a download; the next resume checks less
        logger.bind(file=entry.name).warning("{}: could not record the partial's block digests: {}", entry.name, exc)


def _discard_partial(paths: Paths) -> None:
    for path in (paths.part, paths.meta):
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise storage_error("remove", path, exc) from None


def start_partial(paths: Paths, entry: RemoteEntry) -> None:
    _discard_partial(paths)
    write_partial_meta(paths, entry, Recorded(0, ()))
    try:
        os.close(open_exclusive(paths.part))
    except OSError as exc:
        raise storage_error("create", paths.part, exc) from None


def _resume_offset(
    conn: Connection, settings: Settings, entry: RemoteEntry, paths: Paths, size: int, mtime: int, tally: FileTally
) -> int:
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
        start_partial(paths, entry)
        return 0
    if meta != (size, mtime):
        log.warning(
            "{}: remote file changed since the partial was taken (size {} -> {}, mtime {} -> {});"
            " discarding {} bytes and starting again",
            entry.name, meta[0], size, meta[1], mtime, have,
        )  # fmt: skip
        start_partial(paths, entry)
        return 0
    if have > size:
        log.warning("{}: partial is larger than the remote file; starting again", entry.name)
        start_partial(paths, entry)
        return 0
    ours = tally.digest_of_prefix(paths.part, have) is not None
    local = None
    if not ours and have:
        # Checked locally before anything is asked of the server: a damaged block
        # is not worth comparing, and the sample below may not land on it.
        have, local = _check_local(paths, entry, have)
        if not have:
            start_partial(paths, entry)
            return 0
    kept = _kept_prefix(conn, settings, entry, paths, have, recheck=ours) if have else 0
    if have and not kept:
        log.warning("{}: the remote bytes before the resume point differ from ours; starting again", entry.name)
        start_partial(paths, entry)
    elif local is not None and kept == have:
        # Proven by both: this run's later attempts need not read the prefix again.
        tally.remember_prefix(paths.part, kept, *local)
    return kept


def _check_local(paths: Paths, entry: RemoteEntry, have: int) -> tuple[int, tuple[hashlib._Hash, BlockDigests]]:
    """Re-hash a found partial's ``have`` bytes against the block digests its metadata
    records; a damaged block and all after it are discarded. Returns the bytes kept,
    with their SHA-256 and block digests."""
    recorded = read_partial_blocks(paths)
    try:
        fd = os.open(paths.part, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            good, whole, blocks = check_prefix(fd, have, recorded)
            if good < have:
                os.ftruncate(fd, good)
        finally:
            os.close(fd)
    except OSError as exc:
        raise storage_error("read", paths.part, exc) from None
    if good < have:
        logger.bind(file=entry.name, damaged_at=good).warning(
            "{}: the partial's bytes at {} no longer match the block digest recorded when they were written"
            " (changed on the local disk); discarding the {} bytes from there on",
            entry.name, good, have - good,
        )  # fmt: skip
    return good, (whole, blocks)


def _kept_prefix(
    conn: Connection, settings: Settings, entry: RemoteEntry, paths: Paths, have: int, *, recheck: bool
) -> int:
    """How much of a partial of ``have`` bytes to resume from: what the server's per-block
    digests prove where it offers them (issue 11), else all or nothing by the sampled
    comparison (``recheck``: a partial this run wrote itself, see RECHECK_BYTES)."""
    proven = proof.proven_resume(conn, settings, entry.name, paths.part, have)
    if proven is None:
        return have if _prefix_matches(conn, settings, entry, paths, have, recheck=recheck) else 0
    if proven:
        logger.bind(file=entry.name, proven_bytes=proven).info(
            "{}: the server's block digests prove {} of the {} bytes kept", entry.name, proven, have
        )
    return proven


def sample_ranges(have: int, window: int, rng: random.Random) -> list[tuple[int, int]]:
    """The parts of a kept prefix of ``have`` bytes compared before resuming (see
    SAMPLE_BLOCK): sorted, disjoint ``[start, end)`` ranges. Pure; ``rng`` decides
    the sampled places, and must be unpredictable outside tests."""
    wanted = [(0, min(SAMPLE_BLOCK, have)), (have - min(window, have), have)]
    slice_size = have // SAMPLE_STRATA
    if slice_size > SAMPLE_BLOCK:
        for n in range(SAMPLE_STRATA):
            start = n * slice_size + rng.randrange(slice_size - SAMPLE_BLOCK + 1)
            wanted.append((start, start + SAMPLE_BLOCK))
    merged: list[tuple[int, int]] = []
    for start, end in sorted(r for r in wanted if r[1] > r[0]):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _prefix_matches(
    conn: Connection,
    settings: Settings,
    entry: RemoteEntry,
    paths: Paths,
    have: int,
    rng: random.Random | None = None,
    *,
    recheck: bool = False,
) -> bool:
    """Compare a sample of the kept prefix with the server's bytes (sample_ranges;
    with ``recheck``, only the last RECHECK_BYTES).

    Catches a file rewritten in place with the same size and mtime, which the
    metadata check alone cannot see, and a damaged partial.
    """
    if recheck:
        ranges = [(max(0, have - RECHECK_BYTES), have)]
    else:
        ranges = sample_ranges(have, settings.resume_verify_bytes, rng or secrets.SystemRandom())
    with (
        remote_errors(f"verify resume point of {entry.name!r}", conn=conn),
        open_for_reading(conn.sftp, remote_path(settings, entry.name)) as handle,
    ):
        size, probe = request_size(conn, settings)
        theirs = read_ranges(
            conn.sftp,
            handle,
            ranges,
            size,
            conn.reads.limit,
            probe=probe,
            throttle=throttle_for(settings),
            trouble=conn.reads.lower,
        )
    try:
        with open(paths.part, "rb") as fh:
            return all(os.pread(fh.fileno(), end - start, start) == theirs[start] for start, end in ranges)
    except OSError as exc:
        raise storage_error("read", paths.part, exc) from None


def request_size(conn: Connection, settings: Settings) -> tuple[int, bool]:
    """CHUNK_SIZE, lowered to the server's announced read limit; and whether the
    reader still has to discover the limit itself."""
    chunk = request_cap(settings.bandwidth_limit, settings.chunk_size)
    limit = conn.read_limit.get()
    if limit is None:
        return chunk, True
    return min(chunk, limit), False


def download(
    conn: Connection,
    settings: Settings,
    entry: RemoteEntry,
    tally: FileTally,
    listing_names: Collection[str] = frozenset(),
) -> TransferResult:
    """Bring ``entry`` into LOCAL_DIR complete, checked and proven against the server
    (VERIFY_SOURCE; ``listing_names`` is where checksum files are looked for), resuming
    any partial. A download the evidence contradicts is discarded and fetched once more."""
    while True:
        try:
            return _download(conn, settings, entry, tally, listing_names)
        except proof.ProofMismatchError as exc:
            tally.mismatches += 1
            if tally.mismatches >= MAX_MISMATCHES:
                raise proof.ProofMismatchError(f"{exc}; again after fetching it once more, not recording it") from None
            logger.bind(file=entry.name).warning("{}; discarded, fetching it once more", exc)


def _download(
    conn: Connection, settings: Settings, entry: RemoteEntry, tally: FileTally, listing_names: Collection[str]
) -> TransferResult:
    paths = Paths.for_name(settings.local_dir, entry.name)
    started = time.monotonic()
    received_before = tally.received
    tally.size = entry.size
    log = logger.bind(file=entry.name)

    if complete_local(paths, entry):
        # Left by a run that stopped between download and publish: keep it.
        _discard_partial(paths)
        try:
            existing = hash_file(paths.final).hexdigest()
            size = paths.final.stat().st_size
        except OSError as exc:
            raise storage_error("read", paths.final, exc) from None
        log.info("{}: already complete in LOCAL_DIR, not downloading it again", entry.name)
        try:
            verified_by = proof.prove_download(
                conn, settings, entry.name, listing_names, {proof.BASE_ALGORITHM: existing}, paths.final
            )
        except proof.ProofMismatchError:
            paths.final.unlink(missing_ok=True)
            raise
        tally.kept, tally.completed = size, True
        return TransferResult(entry.name, size, entry.mtime, existing, 0, 0.0, size, verified_by)

    if entry.size is None or entry.mtime is None or entry.size <= WHOLE_FILE_MAX:
        # Too small to be worth resuming, or without the size and mtime that tie a
        # partial to one version of the file: no partial, no metadata, just a hidden
        # temp file (removed at start-up if a run dies) renamed when complete.
        offset, digest = 0, hashlib.sha256()
        target, fd = start_whole(paths)
    else:
        target = paths.part
        offset = _resume_offset(conn, settings, entry, paths, entry.size, entry.mtime, tally)
        if offset:
            log.info("{}: resuming at byte {} of {}", entry.name, offset, entry.size)
        try:
            fd = os.open(paths.part, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
            cached, blocks = tally.digest_of_prefix(paths.part, offset), tally.blocks_of_prefix(paths.part, offset)
            if cached is None or blocks is None:
                _, cached, blocks = check_prefix(fd, offset, None)
            digest = cached
        except OSError as exc:
            raise storage_error("open", paths.part, exc) from None
        if offset:
            # The record matches the resume point from here on, also where the bytes
            # after it were discarded (a kill before the next record would otherwise
            # leave digests of bytes no longer there).
            record_blocks(paths, entry, blocks.snapshot())
    tally.resume_offsets.append(offset)
    tally.kept = offset
    # The server's algorithm is computed on the way when known; a resume leaves any
    # digest but SHA-256 to the proof, which reads the finished file once.
    alongside = proof.hashers_alongside(conn) if offset == 0 else {}
    if target != paths.part:
        blocks = None
    try:
        received = _fill(conn, settings, entry, fd, offset, digest, tally, target, alongside, blocks)
        digests = {proof.BASE_ALGORITHM: digest.hexdigest(), **{a: h.hexdigest() for a, h in alongside.items()}}
        verified_by = proof.prove_download(conn, settings, entry.name, listing_names, digests, target)
    except BaseException as exc:
        if isinstance(exc, proof.NoProofError) and conn.removes_after_read:
            # VERIFY_SOURCE=required, and the server has removed its copy: these bytes
            # are the only ones left, so they stay, unpublished and unrecorded.
            kept = keep_unproven(paths, target, entry)
            raise proof.NoProofError(
                f"{exc}; the server removed its copy after reading: the {tally.received - received_before}"
                f" bytes received are kept in {kept}, not published"
            ) from None
        if target != paths.part:
            target.unlink(missing_ok=True)
            tally.kept = 0
        elif isinstance(exc, proof.ProofMismatchError):
            _discard_partial(paths)
            tally.kept, tally.prefix = 0, None
        elif blocks is not None:  # always, for a partial: its blocks are kept beside it
            _save_blocks(paths, entry, fd, blocks)
            tally.remember_prefix(paths.part, tally.kept, digest, blocks)
        raise
    finally:
        os.close(fd)

    return finish(
        paths, target, entry, received, digest, tally, offset, started, received_before, verified_by=verified_by
    )


UNPROVEN_SUFFIX = ".unproven"


def keep_unproven(paths: Paths, target: Path, entry: RemoteEntry) -> Path:
    """Keep a complete (fsynced) download that could not be proven beside where it
    would go, as ``<name>.unproven`` in LOCAL_DIR, never published; where it now is.
    Not under its final name: a file under its final name in LOCAL_DIR is proven,
    and a later run would take a same-sized, same-dated one for a complete copy."""
    kept = paths.final.with_name(fitting_name(paths.final.name, suffix=UNPROVEN_SUFFIX))
    try:
        if entry.mtime is not None:
            os.utime(target, (entry.mtime, entry.mtime))
        os.replace(target, kept)
        fsync_dir(kept.parent)
        paths.meta.unlink(missing_ok=True)
    except OSError as exc:
        raise storage_error("keep", kept, exc) from None
    return kept


def _save_blocks(paths: Paths, entry: RemoteEntry, fd: int, blocks: BlockDigests) -> None:
    """Make a stopped attempt's partial durable and record its block digests, so the
    next run can check all of it locally. Best effort: after a failed fsync the
    record stays at the last checkpoint."""
    try:
        os.fsync(fd)
    except OSError:
        return
    record_blocks(paths, entry, blocks.snapshot())


def start_whole(paths: Paths, *, readable: bool = False) -> tuple[Path, int]:
    """A hidden temp file for a file fetched whole (no partial, no metadata), and its
    descriptor (open for reading too, if ``readable``)."""
    _discard_partial(paths)
    try:
        return create_temp(paths.final, readable=readable)
    except OSError as exc:
        raise storage_error("create a temp file for", paths.final, exc) from None


def finish(
    paths: Paths,
    target: Path,
    entry: RemoteEntry,
    received: int,
    digest: hashlib._Hash,
    tally: FileTally,
    offset: int,
    started: float,
    received_before: int,
    *,
    verified_by: str,
) -> TransferResult:
    """Give a received, re-checked, fsynced and proven ``target`` its final name in LOCAL_DIR."""
    try:
        if target.stat().st_size != received:
            raise RemoteFileError(f"{entry.name}: {target} does not hold the {received} bytes received")
        if entry.mtime is not None:
            os.utime(target, (entry.mtime, entry.mtime))
        # The data is fsynced; the rename need not be: if a power cut undoes it,
        # the next run finds the complete partial, verifies it and renames again.
        # SERVER_DIR, which consumers read, gets a durable rename in publish.
        os.replace(target, paths.final)
        paths.meta.unlink(missing_ok=True)
    except OSError as exc:
        raise storage_error("finish", paths.final, exc) from None
    tally.kept, tally.completed, tally.prefix = received, True, None
    return transfer_result(entry, received, digest, tally, offset, started, received_before, verified_by=verified_by)


def transfer_result(
    entry: RemoteEntry,
    received: int,
    digest: hashlib._Hash,
    tally: FileTally,
    offset: int,
    started: float,
    received_before: int,
    *,
    verified_by: str,
) -> TransferResult:
    """What a finished download of ``entry`` produced."""
    seconds = time.monotonic() - started
    return TransferResult(
        name=entry.name,
        size=received,
        mtime=entry.mtime,
        sha256=digest.hexdigest(),
        bytes_transferred=tally.received - received_before,
        seconds=seconds,
        resumed_from=offset,
        verified_by=verified_by,
    )


def _fill(
    conn: Connection,
    settings: Settings,
    entry: RemoteEntry,
    fd: int,
    offset: int,
    digest: hashlib._Hash,
    tally: FileTally,
    target: Path,
    alongside: Mapping[str, hashlib._Hash] | None = None,
    blocks: BlockDigests | None = None,
) -> int:
    """Write the rest of the file into ``fd`` from ``offset``, re-check the remote,
    fsync; returns the file's size. Reads up to the listed size and checks that
    the file ends there (also for a size of 0), or, with no size listed, to the end.
    ``blocks`` (a partial's, at ``offset``) follows the bytes written and is recorded
    in the partial's metadata once each checkpoint's fsync is done."""
    try:
        os.ftruncate(fd, offset)
        os.lseek(fd, offset, os.SEEK_SET)
    except OSError as exc:
        raise storage_error("prepare", target, exc) from None
    partial = target.name.endswith(Paths.PART_SUFFIX)
    paths = Paths.for_name(settings.local_dir, entry.name)
    progress = Progress(entry.name, entry.size or 0, offset)
    position = offset
    since_sync = 0
    checkpoints: BackgroundFsync | None = None  # started at the first checkpoint: small files need none
    try:
        with (
            remote_errors(f"download {entry.name!r}", conn=conn),
            open_for_reading(conn.sftp, remote_path(settings, entry.name)) as handle,
        ):
            size, probe = request_size(conn, settings)
            for chunk in read_range(
                conn.sftp,
                handle,
                offset,
                entry.size,
                size,
                conn.reads.limit,
                check_end=True,
                probe=probe,
                throttle=throttle_for(settings),
                trouble=conn.reads.lower,
            ):
                interrupt.check()
                try:
                    write_all(fd, chunk)
                except OSError as exc:
                    raise storage_error("write", target, exc) from None
                if blocks is not None:
                    blocks.update(chunk)
                since_sync += len(chunk)
                if since_sync >= CHECKPOINT_BYTES:
                    checkpoints = checkpoints or BackgroundFsync(fd, target)
                    # The snapshot is taken now, so what is recorded is what this fsync covers.
                    snapshot = None if blocks is None else blocks.snapshot()
                    checkpoints.request(
                        None if snapshot is None else functools.partial(record_blocks, paths, entry, snapshot)
                    )
                    since_sync = 0
                digest.update(chunk)
                for extra in (alongside or {}).values():
                    extra.update(chunk)
                position += len(chunk)
                tally.received += len(chunk)
                if partial:
                    tally.kept = position
                progress.update(position)
    finally:
        if checkpoints is not None:
            checkpoints.close()
    progress.finish()
    _check_unchanged(conn, settings, entry, position)
    try:
        os.fsync(fd)
    except OSError as exc:
        raise storage_error("write", target, exc) from None
    return position


def _check_unchanged(conn: Connection, settings: Settings, entry: RemoteEntry, received: int) -> None:
    """Stat the remote file again: it must still have the size received and the mtime
    listed. Attributes the server leaves out are not guessed: without a size, a
    second read at the end must still find the end of the file.

    Called once every byte has arrived and the end of the file was confirmed. A
    server that has removed the file by then (read-once, or one that processes a
    file once it is read) cannot be asked again: what arrived is the file."""
    if conn.removes_after_read:
        removed_after_read(conn, entry.name, received)
        return
    try:
        after = stat_entry(conn, settings, entry.name)
    except RemoteMissingError:
        removed_after_read(conn, entry.name, received)
        return
    with remote_errors(f"re-check remote file {entry.name!r}", conn=conn):
        if after.size is None:
            with open_for_reading(conn.sftp, remote_path(settings, entry.name)) as handle:
                size, _ = request_size(conn, settings)
                # One reply tells: data (it grew) or end-of-file; a grown file is not read on.
                extra = next(read_range(conn.sftp, handle, received, None, size, 1), b"")
            grown: int | None = received + len(extra)
        else:
            grown = after.size
    reason = changed_reason(entry, received, grown, after.mtime)
    if reason is not None:
        raise RemoteFileError(reason)


def removed_after_read(conn: Connection, name: str, received: int) -> None:
    """``name`` is no longer on the server after all ``received`` bytes and its end of
    file arrived: it is delivered as received, and the session learns that this server
    removes what it has served, so nothing asks for such a file again (no stat, no
    second open, no proof by path, no refetch)."""
    if not conn.removes_after_read:
        conn.removes_after_read = True
        logger.bind(file=name).info(
            "the server removes files once they are read (a read-once or post-processing server):"
            " files are read once and not checked or proven by path afterwards, for the rest of this session"
        )
    logger.bind(file=name, size=received, removed_by_server=True).info(
        "{}: the server removed it after reading; delivering the {} bytes received up to its confirmed end",
        name,
        received,
    )


def changed_reason(entry: RemoteEntry, received: int, size_after: int | None, mtime_after: int | None) -> str | None:
    """Why a file whose second stat says ``size_after``/``mtime_after`` must not be
    recorded after ``received`` bytes of it were read; None if it is unchanged."""
    mtime_changed = None not in (entry.mtime, mtime_after) and mtime_after != entry.mtime
    if size_after != received or mtime_changed:
        return (
            f"remote file {entry.name!r} changed during the download"
            f" (size {received} -> {size_after}, mtime {entry.mtime} -> {mtime_after}); not recording it"
        )
    return None
