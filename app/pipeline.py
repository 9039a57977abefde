"""Fast SFTP reads on top of paramiko: the only module that uses paramiko internals.

* ``read_range``: a sliding window of READ requests over one open remote file.
  paramiko's ``SFTPFile.read`` waits a full round trip per 32 KiB, and its
  ``prefetch`` can fall back to that and buffer whole files (paramiko PR 2519).
  This keeps ``depth`` requests in flight, bounded in bytes, and yields the data
  in file order, through ``SFTPClient._async_request`` / ``_read_response`` as
  ``SFTPFile.prefetch`` does.
* ``open_sftp``: an SFTP session whose channel buffers incoming data in a
  ``ChunkPipe`` instead of paramiko's ``BufferedPipe``.

The internals are pinned by the paramiko version in pyproject.toml and the lock
file, and covered by the tests against a real sshd.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator

import paramiko
from paramiko.buffered_pipe import BufferedPipe, PipeTimeout
from paramiko.sftp import CMD_DATA, CMD_READ, CMD_STATUS, SFTP_EOF, int64

from app.errors import RemoteFileError

# Data requested but not yet written never exceeds this, whatever CHUNK_SIZE and
# PIPELINE_DEPTH say, so memory stays bounded and independent of file size.
MAX_AHEAD = 32 * 1024 * 1024


class ChunkPipe(BufferedPipe):  # type: ignore[misc]
    """paramiko's channel buffer, with reads that cost what they return.

    ``BufferedPipe`` keeps one ``array`` and deletes from its front on every
    read: a memmove of everything still buffered. With a window of many MiB in
    flight, even the 4-byte SFTP length reads pay that, and throughput drops
    several-fold. This keeps the received chunks as they came and an offset
    into the first one.
    """

    def __init__(self) -> None:
        super().__init__()
        self._chunks: deque[bytes] = deque()
        self._offset = 0  # bytes already read from _chunks[0]
        self._size = 0

    def _buffer_frombytes(self, data: bytes) -> None:
        if data:
            self._chunks.append(bytes(data))
            self._size += len(data)

    def _take(self, limit: int) -> bytes:
        parts: list[bytes] = []
        want = min(limit, self._size)
        while want:
            head = self._chunks[0]
            available = len(head) - self._offset
            if available <= want:
                parts.append(head[self._offset :] if self._offset else head)
                self._chunks.popleft()
                self._offset = 0
                taken = available
            else:
                parts.append(head[self._offset : self._offset + want])
                self._offset += want
                taken = want
            want -= taken
            self._size -= taken
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def set_event(self, event: threading.Event) -> None:
        with self._lock:
            self._event = event
            if self._closed or self._size:
                event.set()
            else:
                event.clear()

    def read_ready(self) -> bool:
        with self._lock:
            return self._size > 0

    def read(self, nbytes: int, timeout: float | None = None) -> bytes:
        with self._lock:
            if not self._size:
                if self._closed:
                    return b""
                if timeout == 0.0:
                    raise PipeTimeout()
                while not self._size and not self._closed:
                    then = time.monotonic()
                    self._cv.wait(timeout)
                    if timeout is not None:
                        timeout -= time.monotonic() - then
                        if timeout <= 0.0 and not self._size:
                            raise PipeTimeout()
            out = self._take(nbytes)
            if not self._size and self._event is not None and not self._closed:
                self._event.clear()
            return out

    def empty(self) -> bytes:
        with self._lock:
            out = self._take(self._size)
            if self._event is not None and not self._closed:
                self._event.clear()
            return out

    def __len__(self) -> int:
        with self._lock:
            return self._size


def open_sftp(transport: paramiko.Transport, window_size: int, max_packet_size: int) -> paramiko.SFTPClient:
    """Open the sftp subsystem on a channel that buffers with a ChunkPipe."""
    channel = transport.open_session(window_size=window_size, max_packet_size=max_packet_size)
    # Replaced before the subsystem starts, so no data has been buffered yet.
    channel.in_buffer = ChunkPipe()
    channel.invoke_subsystem("sftp")
    return paramiko.SFTPClient(channel)


class _Responses:
    """Receives the replies paramiko routes to it; must be weak-referenceable."""

    def __init__(self) -> None:
        self.data: dict[int, bytes | None] = {}  # None means end of file
        self.error: str | None = None

    def _async_response(self, t: int, msg: paramiko.Message, num: int) -> None:
        if t == CMD_DATA:
            self.data[num] = msg.get_string()
        elif t == CMD_STATUS:
            code = msg.get_int()
            text = msg.get_text()
            if code == SFTP_EOF:
                self.data[num] = None
            else:
                self.error = text or f"status {code}"
        else:
            self.error = f"unexpected reply type {t}"


def read_range(
    sftp: paramiko.SFTPClient,
    handle: bytes,
    start: int,
    end: int,
    request_size: int,
    depth: int,
) -> Iterator[bytes]:
    """Yield the bytes of ``[start, end)`` in order.

    Servers may answer a read with fewer bytes than asked (OpenSSH caps reads at
    255 KiB); the reader asks again for the rest and lowers its request size to
    what the server served, so later requests are not split. The first request
    goes out alone for that reason. Memory stays within ``depth`` requests.
    """
    sink = _Responses()
    inflight: dict[int, tuple[int, int]] = {}
    ready: dict[int, bytes] = {}
    next_offset = start
    position = start
    size = request_size
    probing = True  # until the first reply tells us the server's read limit

    def send(offset: int, length: int) -> None:
        num = sftp._async_request(sink, CMD_READ, handle, int64(offset), int(length))
        inflight[num] = (offset, length)

    while position < end:
        window = 1 if probing else depth
        ahead = min(depth * size, MAX_AHEAD)
        while len(inflight) < window and next_offset < end and next_offset - position < ahead:
            length = min(size, end - next_offset)
            send(next_offset, length)
            next_offset += length

        sftp._read_response()
        if sink.error is not None:
            raise RemoteFileError(f"server refused a read: {sink.error}")
        for num in [n for n in sink.data if n in inflight]:
            offset, length = inflight.pop(num)
            data = sink.data.pop(num)
            if data is None or not data:
                raise RemoteFileError(f"file ended at byte {offset}, before its listed size of {end}")
            if len(data) > length:
                raise RemoteFileError(f"server sent {len(data)} bytes for a read of {length}")
            if len(data) < length:
                if probing:
                    size = len(data)
                # Ask for the rest at once, in pieces the server serves whole, so the
                # write position is not left waiting behind the whole window.
                rest = offset + len(data)
                while rest < offset + length:
                    piece = min(size, offset + length - rest)
                    send(rest, piece)
                    rest += piece
            probing = False
            ready[offset] = data
        while position in ready:
            chunk = ready.pop(position)
            position += len(chunk)
            yield chunk
