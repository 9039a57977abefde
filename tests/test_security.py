"""Hostile servers, pinned host keys, every key type, the agent, planted symlinks, file modes."""

from __future__ import annotations

import os
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Server, file_sha256, run_job, sha256, wait_until
from hostile_sftp import HostileSftpServer, hostile_env
from sshd import keygen

MiB = 1024 * 1024


def everything_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


CRAFTED = [
    b"../20250501.IPI",
    b"../../20250502.IPI",
    b"sub/20250503.IPI",
    b"a\\20250504.IPI",
    b".20250505.IPI",
    b"20250506\x00.IPI",
    b"20250507\n.IPI",
    b"20250508\x1b[31m.IPI",
    b"20250509" + b"x" * 260 + b".IPI",
    b"\xff\xfe20250510.IPI",
    b"20250511.IPI.part",
    "20250513\u009b31m.IPI".encode(),  # C1 CSI: one byte that a terminal takes as an escape
    "20250514_\u202egpj.IPI".encode(),  # a right-to-left override displays the name reversed
    "20250515_\u2066x\u2069.IPI".encode(),
]


def test_crafted_names_never_become_local_paths(hostile: HostileSftpServer, tmp_path: Path, keys: dict) -> None:
    for name in CRAFTED:
        hostile.lies.files[name] = b"evil " + name
    hostile.lies.files[b"20250512.IPI"] = b"the only good file"
    before = everything_under(tmp_path)

    result = run_job(hostile_env(hostile, tmp_path, keys["client"]), tmp_path / "cwd")

    assert result.code == 0, result.output
    jail = tmp_path / "jail"
    assert sorted(p.name for p in (jail / "server").iterdir()) == ["20250512.IPI"]
    assert sorted(p.name for p in (jail / "local").iterdir()) == ["20250512.IPI"]
    created_outside = {p for p in everything_under(tmp_path) - before if jail not in p.parents and p != jail}
    assert {p.name for p in created_outside} <= {"cwd", "hostile_known_hosts"}, created_outside
    assert result.stderr.count("unsafe file name from the server") == len(CRAFTED)
    for sink in (result.stderr, (jail / "state" / "job.log").read_text()):
        assert "\x1b" not in sink, "control characters from names are escaped in logs"
        assert not any(c in sink for c in "\u009b\u202e\u2066\u2069"), "C1 and bidi controls are escaped in logs"
    assert "'20250514_\\u202egpj.IPI': skipped" in result.stderr


def test_file_longer_than_its_stat_is_refused(hostile: HostileSftpServer, tmp_path: Path, keys: dict) -> None:
    hostile.lies.files[b"20250501.IPI"] = os.urandom(3 * MiB)
    hostile.lies.claimed_size[b"20250501.IPI"] = 2 * MiB

    result = run_job(hostile_env(hostile, tmp_path, keys["client"]), tmp_path / "cwd")

    assert result.code == 1, result.output
    assert "longer than its listed size" in result.stderr
    assert not (tmp_path / "jail" / "server" / "20250501.IPI").exists()
    assert not (tmp_path / "jail" / "local" / "20250501.IPI").exists()


def test_file_shorter_than_its_stat_is_refused(hostile: HostileSftpServer, tmp_path: Path, keys: dict) -> None:
    data = os.urandom(MiB)
    hostile.lies.files[b"20250501.IPI"] = data
    hostile.lies.claimed_size[b"20250501.IPI"] = 2 * MiB

    result = run_job(hostile_env(hostile, tmp_path, keys["client"]), tmp_path / "cwd")

    assert result.code == 1, result.output
    assert "ended at byte" in result.stderr
    assert not (tmp_path / "jail" / "server" / "20250501.IPI").exists()
    part = tmp_path / "jail" / "local" / "20250501.IPI.part"
    assert part.read_bytes() == data[: part.stat().st_size], "what was kept is still an exact prefix"


def test_oversized_read_replies_are_refused(hostile: HostileSftpServer, tmp_path: Path, keys: dict) -> None:
    hostile.lies.files[b"20250501.IPI"] = os.urandom(MiB)
    hostile.lies.extra_per_read = 100

    result = run_job(hostile_env(hostile, tmp_path, keys["client"]), tmp_path / "cwd")

    assert result.code == 1, result.output
    assert "for a read of" in result.stderr
    assert not (tmp_path / "jail" / "server" / "20250501.IPI").exists()


def test_endless_listing_is_cut_at_max_listing(hostile: HostileSftpServer, tmp_path: Path, keys: dict) -> None:
    hostile.lies.endless = True
    started = time.monotonic()

    result = run_job(hostile_env(hostile, tmp_path, keys["client"], MAX_LISTING=2000), tmp_path / "cwd")

    assert result.code == 1, result.output
    assert "MAX_LISTING=2000" in result.stderr
    assert time.monotonic() - started < 30


def test_lying_server_data_is_served_when_honest(hostile: HostileSftpServer, tmp_path: Path, keys: dict) -> None:
    """Control case: the same server, telling the truth, is downloaded exactly."""
    data = os.urandom(2 * MiB + 3)
    hostile.lies.files[b"20250501.IPI"] = data

    result = run_job(hostile_env(hostile, tmp_path, keys["client"]), tmp_path / "cwd")

    assert result.code == 0, result.output
    assert file_sha256(tmp_path / "jail" / "server" / "20250501.IPI") == sha256(data)


# -- host keys -------------------------------------------------------------------


def host_fingerprint(server: Server) -> str:
    out = subprocess.run(
        ["ssh-keygen", "-lf", f"{server.sshd.host_key}.pub"], capture_output=True, text=True, check=True
    ).stdout
    return out.split()[1]


def test_pinned_fingerprint_admits_a_key_absent_from_known_hosts(server: Server) -> None:
    empty = server.tmp / "empty_known_hosts"
    empty.write_text("")
    server.put("20250428.IPI", b"pinned")

    result = run_job(
        server.env(SFTP_KNOWN_HOSTS=empty, SFTP_HOST_KEY_FINGERPRINT=host_fingerprint(server)), server.tmp / "cwd"
    )

    assert result.code == 0, result.output
    assert empty.read_text() == "", "a pin does not write known_hosts"


def test_pinned_fingerprint_refuses_another_key_even_if_known(server: Server) -> None:
    wrong = "SHA256:" + "A" * 43
    result = run_job(server.env(SFTP_HOST_KEY_FINGERPRINT=f"{wrong}"), server.tmp / "cwd")

    assert result.code == 3, result.output
    assert "does not match SFTP_HOST_KEY_FINGERPRINT" in result.stderr
    assert host_fingerprint(server) in result.stderr, "the offered key is shown for out-of-band checking"


def test_pin_list_allows_key_rotation(server: Server) -> None:
    server.put("20250428.IPI", b"rotating")
    pins = f"SHA256:{'B' * 43}, {host_fingerprint(server)}"
    assert run_job(server.env(SFTP_HOST_KEY_FINGERPRINT=pins), server.tmp / "cwd").code == 0


def test_malformed_fingerprint_is_a_config_error(server: Server) -> None:
    result = run_job(server.env(SFTP_HOST_KEY_FINGERPRINT="MD5:aa:bb"), server.tmp / "cwd")
    assert result.code == 2, result.output
    assert "SFTP_HOST_KEY_FINGERPRINT" in result.stderr


# -- authentication ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("key_type", "bits", "passphrase"),
    [
        ("ed25519", None, ""),
        ("ed25519", None, "pass-ed"),
        ("ecdsa", 256, ""),
        ("ecdsa", 384, "pass-ec"),
        ("rsa", 3072, ""),
        ("rsa", 3072, "pass-rsa"),
    ],
)
def test_every_key_type_logs_in(server: Server, key_type: str, bits: int | None, passphrase: str) -> None:
    key = keygen(server.tmp / f"id_{key_type}", key_type=key_type, passphrase=passphrase, bits=bits)
    server.sshd.authorized_keys.write_text(Path(f"{key}.pub").read_text())
    server.put("20250428.IPI", key_type.encode())

    result = run_job(server.env(SFTP_KEY_FILE=key, SFTP_KEY_PASSPHRASE=passphrase or None), server.tmp / "cwd")

    assert result.code == 0, result.output
    assert (server.served / "20250428.IPI").read_bytes() == key_type.encode()
    if passphrase:
        assert passphrase not in result.output + server.log.read_text()


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[dict[str, str]]:
    sock = tmp_path / "agent.sock"
    proc = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    wait_until(sock.exists, 10, interval=0.05)
    try:
        yield {"SSH_AUTH_SOCK": str(sock)}
    finally:
        proc.terminate()
        proc.wait()


def test_agent_is_used_only_when_allowed(server: Server, agent: dict[str, str], keys: dict[str, Path]) -> None:
    subprocess.run(["ssh-add", "-q", str(keys["client"])], env={**os.environ, **agent}, check=True)
    server.put("20250428.IPI", b"agent")
    env = {**server.env(SFTP_KEY_FILE=None), **agent}

    without = run_job(env, server.tmp / "cwd")
    with_agent = run_job({**env, "SFTP_USE_AGENT": "true"}, server.tmp / "cwd")

    assert without.code == 2, without.output
    assert "no credentials" in without.stderr
    assert with_agent.code == 0, with_agent.output
    assert (server.served / "20250428.IPI").read_bytes() == b"agent"


@pytest.mark.skipif(os.geteuid() != 0, reason="password logins need a test account, made as root")
def test_password_is_tried_after_a_refused_key(unprivileged_server: Server) -> None:
    server = unprivileged_server
    server.sshd.authorized_keys.write_text("")  # the key is refused
    server.put("20250428.IPI", b"both")

    result = run_job(server.env(SFTP_PASS=server.password), server.tmp / "cwd")

    assert result.code == 0, result.output
    assert server.password not in result.output


# -- local files -------------------------------------------------------------------


def test_planted_symlinks_are_never_followed(server: Server) -> None:
    data = os.urandom(MiB)
    server.put("20250428.IPI", data)
    victim = server.tmp / "victim"
    victim.write_bytes(b"must stay intact")
    server.local.mkdir()
    server.served.mkdir()
    for link in (
        server.local / "20250428.IPI.part",
        server.local / "20250428.IPI",
        server.served / "20250428.IPI",
    ):
        link.symlink_to(victim)

    result = run_job(server.env(), server.tmp / "cwd")

    assert result.code == 0, result.output
    assert victim.read_bytes() == b"must stay intact"
    for path in (server.local / "20250428.IPI", server.served / "20250428.IPI"):
        assert stat.S_ISREG(path.lstat().st_mode), f"{path} is a regular file, not a link"
        assert file_sha256(path) == sha256(data)


@pytest.mark.parametrize(("file_mode", "expected_file", "expected_dir"), [(None, 0o640, 0o750), ("0600", 0o600, 0o700)])
def test_created_files_get_file_mode(
    server: Server, file_mode: str | None, expected_file: int, expected_dir: int
) -> None:
    server.put("20250428.IPI", b"mode")

    result = run_job(server.env(FILE_MODE=file_mode), server.tmp / "cwd")

    assert result.code == 0, result.output
    for path in (server.local / "20250428.IPI", server.served / "20250428.IPI", server.record, server.ledger):
        assert stat.S_IMODE(path.stat().st_mode) == expected_file, path
    assert stat.S_IMODE(server.local.stat().st_mode) == expected_dir
