"""Servers partners run, emulated by the lying server (hostile_sftp.py): each personality
is fetched from by the real job, with no setting of its own."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import run_job
from hostile_sftp import BUSY_TEXT, HostileSftpServer, Lies, hostile_env
from test_decrypt import Keys, make_keys

from app.storage.state import read_ledger

MiB = 1024 * 1024
FALLBACK = "fetching one file at a time"
REMOVED = "the server removed it after reading"


@pytest.fixture
def lying(tmp_path: Path, keys: dict[str, Path]) -> Iterator[HostileSftpServer]:
    server = HostileSftpServer(tmp_path, Path(f"{keys['client']}.pub"), Lies()).start()
    try:
        yield server
    finally:
        server.stop()


def backlog(server: HostileSftpServer, count: int, size: int = 3000, month: int = 7) -> dict[str, bytes]:
    files = {f"2025{month:02d}{day:02d}.IPI": os.urandom(size + day) for day in range(1, count + 1)}
    server.lies.files.update({name.encode(): data for name, data in files.items()})
    return files


def assert_delivered(tmp_path: Path, server: HostileSftpServer, files: dict[str, bytes]) -> None:
    """Every file in SERVER_DIR byte for byte and in the ledger once, and nothing the
    server removed left undelivered."""
    served = tmp_path / "jail" / "server"
    for name, data in files.items():
        assert (served / name).read_bytes() == data, name
    ledger = tmp_path / "jail" / "state" / "ledger.jsonl"
    assert sorted(e.name for e in read_ledger(ledger).entries) == sorted(files)
    for name in server.lies.removed:
        assert (served / name.decode()).read_bytes() == files[name.decode()], f"{name!r} removed, not delivered"


def env_for(server: HostileSftpServer, tmp_path: Path, keys: dict[str, Path], **extra: object) -> dict[str, str]:
    env = hostile_env(server, tmp_path, keys["client"], CONCURRENT_FILES=8, **extra)
    env["LEDGER_FILE"] = str(tmp_path / "jail" / "state" / "ledger.jsonl")
    return env


@pytest.mark.parametrize("personality", ["read_once", "delete_on_close"])
def test_catch_up_delivers_every_file_a_read_once_server_removes_and_learns_it_once(
    lying: HostileSftpServer, tmp_path: Path, keys: dict[str, Path], personality: str
) -> None:
    # Sterling's extractability count (read_once) and post-processing servers
    # (delete_on_close) remove a file once it is read. The job used to stat it again
    # after reading, get "no such file", and throw its complete copy away: 0 of 10
    # delivered, all 10 gone from the server.
    setattr(lying.lies, personality, True)
    files = backlog(lying, 9)
    files |= backlog(lying, 1, size=2 * MiB, month=8)  # fetched together, through a partial
    env = env_for(lying, tmp_path, keys)

    result = run_job(env, tmp_path / "cwd")

    assert result.code == 0, result.output
    assert_delivered(tmp_path, lying, files)
    assert sorted(lying.lies.removed) == sorted(n.encode() for n in files)
    assert result.stderr.count(REMOVED) == 10
    assert result.stderr.count("the server removes files once they are read") == 1
    assert lying.lies.spent_requests <= 1, "learned from the first refusal"
    assert "Traceback" not in result.stderr

    again = run_job(env, tmp_path / "cwd")

    assert again.code == 0, again.output
    assert "downloading" not in again.stderr, "a file the server removed is never fetched again"
    assert_delivered(tmp_path, lying, files)


@pytest.mark.parametrize("personality", ["read_once", "delete_on_close"])
def test_one_file_at_a_time_from_a_read_once_server(
    lying: HostileSftpServer, tmp_path: Path, keys: dict[str, Path], personality: str
) -> None:
    # SELECT_MODE=next: one file per run, through transfer.download (over 4 MiB: its own pipeline).
    setattr(lying.lies, personality, True)
    files = backlog(lying, 2, size=5 * MiB)
    first = {"20250701.IPI": files["20250701.IPI"]}
    env = env_for(lying, tmp_path, keys, SELECT_MODE="next")

    result = run_job(env, tmp_path / "cwd")

    assert result.code == 0, result.output
    assert_delivered(tmp_path, lying, first)
    assert lying.lies.removed == [b"20250701.IPI"]
    assert b"20250702.IPI" in lying.lies.files, "the file not yet due stays on the server"
    assert f"20250701.IPI: {REMOVED}" in result.stderr
    assert lying.lies.spent_requests <= 1, "learned from the first refusal"

    again = run_job(env, tmp_path / "cwd")

    assert again.code == 0, again.output
    assert_delivered(tmp_path, lying, files)


def test_read_once_server_with_one_open_file_gets_one_at_a_time(
    lying: HostileSftpServer, tmp_path: Path, keys: dict[str, Path]
) -> None:
    # Sterling also allows one open file at a time: the existing fallback covers it,
    # and a refused open must not spend a file's one read.
    lying.lies.read_once = True
    lying.lies.max_open_files = 1
    files = backlog(lying, 10)

    result = run_job(env_for(lying, tmp_path, keys, VERIFY_SOURCE="off"), tmp_path / "cwd")

    assert result.code == 0, result.output
    assert result.stderr.count(FALLBACK) == 1
    assert_delivered(tmp_path, lying, files)
    assert sorted(lying.lies.removed) == sorted(n.encode() for n in files)


def test_transfer_in_progress_refusal_falls_back_to_one_file_at_a_time(
    lying: HostileSftpServer, tmp_path: Path, keys: dict[str, Path]
) -> None:
    # PERMISSION_DENIED on a second concurrent OPEN ("a file transfer is in progress")
    # used to be taken for each file's own fault: 6 of 10 files failed.
    lying.lies.busy_second_open = True
    files = backlog(lying, 10)

    result = run_job(env_for(lying, tmp_path, keys, VERIFY_SOURCE="off"), tmp_path / "cwd")

    assert result.code == 0, result.output
    assert result.stderr.count(FALLBACK) == 1
    assert BUSY_TEXT in result.stderr
    assert_delivered(tmp_path, lying, files)
    assert sorted(lying.lies.files) == sorted(n.encode() for n in files), "nothing removed from the server"


@pytest.fixture(scope="module")
def gpg_keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keys]:
    yield from make_keys(tmp_path_factory)


def slow_gpg(directory: Path, seconds: float) -> Path:
    """A directory to put first on PATH: its gpg is the real one, slow to decrypt."""
    directory.mkdir()
    real = shutil.which("gpg")
    assert real is not None
    wrapper = directory / "gpg"
    wrapper.write_text(
        f'#!/bin/sh\nfor arg in "$@"; do [ "$arg" = --decrypt ] && sleep {seconds}; done\nexec {real} "$@"\n'
    )
    wrapper.chmod(0o755)
    return directory


def test_a_connection_dropped_while_idle_during_a_slow_decryption_keeps_its_remote_action(
    lying: HostileSftpServer, tmp_path: Path, keys: dict[str, Path], gpg_keys: Keys
) -> None:
    # Azure drops an SFTP connection idle for 2 minutes, AWS Transfer after 30: a long
    # local step between requests (here a decryption) must not lose REMOTE_AFTER.
    lying.lies.idle_drop_seconds = 2
    plaintext = os.urandom(20_000)
    ciphertext = gpg_keys.encrypt(plaintext, gpg_keys.recipient)
    lying.lies.files[b"20250701.IPI.gpg"] = ciphertext
    key_file = tmp_path / "job.key.asc"
    key_file.write_bytes(gpg_keys.recipient_secret.read_bytes())
    env = env_for(
        lying,
        tmp_path,
        keys,
        DECRYPT="gpg",
        GPG_PRIVATE_KEY_FILE=key_file,
        REMOTE_AFTER="delete",
        RETRY_MAX_TRIES=5,
        RETRY_BACKOFF_FACTOR=0.1,
        PATH=f"{slow_gpg(tmp_path / 'bin', 4)}:{os.environ.get('PATH', '/usr/bin:/bin')}",
    )

    result = run_job(env, tmp_path / "cwd")

    assert result.code == 0, result.output
    assert lying.lies.idle_drops >= 1, "the server dropped the idle connection"
    assert "retrying" in result.stderr
    assert (tmp_path / "jail" / "server" / "20250701.IPI").read_bytes() == plaintext
    ledger = tmp_path / "jail" / "state" / "ledger.jsonl"
    entries = read_ledger(ledger).entries
    assert [(e.name, e.remote_after) for e in entries] == [("20250701.IPI.gpg", "done")]
    assert lying.lies.deleted == [b"20250701.IPI.gpg"], "deleted once delivered, by the job's reconnected session"
    assert "deleted on the server" in result.stderr


def test_required_proof_on_a_read_once_server_fails_the_file_but_keeps_its_only_copy(
    lying: HostileSftpServer, tmp_path: Path, keys: dict[str, Path]
) -> None:
    # VERIFY_SOURCE=required: no proof is left once the server has removed the file,
    # so it is not published; the bytes received used to be thrown away with it.
    lying.lies.read_once = True
    files = backlog(lying, 1)

    result = run_job(env_for(lying, tmp_path, keys, VERIFY_SOURCE="required"), tmp_path / "cwd")

    assert result.code == 1, result.output
    assert "20250701.IPI" in result.stderr and "VERIFY_SOURCE=required" in result.stderr
    assert "kept in" in result.stderr
    # Beside its final name, never under it: a final name in LOCAL_DIR is proven.
    assert (tmp_path / "jail" / "local" / "20250701.IPI.unproven").read_bytes() == files["20250701.IPI"]
    assert not (tmp_path / "jail" / "local" / "20250701.IPI").exists()
    assert not (tmp_path / "jail" / "server" / "20250701.IPI").exists()
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("after", ["delete", "move"])
def test_remote_after_on_a_read_once_server_finds_the_files_gone_and_is_done(
    lying: HostileSftpServer, tmp_path: Path, keys: dict[str, Path], after: str
) -> None:
    lying.lies.read_once = True
    files = backlog(lying, 3)

    result = run_job(env_for(lying, tmp_path, keys, REMOTE_AFTER=after, REMOTE_ARCHIVE_DIR="/"), tmp_path / "cwd")

    assert result.code == 0, result.output
    assert_delivered(tmp_path, lying, files)
    ledger = read_ledger(tmp_path / "jail" / "state" / "ledger.jsonl")
    assert {e.remote_after for e in ledger.entries} == {"done"}
    assert lying.lies.deleted == [], "nothing left for the job to delete"
    assert "REMOTE_AFTER" not in result.stderr, "no warning: the server removed them itself"
