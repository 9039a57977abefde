"""The way to the SFTP server: directly, through a proxy (HTTP CONNECT or SOCKS5),
and through a jump host's ``direct-tcpip`` channel.

This module makes byte streams; the SSH logins on them are remote.py's. Every
failure leaves here as one of the job's own errors, naming the proxy or jump
host (never a proxy's credentials).
"""

from __future__ import annotations

import base64
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass

import paramiko
import python_socks
from loguru import logger
from python_socks.sync import Proxy

from app import interrupt
from app.config import Settings
from app.endpoints import Endpoint, ProxyUrl, parse_jump, parse_proxy
from app.errors import AuthError, TransientError

# The proxy's reply is untrusted input: a status line longer than this, or a
# header block longer than _MAX_HEAD, is refused rather than read on.
_MAX_STATUS_LINE = 1024
_MAX_HEAD = 16 * 1024
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([0-9]{3})(?: ([\x20-\x7e]*))?")
# Characters of the proxy's reason phrase shown in an error.
_REASON_CHARS = 80

# SOCKS5 reply codes (RFC 1928 section 6) that retrying will not change.
_SOCKS_NOT_ALLOWED = 2
# The direct-tcpip open failure (RFC 4254 section 5.1) that is the jump host's policy.
_ADMINISTRATIVELY_PROHIBITED = 1

_warned: set[str] = set()


@dataclass(frozen=True)
class Route:
    """The hops of one connection: the first TCP connection goes to ``first``."""

    target: Endpoint
    jump: Endpoint | None
    proxy: ProxyUrl | None

    @property
    def first(self) -> Endpoint:
        return self.jump or self.target


def route(settings: Settings) -> Route:
    target = Endpoint(settings.sftp_user, settings.sftp_host, settings.sftp_port)
    jump = parse_jump("SFTP_JUMP_HOST", settings.sftp_jump_host) if settings.sftp_jump_host else None
    proxy = None
    if settings.sftp_proxy:
        proxy = parse_proxy("SFTP_PROXY", settings.sftp_proxy)
        if settings.sftp_proxy_pass is not None:
            proxy = ProxyUrl(proxy.scheme, proxy.host, proxy.port, proxy.username, settings.sftp_proxy_pass)
        elif proxy.password is not None and "url" not in _warned:
            _warned.add("url")
            logger.warning(
                "SFTP_PROXY carries the proxy password in the URL; prefer SFTP_PROXY_PASS_FILE"
                " (the password is kept out of every message either way)"
            )
    return Route(target, jump, proxy)


OpenTcp = Callable[[str, int], socket.socket]


def open_stream(r: Route, open_tcp: OpenTcp, timeout: float) -> socket.socket:
    """A TCP stream towards the first SSH hop: to it directly (``open_tcp``), to an HTTP
    proxy (``tunnel`` asks it for the rest), or through a SOCKS5 proxy."""
    dest = r.first
    if r.proxy is None:
        return open_tcp(dest.host, dest.port)
    if r.proxy.scheme == "http":
        try:
            return open_tcp(r.proxy.host, r.proxy.port)
        except OSError as exc:
            raise TransientError(f"cannot reach proxy {r.proxy.display}: {_why(exc)}") from None
    return _socks5(r.proxy, dest, timeout)


def tunnel(sock: socket.socket, r: Route) -> None:
    """The HTTP CONNECT on ``sock``, where the route has an HTTP proxy; called once a
    stop request would cut ``sock``."""
    if r.proxy is not None and r.proxy.scheme == "http":
        http_connect(sock, r.proxy, r.first.host, r.first.port)


def http_connect(sock: socket.socket, proxy: ProxyUrl, host: str, port: int) -> None:
    """Ask an HTTP proxy for a tunnel (RFC 9110 section 9.3.6); returns once it is open."""
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
    if proxy.username is not None:
        pair = f"{proxy.username}:{proxy.password or ''}".encode()
        lines.append("Proxy-Authorization: Basic " + base64.b64encode(pair).decode("ascii"))
    try:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("utf-8"))
        head = _read_head(sock, proxy)
    except TimeoutError:
        raise TransientError(f"proxy {proxy.display} did not answer CONNECT in time") from None
    except OSError as exc:
        raise TransientError(f"proxy {proxy.display}: {_why(exc)}") from None
    status_line = head.split(b"\r\n", 1)[0]
    match = _STATUS_LINE.fullmatch(status_line)
    if match is None:
        raise TransientError(f"proxy {proxy.display} sent no valid HTTP status line: {_shown(status_line)}")
    code = int(match.group(1))
    reason = _shown(match.group(2) or b"")
    if 200 <= code < 300:
        return
    said = f"{code} {reason}".strip()
    # 407 is the standard answer; tinyproxy, among others, answers a CONNECT with 401.
    if code in (401, 407):
        creds = "the credentials it was given" if proxy.username else "no credentials (set them in SFTP_PROXY)"
        raise AuthError(f"proxy {proxy.display} wants authentication ({said}); it refused {creds}")
    if code == 403:
        raise AuthError(f"proxy {proxy.display} refuses a tunnel to {authority} ({said})")
    raise TransientError(f"proxy {proxy.display} refused a tunnel to {authority} ({said})")


def _read_head(sock: socket.socket, proxy: ProxyUrl) -> bytes:
    """The reply's status line and headers, read a byte at a time: whatever follows the
    blank line is the SSH server's, and must stay in the socket for paramiko."""
    head = bytearray()
    while not head.endswith(b"\r\n\r\n"):
        byte = sock.recv(1)
        if not byte:
            raise TransientError(f"proxy {proxy.display} closed the connection before answering CONNECT")
        head += byte
        if b"\r\n" not in head and len(head) > _MAX_STATUS_LINE:
            raise TransientError(f"proxy {proxy.display} sent a status line longer than {_MAX_STATUS_LINE} bytes")
        if len(head) > _MAX_HEAD:
            raise TransientError(f"proxy {proxy.display} sent a reply header longer than {_MAX_HEAD} bytes")
    return bytes(head)


def _shown(raw: bytes) -> str:
    """Untrusted bytes for a log line: printable ASCII only, and short."""
    text = "".join(chr(b) if 0x20 <= b < 0x7F else "?" for b in raw[:_REASON_CHARS])
    return text + ("..." if len(raw) > _REASON_CHARS else "")


def _socks5(proxy: ProxyUrl, dest: Endpoint, timeout: float) -> socket.socket:
    """SOCKS5 by python-socks: the host name goes to the proxy to resolve (remote DNS),
    since the target is often only resolvable on the far side."""
    password = None if proxy.username is None else (proxy.password or "")
    client = Proxy(python_socks.ProxyType.SOCKS5, proxy.host, proxy.port, proxy.username, password, rdns=True)
    where = f"SOCKS5 proxy {proxy.display}"
    try:
        # python-socks connects with a blocking socket: run it where a stop request need not wait for it.
        sock = interrupt.call(lambda: client.connect(dest.host, dest.port, timeout=timeout))
    except python_socks.ProxyTimeoutError:
        raise TransientError(f"{where}: timed out reaching {dest.name}") from None
    except python_socks.ProxyConnectionError as exc:
        raise TransientError(f"cannot reach {where}: {_why(exc)}") from None
    except python_socks.ProxyError as exc:
        text = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else "refused"
        if "authentication" in text.lower():
            raise AuthError(f"{where} refused the login: {text}") from None
        if getattr(exc, "error_code", None) == _SOCKS_NOT_ALLOWED:
            raise AuthError(f"{where} refuses a connection to {dest.name}: {text}") from None
        raise TransientError(f"{where} could not connect to {dest.name}: {text}") from None
    except OSError as exc:
        raise TransientError(f"{where}: {_why(exc)}") from None
    sock.settimeout(timeout)
    return sock


def _why(exc: OSError) -> str:
    return exc.strerror or (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:120]


def forward(
    jump: paramiko.Transport, name: str, target: Endpoint, window: int, packet: int, timeout: float
) -> paramiko.Channel:
    """A ``direct-tcpip`` channel from the jump host to the target: the next session's socket."""
    try:
        return jump.open_channel(
            "direct-tcpip",
            (target.host, target.port),
            ("127.0.0.1", 0),
            window_size=window,
            max_packet_size=packet,
            timeout=timeout,
        )
    except paramiko.ChannelException as exc:
        text = f"{exc.text} (code {exc.code})" if exc.text else f"code {exc.code}"
        if exc.code == _ADMINISTRATIVELY_PROHIBITED:
            raise AuthError(
                f"jump host {name} refuses to forward to {target.name}: {text}; it needs AllowTcpForwarding yes"
            ) from None
        raise TransientError(f"jump host {name} cannot reach {target.name}: {text}") from None
