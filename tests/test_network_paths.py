"""Network paths for real: a second sshd as the jump host, tinyproxy (HTTP CONNECT),
microsocks (SOCKS5), and the fault relay on each hop."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import Server, file_sha256, keygen, run_job, sha256, start_job, wait_until
from netpaths import Microsocks, Tinyproxy, have
from relay import Relay
from sshd import Sshd

MiB = 1024 * 1024


@dataclass
class Jump:
    sshd: Sshd

    @property
    def port(self) -> int:
        return self.sshd.port

    def forwarded_to(self, port: int) -> bool:
        """Whether the jump host's own log shows a direct-tcpip channel to 127.0.0.1:``port``."""
        text = self.sshd.log_text()
        return "server_request_direct_tcpip" in text and f"target 127.0.0.1 port {port}" in text


@pytest.fixture
def jump(server: Server, tmp_path: Path) -> Iterator[Jump]:
    """A second sshd, with its own host key, that forwards TCP and logs each channel (DEBUG1)."""
    work = tmp_path / "jump"
    work.mkdir()
    host_key = keygen(work / "jump_host_ed25519")
    sshd = Sshd(
        workdir=work,
        host_key=host_key,
        authorized_keys=server.sshd.authorized_keys,
        user=server.sshd.user,
        extra_config=["AllowTcpForwarding yes", "LogLevel DEBUG1"],
    ).start()
    try:
        yield Jump(sshd)
    finally:
        sshd.stop()


def jump_env(
    server: Server, jump: Jump, *, target_port: int | None = None, jump_port: int | None = None, **extra: object
) -> dict[str, str]:
    """Settings for the server through the jump host; known_hosts names both."""
    env = server.env(port=target_port, SFTP_JUMP_HOST=f"127.0.0.1:{jump_port or jump.port}", **extra)
    known = Path(env["SFTP_KNOWN_HOSTS"])
    known.write_text(known.read_text() + jump.sshd.known_hosts_line(jump_port or jump.port))
    return env


def test_delivers_through_a_jump_host_and_the_jump_host_forwarded_it(server: Server, jump: Jump) -> None:
    data = os.urandom(3 * MiB + 5)
    server.put("20250428.IPI", data)

    result = run_job(
        jump_env(server, jump, LOG_FORMAT="json", REPORT_FILE=server.tmp / "report.json"), server.tmp / "cwd"
    )

    assert result.code == 0, result.output
    assert file_sha256(server.served / "20250428.IPI") == sha256(data)
    assert jump.forwarded_to(server.port), jump.sshd.log_text()[-2000:]
    report = json.loads((server.tmp / "report.json").read_text())
    assert set(report["ssh"]) == {"kex", "cipher", "mac", "host_key_type"}
    assert report["ssh"]["host_key_type"] == "ssh-ed25519"
    logged = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert any("ssh" in entry and "jump host" in entry.get("message", "") for entry in logged)


def test_backlog_over_a_jump_host_all_delivered_concurrently(server: Server, jump: Jump) -> None:
    files = {f"2025042{i}.IPI": os.urandom(MiB + i) for i in range(6)}
    for name, data in files.items():
        server.put(name, data)

    result = run_job(jump_env(server, jump, SELECT_MODE="all", CONCURRENT_FILES=3), server.tmp / "cwd")

    assert result.code == 0, result.output
    for name, data in files.items():
        assert file_sha256(server.served / name) == sha256(data), name
    assert jump.forwarded_to(server.port)


def test_unknown_jump_host_key_is_exit_3_naming_the_jump_host(server: Server, jump: Jump) -> None:
    server.put("20250428.IPI", b"x" * 100)
    env = server.env(SFTP_JUMP_HOST=f"127.0.0.1:{jump.port}")  # known_hosts has the server only

    result = run_job(env, server.tmp / "cwd")

    assert result.code == 3, result.output
    assert f"jump host 127.0.0.1:{jump.port}" in result.stderr
    assert "Traceback" not in result.output
    assert not (server.served / "20250428.IPI").exists()


def test_jump_host_that_refuses_forwarding_is_a_clear_error(server: Server, jump: Jump, tmp_path: Path) -> None:
    jump.sshd.stop()
    jump.sshd.extra_config = ["AllowTcpForwarding no"]
    jump.sshd.start()
    server.put("20250428.IPI", b"x" * 100)

    result = run_job(jump_env(server, jump), server.tmp / "cwd")

    assert result.code == 3, result.output
    assert "refuses to forward" in result.stderr and "AllowTcpForwarding" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("hop", ["job-to-jump", "jump-to-server"])
def test_a_cut_on_either_hop_resumes_within_the_run(server: Server, jump: Jump, hop: str) -> None:
    data = os.urandom(8 * MiB)
    server.put("20250428.IPI", data)
    relay = Relay(jump.port if hop == "job-to-jump" else server.port)
    try:
        relay.set_fault(cut_after=3 * MiB)
        if hop == "job-to-jump":
            env = jump_env(server, jump, jump_port=relay.port)
        else:
            env = jump_env(server, jump, target_port=relay.port)

        result = run_job(env, server.tmp / "cwd")
    finally:
        relay.close()

    assert result.code == 0, result.output
    assert relay.connections == 2
    assert file_sha256(server.served / "20250428.IPI") == sha256(data)
    assert "resum" in result.stderr


def test_a_stall_on_the_jump_hop_is_dropped_after_io_timeout(server: Server, jump: Jump) -> None:
    data = os.urandom(6 * MiB)
    server.put("20250428.IPI", data)
    relay = Relay(jump.port)
    try:
        relay.set_fault(stall_after=2 * MiB)
        started = time.monotonic()
        result = run_job(
            jump_env(server, jump, jump_port=relay.port, IO_TIMEOUT=4, KEEPALIVE_INTERVAL=2), server.tmp / "cwd"
        )
    finally:
        relay.close()

    assert result.code == 0, result.output
    assert time.monotonic() - started < 60
    assert file_sha256(server.served / "20250428.IPI") == sha256(data)


def test_connect_budget_applies_to_the_session_behind_the_jump_host(server: Server, jump: Jump) -> None:
    server.sshd.stop()
    server.sshd.subsystem = "/bin/sleep 600"  # accepts the subsystem request, then never speaks SFTP
    server.sshd.start()
    started = time.monotonic()

    result = run_job(jump_env(server, jump, CONNECT_TIMEOUT=1, RETRY_MAX_TRIES=2), server.tmp / "cwd")

    assert result.code == 1, result.output
    assert time.monotonic() - started < 30
    assert f"connect to 127.0.0.1:{server.port}: no SFTP session within 3 s" in result.stderr


def test_sigterm_through_a_jump_host_stops_within_2_seconds(server: Server, jump: Jump) -> None:
    server.put("20250428.IPI", os.urandom(16 * MiB))
    relay = Relay(jump.port)
    try:
        relay.rate = 1 * MiB  # slow enough to be mid-transfer when the signal comes
        proc = start_job(jump_env(server, jump, jump_port=relay.port), server.tmp / "cwd")
        assert wait_until(lambda: any((server.local).glob("*.part*")) if server.local.exists() else False, 30)
        time.sleep(0.5)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
        took = time.monotonic() - sent
    finally:
        relay.close()

    assert proc.returncode == 143
    assert took < 2.0


# -- proxies ------------------------------------------------------------------


@pytest.fixture
def tinyproxy(tmp_path: Path) -> Iterator[Tinyproxy]:
    if not have("tinyproxy"):
        pytest.skip("tinyproxy is not installed (make test-deps installs it as root)")
    proxy = Tinyproxy(tmp_path / "tinyproxy").start()
    try:
        yield proxy
    finally:
        proxy.stop()


def restart(proxy: Tinyproxy, **changes: object) -> Tinyproxy:
    proxy.stop()
    for name, value in changes.items():
        setattr(proxy, name, value)
    return proxy.start()


def test_delivers_through_an_http_connect_proxy(server: Server, tinyproxy: Tinyproxy) -> None:
    data = os.urandom(2 * MiB + 3)
    server.put("20250428.IPI", data)

    result = run_job(server.env(SFTP_PROXY=f"http://127.0.0.1:{tinyproxy.port}"), server.tmp / "cwd")

    assert result.code == 0, result.output
    assert file_sha256(server.served / "20250428.IPI") == sha256(data)
    assert f"CONNECT 127.0.0.1:{server.port}" in tinyproxy.log_text()


def test_http_proxy_with_basic_auth_from_a_pass_file(server: Server, tinyproxy: Tinyproxy) -> None:
    restart(tinyproxy, user="feed", password="Pr0xy-S3cret")
    data = os.urandom(MiB)
    server.put("20250428.IPI", data)
    secret = server.tmp / "proxy_pass"
    secret.write_text("Pr0xy-S3cret\n")

    env = server.env(SFTP_PROXY=f"http://feed@127.0.0.1:{tinyproxy.port}", SFTP_PROXY_PASS_FILE=secret)
    result = run_job(env, server.tmp / "cwd")

    assert result.code == 0, result.output
    assert file_sha256(server.served / "20250428.IPI") == sha256(data)
    assert f"CONNECT 127.0.0.1:{server.port}" in tinyproxy.log_text()
    assert "Pr0xy-S3cret" not in result.output + server.log.read_text()


def test_http_proxy_auth_refusal_is_exit_3_naming_the_proxy(server: Server, tinyproxy: Tinyproxy) -> None:
    restart(tinyproxy, user="feed", password="right")
    server.put("20250428.IPI", b"x" * 100)

    env = server.env(SFTP_PROXY=f"http://feed:wrong-Pw@127.0.0.1:{tinyproxy.port}")
    result = run_job(env, server.tmp / "cwd")

    assert result.code == 3, result.output
    assert f"proxy http://127.0.0.1:{tinyproxy.port} wants authentication (40" in result.stderr
    assert "wrong-Pw" not in result.output + server.log.read_text()
    assert "password in the URL" in result.stderr  # the warning about URL credentials
    assert "Traceback" not in result.output


def test_http_proxy_403_is_exit_3_naming_the_proxy(server: Server, tinyproxy: Tinyproxy) -> None:
    restart(tinyproxy, connect_ports=(443,))
    server.put("20250428.IPI", b"x" * 100)

    result = run_job(server.env(SFTP_PROXY=f"http://127.0.0.1:{tinyproxy.port}"), server.tmp / "cwd")

    assert result.code == 3, result.output
    assert f"proxy http://127.0.0.1:{tinyproxy.port} refuses a tunnel to 127.0.0.1:{server.port} (403" in result.stderr


def test_unreachable_proxy_is_a_transient_error_naming_it(server: Server) -> None:
    from sshd import free_port

    port = free_port()
    server.put("20250428.IPI", b"x" * 100)

    result = run_job(server.env(SFTP_PROXY=f"http://127.0.0.1:{port}", RETRY_MAX_TRIES=2), server.tmp / "cwd")

    assert result.code == 1, result.output
    assert f"cannot reach proxy http://127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.output


def test_jump_host_through_an_http_proxy(server: Server, jump: Jump, tinyproxy: Tinyproxy) -> None:
    data = os.urandom(MiB)
    server.put("20250428.IPI", data)

    result = run_job(jump_env(server, jump, SFTP_PROXY=f"http://127.0.0.1:{tinyproxy.port}"), server.tmp / "cwd")

    assert result.code == 0, result.output
    assert file_sha256(server.served / "20250428.IPI") == sha256(data)
    assert f"CONNECT 127.0.0.1:{jump.port}" in tinyproxy.log_text()
    assert jump.forwarded_to(server.port)


@pytest.fixture
def microsocks(tmp_path: Path) -> Iterator[Microsocks]:
    if not have("microsocks"):
        pytest.skip("microsocks is not installed (make test-deps installs it as root)")
    proxy = Microsocks(tmp_path / "microsocks", user="feed", password="S0cks-Secret").start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.mark.parametrize("scheme", ["socks5", "socks5h"])
def test_delivers_through_a_socks5_proxy_with_login_and_remote_dns(
    server: Server, microsocks: Microsocks, scheme: str
) -> None:
    data = os.urandom(2 * MiB + 1)
    server.put("20250428.IPI", data)
    known = server.tmp / "known_hosts_localhost"
    # A name, not an address: the proxy resolves it (remote DNS).
    known.write_text(f"[localhost]:{server.port} {server.sshd.host_public_key}\n")

    env = server.env(
        SFTP_HOST="localhost",
        SFTP_KNOWN_HOSTS=known,
        SFTP_PROXY=f"{scheme}://feed:S0cks-Secret@127.0.0.1:{microsocks.port}",
    )
    result = run_job(env, server.tmp / "cwd")

    assert result.code == 0, result.output
    assert file_sha256(server.served / "20250428.IPI") == sha256(data)
    assert f"connected to localhost:{server.port}" in microsocks.log_text()
    assert "S0cks-Secret" not in result.output + server.log.read_text()


def test_socks5_wrong_password_is_exit_3_naming_the_proxy(server: Server, microsocks: Microsocks) -> None:
    server.put("20250428.IPI", b"x" * 100)

    env = server.env(SFTP_PROXY=f"socks5://feed:nope-Pw@127.0.0.1:{microsocks.port}")
    result = run_job(env, server.tmp / "cwd")

    assert result.code == 3, result.output
    assert f"SOCKS5 proxy socks5://127.0.0.1:{microsocks.port} refused the login" in result.stderr
    assert "nope-Pw" not in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("scheme", ["http", "socks5"])
def test_sigterm_while_a_proxy_says_nothing_stops_within_2_seconds(server: Server, scheme: str) -> None:
    import socket

    silent = socket.socket()  # accepts the connection (the kernel does), never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    try:
        env = server.env(SFTP_PROXY=f"{scheme}://127.0.0.1:{silent.getsockname()[1]}", CONNECT_TIMEOUT=60)
        proc = start_job(env, server.tmp / "cwd")
        assert wait_until(lambda: server.log.exists() and "connecting to" in server.log.read_text(), 30)
        time.sleep(1.0)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
        took = time.monotonic() - sent
    finally:
        silent.close()

    assert proc.returncode == 143, err
    assert took < 2.0
    assert "Traceback" not in err
