"""Servers partners run, emulated by the lying server (hostile_sftp.py): each personality
is fetched from by the real job, with no setting of its own."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import run_job
from hostile_sftp import BUSY_TEXT, HostileSftpServer, Lies, hostile_env

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
    files = backlog(lying, 10)
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


def test_one_file_at_a_time_from_a_read_once_server(
    lying: HostileSftpServer, tmp_path: Path, keys: dict[str, Path]
) -> None:
    # SELECT_MODE=next: one file per run, through transfer.download (over 4 MiB: its own pipeline).
    lying.lies.read_once = True
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
