"""SSH_ALGORITHMS and user certificates against real OpenSSH servers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Server, file_sha256, keygen, run_job, sha256

from app.server import crypto_policy

MiB = 1024 * 1024


def restricted(server: Server, *config: str) -> Server:
    """The same server, restarted with ``config`` lines first (sshd keeps the first value)."""
    server.sshd.stop()
    server.sshd.extra_config = list(config)
    server.sshd.start()
    return server


@pytest.fixture
def cbc_server(server: Server) -> Iterator[Server]:
    """An sshd that speaks only aes128-cbc and hmac-sha1, as old appliances do."""
    yield restricted(server, "Ciphers aes128-cbc", "MACs hmac-sha1")


def test_modern_refuses_a_cbc_sha1_server_with_exit_3_naming_what_it_offers(cbc_server: Server) -> None:
    cbc_server.put("20250428.IPI", b"x" * 1000)

    result = run_job(cbc_server.env(), cbc_server.tmp / "cwd")

    # Before SSH_ALGORITHMS the job negotiated aes128-cbc/hmac-sha1 and delivered with exit 0, silently.
    assert result.code == 3, result.output
    assert "SSH_ALGORITHMS=modern" in result.stderr and "SSH_ALGORITHMS=compat" in result.stderr
    assert "ciphers: aes128-cbc" in result.stderr
    assert "retrying" not in result.stderr  # permanent: one attempt
    assert "Traceback" not in result.output
    assert not (cbc_server.served / "20250428.IPI").exists()


def test_compat_delivers_from_a_cbc_sha1_server_with_a_warning_and_reports_it(cbc_server: Server) -> None:
    data = os.urandom(MiB + 7)
    cbc_server.put("20250428.IPI", data)
    report = cbc_server.tmp / "report.json"

    result = run_job(cbc_server.env(SSH_ALGORITHMS="compat", REPORT_FILE=report), cbc_server.tmp / "cwd")

    assert result.code == 0, result.output
    assert file_sha256(cbc_server.served / "20250428.IPI") == sha256(data)
    warning = [line for line in result.stderr.splitlines() if "weak algorithms" in line]
    assert warning and "aes128-cbc" in warning[0] and "hmac-sha1" in warning[0], result.stderr
    ssh = json.loads(report.read_text())["ssh"]
    assert ssh["cipher"] == "aes128-cbc" and ssh["mac"] == "hmac-sha1"


def test_sha1_only_key_exchange_is_permanent_not_retried(server: Server) -> None:
    restricted(server, "KexAlgorithms diffie-hellman-group14-sha1")
    server.put("20250428.IPI", b"x" * 1000)

    result = run_job(server.env(), server.tmp / "cwd")

    # Before: "Incompatible ssh peer" was a transient error, retried RETRY_MAX_TRIES times, exit 1.
    assert result.code == 3, result.output
    assert "kex: diffie-hellman-group14-sha1" in result.stderr
    assert "retrying" not in result.stderr


def test_modern_session_is_reported_in_the_report_the_json_log_and_status(server: Server) -> None:
    data = os.urandom(MiB)
    server.put("20250428.IPI", data)
    report = server.tmp / "report.json"
    env = server.env(REPORT_FILE=report, LOG_FORMAT="json")

    result = run_job(env, server.tmp / "cwd")

    assert result.code == 0, result.output
    ssh = json.loads(report.read_text())["ssh"]
    assert ssh["kex"] in crypto_policy.MODERN_KEX
    assert ssh["cipher"] in crypto_policy.MODERN_CIPHERS
    assert ssh["host_key_type"] in crypto_policy.MODERN_HOST_KEYS
    assert ssh["cipher"].endswith("-gcm@openssh.com") and ssh["mac"] == "implicit"
    logged = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert any(entry.get("ssh") == ssh for entry in logged)
    assert not any("weak algorithms" in entry.get("message", "") for entry in logged)
    status = run_job(env, server.tmp / "cwd", "status")
    assert f"cipher {ssh['cipher']}" in status.stdout, status.output
    status_json = json.loads(run_job(env, server.tmp / "cwd", "status", "--json").stdout)
    assert status_json["last_run"]["ssh"] == ssh


def test_modern_offers_nothing_weak() -> None:
    import paramiko

    ours, theirs = socket.socketpair()
    transport = paramiko.Transport(ours)  # never started
    options = transport.get_security_options()
    crypto_policy.apply(options, crypto_policy.MODERN)
    offered = [*options.kex, *options.ciphers, *options.digests, *options.key_types]
    for weak in ("cbc", "3des", "sha1", "md5", "ssh-rsa", "group-exchange"):
        assert not [a for a in offered if weak in a], (weak, offered)
    assert options.kex[0] == "mlkem768x25519-sha256"  # preferred when the server offers it
    transport.close()
    theirs.close()


# -- user certificates ---------------------------------------------------------


@pytest.fixture
def ca_server(server: Server, tmp_path: Path) -> Iterator[tuple[Server, Path]]:
    """The server, trusting only keys certified by a CA (its authorized_keys is empty)."""
    ca = keygen(tmp_path / "user_ca")
    empty = tmp_path / "no_authorized_keys"
    empty.write_text("")
    server.sshd.stop()
    server.sshd.authorized_keys = empty
    server.sshd.extra_config = [f"TrustedUserCAKeys {ca}.pub"]
    server.sshd.start()
    yield server, ca


def certify(ca: Path, key: Path, principal: str) -> Path:
    subprocess.run(
        ["ssh-keygen", "-q", "-s", str(ca), "-I", "sftp-ipi-test", "-n", principal, "-V", "-5m:+1h", f"{key}.pub"],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    return Path(f"{key}-cert.pub")


def test_user_certificate_logs_in_where_the_bare_key_is_refused(ca_server: tuple[Server, Path], tmp_path: Path) -> None:
    server, ca = ca_server
    key = keygen(tmp_path / "certified_ed25519")
    data = os.urandom(MiB)
    server.put("20250428.IPI", data)
    # Before it is certified: paramiko also picks up <key>-cert.pub by itself, as OpenSSH does.
    bare = run_job(server.env(SFTP_KEY_FILE=key), server.tmp / "cwd")
    assert bare.code == 3, bare.output
    cert = certify(ca, key, server.sshd.user)

    result = run_job(server.env(SFTP_KEY_FILE=key, SFTP_CERT_FILE=cert), server.tmp / "cwd")

    assert result.code == 0, result.output
    assert file_sha256(server.served / "20250428.IPI") == sha256(data)
    assert "ED25519-CERT" in server.sshd.log_text() and "ID sftp-ipi-test" in server.sshd.log_text()


def test_certificate_for_another_key_is_a_configuration_error(ca_server: tuple[Server, Path], tmp_path: Path) -> None:
    server, ca = ca_server
    cert = certify(ca, keygen(tmp_path / "other_ed25519"), server.sshd.user)

    result = run_job(server.env(SFTP_CERT_FILE=cert), server.tmp / "cwd")

    assert result.code == 2, result.output
    assert f"SFTP_CERT_FILE={cert} is not a certificate for the key" in result.stderr
    assert "Traceback" not in result.output


def test_certificate_without_a_key_is_a_configuration_error(server: Server, tmp_path: Path) -> None:
    cert = tmp_path / "x-cert.pub"
    cert.write_text("ssh-ed25519-cert-v01@openssh.com AAAA\n")
    env = server.env(SFTP_CERT_FILE=cert, SFTP_KEY_FILE=None, SFTP_PASS="pw")

    result = run_job(env, server.tmp / "cwd")

    assert result.code == 2, result.output
    assert "SFTP_CERT_FILE is set but SFTP_KEY_FILE" in result.stderr
