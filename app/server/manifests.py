"""Checksum manifests (a SHA256SUMS covering many files), read once per run.

A manifest is needed by every file it covers; fetched whole for each, a 5.4 MB
SHA256SUMS covering 12 files cost 66 MB on the wire. Here each one is fetched
once per run, with pipelined reads, and kept parsed with the size and mtime it
had; a later use stats it (one round trip) and reads it again only when either
changed, so a manifest the partner extends during the run is read again. The
copy outlives a reconnect (a cut mid-backlog must not cost the manifest again),
and is kept per server: host, port, account and host key, so nothing read from
one server can stand in for another's file.
"""

from __future__ import annotations

import threading
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

# Per server (see _server): path -> ((size, mtime), parsed), for the run (the
# process). An entry is only trusted after a stat shows the same size and mtime.
_CACHE: dict[tuple[object, ...], dict[str, tuple[tuple[int, int], object]]] = {}
_LOCK = threading.Lock()


def _server(conn: Connection) -> tuple[object, ...]:
    """Which server a connection reaches: the same one again after a reconnect."""
    key = conn.transport.get_remote_server_key()
    return (conn.server, conn.transport.get_username(), key.get_name(), key.asbytes())


def read_manifest(conn: Connection, path: str, limit: int, parse: Callable[[bytes], T]) -> T:
    """``parse`` of the file at ``path`` (at most ``limit`` bytes), from this run's
    copy while the server's size and mtime for it are unchanged. Raise as the SFTP
    calls do; the caller holds the error boundary (remote_errors)."""
    attr = conn.sftp.stat(path)
    size, mtime = attr.st_size, attr.st_mtime
    server = _server(conn)
    with _LOCK:
        cached = _CACHE.get(server, {}).get(path)
    if cached is not None and size is not None and mtime is not None and cached[0] == (size, mtime):
        return cached[1]  # type: ignore[return-value]
    data = _read_whole(conn, path, limit)
    parsed = parse(data)
    if size is not None and mtime is not None:
        with _LOCK:
            _CACHE.setdefault(server, {})[path] = ((size, mtime), parsed)
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
