"""A real SFTP server (AsyncSSH) that lies: crafted names, wrong sizes, endless listings.

OpenSSH's sshd cannot be made to lie, so security tests talk to this one. It
runs in a background thread with its own event loop, on a free loopback port,
with its own host key and the tests' client key authorised.
"""

from __future__ import annotations

import asyncio
import hashlib
import shlex
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh
from asyncssh.packet import String, UInt32

OLD = int(time.time()) - 7200
BUSY_TEXT = "the requested operation cannot be performed because there is a file transfer in progress"


@dataclass
class Lies:
    """What the server serves: ``files`` by name, and how it misreports them."""

    files: dict[bytes, bytes] = field(default_factory=dict)
    claimed_size: dict[bytes, int] = field(default_factory=dict)  # stat size, if not the real one
    extra_per_read: int = 0  # bytes added to every READ reply beyond what was asked
    short_reads: int = 0  # serve at most this many bytes per READ (below the announced limit)
    endless: bool = False  # the listing never ends
    # Per-file attribute overrides for listings and stats: a value of None leaves the
    # attribute out of the reply entirely (as some servers do), e.g.
    # {"size": None, "permissions": None, "mtime": 4102444800}.
    attrs: dict[bytes, dict[str, int | None]] = field(default_factory=dict)
    # Extended requests (e.g. b"limits@openssh.com") the server accepts but never answers.
    silent_extensions: set[bytes] = field(default_factory=set)
    # Open files allowed at once per session (0: no limit); one more OPEN fails, as on
    # servers that say "maximum concurrent transfers exceeded".
    max_open_files: int = 0
    # Every READ answered with an empty DATA reply, neither data nor end of file.
    empty_data: bool = False
    # IBM Sterling's extractability count: once a file has been opened, every STAT,
    # LSTAT, FSTAT and second OPEN of it, and every READ of bytes already served,
    # answers "no such file", and CLOSE removes it.
    read_once: bool = False
    # A post-processing server: CLOSE removes a file that was read (stat works until then).
    delete_on_close: bool = False
    # An OPEN while another file of the session is open answers PERMISSION_DENIED with
    # BUSY_TEXT, as servers that say "a file transfer is in progress" do.
    busy_second_open: bool = False
    # The server drops a connection that sent no SFTP request for this long (0: never),
    # as Azure Blob SFTP (2 min) and AWS Transfer (30 min) do.
    idle_drop_seconds: float = 0
    # Filled by the server: every file read_once or delete_on_close removed, in order,
    # and every connection idle_drop_seconds dropped.
    removed: list[bytes] = field(default_factory=list)
    idle_drops: int = 0
    deleted: list[bytes] = field(default_factory=list)  # files the client removed (REMOTE_AFTER=delete)
    spent_requests: int = 0  # requests read_once refused for a file already opened
    # Exec channels run `sha256sum -- PATH` over the served files, as SFTPGo does. False:
    # exec requests are refused, as on Azure Blob SFTP and AWS Transfer Family.
    exec_hash: bool = False
    # Session channels allowed per connection (0: no limit); the next is refused with
    # RESOURCE_SHORTAGE, as AWS Transfer refuses an 11th.
    channel_limit: int = 0
    # Digests by check-file, answered in the draft's layout, unless said otherwise:
    check_file_name_only: bool = False  # VShell: announces and answers check-file-name only
    hidden_check_file: bool = False  # Bitvise < 6.21: answers check-file-handle without announcing it
    mina_digests: bool = False  # Apache MINA SSHD: check-file-handle, each digest after a uint32 length
    garbled_digests: bool = False  # check-file-handle answered with 3 bytes too many
    wrong_digests: bool = False  # every digest answered is of other bytes
    # Text written into the SFTP channel before the SFTP stream, as a login script
    # printing on stdout does (paramiko: "Garbage packet received").
    garbage_banner: bytes = b""
    # Status messages in the server's locale, not UTF-8 (cp1252 "Gr\xf6\xdfe"), for a
    # STAT or OPEN of a name it does not serve.
    cp1252_errors: bool = False
    # Rename targets (base names; b"*": every one) refused with PERMISSION_DENIED though
    # free, as servers with rules of their own do (NoPosixRenameServer only).
    rename_refused: set[bytes] = field(default_factory=set)
    # Servers that fail under pipelined reads. Each READ is answered after read_hold
    # seconds (a server with latency, so that READs are outstanding at once); one that
    # arrives while max_outstanding_reads are outstanding is, by when_overloaded:
    # "stall": never answered (Serv-U; with 2, a server answering the first two of a burst),
    # "hangup": the connection is closed (CrushFTP), "eof": answered end-of-file (AWS Transfer).
    read_hold: float = 0
    max_outstanding_reads: int = 0
    when_overloaded: str = "stall"
    overloaded: int = 0  # filled by the server: READs it failed that way
    reads: int = 0  # filled by the server: READs received
    # The first READ of each opened file is served at most this many bytes (a short reply
    # well below the read limit, as at a server's buffer boundary).
    short_first_read: int = 0


def _attrs(size: int, overrides: dict[str, int | None] | None = None) -> asyncssh.SFTPAttrs:
    values: dict[str, int | None] = {"size": size, "permissions": 0o100644, "mtime": OLD, "atime": OLD}
    values.update(overrides or {})
    if "mtime" in (overrides or {}) and "atime" not in (overrides or {}):
        # SFTPv3 sends atime and mtime together: leaving one out leaves out both.
        values["atime"] = values["mtime"]
    return asyncssh.SFTPAttrs(uid=0, gid=0, **values)


_original_process_packet = asyncssh.sftp.SFTPServerHandler._process_packet


async def _process_packet(self: asyncssh.sftp.SFTPServerHandler, pkttype: int, pktid: int, packet: object) -> None:
    """Drop the extended requests the server's Lies say never to answer; answer READs
    with empty data where they say so (AsyncSSH itself turns empty data into EOF);
    note each request's arrival for the idle timeout."""
    heard = getattr(self._server, "heard", None)
    if heard is not None:
        heard()
    lies_ = getattr(self._server, "lies", None)
    if pkttype == asyncssh.sftp.FXP_READ and lies_ is not None:
        lies_.reads += 1
        if lies_.read_hold:
            _hold_read(self, lies_, pkttype, pktid, packet)
            return
    if pkttype == asyncssh.sftp.FXP_READ and getattr(self._server, "empty_data", False):
        self.send_packet(asyncssh.sftp.FXP_DATA, pktid, UInt32(pktid), String(b""))
        return
    silent: set[bytes] = getattr(self._server, "silent_extensions", set())
    lies: Lies | None = getattr(self._server, "lies", None)
    if lies is not None and lies.cp1252_errors and pkttype in (asyncssh.sftp.FXP_STAT, asyncssh.sftp.FXP_OPEN):
        start = packet._idx  # type: ignore[attr-defined]
        name = packet.get_string().rsplit(b"/", 1)[-1]  # type: ignore[attr-defined]
        packet._idx = start  # type: ignore[attr-defined]
        if name not in lies.files:
            words = "Datei nicht gefunden: Größe unbekannt".encode("cp1252")
            status = UInt32(asyncssh.sftp.FX_NO_SUCH_FILE) + String(words) + String(b"de")
            self.send_packet(asyncssh.sftp.FXP_STATUS, pktid, UInt32(pktid), status)
            return
    if pkttype == asyncssh.sftp.FXP_EXTENDED and (silent or lies is not None):
        start = packet._idx  # type: ignore[attr-defined]
        request = packet.get_string()  # type: ignore[attr-defined]
        if request in silent:
            return
        reply = _check_file(self, lies, request, packet) if lies is not None else None
        if reply is not None:
            self.send_packet(asyncssh.sftp.FXP_EXTENDED_REPLY, pktid, UInt32(pktid), reply)
            return
        packet._idx = start  # type: ignore[attr-defined]
    await _original_process_packet(self, pkttype, pktid, packet)


def _hold_read(handler: asyncssh.sftp.SFTPServerHandler, lies: Lies, pkttype: int, pktid: int, packet: object) -> None:
    """Answer a READ after lies.read_hold seconds, beside the next requests; fail it as
    lies.when_overloaded says when max_outstanding_reads are already outstanding."""
    held: int = getattr(handler, "_hostile_held", 0)
    if lies.max_outstanding_reads and held >= lies.max_outstanding_reads:
        lies.overloaded += 1
        if lies.when_overloaded == "hangup":
            handler._server.channel.get_connection().close()
        elif lies.when_overloaded == "eof":
            status = UInt32(asyncssh.sftp.FX_EOF) + String(b"") + String(b"")
            handler.send_packet(asyncssh.sftp.FXP_STATUS, pktid, UInt32(pktid), status)
        return
    handler._hostile_held = held + 1

    async def later() -> None:
        try:
            await asyncio.sleep(lies.read_hold)
            await _original_process_packet(handler, pkttype, pktid, packet)
        finally:
            handler._hostile_held -= 1

    task = asyncio.get_running_loop().create_task(later())
    _HELD.add(task)
    task.add_done_callback(_HELD.discard)


_HELD: set[asyncio.Task[None]] = set()  # held READs, referenced until answered


def _check_file(handler: asyncssh.sftp.SFTPServerHandler, lies: Lies, request: bytes, packet: object) -> bytes | None:
    """The reply to a check-file request as the Lies' server would give it; None: not answered here."""
    if request == b"check-file-handle" and (lies.hidden_check_file or lies.mina_digests or lies.garbled_digests):
        target = packet.get_string()  # type: ignore[attr-defined]
        name = handler._file_handles[target]
    elif request == b"check-file-name" and lies.check_file_name_only:
        name = packet.get_string().rsplit(b"/", 1)[-1]  # type: ignore[attr-defined]
    else:
        return None
    algorithms = packet.get_string().decode().split(",")  # type: ignore[attr-defined]
    start = packet.get_uint64()  # type: ignore[attr-defined]
    length = packet.get_uint64()  # type: ignore[attr-defined]
    block = packet.get_uint32()  # type: ignore[attr-defined]
    algorithm = algorithms[0]
    data = lies.files[name]
    data = data[start : start + length] if length else data[start:]
    if lies.wrong_digests:
        data = data[::-1] + b"!"
    pieces = [data[i : i + block] for i in range(0, len(data), block)] if block else [data]
    digests = [hashlib.new(algorithm, piece).digest() for piece in pieces]
    if lies.mina_digests:
        # AbstractSftpSubsystemHelper.doCheckFileHash: putString("check-file"), putString(algorithm),
        # then putBytes(digest) for each block, which writes a uint32 length first.
        return String(b"check-file") + String(algorithm) + b"".join(String(d) for d in digests)
    body = b"".join(digests) + (b"\0\0\0" if lies.garbled_digests else b"")
    return String(b"check-file") + String(algorithm) + body


# Only the hostile server runs an AsyncSSH SFTP server in the test process, and the
# wrapper changes nothing unless its Lies name silent extensions.
asyncssh.sftp.SFTPServerHandler._process_packet = _process_packet


def _server_class(lies: Lies) -> type[asyncssh.SFTPServer]:
    class HostileServer(asyncssh.SFTPServer):  # type: ignore[misc]
        silent_extensions = lies.silent_extensions
        empty_data = lies.empty_data

        @property
        def login_banner(self) -> bytes:
            return lies.garbage_banner

        @property
        def extra_extensions(self) -> list[tuple[bytes, bytes]]:
            return [(b"check-file-name", b"md5,sha1,sha256,sha512")] if lies.check_file_name_only else []

        def _size(self, name: bytes) -> int:
            return lies.claimed_size.get(name, len(lies.files.get(name, b"")))

        async def scandir(self, path: bytes) -> AsyncIterator[asyncssh.SFTPName]:
            for name in lies.files:
                yield asyncssh.SFTPName(name, b"", _attrs(self._size(name), lies.attrs.get(name)))
            n = 0
            while lies.endless:
                n += 1
                yield asyncssh.SFTPName(f"junk{n:012d}.IPI".encode(), b"", _attrs(1))

        def _lookup(self, path: bytes) -> bytes:
            name = path.rsplit(b"/", 1)[-1]
            if name not in lies.files:
                raise asyncssh.SFTPNoSuchFile("no such file")
            return name

        def __init__(self, chan: asyncssh.SSHServerChannel) -> None:
            super().__init__(chan)
            self.lies = lies
            self.opened: set[bytes] = set()  # files this session has opened (read_once)
            self.short_served: set[bytes] = set()  # files whose first READ was served short
            self.served: dict[bytes, list[tuple[int, int]]] = {}  # byte ranges read, per file (read_once)
            self._idle: asyncio.TimerHandle | None = None
            if lies.idle_drop_seconds:
                self.heard = self._heard
                self._heard()

        def _heard(self) -> None:
            if self._idle is not None:
                self._idle.cancel()
            self._idle = asyncio.get_running_loop().call_later(lies.idle_drop_seconds, self._drop_idle)

        def _drop_idle(self) -> None:
            lies.idle_drops += 1
            self.channel.get_connection().close()

        def _spent(self, name: bytes) -> None:
            if lies.read_once and name in self.opened:
                lies.spent_requests += 1
                raise asyncssh.SFTPNoSuchFile("no such file")

        def stat(self, path: bytes) -> asyncssh.SFTPAttrs:
            if path in (b".", b"/", b"") or path.endswith(b"/remote"):
                return asyncssh.SFTPAttrs(permissions=0o040755, size=0, mtime=OLD)
            name = self._lookup(path)
            self._spent(name)
            return _attrs(self._size(name), lies.attrs.get(name))

        lstat = stat

        def fstat(self, file_obj: object) -> asyncssh.SFTPAttrs:
            self._spent(file_obj)  # type: ignore[arg-type]
            return _attrs(self._size(file_obj), lies.attrs.get(file_obj))  # type: ignore[arg-type]

        open_files = 0

        def open(self, path: bytes, pflags: int, attrs: asyncssh.SFTPAttrs) -> object:
            name = self._lookup(path)
            self._spent(name)
            if lies.max_open_files and self.open_files >= lies.max_open_files:
                raise asyncssh.SFTPFailure("maximum concurrent transfers exceeded")
            if lies.busy_second_open and self.open_files:
                raise asyncssh.SFTPPermissionDenied(BUSY_TEXT)
            self.open_files += 1
            self.opened.add(name)
            return name

        def read(self, file_obj: object, offset: int, size: int) -> bytes:
            data = lies.files[file_obj]  # type: ignore[index]
            if lies.short_reads:
                size = min(size, lies.short_reads)
            if lies.short_first_read and file_obj not in self.short_served:
                self.short_served.add(file_obj)  # type: ignore[arg-type]
                size = min(size, lies.short_first_read)
            chunk = data[offset : offset + size]
            if lies.read_once and chunk:
                served = self.served.setdefault(file_obj, [])  # type: ignore[arg-type]
                if any(start < offset + len(chunk) and offset < end for start, end in served):
                    lies.spent_requests += 1
                    raise asyncssh.SFTPNoSuchFile("no such file")
                served.append((offset, offset + len(chunk)))
            if chunk and lies.extra_per_read:
                chunk += b"\0" * lies.extra_per_read
            return chunk

        def close(self, file_obj: object) -> None:
            self.open_files -= 1
            if (lies.read_once or lies.delete_on_close) and lies.files.pop(file_obj, None) is not None:  # type: ignore[call-overload]
                lies.removed.append(file_obj)  # type: ignore[arg-type]

        def remove(self, path: bytes) -> None:
            # REMOTE_AFTER=delete: the job's own removal, kept apart from the server's.
            name = self._lookup(path)
            del lies.files[name]
            lies.deleted.append(name)

        def exit(self) -> None:
            if self._idle is not None:
                self._idle.cancel()

    return HostileServer


class HostileSftpServer:
    def __init__(self, workdir: Path, client_public_key: Path, lies: Lies) -> None:
        self.lies = lies
        self.host_key = asyncssh.generate_private_key("ssh-ed25519")
        self.client_public_key = client_public_key
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._server: asyncssh.SSHAcceptor | None = None
        self.workdir = workdir

    def known_hosts_line(self) -> str:
        public = self.host_key.export_public_key().decode().split()
        return f"[127.0.0.1]:{self.port} {public[0]} {public[1]}\n"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._ready.set()
        self._loop.run_forever()

    async def _start(self) -> None:
        lies = self.lies
        self._server = await asyncssh.listen(
            "127.0.0.1",
            0,
            server_host_keys=[self.host_key],
            authorized_client_keys=str(self.client_public_key),
            sftp_factory=_server_class(lies),
            process_factory=_hash_process(lies) if lies.exec_hash else None,
            server_factory=lambda: _Limits(lies.channel_limit),
            allow_scp=False,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    def start(self) -> HostileSftpServer:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the hostile SFTP server did not start")
        return self

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def _hash_process(lies: Lies) -> object:
    """An exec handler that runs `sha256sum -- PATH` over the served files."""

    def run(process: asyncssh.SSHServerProcess) -> None:
        words = shlex.split(process.command or "")
        if words[:2] != ["sha256sum", "--"] or len(words) != 3:
            process.stderr.write(f"unknown command {process.command!r}\n")
            process.exit(127)
            return
        name = words[2].rsplit("/", 1)[-1].encode()
        if name not in lies.files:
            process.stderr.write(f"sha256sum: {words[2]}: No such file or directory\n")
            process.exit(1)
            return
        process.stdout.write(f"{hashlib.sha256(lies.files[name]).hexdigest()}  {words[2]}\n")
        process.exit(0)

    return run


class _Limits(asyncssh.SSHServer):  # type: ignore[misc]
    """The connection's owner: how many session channels it allows (0: no limit)."""

    def __init__(self, channel_limit: int) -> None:
        self.channel_limit = channel_limit


_original_session_open = asyncssh.connection.SSHServerConnection._process_session_open


def _session_open(self: asyncssh.connection.SSHServerConnection, packet: object) -> object:
    """Refuse a session channel beyond the owner's channel_limit for this connection."""
    limit = getattr(self._owner, "channel_limit", 0)
    if limit:
        self._hostile_sessions = getattr(self, "_hostile_sessions", 0) + 1
        if self._hostile_sessions > limit:
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_RESOURCE_SHORTAGE, "maximum number of channels per connection exceeded"
            )
    return _original_session_open(self, packet)


# Changes nothing for servers without a channel limit.
asyncssh.connection.SSHServerConnection._process_session_open = _session_open

_original_run_sftp_server = asyncssh.stream.run_sftp_server


def _run_sftp_server(sftp_server: object, reader: object, writer: object, version: int) -> object:
    """Write the server's login banner, if any, into the channel before the SFTP stream."""
    banner: bytes = getattr(sftp_server, "login_banner", b"")
    if banner:
        writer.write(banner)  # type: ignore[attr-defined]
    return _original_run_sftp_server(sftp_server, reader, writer, version)


asyncssh.stream.run_sftp_server = _run_sftp_server


def hostile_env(hostile: HostileSftpServer, tmp: Path, client_key: Path, **extra: object) -> dict[str, str]:
    known = tmp / "hostile_known_hosts"
    known.write_text(hostile.known_hosts_line())
    env: dict[str, object] = {
        "SFTP_HOST": "127.0.0.1",
        "SFTP_PORT": hostile.port,
        "SFTP_USER": "anyone",
        "SFTP_KEY_FILE": client_key,
        "SFTP_KNOWN_HOSTS": known,
        "SFTP_DIR": "/remote",
        "LOCAL_DIR": tmp / "jail" / "local",
        "SERVER_DIR": tmp / "jail" / "server",
        "LAST_FILE_RECORD": tmp / "jail" / "state" / "last_file.txt",
        "LOG_FILE": tmp / "jail" / "state" / "job.log",
        "MIN_FILE_AGE": 0,
        "SELECT_MODE": "all",
        "RETRY_MAX_TRIES": 1,
        "CONNECT_TIMEOUT": 10,
        **extra,
    }
    return {k: str(v) for k, v in env.items()}


# -- A server that does not offer posix-rename (REMOTE_AFTER=move tests) --------

_original_handler_init = asyncssh.sftp.SFTPServerHandler.__init__


def _handler_init(self: asyncssh.sftp.SFTPServerHandler, server: asyncssh.SFTPServer, *args: object) -> None:
    """Leave out of the VERSION reply the extensions the server class hides."""
    _original_handler_init(self, server, *args)
    hidden: frozenset[bytes] = getattr(server, "hidden_extensions", frozenset())
    if hidden:
        self._extensions = [(name, data) for name, data in self._extensions if name not in hidden]
    extra: list[tuple[bytes, bytes]] = getattr(server, "extra_extensions", [])
    if extra:
        self._extensions = [*self._extensions, *extra]


# Changes nothing for servers that hide no extension (all the others).
asyncssh.sftp.SFTPServerHandler.__init__ = _handler_init


class _DirectoryWithoutPosixRename(asyncssh.SFTPServer):  # type: ignore[misc]
    """AsyncSSH's own server of a real directory, without posix-rename: not offered, and refused."""

    hidden_extensions = frozenset({b"posix-rename@openssh.com"})
    lies = Lies()

    def posix_rename(self, oldpath: bytes, newpath: bytes) -> None:
        raise asyncssh.SFTPOpUnsupported("posix-rename is not offered")

    def rename(self, oldpath: bytes, newpath: bytes) -> None:
        refused = self.lies.rename_refused
        if b"*" in refused or newpath.rsplit(b"/", 1)[-1] in refused:
            raise asyncssh.SFTPPermissionDenied("rename refused by the storage policy")
        super().rename(oldpath, newpath)


class NoPosixRenameServer(HostileSftpServer):
    """Serves ``root`` (as "/") truthfully, with plain SFTP rename only."""

    def __init__(self, workdir: Path, client_public_key: Path, root: Path, lies: Lies | None = None) -> None:
        super().__init__(workdir, client_public_key, lies or Lies())
        self.root = root

    async def _start(self) -> None:
        root = str(self.root)
        lies = self.lies

        def serve(chan: object) -> _DirectoryWithoutPosixRename:
            server = _DirectoryWithoutPosixRename(chan, chroot=root)
            server.lies = lies
            return server

        self._server = await asyncssh.listen(
            "127.0.0.1",
            0,
            server_host_keys=[self.host_key],
            authorized_client_keys=str(self.client_public_key),
            sftp_factory=serve,
            allow_scp=False,
        )
        self.port = self._server.sockets[0].getsockname()[1]
