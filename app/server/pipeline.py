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

import contextlib
import itertools
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import paramiko
from paramiko.buffered_pipe import BufferedPipe, PipeTimeout
from paramiko.sftp import (
    CMD_ATTRS,
    CMD_CLOSE,
    CMD_DATA,
    CMD_EXTENDED,
    CMD_EXTENDED_REPLY,
    CMD_HANDLE,
    CMD_INIT,
    CMD_NAME,
    CMD_OPEN,
    CMD_OPENDIR,
    CMD_READ,
    CMD_READDIR,
    CMD_STAT,
    CMD_STATUS,
    CMD_VERSION,
    SFTP_EOF,
    SFTP_FLAG_READ,
    int64,
)

from app.errors import RemoteFileError, ServerSetupError
from app.server.inflight import ENDED_EARLY, HUNG_UP, STALLED

# Hears of a server failing under pipelining: (what, reads in flight, of them not answered) -> new limit.
Trouble = Callable[[str, int, int], int]

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

    def peek(self, nbytes: int) -> bytes:
        """Up to ``nbytes`` from the front, left in place; never waits."""
        with self._lock:
            parts: list[bytes] = []
            offset, want = self._offset, nbytes
            for chunk in self._chunks:
                if want <= 0:
                    break
                piece = chunk[offset : offset + want]
                parts.append(piece)
                want -= len(piece)
                offset = 0
            return b"".join(parts)


class GarbageBeforeSftpError(ServerSetupError):
    """The server wrote text into the channel before its SFTP VERSION reply."""


# What a login script printed is quoted up to this many characters.
_GARBAGE_QUOTED = 60


class SftpSession(paramiko.SFTPClient):  # type: ignore[misc]
    """paramiko's SFTP client, keeping what paramiko drops from the server's VERSION reply.

    ``extensions``: the (name -> data) pairs the server announced, e.g.
    ``check-file-name`` on VanDyke VShell. A reply that does not start with an SFTP
    packet (text a login script printed: paramiko's "Garbage packet received") is
    GarbageBeforeSftpError, quoting the text, rather than paramiko's bare SFTPError.
    """

    extensions: dict[str, bytes]

    def _send_version(self) -> int:
        self.extensions = {}
        message = paramiko.Message()
        message.add_int(3)
        self._send_packet(CMD_INIT, message)
        head = self._read_all(4)
        # An SFTP packet's length starts with a zero byte (no reply is 16 MiB); text does not.
        if head[0]:
            raise GarbageBeforeSftpError(
                "the server printed text before the SFTP protocol started: a login script on the server"
                f" writes to stdout (it sent {self._garbage(head)!r}); it must print nothing for"
                " non-interactive sessions"
            )
        data = self._read_all(struct.unpack(">I", head)[0])
        if not data or data[0] != CMD_VERSION or len(data) < 5:
            raise paramiko.SFTPError("Incompatible sftp protocol")
        self.extensions = dict(_string_pairs(data[5:]))
        version: int = struct.unpack(">I", data[1:5])[0]
        return version

    def _garbage(self, head: bytes) -> str:
        """The start of the text the server sent, without waiting for more."""
        channel = self.sock
        pipe = getattr(channel, "in_buffer", None)
        more = pipe.peek(_GARBAGE_QUOTED) if isinstance(pipe, ChunkPipe) else b""
        return (head + more).decode("utf-8", "replace")[:_GARBAGE_QUOTED]


def _string_pairs(data: bytes) -> Iterator[tuple[str, bytes]]:
    """The (name, data) string pairs after a VERSION packet's version number; a pair cut
    short by a malformed reply ends the list."""
    offset = 0
    while offset + 4 <= len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        name = data[offset + 4 : offset + 4 + length]
        offset += 4 + length
        if offset + 4 > len(data):
            return
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        value = data[offset + 4 : offset + 4 + length]
        offset += 4 + length
        if offset > len(data):
            return
        yield name.decode("utf-8", "replace"), value


def announced(sftp: paramiko.SFTPClient) -> dict[str, bytes] | None:
    """The extensions the server announced in its VERSION reply; None if not known
    (an SFTP client not opened by open_sftp)."""
    extensions: dict[str, bytes] | None = getattr(sftp, "extensions", None)
    return extensions


def open_sftp(transport: paramiko.Transport, window_size: int, max_packet_size: int) -> SftpSession:
    """Open the sftp subsystem on a channel that buffers with a ChunkPipe."""
    channel = transport.open_session(window_size=window_size, max_packet_size=max_packet_size)
    # Replaced before the subsystem starts, so no data has been buffered yet.
    channel.in_buffer = ChunkPipe()
    channel.invoke_subsystem("sftp")
    return SftpSession(channel)


class _Responses:
    """Receives the replies paramiko routes to it; must be weak-referenceable.

    ``expect`` is the reply type that carries data (DATA for reads, NAME for
    directory listings); STATUS EOF is stored as None; anything else is an error.
    """

    def __init__(self, expect: int = CMD_DATA) -> None:
        self.expect = expect
        self.data: dict[int, paramiko.Message | None] = {}
        self.error: str | None = None

    def _async_response(self, t: int, msg: paramiko.Message, num: int) -> None:
        if t == self.expect:
            self.data[num] = msg
        elif t == CMD_STATUS:
            code = msg.get_int()
            text = msg.get_string().decode("utf-8", "replace")
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
    end: int | None,
    request_size: int,
    depth: int,
    *,
    check_end: bool = False,
    probe: bool = True,
    throttle: Callable[[int], None] | None = None,
    trouble: Trouble | None = None,
) -> Iterator[bytes]:
    """Yield the bytes of ``[start, end)`` in order; with ``end=None``, up to the end of the file.

    Servers may answer a read with fewer bytes than asked (OpenSSH caps reads at
    255 KiB); the reader asks again for the rest and lowers its request size to
    what the server served, so later requests are not split. Unless the caller
    already knows the server's limit (``probe=False``), the first request goes
    out alone for that reason. Memory stays within ``depth`` requests.

    With ``check_end``, ``end`` must be the end of the file: one more byte is
    asked for at ``end`` (alongside the last requests, so it costs no extra
    round trip) and must come back as end-of-file. A server that stats a file
    shorter than it serves would otherwise get it silently truncated; this holds
    for ``end == start`` too, so a file listed as empty is only empty if it is.

    ``end=None`` is for a file whose size the server did not send: requests run
    ahead as usual and the first end-of-file reply marks the end.

    ``throttle`` (BANDWIDTH_LIMIT, app/server/bandwidth.py) hears the length of each read
    request before it is sent, and may wait.

    ``trouble`` (app/server/inflight.py: ``ReadsInFlight.lower``) hears of a server that
    failed under pipelining: a stall or hang-up with many reads in flight (then the
    error goes up, and the caller reconnects), or end-of-file answered early. Such an
    end-of-file is asked again from its offset one request at a time before the file
    is judged short; the rest is read with the lower number of reads in flight.
    """
    for _, chunk in _read(
        sftp,
        handle,
        [(start, end)],
        request_size,
        depth,
        check_end=check_end,
        probe=probe,
        throttle=throttle,
        trouble=trouble,
    ):
        yield chunk


def read_ranges(
    sftp: paramiko.SFTPClient,
    handle: bytes,
    ranges: list[tuple[int, int]],
    request_size: int,
    depth: int,
    *,
    probe: bool = True,
    throttle: Callable[[int], None] | None = None,
    trouble: Trouble | None = None,
) -> dict[int, bytes]:
    """The bytes of several ``[start, end)`` ranges, all requested in one pipelined
    batch (one round trip for a handful of small ranges); keyed by start."""
    if not ranges:
        return {}
    found: dict[int, list[bytes]] = {}
    ordered = sorted(ranges)
    for (range_start, range_end), following in itertools.pairwise(ordered):
        if range_end > following[0]:
            raise ValueError(f"overlapping ranges at {range_start} and {following[0]}")
    owner = 0
    for offset, chunk in _read(
        sftp, handle, ordered, request_size, depth, check_end=False, probe=probe, throttle=throttle, trouble=trouble
    ):
        while owner + 1 < len(ordered) and offset >= ordered[owner + 1][0]:
            owner += 1
        found.setdefault(ordered[owner][0], []).append(chunk)
    return {offset: b"".join(found.get(offset, [])) for offset, _ in ranges}


def _read(
    sftp: paramiko.SFTPClient,
    handle: bytes,
    ranges: Sequence[tuple[int, int | None]],
    request_size: int,
    depth: int,
    *,
    check_end: bool,
    probe: bool,
    throttle: Callable[[int], None] | None = None,
    trouble: Trouble | None = None,
) -> Iterator[tuple[int, bytes]]:
    """The pipelined reader behind read_range and read_ranges: yields ``(offset,
    chunk)`` in file order over sorted, disjoint ranges; only the last may be
    open-ended (``None``), and ``check_end`` concerns the last one."""
    sink = _Responses()
    inflight: dict[int, tuple[int, int]] = {}
    ready: dict[int, bytes] = {}
    to_send = deque(ranges)  # ranges with bytes not yet requested, front one partly
    to_yield = deque(ranges)  # ranges with bytes not yet yielded
    position = ranges[0][0]
    outstanding = 0  # bytes requested and not yet yielded
    size = request_size
    probing = probe  # until the first reply tells us the server's read limit
    open_ended = ranges[-1][1] is None
    eof: int | None = None  # where an open-ended read found the file to end
    last_end = ranges[-1][1]
    end_probe: int | None = None  # request number of the read at the last range's end
    end_confirmed = not check_end or open_ended
    peak = 0  # the most reads in flight at once: what a failure under pipelining happened with
    # Reads a pipelined burst got end-of-file for before the listed end: asked again one
    # at a time (request numbers in ``alone``) before the file is judged short.
    again: list[tuple[int, int]] = []
    alone: set[int] = set()
    early = (0, 0)  # (window, reads ended early) of the burst, told to ``trouble`` once one proves early

    def send(offset: int, length: int) -> int:
        nonlocal outstanding
        if throttle is not None:
            throttle(length)
        num: int = sftp._async_request(sink, CMD_READ, handle, int64(offset), int(length))
        inflight[num] = (offset, length)
        outstanding += length
        return num

    def range_done() -> bool:
        _, head_end = to_yield[0]
        stop = head_end if head_end is not None else eof
        return stop is not None and position >= stop

    cut: BaseException | None = None  # the connection failed: what it delivered is still yielded
    while to_yield or not end_confirmed:
        window = 1 if probing else depth
        ahead = min(depth * size, MAX_AHEAD)
        try:
            if again and not inflight:
                # One at a time, once the burst is over.
                offset, length = again.pop(0)
                alone.add(send(offset, length))
            while not again and to_send and len(inflight) < window and outstanding < ahead:
                next_offset, range_end = to_send[0]
                stop = range_end if range_end is not None else eof
                if stop is not None and next_offset >= stop:
                    to_send.popleft()
                    continue
                length = size if stop is None else min(size, stop - next_offset)
                send(next_offset, length)
                to_send[0] = (next_offset + length, range_end)
            if check_end and end_probe is None and not to_send and not again and last_end is not None:
                end_probe = send(last_end, 1)
            peak = max(peak, len(inflight))
            if inflight:
                sftp._read_response()
        except (OSError, EOFError, paramiko.SSHException) as exc:
            # A dead channel fails the next send while up to a window of replies
            # sits received in its buffer: route the complete ones, so that every
            # in-order byte that arrived is written before the error goes up. Not
            # after a timeout, which may have left half a packet read.
            cut = exc
            peak = max(peak, len(inflight))  # a send may have failed before the window was full
            if not isinstance(exc, TimeoutError):
                with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                    route_received(sftp)
        if sink.error is not None:
            raise RemoteFileError(f"server refused a read: {sink.error}")
        if end_probe is not None and end_probe in sink.data:
            inflight.pop(end_probe)
            outstanding -= 1
            if sink.data.pop(end_probe) is not None:
                raise RemoteFileError(f"the file is longer than its listed size of {last_end} bytes")
            end_confirmed = True
        for num in [n for n in sink.data if n in inflight]:
            offset, length = inflight.pop(num)
            reply = sink.data.pop(num)
            data = reply.get_string() if reply is not None else None
            outstanding -= length - len(data or b"")
            if not data:
                if not open_ended or offset < ranges[-1][0]:
                    if num not in alone and peak > 1:
                        # Perhaps a server that ends reads early under many in flight (AWS Transfer).
                        again.append((offset, length))
                        again.sort()
                        early = (peak, early[1] + 1)
                        continue
                    raise RemoteFileError(f"file ended at byte {offset}, before its listed size of {last_end}")
                eof = offset if eof is None else min(eof, offset)
                continue
            if len(data) > length:
                raise RemoteFileError(f"server sent {len(data)} bytes for a read of {length}")
            if num in alone and early[1]:
                # Data where the burst got end-of-file: the server ended those reads early.
                if trouble is not None:
                    depth = min(depth, trouble(ENDED_EARLY, *early))
                early, peak = (0, 0), 0
            if len(data) < length and cut is None:
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
        if eof is not None and (eof < position or any(offset + len(data) > eof for offset, data in ready.items())):
            raise RemoteFileError(f"the file changed while it was read: it ended at byte {eof}, then went on")
        while to_yield:
            if range_done():
                to_yield.popleft()
                if to_yield:
                    position = to_yield[0][0]
                continue
            if position not in ready:
                break
            chunk = ready.pop(position)
            outstanding -= len(chunk)
            yield position, chunk
            position += len(chunk)
        if cut is not None:
            if trouble is not None:
                trouble(HUNG_UP if not isinstance(cut, TimeoutError) else STALLED, peak, len(inflight))
            raise cut


# READDIR requests kept in flight while listing; each reply carries a batch of names.
LIST_READ_AHEAD = 16


class ListingTooLongError(RemoteFileError):
    """A listing longer than MAX_LISTING: the server's doing (an endless listing), not
    a directory that is missing or refused, so not a configuration error."""


_Entry = TypeVar("_Entry")


def list_directory(
    sftp: paramiko.SFTPClient, path: str, limit: int, convert: Callable[[str, paramiko.SFTPAttributes], _Entry]
) -> list[_Entry]:
    """Every entry of ``path`` (without . and ..), at most ``limit`` of them, each as
    ``convert`` makes it of its name and attributes: as it is read, so that paramiko's
    attribute objects, several times the size of what the caller keeps, are not all
    held at once (50,000 of them set the memory floor of a backlog's run).

    Names are decoded leniently (undecodable bytes become surrogates) so that one
    hostile name cannot break the listing; callers validate names before use.
    A listing longer than ``limit`` raises RemoteFileError rather than growing
    without bound.
    """
    t, msg = sftp._request(CMD_OPENDIR, path)
    if t != CMD_HANDLE:
        raise RemoteFileError(f"server did not open directory {path!r}")
    handle = msg.get_string()
    sink = _Responses(expect=CMD_NAME)
    pending: list[int] = []
    entries: list[_Entry] = []
    try:
        at_end = False
        while not at_end:
            while len(pending) < LIST_READ_AHEAD:
                pending.append(sftp._async_request(sink, CMD_READDIR, handle))
            while pending[0] not in sink.data:
                sftp._read_response()
                if sink.error is not None:
                    raise RemoteFileError(f"cannot list {path!r}: {sink.error}")
            reply = sink.data.pop(pending.pop(0))
            if reply is None:
                at_end = True
                continue
            for _ in range(reply.get_int()):
                name = reply.get_string().decode("utf-8", "surrogateescape")
                reply.get_string()  # the ls -l style long name
                attrs = paramiko.SFTPAttributes._from_msg(reply)
                if name in (".", ".."):
                    continue
                entries.append(convert(name, attrs))
                if len(entries) > limit:
                    raise ListingTooLongError(f"listing of {path!r} has more than MAX_LISTING={limit} entries")
    finally:
        close_later(sftp, handle)
    return entries


def close_later(sftp: paramiko.SFTPClient, handle: bytes) -> None:
    """Close a handle without waiting a round trip for the reply (as paramiko's own
    ``SFTPFile.__del__`` does); the reply is read and dropped with later ones."""
    sftp._async_request(type(None), CMD_CLOSE, handle)


@contextlib.contextmanager
def open_for_reading(sftp: paramiko.SFTPClient, path: str) -> Iterator[bytes]:
    """An SFTP handle on ``path`` for reading, closed without waiting on exit."""
    t, msg = sftp._request(CMD_OPEN, path, int(SFTP_FLAG_READ), paramiko.SFTPAttributes())
    if t != CMD_HANDLE:
        raise RemoteFileError(f"server did not open {path!r}")
    handle: bytes = msg.get_string()
    try:
        yield handle
    finally:
        with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
            close_later(sftp, handle)


def route_received(sftp: paramiko.SFTPClient) -> None:
    """Hand every reply already received in full to its waiting request, never
    waiting for more: each SFTP packet is a 4-byte length and its body."""
    channel = sftp.get_channel()
    pipe = channel.in_buffer if channel is not None else None
    if not isinstance(pipe, ChunkPipe):
        return
    while True:
        head = pipe.peek(4)
        if len(head) < 4 or len(pipe) < 4 + struct.unpack(">I", head)[0]:
            return
        sftp._read_response()


class ReadLimit:
    """The server's largest read, from OpenSSH's ``limits@openssh.com`` extension.

    Asked for once per session without waiting; the answer arrives with the
    replies to the listing, so reads can start at the right size without a
    probe round trip per file. Servers without the extension answer with an
    error, and reads then probe as before. The extension is optional, so it is
    never waited for: a server that ignores the request gets probing reads, and
    a reply arriving later is routed to the sink here and left unused.
    """

    def __init__(self, sftp: paramiko.SFTPClient) -> None:
        self._sftp = sftp
        self._sink = _Responses(expect=CMD_EXTENDED_REPLY)
        self._num: int | None = sftp._async_request(self._sink, CMD_EXTENDED, "limits@openssh.com")
        self._value: int | None = None

    def get(self) -> int | None:
        if self._num is not None:
            if self._num not in self._sink.data and self._sink.error is None:
                route_received(self._sftp)
            answered = self._num in self._sink.data or self._sink.error is not None
            reply = self._sink.data.pop(self._num, None)
            if answered:
                self._num = None
            if reply is not None:
                reply.get_int64()  # max packet length
                max_read = reply.get_int64()
                # 0 means "no limit announced"; a tiny value would be hostile.
                self._value = max_read if max_read >= MIN_READ else None
        return self._value


# Below this a read limit is not believed (see ReadLimit).
MIN_READ = 4096


# -- check-file-handle: digests computed by the server ------------------------------------
# (Imported here rather than at the top so that this section stands on its own.)
import weakref  # noqa: E402
from typing import NamedTuple  # noqa: E402

from paramiko.sftp import SFTP_BAD_MESSAGE, SFTP_OP_UNSUPPORTED  # noqa: E402

# The digests the check-file extension may name, each with its size in bytes.
CHECK_FILE_DIGEST_SIZES = {"md5": 16, "sha1": 20, "sha224": 28, "sha256": 32, "sha384": 48, "sha512": 64}


class ServerHashes(NamedTuple):
    """A ``check-file-handle`` answer: the algorithm the server chose and one digest per block.

    ``algorithm`` is None when the server does not offer the extension (NOT_OFFERED).
    """

    algorithm: str | None
    hashes: list[bytes]

    @property
    def offered(self) -> bool:
        return self.algorithm is not None


NOT_OFFERED = ServerHashes(None, [])

# Sessions known not to offer check-file-handle, and known to. paramiko drops the
# extension list of the server's VERSION packet, so the first answer is remembered instead.
_WITHOUT_CHECK_FILE: weakref.WeakSet[paramiko.SFTPClient] = weakref.WeakSet()
_WITH_CHECK_FILE: weakref.WeakSet[paramiko.SFTPClient] = weakref.WeakSet()


CHECK_FILE_HANDLE = "check-file-handle"
CHECK_FILE_NAME = "check-file-name"


def check_file_request(sftp: paramiko.SFTPClient) -> str:
    """The check-file request to send: by name where the server announces only
    ``check-file-name`` (VanDyke VShell), else by handle (announced, or not: Bitvise
    before 6.21 answers it without announcing it, and a probe costs one round trip)."""
    extensions = announced(sftp) or {}
    if CHECK_FILE_NAME in extensions and CHECK_FILE_HANDLE not in extensions:
        return CHECK_FILE_NAME
    return CHECK_FILE_HANDLE


def digests_offered(sftp: paramiko.SFTPClient) -> bool | None:
    """Whether this session's server hashes files: True once it answered, False once it
    refused or ignored check-file, None until asked."""
    if sftp in _WITH_CHECK_FILE:
        return True
    if sftp in _WITHOUT_CHECK_FILE:
        return False
    return None


def known_without_check_file(sftp: paramiko.SFTPClient) -> bool:
    """Whether this session has already shown that it offers no check-file-handle."""
    return sftp in _WITHOUT_CHECK_FILE


class _OneReply:
    """Receives the single reply paramiko routes to it, whatever its type."""

    def __init__(self) -> None:
        self.reply: tuple[int, paramiko.Message] | None = None

    def _async_response(self, t: int, msg: paramiko.Message, num: int) -> None:
        self.reply = (t, msg)


def check_file_handle(
    sftp: paramiko.SFTPClient,
    handle: bytes,
    algorithms: list[str],
    start: int = 0,
    length: int = 0,
    block_size: int = 0,
    timeout: float | None = None,
    *,
    path: str | None = None,
    blocks: int | None = None,
) -> ServerHashes:
    """Ask the server to hash ``[start, start + length)`` of an open file (length 0: to the end).

    The raw ``check-file-handle`` request of draft-ietf-secsh-filexfer-extensions:
    paramiko's ``SFTPFile.check`` sends the name ``check-file``, which no server
    knows (paramiko issue 1220). ``algorithms`` are in order of preference; the
    server picks one. With ``block_size`` 0 the answer is one digest of the whole
    range, else one per block.

    A server without the extension answers OP_UNSUPPORTED: that gives NOT_OFFERED,
    remembered for the session so it is asked only once. ProFTPD answers the same
    for a range it cannot hash (an empty file, a start at or past the end): never
    ask about an empty file; on a session that has answered before, that refusal
    is a RemoteFileError, not NOT_OFFERED. A server that never answers (some drop
    requests they do not know) gives NOT_OFFERED after ``timeout`` seconds (default:
    the channel's timeout), unless it has answered before on this session; give
    it time to read the whole range. ProFTPD 1.3.8 also hashes wrongly a range that starts
    past 0, a block size that is not a multiple of its 16 KiB read buffer, and a
    range that is not a whole number of blocks: ask for whole files (0, 0, 0), or
    whole power-of-two blocks from 0.
    Other refusals raise RemoteFileError; library errors pass to the caller's
    ``remote_errors``.

    ``path`` (the handle's file) lets a server that announces ``check-file-name``
    and not ``check-file-handle`` (VanDyke VShell) be asked by name. A server that
    announces neither is still asked by handle, once per session (Bitvise before
    6.21 answers without announcing it). ``blocks``, the number of digests the
    request must give, tells the draft's layout from MINA's (see _check_file_reply);
    a reply that fits neither is DigestUnparseableError.
    """
    unknown = [a for a in algorithms if a not in CHECK_FILE_DIGEST_SIZES]
    if unknown or not algorithms:
        raise ValueError(f"check-file algorithms must be among {sorted(CHECK_FILE_DIGEST_SIZES)}: {algorithms}")
    if sftp in _WITHOUT_CHECK_FILE:
        return NOT_OFFERED
    request = check_file_request(sftp) if path is not None else CHECK_FILE_HANDLE
    sink = _OneReply()
    sftp._async_request(
        sink,
        CMD_EXTENDED,
        request,
        path if request == CHECK_FILE_NAME else handle,
        ",".join(algorithms),
        int64(start),
        int64(length),
        int(block_size),
    )
    channel = sftp.get_channel()
    previous = channel.gettimeout()
    if timeout is not None:
        channel.settimeout(timeout)
    try:
        while sink.reply is None:
            sftp._read_response()
    except TimeoutError:
        if sftp in _WITH_CHECK_FILE:
            raise
        # Nothing of the reply has arrived, so the session stays in step; a late
        # reply goes to the sink and is dropped.
        _WITHOUT_CHECK_FILE.add(sftp)
        return NOT_OFFERED
    finally:
        channel.settimeout(previous)
    t, msg = sink.reply
    if t == CMD_STATUS:
        code = msg.get_int()
        text = msg.get_string().decode("utf-8", "replace")
        # BAD_MESSAGE: what servers that do not parse unknown requests say instead.
        if code in (SFTP_OP_UNSUPPORTED, SFTP_BAD_MESSAGE) and sftp not in _WITH_CHECK_FILE:
            _WITHOUT_CHECK_FILE.add(sftp)
            return NOT_OFFERED
        # The server's text, escaped: it may hold anything.
        raise RemoteFileError(f"server refused {request}: {text[:200]!r} (status {code})")
    if t != CMD_EXTENDED_REPLY:
        raise RemoteFileError(f"unexpected reply type {t} to {request}")
    _WITH_CHECK_FILE.add(sftp)
    return _check_file_reply(msg, algorithms, blocks)


class DigestUnparseableError(RemoteFileError):
    """A check-file reply whose digests cannot be told apart: not evidence either way."""


# The length field MINA writes before each digest.
_LENGTH = 4


def _check_file_reply(msg: paramiko.Message, algorithms: list[str], blocks: int | None = None) -> ServerHashes:
    name = msg.get_string()
    # The draft starts the reply with the request's name; ProFTPD sends the algorithm alone.
    if name in (b"check-file", b"check-file-handle", b"check-file-name"):
        name = msg.get_string()
    algorithm = name.decode("ascii", "replace").lower()
    if algorithm not in algorithms:
        raise RemoteFileError(f"server answered check-file-handle with {algorithm[:40]!r}, which was not asked for")
    return ServerHashes(algorithm, split_digests(msg.get_remainder(), CHECK_FILE_DIGEST_SIZES[algorithm], blocks))


def split_digests(data: bytes, size: int, blocks: int | None = None) -> list[bytes]:
    """The digests of a check-file reply, each ``size`` bytes.

    The draft concatenates them. Apache MINA SSHD (2.17.1) writes each with a uint32
    length in front (``Buffer.putBytes``), so one SHA-512 digest is 68 bytes and
    16 of them read as 17. MINA's layout is taken only where it is unambiguous:
    every length field equals ``size`` and, with ``blocks`` known, its count is
    the one asked for while the draft's is not. Anything else is DigestUnparseableError.
    """
    plain = [data[i : i + size] for i in range(0, len(data), size)] if data and not len(data) % size else None
    step = _LENGTH + size
    mina: list[bytes] | None = None
    if data and not len(data) % step:
        fields = [data[i : i + _LENGTH] for i in range(0, len(data), step)]
        if all(f == size.to_bytes(_LENGTH, "big") for f in fields):
            mina = [data[i + _LENGTH : i + step] for i in range(0, len(data), step)]
    if blocks is not None:
        plain = plain if plain is not None and len(plain) == blocks else None
        mina = mina if mina is not None and len(mina) == blocks else None
    if plain is not None and mina is None:
        return plain
    if mina is not None and plain is None:
        return mina
    expected = f"{blocks} digest(s) of {size} bytes" if blocks is not None else f"digests of {size} bytes"
    why = "it reads both as the draft's layout and as MINA's" if plain and mina else "neither layout fits"
    raise DigestUnparseableError(f"server sent {len(data)} bytes for {expected}: {why}")


class Replies:
    """A sink that keeps every reply routed to it, by request number, for a caller
    that has requests of several kinds and files in flight (app/catchup.py)."""

    def __init__(self) -> None:
        self.got: dict[int, tuple[int, paramiko.Message]] = {}

    def _async_response(self, t: int, msg: paramiko.Message, num: int) -> None:
        self.got[num] = (t, msg)


def request_open(sftp: paramiko.SFTPClient, sink: Replies, path: str) -> int:
    return int(sftp._async_request(sink, CMD_OPEN, path, int(SFTP_FLAG_READ), paramiko.SFTPAttributes()))


def request_read(sftp: paramiko.SFTPClient, sink: Replies, handle: bytes, offset: int, length: int) -> int:
    return int(sftp._async_request(sink, CMD_READ, handle, int64(offset), int(length)))


def request_stat(sftp: paramiko.SFTPClient, sink: Replies, path: str) -> int:
    return int(sftp._async_request(sink, CMD_STAT, path))


def receive(sftp: paramiko.SFTPClient) -> None:
    """Wait for the next reply and route it to its sink, then route every other
    reply already received in full, without waiting for more."""
    sftp._read_response()
    route_received(sftp)


class Outbox:
    """SFTP requests sent together: within ``with Outbox(sftp)``, every request made on
    ``sftp`` is kept until ``flush``, which sends them all in one channel write.

    paramiko sends each SFTP request in an SSH packet of its own: padding from
    ``os.urandom``, encryption and a socket send per request, each handing the
    GIL back and forth with the transport thread. For a backlog of small files
    (five requests each) that was a third of the loop's time on loopback under a
    profiler (bench/RESULTS.md); gathered, one SSH packet carries a few hundred. The caller flushes before it
    waits for a reply, so nothing waits on a request still held here.
    Requests are numbered and registered with paramiko as usual, so their
    replies are routed as usual. Not for use by two threads at once, nor
    nested; and no call that waits for its own reply (``sftp.stat``) may be made
    inside the block: its request would be held until it timed out.
    """

    def __init__(self, sftp: paramiko.SFTPClient) -> None:
        self._sftp = sftp
        self._held: list[bytes] = []

    def __enter__(self) -> Outbox:
        # An instance attribute shadows SFTPClient._write_all, where paramiko's
        # _send_packet hands each framed request.
        self._sftp._write_all = self._held.append
        return self

    def flush(self) -> None:
        if self._held:
            data = b"".join(self._held)
            self._held.clear()
            self._sftp.sock.sendall(data)

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        del self._sftp._write_all
        if kind is None:
            self.flush()
            return
        # What the failed loop had asked for; on a dead connection it cannot go out,
        # and the error already on its way says why.
        with contextlib.suppress(Exception):
            self.flush()


def reply_status(t: int, msg: paramiko.Message) -> tuple[int, str] | None:
    """(code, text) of a STATUS reply; None for any other reply."""
    if t != CMD_STATUS:
        return None
    code = msg.get_int()
    return code, msg.get_string().decode("utf-8", "replace") or f"status {code}"


def reply_handle(t: int, msg: paramiko.Message) -> bytes | None:
    return msg.get_string() if t == CMD_HANDLE else None


def reply_data(t: int, msg: paramiko.Message) -> bytes | None:
    return msg.get_string() if t == CMD_DATA else None


def reply_attrs(t: int, msg: paramiko.Message) -> paramiko.SFTPAttributes | None:
    return paramiko.SFTPAttributes._from_msg(msg) if t == CMD_ATTRS else None
