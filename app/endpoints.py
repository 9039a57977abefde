"""SFTP_JUMP_HOST and SFTP_PROXY values, parsed (pure: no I/O).

Errors name the setting, never echo a proxy URL: it may carry a password.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass

from app.errors import ConfigError

# http:// is HTTP CONNECT; socks5h:// (remote DNS, as curl spells it) is what socks5:// does anyway.
PROXY_SCHEMES = {"http": "http", "socks5": "socks5", "socks5h": "socks5"}
_HOST = re.compile(r"[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\]")


@dataclass(frozen=True)
class Endpoint:
    """A jump host: ``[user@]host[:port]``, OpenSSH's ProxyJump form."""

    user: str | None
    host: str
    port: int

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ProxyUrl:
    scheme: str  # "http" or "socks5"
    host: str
    port: int
    username: str | None
    password: str | None

    @property
    def display(self) -> str:
        """The proxy as messages show it: without its credentials."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def _port(name: str, text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ConfigError(f"{name}: the port must be a number from 1 to 65535")
    return int(text)


def _split_host_port(name: str, text: str, default_port: int | None) -> tuple[str, int]:
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ConfigError(f"{name}: an IPv6 address goes in brackets, [addr]:port")
        port_text = rest[1:]
    elif text.count(":") > 1:
        raise ConfigError(f"{name}: an IPv6 address goes in brackets, [addr]:port")
    else:
        host, _, port_text = text.partition(":")
        if ":" in text and not port_text:
            raise ConfigError(f"{name}: the port after ':' is missing")
    if not host or not _HOST.fullmatch(host if not text.startswith("[") else f"[{host}]"):
        raise ConfigError(f"{name}: the host is missing or not a valid host name")
    if port_text:
        return host, _port(name, port_text)
    if default_port is None:
        raise ConfigError(f"{name}: the port is missing (host:port)")
    return host, default_port


def parse_jump(name: str, raw: str) -> Endpoint:
    value = raw.strip()
    if "," in value:
        raise ConfigError(f"{name}={raw!r}: one jump host only (a chain is not supported)")
    if any(c.isspace() or ord(c) < 32 for c in value) or "/" in value:
        raise ConfigError(f"{name}={raw!r} is not [user@]host[:port]")
    user, at, hostport = value.rpartition("@")
    if at and not user:
        raise ConfigError(f"{name}={raw!r}: the user before '@' is empty")
    host, port = _split_host_port(f"{name}={raw!r}", hostport, 22)
    return Endpoint(user or None, host, port)


def parse_proxy(name: str, raw: str) -> ProxyUrl:
    value = raw.strip()
    if any(c.isspace() or ord(c) < 32 for c in value):
        raise ConfigError(f"{name} contains white space or control characters")
    scheme, sep, rest = value.partition("://")
    kind = PROXY_SCHEMES.get(scheme.lower())
    if not sep or kind is None:
        raise ConfigError(f"{name} must be http://host:port, socks5://host:port or socks5h://host:port")
    rest = rest.rstrip("/")
    if "/" in rest or "?" in rest or "#" in rest:
        raise ConfigError(f"{name}: a proxy URL has no path, query or fragment")
    userinfo, at, hostport = rest.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = urllib.parse.unquote(user)
        password = urllib.parse.unquote(secret) if colon else None
        if not username:
            raise ConfigError(f"{name}: the user name before '@' is empty")
    host, port = _split_host_port(name, hostport, None)
    return ProxyUrl(kind, host, port, username, password)
