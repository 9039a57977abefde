"""A sliding window of SFTP READ requests over one open remote file.

paramiko's ``SFTPFile.read`` waits a full round trip per 32 KiB, and its
``prefetch`` can fall back to that and buffer whole files (paramiko PR 2519).
This reader keeps ``depth`` requests in flight, bounded in bytes, and yields the
data in file order. It is the only module that uses paramiko internals
(``SFTPClient._async_request`` / ``_read_response``, as ``SFTPFile.prefetch``
does); they are pinned by the paramiko version in the lock file and covered by
tests against a real sshd.
"""

from __future__ import annotations

from collections.abc import Iterator

import paramiko
from paramiko.sftp import CMD_DATA, CMD_READ, CMD_STATUS, SFTP_EOF, int64

from app.errors import RemoteFileError


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
        while len(inflight) < window and next_offset < end and next_offset - position < depth * size:
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
