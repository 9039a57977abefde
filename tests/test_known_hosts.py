"""known_hosts as OpenSSH writes it: markers, revocations, patterns, hashed names, a missing file, dry runs."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import subprocess
from pathlib import Path

import pytest
from conftest import Runner, Server, file_sha256, sha256
from sshd import keygen

from app.server.known_hosts import HostKeys, Unusable, host_matches, key_blob, parse

ED25519 = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
OTHER = "AAAAC3NzaC1lZDI1NTE5AAAAIH3QKTpKzUs4s0wZL3j7iS4Hf1FZZDcUV7r7wPmk7Zg1"


def blob(encoded: str) -> bytes:
    return base64.b64decode(encoded)


# -- parsing (pure) ---------------------------------------------------------------------


def test_plain_hashed_and_port_entries_are_found() -> None:
    salt = os.urandom(20)
    digest = hmac.new(salt, b"[10.0.0.5]:2222", hashlib.sha1).digest()
    hashed = f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"
    text = f"# comment\n\n{hashed} ssh-ed25519 {ED25519}\nother ssh-ed25519 {OTHER}\n"

    assert parse(text, "[10.0.0.5]:2222").keys == {"ssh-ed25519": (blob(ED25519),)}
    assert parse(text, "10.0.0.5").keys == {}, "a [host]:port entry is not the host on port 22"
    assert parse(text, "other").keys == {"ssh-ed25519": (blob(OTHER),)}


@pytest.mark.parametrize(
    ("patterns", "host", "expected"),
    [
        ("sftp.example.org", "SFTP.example.org", True),
        ("*.example.org", "sftp.example.org", True),
        ("sftp?.example.org", "sftp1.example.org", True),
        ("*.example.org,!bad.example.org", "bad.example.org", False),
        ("!bad.example.org,*", "good.example.org", True),
        ("[127.0.0.1]:2222", "[127.0.0.1]:2222", True),
        ("[127.0.0.1]:*", "[127.0.0.1]:2222", True),
        ("[127.0.0.1]:2222", "1", False),
        ("a,b", "c", False),
    ],
)
def test_host_patterns_follow_openssh(patterns: str, host: str, expected: bool) -> None:
    assert host_matches(patterns, host) is expected


def test_markers_and_broken_lines_are_skipped_and_named() -> None:
    text = "\n".join(
        [
            f"host ssh-ed25519 {ED25519}",
            f"@cert-authority *.example.org ssh-ed25519 {OTHER}",
            f"@revoked * ssh-ed25519 {OTHER}",
            f"@cert-authority elsewhere ssh-ed25519 {OTHER}",
            f"@future host ssh-ed25519 {OTHER}",
            "host ssh-ed25519",
            "host ssh-ed25519 not-base64!",
            f"host ssh-rsa {ED25519}",
        ]
    )

    parsed = parse(text, "host.example.org")

    assert parsed == HostKeys(
        keys={},
        revoked={blob(OTHER): 3},
        unusable=(
            Unusable(5, "unknown marker '@future'"),
            Unusable(6, "not a known_hosts entry (host, key type and key expected)"),
            Unusable(7, "the key is not a valid 'ssh-ed25519' key"),
            Unusable(8, "the key is not a valid 'ssh-rsa' key"),
        ),
        authorities=(blob(OTHER),),
    ), "the CA line for elsewhere does not concern this host"
    assert parse(text, "host").keys == {"ssh-ed25519": (blob(ED25519),)}


def test_key_blob_checks_the_embedded_type() -> None:
    assert key_blob("ssh-ed25519", ED25519) == blob(ED25519)
    assert key_blob("ssh-rsa", ED25519) is None
    assert key_blob("ssh-ed25519", "AAAA") is None
    assert key_blob("ssh-ed25519", "%%%") is None


# -- against a real sshd ----------------------------------------------------------------


def write_known_hosts(server: Server, *lines: str) -> Path:
    path = server.tmp / "kh_custom"
    path.write_text("".join(line if line.endswith("\n") else line + "\n" for line in lines))
    return path


def test_marker_lines_do_not_stop_the_run(run: Runner, server: Server) -> None:
    data = os.urandom(5000)
    server.put("20250428.IPI", data)
    stranger = Path(f"{keygen(server.tmp / 'stranger')}.pub").read_text().split()
    known = write_known_hosts(
        server,
        "# a file kept by an OpenSSH user",
        f"@cert-authority * {stranger[0]} {stranger[1]}",
        f"@revoked * {stranger[0]} {stranger[1]}",
        server.sshd.known_hosts_line(),
    )

    result = run(SFTP_KNOWN_HOSTS=known)

    assert result.code == 0, result.output
    assert file_sha256(server.served / "20250428.IPI") == sha256(data)
    # The CA is trusted for host certificates (test_host_certs.py); this server has none, and its key is known.
    assert "skipped what the job cannot use" not in result.stderr


@pytest.mark.parametrize("pattern", ["*", "exact"])
def test_revoked_host_key_is_refused(run: Runner, server: Server, pattern: str) -> None:
    server.put("20250428.IPI", b"never fetched")
    name = f"[127.0.0.1]:{server.port}" if pattern == "exact" else "*"
    known = write_known_hosts(server, server.sshd.known_hosts_line(), f"@revoked {name} {server.sshd.host_public_key}")

    result = run(SFTP_KNOWN_HOSTS=known, SFTP_HOST_KEY_POLICY="accept-new")

    assert result.code == 3, result.output
    assert "Traceback" not in result.output
    assert f"is marked @revoked in {known} (line 2)" in result.stderr
    assert "retrying" not in result.stderr
    assert not (server.served / "20250428.IPI").exists()


def test_missing_known_hosts_is_named_with_how_to_create_it(run: Runner, server: Server) -> None:
    missing = server.tmp / "nonexistent" / "kh"

    result = run(SFTP_KNOWN_HOSTS=missing)

    assert result.code == 3, result.output
    last = result.stderr.strip().splitlines()[-2]  # the line before the run summary
    assert f"SFTP_KNOWN_HOSTS={missing} does not exist" in last
    assert "ssh-keyscan" in last and "out of band" in last and "accept-new" in last
    assert "is not in" not in result.stderr
    assert not missing.exists()


def test_accept_new_logs_the_fingerprint_and_file_at_warning(run: Runner, server: Server) -> None:
    known = server.tmp / "ssh" / "known_hosts"
    server.put("20250428.IPI", b"x")
    fingerprint = subprocess.run(
        ["ssh-keygen", "-lf", f"{server.sshd.host_key}.pub"], capture_output=True, text=True, check=True
    ).stdout.split()[1]

    result = run(SFTP_KNOWN_HOSTS=known, SFTP_HOST_KEY_POLICY="accept-new")

    assert result.code == 0, result.output
    [line] = [line for line in result.stderr.splitlines() if "recorded the new host key" in line]
    assert "| WARNING  |" in line and fingerprint in line and str(known) in line
    assert known.read_text() == server.sshd.known_hosts_line()


def test_accept_new_never_glues_its_line_to_an_unterminated_one(run: Runner, server: Server) -> None:
    known = server.tmp / "kh_unterminated"
    known.write_text(f"other.example.org ssh-ed25519 {OTHER}")  # no final newline, as some editors leave it
    server.put("20250428.IPI", b"x")

    assert run(SFTP_KNOWN_HOSTS=known, SFTP_HOST_KEY_POLICY="accept-new").code == 0
    strict = run(SFTP_KNOWN_HOSTS=known)

    assert strict.code == 0, strict.output
    assert known.read_text().splitlines() == [
        f"other.example.org ssh-ed25519 {OTHER}",
        server.sshd.known_hosts_line().strip(),
    ]


def test_dry_run_writes_neither_known_hosts_nor_log_file(run: Runner, server: Server) -> None:
    server.put("20250428.IPI", b"x")
    known = server.tmp / "ssh" / "known_hosts"
    log = server.tmp / "dry-logs" / "job.log"

    result = run("--dry-run", SFTP_KNOWN_HOSTS=known, SFTP_HOST_KEY_POLICY="accept-new", LOG_FILE=log)

    assert result.code == 0, result.output
    assert "would download: 20250428.IPI" in result.stdout
    assert "would be recorded in" in result.stderr and str(known) in result.stderr
    assert not known.exists() and not known.parent.exists()
    assert not log.exists() and not log.parent.exists()
