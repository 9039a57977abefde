"""SFTP_JUMP_HOST and SFTP_PROXY parsing, their settings, and the HTTP CONNECT reply as untrusted input."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from app.config import load_settings
from app.endpoints import Endpoint, parse_jump, parse_proxy
from app.errors import AuthError, ConfigError, TransientError
from app.server.netpath import http_connect

BASE = {"SFTP_HOST": "sftp.example", "SFTP_USER": "feed", "SFTP_PASS": "pw-for-tests"}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("bastion", Endpoint(None, "bastion", 22)),
        ("ops@bastion:2222", Endpoint("ops", "bastion", 2222)),
        ("[::1]:22", Endpoint(None, "::1", 22)),
        ("a@b@bastion", Endpoint("a@b", "bastion", 22)),
    ],
)
def test_jump_host_forms(raw: str, expected: Endpoint) -> None:
    assert parse_jump("SFTP_JUMP_HOST", raw) == expected


@pytest.mark.parametrize("raw", ["a,b", "bastion:0", "bastion:x", "@bastion", "::1", "bas tion", "host/path"])
def test_bad_jump_hosts_are_refused(raw: str) -> None:
    with pytest.raises(ConfigError, match="SFTP_JUMP_HOST"):
        parse_jump("SFTP_JUMP_HOST", raw)


def test_proxy_forms() -> None:
    p = parse_proxy("SFTP_PROXY", "socks5h://us%40er:p%3Aw@proxy.corp:1080")
    assert (p.scheme, p.host, p.port, p.username, p.password) == ("socks5", "proxy.corp", 1080, "us@er", "p:w")
    assert p.display == "socks5://proxy.corp:1080"
    assert parse_proxy("SFTP_PROXY", "http://[::1]:3128/").display == "http://[::1]:3128"


@pytest.mark.parametrize(
    "raw", ["ftp://u:Secret-1@h:1", "http://u:Secret-1@h", "http://u:Secret-1@h:1/path", "socks4://u:Secret-1@h:1"]
)
def test_bad_proxy_urls_are_refused_without_echoing_them(raw: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_proxy("SFTP_PROXY", raw)
    assert "Secret-1" not in str(caught.value)


def test_proxy_password_twice_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("x\n")
    env = {**BASE, "SFTP_PROXY": "http://u:in-url@h:1", "SFTP_PROXY_PASS_FILE": str(secret)}
    with pytest.raises(ConfigError, match="use only one"):
        load_settings(env)


def test_proxy_password_is_a_secret_and_the_bare_url_is_not(tmp_path: Path) -> None:
    settings = load_settings({**BASE, "SFTP_PROXY": "http://u:Url-Secret-9@h:1"})
    assert "Url-Secret-9" in settings.secrets
    secret = tmp_path / "pw"
    secret.write_text("File-Secret-9\n")
    settings = load_settings({**BASE, "SFTP_PROXY": "http://u@h:1", "SFTP_PROXY_PASS_FILE": str(secret)})
    assert "File-Secret-9" in settings.secrets
    assert "http://u@h:1" not in settings.secrets  # shown as it is in messages


def test_jump_settings_without_a_jump_host_are_refused() -> None:
    with pytest.raises(ConfigError, match="SFTP_JUMP_USER is set but SFTP_JUMP_HOST is not"):
        load_settings({**BASE, "SFTP_JUMP_USER": "ops"})


def _proxy_replying(reply: bytes) -> tuple[socket.socket, threading.Thread]:
    """A real socket whose peer reads the CONNECT request and sends ``reply``."""
    ours, theirs = socket.socketpair()
    ours.settimeout(5)

    def serve() -> None:
        theirs.recv(4096)
        theirs.sendall(reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return ours, thread


PROXY = parse_proxy("SFTP_PROXY", "http://proxy.corp:3128")


def test_connect_leaves_the_servers_first_bytes_in_the_socket() -> None:
    sock, _ = _proxy_replying(b"HTTP/1.1 200 Connection established\r\nVia: x\r\n\r\nSSH-2.0-OpenSSH_9.2\r\n")
    http_connect(sock, PROXY, "sftp.example", 22)
    assert sock.recv(100) == b"SSH-2.0-OpenSSH_9.2\r\n"


def test_endless_status_line_is_refused_at_its_bound() -> None:
    sock, _ = _proxy_replying(b"HTTP/1.1 200 " + b"A" * 5000)
    with pytest.raises(TransientError, match="status line longer than 1024 bytes"):
        http_connect(sock, PROXY, "sftp.example", 22)


def test_garbage_status_line_is_shown_escaped() -> None:
    sock, _ = _proxy_replying(b"\x1b[31mEVIL\x07\r\n\r\n")
    with pytest.raises(TransientError) as caught:
        http_connect(sock, PROXY, "sftp.example", 22)
    assert "\x1b" not in str(caught.value) and "?[31mEVIL?" in str(caught.value)


@pytest.mark.parametrize(
    ("status", "phrase"),
    [(b"407 Proxy Authentication Required", "wants authentication"), (b"403 Forbidden", "refuses a tunnel")],
)
def test_407_and_403_are_permanent(status: bytes, phrase: str) -> None:
    sock, _ = _proxy_replying(b"HTTP/1.1 " + status + b"\r\n\r\n")
    with pytest.raises(AuthError, match=phrase):
        http_connect(sock, PROXY, "sftp.example", 22)


def test_proxy_error_status_is_transient() -> None:
    sock, _ = _proxy_replying(b"HTTP/1.0 502 Bad Gateway\r\n\r\n")
    with pytest.raises(
        TransientError, match=r"proxy http://proxy.corp:3128 refused a tunnel to sftp.example:22 \(502 Bad Gateway\)"
    ):
        http_connect(sock, PROXY, "sftp.example", 22)
