"""Checksum manifests (a SHA256SUMS covering many files), read once per run.

A manifest is needed by every file it covers; fetched whole for each, a 5.4 MB
SHA256SUMS covering 12 files cost 66 MB on the wire. Here each one is fetched
once per connection (so once per run, unless the run reconnects), with pipelined
reads, and kept parsed with the size and mtime it had; a later use stats it (one
round trip) and reads it again only when either changed, so a manifest the
partner extends during the run is read again. Kept per connection, not per path
alone: nothing read from one server (or an earlier run in the same process) can
stand in for another's file.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from app.server.pipeline import open_for_reading, read_range

if TYPE_CHECKING:  # remote imports the pipeline; only its types are needed here
    from app.server.remote import Connection

T = TypeVar("T")

# Requests in flight while reading a manifest: enough to keep a 20 ms link busy
# at a few MB/s, far less memory than the manifest limit.
DEPTH = 16
# Asked for per read before the server's limit is known; the reader lowers it to
# what the server serves (OpenSSH: 255 KiB or less).
REQUEST_SIZE = 256 * 1024

# Per SFTP session: path -> ((size, mtime), parsed). An entry is only trusted after
# a stat shows the same size and mtime; it goes with its connection.
_CACHE: weakref.WeakKeyDictionary[object, dict[str, tuple[tuple[int, int], object]]] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def read_manifest(conn: Connection, path: str, limit: int, parse: Callable[[bytes], T]) -> T:
    """``parse`` of the file at ``path`` (at most ``limit`` bytes), from this run's
    copy while the server's size and mtime for it are unchanged. Raise as the SFTP
    calls do; the caller holds the error boundary (remote_errors)."""
    attr = conn.sftp.stat(path)
    size, mtime = attr.st_size, attr.st_mtime
    with _LOCK:
        cached = _CACHE.get(conn.sftp, {}).get(path)
    if cached is not None and size is not None and mtime is not None and cached[0] == (size, mtime):
        return cached[1]  # type: ignore[return-value]
    data = _read_whole(conn, path, limit)
    parsed = parse(data)
    if size is not None and mtime is not None:
        with _LOCK:
            _CACHE.setdefault(conn.sftp, {})[path] = ((size, mtime), parsed)
    return parsed


def _read_whole(conn: Connection, path: str, limit: int) -> bytes:
    limit_known = conn.read_limit.get()
    size = min(REQUEST_SIZE, limit_known) if limit_known else REQUEST_SIZE
    chunks: list[bytes] = []
    total = 0
    with open_for_reading(conn.sftp, path) as handle:
        for chunk in read_range(conn.sftp, handle, 0, None, size, DEPTH, probe=limit_known is None):
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                # One byte over is enough for the parser to refuse it, naming the file.
                break
    return b"".join(chunks)
