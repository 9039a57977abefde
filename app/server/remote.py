"""Connecting to the SFTP server and listing it.

This is the one boundary where paramiko and socket exceptions become the job's
own (``remote_errors``); nothing above it sees a library exception.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import os
import posixpath
import select
import socket
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paramiko
from loguru import logger

from app import interrupt
from app.config import Settings
from app.endpoints import Endpoint
from app.errors import AuthError, ConfigError, HostKeyError, RemoteFileError, RemoteMissingError, TransientError
from app.selection import RemoteEntry
from app.server import crypto_policy, host_certs, known_hosts, netpath
from app.server.crypto_policy import Negotiated
from app.server.inflight import ReadsInFlight
from app.server.inflight import for_server as reads_for_server
from app.server.pipeline import (
    ListingTooLongError,
    ReadLimit,
    announced,
    digests_offered,
    list_directory,
    open_sftp,
)

# The host-key algorithms that can verify a known_hosts entry of each key type.
_ALGORITHMS_FOR_KEY_TYPE = {
    "ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"),
}

# Unusable known_hosts lines named one by one in the warning, before they are counted.
_UNUSABLE_NAMED = 5

# paramiko's own default is 32 KiB. The server sends channel data in packets of at
# most this size, and paramiko pays a fixed Python cost per packet. Measured by
# make bench against OpenSSH 9.2: 128 KiB beat 32 KiB and 256 KiB on loopback
# and at 20 ms round trip alike (bench/RESULTS.md).
MAX_PACKET_SIZE = 128 * 1024

# TCP keepalive on the socket itself: notices a peer that vanished even while
# the SSH layer is idle and the kernel would otherwise wait for hours.
_TCP_KEEPIDLE = 30
_TCP_KEEPINTVL = 10
_TCP_KEEPCNT = 3

# Handshake, login and opening the sftp channel each get CONNECT_TIMEOUT from
# paramiko; the watchdog allows the whole sequence a few of those.
_CONNECT_BUDGET = 3

# SFTP status errors arrive as OSError with these errno values (or none at all);
# they concern one file, not the connection.
_FILE_ERRNOS = {errno.ENOENT, errno.EACCES, errno.EPERM, None}


def prefer(offered: tuple[str, ...], first: tuple[str, ...]) -> tuple[str, ...]:
    """The same algorithms, with those in ``first`` moved to the front (none added)."""
    head = [a for a in first if a in offered]
    return tuple(head + [a for a in offered if a not in head])


def fingerprint(key: paramiko.PKey) -> str:
    """The key's SHA-256 fingerprint as ``ssh-keygen -lf`` prints it."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def known_hosts_name(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


@contextlib.contextmanager
def remote_errors(action: str, *, conn: Connection | None = None) -> Iterator[None]:
    """Translate library exceptions raised while doing ``action``.

    With ``conn`` (an established session), SFTP status errors (no such file,
    permission denied, failure) are about one remote file and become
    RemoteFileError, but only while the connection is still alive: paramiko
    reports a dead channel with the same errno-less OSError ("Socket is
    closed") as a failure status, and a dead connection calls for a reconnect.
    """
    file_level = conn is not None
    try:
        yield
    except TimeoutError:
        raise TransientError(f"{action}: timed out") from None
    except LoginRefused as exc:
        raise AuthError(f"{action}: authentication failed: {exc}") from None
    except paramiko.AuthenticationException as exc:
        raise AuthError(f"{action}: authentication failed ({exc.__class__.__name__})") from None
    except paramiko.ChannelException as exc:
        # A limit of channels (AWS Transfer allows 10 per connection) or a policy: a new connection may get one.
        raise TransientError(f"{action}: the server refused to open a channel: {channel_refusal(exc)}") from None
    except (paramiko.SSHException, EOFError) as exc:
        raise TransientError(f"{action}: {_dropped(exc)}") from None
    except paramiko.SFTPError as exc:
        # paramiko's own complaints about the reply stream ("Expected handle", "Garbage packet
        # received" mid-session): the session is out of step, a new one may not be.
        raise TransientError(f"{action}: the server broke the SFTP protocol ({_short(exc)})") from None
    except UnicodeDecodeError as exc:
        # paramiko decodes a status message as strict UTF-8; some servers send their locale's
        # bytes (cp1252 "Datei nicht gefunden: Gr\xf6\xdfe"). The refusal stands; its words are shown as received.
        words = bytes(exc.object).decode("utf-8", "replace").strip()[:200]
        if file_level and conn is not None and conn.alive():
            raise RemoteFileError(f"{action}: the server refused: {words!r}") from None
        raise TransientError(f"{action}: the server sent a reply that is not UTF-8: {words!r}") from None
    except socket.gaierror as exc:
        raise TransientError(f"{action}: cannot resolve host ({exc.strerror})") from None
    except ConnectionError as exc:
        raise TransientError(f"{action}: {exc.strerror or exc.__class__.__name__}") from None
    except OSError as exc:
        if file_level and conn is not None and conn.alive() and exc.errno in _FILE_ERRNOS:
            reason = os.strerror(exc.errno) if exc.errno else (_short(exc) or "server reported a failure")
            kind = RemoteMissingError if exc.errno == errno.ENOENT else RemoteFileError
            refusal = kind(f"{action}: {reason}")
            refusal.said = exc.strerror or _short(exc)
            raise refusal from None
        raise TransientError(f"{action}: {exc.strerror or _short(exc)}") from None


def channel_refusal(exc: paramiko.ChannelException) -> str:
    """A refused channel open in the server's own words: its reason text and code."""
    text = str(exc.text or "").strip()[:200]
    return f"{text!r} (reason code {exc.code})" if text else f"reason code {exc.code}"


def _dropped(exc: BaseException) -> str:
    """paramiko's words, completed where they end without a reason: its "Server connection
    dropped: " carries the text of an EOFError, which is empty when the server hung up."""
    text = _short(exc)
    if isinstance(exc, EOFError) or text.endswith(":") or text == exc.__class__.__name__:
        return f"{text.rstrip(':')}: the server closed the connection"
    return text


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else exc.__class__.__name__


def load_private_key(settings: Settings) -> paramiko.PKey | None:
    """Load SFTP_KEY_FILE up front so a bad key is a configuration error, not a retry."""
    path = settings.sftp_key_file
    if path is None:
        return None
    key = _load_key(settings, path, "SFTP_KEY_FILE")
    cert = settings.sftp_cert_file
    if cert is not None:
        try:
            key.load_certificate(str(cert))
            # paramiko checks the key type only: a certificate for another key of the
            # same type would be offered, and refused by the server as a login failure.
            if not _certifies(key):
                raise ValueError("another key")
        except ValueError:
            raise ConfigError(
                f"SFTP_CERT_FILE={cert} is not a certificate for the key in SFTP_KEY_FILE={path}"
            ) from None
        except (OSError, paramiko.SSHException) as exc:
            raise ConfigError(f"SFTP_CERT_FILE={cert}: cannot load it ({_short(exc)})") from None
    return key


def _certifies(key: paramiko.PKey) -> bool:
    """Whether the certificate loaded into ``key`` is for that key (PROTOCOL.certkeys:
    the type and a nonce, then the same public fields as the key's own blob)."""
    if key.public_blob is None:
        return False
    cert = paramiko.Message(key.public_blob.key_blob)
    cert.get_string()
    cert.get_string()
    own = paramiko.Message(key.asbytes())
    own.get_string()
    return bool(cert.get_remainder().startswith(own.get_remainder()))


def _load_key(settings: Settings, path: Path, name: str) -> paramiko.PKey:
    passphrase = settings.sftp_key_passphrase
    try:
        return paramiko.PKey.from_path(str(path), passphrase.encode("utf-8") if passphrase else None)
    except paramiko.PasswordRequiredException:
        raise ConfigError(f"{name}={path} is encrypted: set SFTP_KEY_PASSPHRASE") from None
    except TypeError:
        # cryptography's way of saying a passphrase is needed (or is not).
        if passphrase:
            raise ConfigError(f"{name}={path} is not encrypted: unset SFTP_KEY_PASSPHRASE") from None
        raise ConfigError(f"{name}={path} is encrypted: set SFTP_KEY_PASSPHRASE") from None
    except paramiko.SSHException as exc:
        hint = "wrong SFTP_KEY_PASSPHRASE, or " if settings.sftp_key_passphrase else ""
        raise ConfigError(f"{name}={path}: cannot load it ({hint}{_short(exc)})") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{name}={path}: cannot load it ({exc.__class__.__name__})") from None


class HostKeyVerifier:
    """known_hosts checking with OpenSSH's semantics (strict or accept-new).

    With ``record=False`` (a dry run) a new key that accept-new would trust is
    trusted in memory only, and nothing is written.
    """

    def __init__(self, settings: Settings, *, record: bool = True, jump: Endpoint | None = None) -> None:
        self.path = settings.sftp_known_hosts
        self.policy = settings.sftp_host_key_policy
        self.host = jump.host if jump else settings.sftp_host
        self.port = jump.port if jump else settings.sftp_port
        self.name = known_hosts_name(self.host, self.port)
        # SFTP_HOST_KEY_FINGERPRINT pins the server's key; a jump host is checked by known_hosts alone.
        self.pins = () if jump else settings.sftp_host_key_fingerprint
        self.may_write = record
        entries = known_hosts.HostKeys()
        if self.path.is_file():
            try:
                # Undecodable bytes can only spoil the line they are on, which is then named.
                text = self.path.read_bytes().decode("utf-8", errors="replace")
            except OSError as exc:
                raise ConfigError(f"SFTP_KNOWN_HOSTS={self.path}: cannot read it ({exc.strerror})") from None
            entries = known_hosts.parse(text, self.name)
            self._warn_unusable(entries.unusable)
        elif self.path.exists():
            raise ConfigError(f"SFTP_KNOWN_HOSTS={self.path} is not a file")
        self.known: dict[str, list[bytes]] = {t: list(blobs) for t, blobs in entries.keys.items()}
        self.revoked = entries.revoked
        self.authorities = entries.authorities

    def _warn_unusable(self, unusable: tuple[known_hosts.Unusable, ...]) -> None:
        if not unusable:
            return
        shown = "; ".join(f"line {u.line}: {u.why}" for u in unusable[:_UNUSABLE_NAMED])
        more = len(unusable) - _UNUSABLE_NAMED
        if more > 0:
            shown += f"; and {more} more line(s)"
        logger.warning("SFTP_KNOWN_HOSTS={}: skipped what the job cannot use ({})", self.path, shown)

    def preferred_algorithms(self, offered: tuple[str, ...]) -> tuple[str, ...]:
        """Ask first for the key types we already know, as OpenSSH does, so that a
        server with several host keys is not reported as changed."""
        wanted: list[str] = []
        for key_type in self.known:
            wanted.extend(_ALGORITHMS_FOR_KEY_TYPE.get(key_type, (key_type,)))
        # A trusted CA: ask for a certificate first, as ssh(1) does (paramiko offers none by itself).
        certs = host_certs.CERT_ALGORITHMS if self.authorities else ()
        return certs + prefer(offered, tuple(wanted))

    def verify(self, key: paramiko.PKey) -> None:
        offered = f"{key.get_name()} {fingerprint(key)}"
        revoked_at = self.revoked.get(key.asbytes())
        if revoked_at is not None:
            # Checked before anything else: no pin or policy makes a revoked key good again.
            raise HostKeyError(
                f"host key for {self.name} is marked @revoked in {self.path} (line {revoked_at}):"
                f" the server offered {offered}; refusing it"
            )
        if self.pins:
            # The pin is the operator's out-of-band word on the key: it decides alone.
            if fingerprint(key) in self.pins:
                return
            raise HostKeyError(
                f"host key for {self.name} does not match SFTP_HOST_KEY_FINGERPRINT: the server offered {offered}"
            )
        if host_certs.is_certificate(key):
            self._verify_certificate(key, offered)
            return
        known = self.known.get(key.get_name())
        if known is not None:
            if key.asbytes() in known:
                return
            raise HostKeyError(
                f"host key for {self.name} does not match {self.path}: the server offered {offered}."
                " It may have been replaced, or the connection intercepted; verify it out of band"
            )
        if self.known:
            raise HostKeyError(
                f"host key for {self.name} is of a type not recorded in {self.path}: the server offered"
                f" {offered}; verify it out of band"
            )
        if self.policy != "accept-new":
            if not self.path.exists():
                raise HostKeyError(
                    f"SFTP_KNOWN_HOSTS={self.path} does not exist, so the host key of {self.name} cannot be"
                    f" checked (the server offered {offered}). To create it safely: ssh-keyscan -p {self.port}"
                    f" -t {key.get_name()} {self.host} > {self.path}, then check that `ssh-keygen -lf {self.path}`"
                    " shows the fingerprint the server's administrator gives you out of band; or run once with"
                    " SFTP_HOST_KEY_POLICY=accept-new"
                )
            raise HostKeyError(
                f"host key for {self.name} is not in {self.path} (SFTP_HOST_KEY_POLICY=strict):"
                f" the server offered {offered}; verify it out of band and add it, or use accept-new once"
            )
        if not self.may_write:
            logger.warning(
                "dry run: the new host key of {} ({}) would be recorded in {} (SFTP_HOST_KEY_POLICY=accept-new);"
                " nothing written",
                self.name,
                offered,
                self.path,
            )
        else:
            self._record(key)
            logger.warning(
                "recorded the new host key of {} ({}) in {} (SFTP_HOST_KEY_POLICY=accept-new);"
                " verify this fingerprint out of band",
                self.name,
                offered,
                self.path,
            )
        self.known[key.get_name()] = [key.asbytes()]

    def _verify_certificate(self, key: paramiko.PKey, offered: str) -> None:
        """A host certificate is good on its CA's word alone (known_hosts' @cert-authority)."""
        try:
            cert = host_certs.parse(key.public_blob.key_blob)
            host_certs.check(
                cert,
                authorities=self.authorities,
                revoked=frozenset(self.revoked),
                host=self.host,
                now=time.time(),
            )
        except host_certs.CertificateError as exc:
            raise HostKeyError(
                f"host certificate of {self.name} refused: {exc} (the server offered {offered}, in {self.path})"
            ) from None
        logger.debug("host certificate of {} accepted: key id {!r}, serial {}", self.name, cert.key_id, cert.serial)

    def _record(self, key: paramiko.PKey) -> None:
        line = f"{self.name} {key.get_name()} {key.get_base64()}\n"
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            try:
                # A file whose last line lacks its newline would have the new entry glued to it.
                end = os.lseek(fd, 0, os.SEEK_END)
                if end and os.pread(fd, 1, end - 1) != b"\n":
                    line = "\n" + line
                # One write of a line opened O_APPEND: a reader sees the whole line or none of it.
                os.write(fd, line.encode("ascii"))
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise HostKeyError(f"cannot record the new host key in {self.path}: {exc.strerror}") from None


@dataclass
class Connection:
    """One session, and what the job has learned about its server so far."""

    transport: paramiko.Transport
    sftp: paramiko.SFTPClient
    read_limit: ReadLimit
    # The TCP socket under every hop: cutting it ends the session, through a jump host too.
    base: socket.socket | None = None
    jump: paramiko.Transport | None = None
    negotiated: Negotiated | None = None
    # The server removes a file once it has been read (IBM Sterling's extractability
    # count, post-processing servers): a file is never stat'ed, opened or proven by
    # path again after its one read; learned from the first "no such file" after one.
    removes_after_read: bool = False
    # The server allows one open file at a time (it refused an OPEN while others were
    # open): app/catchup.py fetches one file at a time.
    one_open_file: bool = False
    server: tuple[str, int] = ("", 0)  # (SFTP_HOST, SFTP_PORT), for what is said once per run per server
    # What this session has learned about the server, for the run report's server profile.
    exec_available: bool | None = None  # REMOTE_HASH_COMMAND ran (True), was refused (False), not tried (None)
    exec_refusal: str = ""  # the server's refusal of an exec channel, as logged
    exec_channels_opened: int = 0  # exec channels this connection opened (servers limit them: AWS allows 10)
    digest_unparseable: str = ""  # why a check-file reply could not be read, if one could not
    rename_refusals: dict[str, str] = field(default_factory=dict)  # archive target -> the server's words
    # READs kept in flight: PIPELINE_DEPTH, lowered by the server's failures under it, for the whole run.
    reads: ReadsInFlight = field(default_factory=lambda: ReadsInFlight(1))

    @property
    def extensions(self) -> dict[str, bytes]:
        """The SFTP extensions the server announced in its VERSION reply."""
        return announced(self.sftp) or {}

    @property
    def digests_offered(self) -> bool | None:
        """Whether the server hashes files (check-file): None until asked this session."""
        return digests_offered(self.sftp)

    def alive(self) -> bool:
        channel = self.sftp.get_channel()
        jump_alive = self.jump is None or self.jump.is_active()
        return bool(self.transport.is_active() and jump_alive and channel is not None and not channel.closed)

    def abort(self) -> None:
        """Cut the TCP connection under a blocked read; safe inside a signal handler."""
        _shutdown(self.base if self.base is not None else self.transport.sock)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.sftp.close()
        with contextlib.suppress(Exception):
            self.transport.close()
        if self.jump is not None:
            with contextlib.suppress(Exception):
                self.jump.close()


def _open_socket(settings: Settings, host: str, port: int) -> socket.socket:
    """A TCP connection to ``host`` (the server, a jump host or a proxy), as
    socket.create_connection makes it, except that a stop request ends every step at
    once: a blocking getaddrinfo or connect would only notice it after CONNECT_TIMEOUT."""
    addresses = interrupt.call(lambda: socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
    failure: OSError = OSError(f"no address for {host}")
    for family, kind, proto, _, address in addresses:
        sock = socket.socket(family, kind, proto)
        try:
            _connect_interruptibly(sock, address, settings.connect_timeout)
        except OSError as exc:
            sock.close()
            failure = exc
            continue
        except BaseException:
            sock.close()
            raise
        sock.settimeout(settings.connect_timeout)
        _tune(sock)
        return sock
    raise failure


def _connect_interruptibly(sock: socket.socket, address: tuple[Any, ...], timeout: float) -> None:
    """connect() without blocking, looking for a stop request every POLL_SECONDS."""
    sock.setblocking(False)
    code = sock.connect_ex(address)
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    deadline = time.monotonic() + timeout
    while code in (errno.EINPROGRESS, errno.EAGAIN):
        interrupt.check()
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out")
        if poller.poll(min(left, interrupt.POLL_SECONDS) * 1000):
            interrupt.check()
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if code:
        raise OSError(code, os.strerror(code))


def _tune(sock: socket.socket) -> None:
    # SFTP requests are small packets; without this, Nagle holds each one back
    # until the previous is acknowledged, and delayed ACKs make that ~40 ms.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (
        ("TCP_KEEPIDLE", _TCP_KEEPIDLE),
        ("TCP_KEEPINTVL", _TCP_KEEPINTVL),
        ("TCP_KEEPCNT", _TCP_KEEPCNT),
    ):
        if hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


class LoginRefused(paramiko.AuthenticationException):  # type: ignore[misc]
    """Every credential was refused: which ones were offered (never their content) and
    the methods the server said it accepts."""

    def __init__(self, tried: list[str], offered: list[str] | None) -> None:
        methods = ", ".join(offered) if offered else "not said"
        super().__init__(f"tried {'; '.join(tried) or 'no credential'}; the server accepts: {methods}")


def _offered_methods(transport: paramiko.Transport, user: str) -> list[str] | None:
    """The methods the server accepts, learned from its answer to "none" (RFC 4252
    5.2): no credential is sent, and OpenSSH counts no failure for it."""
    try:
        transport.auth_none(user)
    except paramiko.BadAuthenticationType as exc:
        return list(exc.allowed_types)
    except (paramiko.SSHException, EOFError, OSError):
        return None
    return []


def _authenticate(
    transport: paramiko.Transport,
    settings: Settings,
    key: paramiko.PKey | None,
    *,
    user: str | None = None,
    password: str | None = None,
    key_label: str | None = None,
    password_label: str | None = None,
) -> None:
    """Keys first (SFTP_KEY_FILE, then the agent's if allowed), then the password.
    ``user`` and ``password`` are a jump host's; by default the server's. The labels
    say where the key and the password came from, for the refusal's message."""
    user = user or settings.sftp_user
    password = password if password is not None else settings.sftp_pass
    key_label = key_label or f"key SFTP_KEY_FILE={settings.sftp_key_file}"
    if password_label is None:
        pass_file = settings.sftp_pass_file
        password_label = f"password from SFTP_PASS_FILE={pass_file}" if pass_file else "password from SFTP_PASS"
    keys: list[paramiko.PKey] = [key] if key is not None else []
    agent = paramiko.Agent() if settings.sftp_use_agent else None
    tried: list[str] = []
    offered: list[str] | None = None
    try:
        if agent is not None:
            keys.extend(agent.get_keys())
        for candidate in keys:
            label = key_label if candidate is key else "a key of the ssh-agent"
            tried.append(f"{label} ({candidate.get_name()} {fingerprint(candidate)})")
            try:
                remaining = transport.auth_publickey(user, candidate)
            except paramiko.BadAuthenticationType as exc:
                offered = list(exc.allowed_types)
                break
            except paramiko.AuthenticationException:
                continue
            # An empty list means fully authenticated; otherwise the server wants a
            # second factor (publickey,password), which the password may satisfy.
            if not remaining:
                return
            tried[-1] += " (accepted, but not enough alone)"
            offered = list(remaining)
            break
    finally:
        if agent is not None:
            agent.close()
    if password is None:
        raise LoginRefused(tried, offered if offered is not None else _offered_methods(transport, user))
    tried.append(password_label)
    try:
        transport.auth_password(user, password)
    except paramiko.BadAuthenticationType as exc:
        raise LoginRefused(tried, list(exc.allowed_types)) from None
    except paramiko.AuthenticationException:
        raise LoginRefused(tried, _offered_methods(transport, user)) from None


def connect(settings: Settings, key: paramiko.PKey | None, verifier: HostKeyVerifier) -> Connection:
    """Open an authenticated SFTP session, directly or through SFTP_PROXY and
    SFTP_JUMP_HOST. Raises the job's own errors only."""
    path = netpath.route(settings)
    via = f" through proxy {path.proxy.display}" if path.proxy else ""
    with remote_errors(f"connect to {path.first.name}{via}"):
        sock = netpath.open_stream(path, lambda h, p: _open_socket(settings, h, p), settings.connect_timeout)
    # From here on, a stop request cuts the socket: paramiko's thread sees the
    # end of the stream and whatever step the session was in fails at once.
    with interrupt.on_interrupt(lambda: _shutdown(sock)):
        try:
            _tune(sock)
            netpath.tunnel(sock, path)
            return _through(settings, path, sock, key, verifier)
        except BaseException:
            sock.close()
            # A cut during login looks like a refused login: report it as the stop it is.
            interrupt.check()
            raise


def _through(
    settings: Settings, path: netpath.Route, sock: socket.socket, key: paramiko.PKey | None, verifier: HostKeyVerifier
) -> Connection:
    """The SSH session(s) on ``sock``: the jump host's first, when there is one."""
    target = f"{settings.sftp_host}:{settings.sftp_port}"
    if path.jump is None:
        with _budget(settings, sock, target):
            transport, negotiated = _start_transport(settings, sock, key, verifier, None)
            return _open_session(settings, transport, negotiated, sock, None)
    jump = path.jump
    label = f"jump host {jump.name}"
    jump_key = key
    if settings.sftp_jump_key_file is not None:
        jump_key = _load_key(settings, settings.sftp_jump_key_file, "SFTP_JUMP_KEY_FILE")
    jump_key_file = settings.sftp_jump_key_file
    key_label = (
        f"key SFTP_JUMP_KEY_FILE={jump_key_file}" if jump_key_file else f"key SFTP_KEY_FILE={settings.sftp_key_file}"
    )
    jump_pass_file = settings.sftp_jump_pass_file
    # Without a password of its own, the jump host is offered the server's (see _authenticate).
    password_label = f"password from SFTP_JUMP_PASS_FILE={jump_pass_file}" if jump_pass_file else None
    hop = _Hop(
        label,
        settings.sftp_jump_user or jump.user or settings.sftp_user,
        settings.sftp_jump_pass,
        key_label,
        password_label,
    )
    jump_verifier = HostKeyVerifier(settings, record=verifier.may_write, jump=jump)
    # Each hop has the connect budget of its own: the jump host's covers its login and the
    # channel it opens, the server's its login and the sftp session.
    with _budget(settings, sock, label, f"channel to {path.target.name}"):
        jump_transport, _ = _start_transport(settings, sock, jump_key, jump_verifier, hop)
        try:
            with remote_errors(f"open a channel through {label} to {path.target.name}"):
                channel = netpath.forward(
                    jump_transport,
                    label,
                    path.target,
                    settings.ssh_window_size,
                    MAX_PACKET_SIZE,
                    settings.connect_timeout,
                )
        except BaseException:
            jump_transport.close()
            raise
    try:
        with _budget(settings, sock, target):
            transport, negotiated = _start_transport(settings, channel, key, verifier, None)
            return _open_session(settings, transport, negotiated, sock, jump_transport)
    except BaseException:
        jump_transport.close()
        raise


@dataclass(frozen=True)
class _Hop:
    """A jump host's login, and the name its messages go by."""

    label: str
    user: str
    password: str | None
    key_label: str  # where its key came from, for a refused login's message
    password_label: str | None


def _start_transport(
    settings: Settings,
    stream: socket.socket | paramiko.Channel,
    key: paramiko.PKey | None,
    verifier: HostKeyVerifier,
    hop: _Hop | None,
) -> tuple[paramiko.Transport, Negotiated]:
    """Handshake, host-key check and login on ``stream``: the server's, or a jump host's with ``hop``."""
    target = hop.label if hop else f"{settings.sftp_host}:{settings.sftp_port}"
    user = hop.user if hop else settings.sftp_user
    with remote_errors(f"connect to {target}"):
        transport = paramiko.Transport(
            stream,
            default_window_size=settings.ssh_window_size,
            default_max_packet_size=MAX_PACKET_SIZE,
        )
    try:
        logger.debug("SSH handshake with {}", target)
        offers = crypto_policy.OfferLog(transport)
        with remote_errors(f"SSH handshake with {target}"):
            transport.banner_timeout = settings.connect_timeout
            transport.handshake_timeout = settings.connect_timeout
            transport.auth_timeout = settings.connect_timeout
            # paramiko reads these per instance; lowering them rekeys more often on long transfers.
            transport.packetizer.REKEY_BYTES = settings.ssh_rekey_bytes
            options = transport.get_security_options()
            options.key_types = verifier.preferred_algorithms(tuple(options.key_types))
            crypto_policy.apply(options, settings.ssh_algorithms)
            try:
                transport.start_client(timeout=settings.connect_timeout)
            except paramiko.IncompatiblePeer as exc:
                raise crypto_policy.refusal(settings.ssh_algorithms, target, exc, offers) from None
            finally:
                offers.close()
            server_key = transport.get_remote_server_key()
        interrupt.check()
        try:
            verifier.verify(server_key)
        except HostKeyError as exc:
            if hop is None:
                raise
            raise HostKeyError(f"{hop.label}: {exc}") from None
        negotiated = crypto_policy.negotiated(transport, offers)
        _report_algorithms(settings, target, negotiated)
        logger.debug("logging in to {} as {}", target, user)
        with remote_errors(f"log in to {target} as {user}"):
            if hop is None:
                _authenticate(transport, settings, key)
            else:
                _authenticate(
                    transport,
                    settings,
                    key,
                    user=hop.user,
                    password=hop.password,
                    key_label=hop.key_label,
                    password_label=hop.password_label,
                )
            if settings.keepalive_interval:
                transport.set_keepalive(settings.keepalive_interval)
            interrupt.check()
    except BaseException:
        transport.close()
        raise
    return transport, negotiated


def _report_algorithms(settings: Settings, target: str, negotiated: Negotiated) -> None:
    logger.bind(ssh=negotiated.as_dict()).info("SSH session with {}: {}", target, negotiated)
    weak = negotiated.weak()
    if weak:
        logger.warning(
            "SSH_ALGORITHMS={}: the session with {} uses weak algorithms: {}",
            settings.ssh_algorithms,
            target,
            ", ".join(weak),
        )


@contextlib.contextmanager
def _budget(settings: Settings, base: socket.socket, target: str, outcome: str = "SFTP session") -> Iterator[None]:
    """paramiko waits up to an hour to open a channel and without any limit for the
    sftp subsystem's reply; a link that stalls there would hang the run. The
    watchdog cuts the socket if the whole sequence overruns its budget."""
    overran = threading.Event()

    def cut() -> None:
        overran.set()
        _shutdown(base)

    watchdog = threading.Timer(_CONNECT_BUDGET * settings.connect_timeout, cut)
    watchdog.daemon = True
    watchdog.start()
    try:
        yield
    except TransientError:
        if overran.is_set():
            budget = _CONNECT_BUDGET * settings.connect_timeout
            raise TransientError(f"connect to {target}: no {outcome} within {budget} s") from None
        raise
    finally:
        watchdog.cancel()


def _open_session(
    settings: Settings,
    transport: paramiko.Transport,
    negotiated: Negotiated,
    base: socket.socket,
    jump: paramiko.Transport | None,
) -> Connection:
    target = f"{settings.sftp_host}:{settings.sftp_port}"
    try:
        with remote_errors(f"log in to {target} as {settings.sftp_user}"):
            logger.debug("opening the sftp session")
            sftp = open_sftp(transport, settings.ssh_window_size, MAX_PACKET_SIZE)
            # A read that waits this long without data means the link is dead,
            # even if TCP has not noticed: give up and let the job reconnect.
            sftp.get_channel().settimeout(settings.io_timeout)
            read_limit = ReadLimit(sftp)
    except BaseException:
        transport.close()
        raise
    return Connection(
        transport=transport,
        sftp=sftp,
        read_limit=read_limit,
        base=base,
        jump=jump,
        negotiated=negotiated,
        server=(settings.sftp_host, settings.sftp_port),
        reads=reads_for_server((settings.sftp_host, settings.sftp_port), settings.pipeline_depth),
    )


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def remote_path(settings: Settings, name: str) -> str:
    return posixpath.join(settings.sftp_dir, name) if settings.sftp_dir else name


def list_entries(conn: Connection, settings: Settings) -> list[RemoteEntry]:
    """SFTP_DIR's entries. A directory the server refuses to list (missing, not a
    directory, not this account's) is a configuration error: every run would fail the
    same way until SFTP_DIR or the account is fixed, so it is exit 2, never retried."""
    directory = settings.sftp_dir or "."
    try:
        with remote_errors(f"list remote directory {directory!r}", conn=conn):
            return list_directory(conn.sftp, directory, settings.max_listing, _entry)
    except ListingTooLongError:
        raise
    except RemoteFileError as exc:
        said = f"the server said {exc.said!r}" if exc.said else str(exc)
        raise ConfigError(f"SFTP_DIR={directory}: cannot list this directory on the server ({said})") from None


def stat_entry(conn: Connection, settings: Settings, name: str) -> RemoteEntry:
    with remote_errors(f"stat remote file {name!r}", conn=conn):
        attr = conn.sftp.stat(remote_path(settings, name))
    return _entry(name, attr)


def _entry(name: str, attr: paramiko.SFTPAttributes) -> RemoteEntry:
    # An attribute the server left out stays None: defaulting it (size 0, mtime
    # 1970, "not a file") would decide what happens to the file.
    size = None if attr.st_size is None else int(attr.st_size)
    mtime = None if attr.st_mtime is None else int(attr.st_mtime)
    is_regular = None if attr.st_mode is None else stat.S_ISREG(attr.st_mode)
    return RemoteEntry(name=name, size=size, mtime=mtime, is_regular=is_regular)
