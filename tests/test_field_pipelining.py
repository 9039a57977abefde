"""Servers that fail under pipelined reads, emulated by the lying server (hostile_sftp.py):
Serv-U never answers READs beyond some number outstanding, others answer only the first
two of a burst, CrushFTP hangs up, AWS Transfer answers end-of-file early. The real job
learns the reads in flight each copes with, keeps that for the run, and delivers."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import run_job
from hostile_sftp import HostileSftpServer, Lies, hostile_env
from test_field_readonce import assert_delivered

MiB = 1024 * 1024
REDUCED = "pipelining reduced to"
# Reads small enough that a file takes many, so that many are in flight at once.
READ = 64 * 1024


@pytest.fixture
def lying(tmp_path: Path, keys: dict[str, Path]) -> Iterator[HostileSftpServer]:
    server = HostileSftpServer(tmp_path, Path(f"{keys['client']}.pub"), Lies(read_hold=0.01)).start()
    try:
        yield server
    finally:
        server.stop()


def env_for(server: HostileSftpServer, tmp_path: Path, keys: dict[str, Path], **extra: object) -> dict[str, str]:
    settings: dict[str, object] = {
        "CHUNK_SIZE": READ,
        "IO_TIMEOUT": 5,
        "RETRY_MAX_TRIES": 6,
        "RETRY_BACKOFF_FACTOR": 0.1,
        "VERIFY_SOURCE": "off",
    }
    env = hostile_env(server, tmp_path, keys["client"], **(settings | extra))
    env["LEDGER_FILE"] = str(tmp_path / "jail" / "state" / "ledger.jsonl")
    return env


def serve(server: HostileSftpServer, count: int, size: int) -> dict[str, bytes]:
    files = {f"202507{day:02d}.IPI": os.urandom(size + day) for day in range(1, count + 1)}
    server.lies.files.update({name.encode(): data for name, data in files.items()})
    return files


# (when overloaded, outstanding READs allowed, failed attempts allowed)
PERSONALITIES = {
    "serv-u": ("stall", 8, 4),
    "first-two-of-a-burst": ("stall", 2, 4),
    "crushftp": ("hangup", 8, 4),
    "aws-early-eof": ("eof", 8, 0),
}
# One large file (its own pipeline, transfer.download), or a backlog fetched together (catchup).
SHAPES = {"large": (1, 5 * MiB), "backlog": (12, 300_000)}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("personality", PERSONALITIES)
def test_a_server_failing_under_pipelined_reads_gets_fewer_in_flight_and_delivers(
    lying: HostileSftpServer, tmp_path: Path, keys: dict[str, Path], personality: str, shape: str
) -> None:
    # Every reconnect used to send a full window again, so each stall cost an IO_TIMEOUT
    # and the run never got through; a hang-up failed with the empty reason "Server
    # connection dropped:"; an early end-of-file failed the file.
    how, allowed, attempts = PERSONALITIES[personality]
    lying.lies.when_overloaded, lying.lies.max_outstanding_reads = how, allowed
    count, size = SHAPES[shape]
    files = serve(lying, count, size)

    result = run_job(env_for(lying, tmp_path, keys), tmp_path / "cwd", timeout=180)

    assert result.code == 0, result.output
    assert_delivered(tmp_path, lying, files)
    assert REDUCED in result.stderr
    retries = result.stderr.count("retrying in")
    assert retries <= attempts, result.stderr
    if how == "stall":
        assert f"server answered at most {allowed} reads in flight" in result.stderr
    if how == "hangup":
        assert "the server closed the connection" in result.stderr
        assert "Server connection dropped: ;" not in result.stderr
    if how == "eof":
        assert "answered end-of-file early" in result.stderr
        assert "before its listed size" not in result.stderr
    assert "Traceback" not in result.stderr


def test_pipeline_depth_bounds_the_reads_of_files_fetched_together(
    lying: HostileSftpServer, tmp_path: Path, keys: dict[str, Path]
) -> None:
    # Catch-up used to send every read of every admitted file at once, whatever PIPELINE_DEPTH said.
    lying.lies.max_outstanding_reads = 8
    files = serve(lying, 12, 300_000)

    result = run_job(env_for(lying, tmp_path, keys, PIPELINE_DEPTH=8), tmp_path / "cwd")

    assert result.code == 0, result.output
    assert_delivered(tmp_path, lying, files)
    assert lying.lies.overloaded == 0
    assert REDUCED not in result.stderr


@pytest.mark.parametrize("shape", SHAPES)
def test_a_file_really_shorter_than_listed_still_fails(
    lying: HostileSftpServer, tmp_path: Path, keys: dict[str, Path], shape: str
) -> None:
    # The one-at-a-time re-read of an early end-of-file must not deliver a truncated file,
    # nor teach the run that the server ends reads early.
    count, size = SHAPES[shape]
    files = serve(lying, count, size)
    short = next(iter(files))
    lying.lies.claimed_size[short.encode()] = len(files[short]) + 3 * READ

    result = run_job(env_for(lying, tmp_path, keys), tmp_path / "cwd")

    assert result.code != 0
    assert "before its listed size" in result.stderr
    assert not (tmp_path / "jail" / "server" / short).exists()
    assert REDUCED not in result.stderr


@pytest.mark.parametrize("short", [1, 1024])
def test_short_replies_in_catch_up_are_followed_up_at_the_read_limit(
    lying: HostileSftpServer, tmp_path: Path, keys: dict[str, Path], short: int
) -> None:
    # A short first reply used to make catch-up ask for the rest in pieces of that reply:
    # 1 byte cost a READ per byte.
    lying.lies.read_hold = 0
    lying.lies.short_first_read = short
    files = serve(lying, 3, 100_000)
    files |= {"20250801.IPI": os.urandom(2 * MiB)}
    lying.lies.files[b"20250801.IPI"] = files["20250801.IPI"]

    result = run_job(env_for(lying, tmp_path, keys), tmp_path / "cwd")

    assert result.code == 0, result.output
    assert_delivered(tmp_path, lying, files)
    total = sum(len(d) for d in files.values())
    assert lying.lies.reads <= 2 * (total / READ + len(files)), lying.lies.reads


def test_the_run_report_and_status_show_the_server_profile(
    lying: HostileSftpServer, tmp_path: Path, keys: dict[str, Path]
) -> None:
    # What the job adapted to goes into the run report (server_profile), the log once, and status.
    lying.lies.max_outstanding_reads = 8
    lying.lies.max_open_files = 1
    files = serve(lying, 4, 1_000_000)  # 16 reads each, fetched one at a time
    env = env_for(lying, tmp_path, keys)

    result = run_job(env, tmp_path / "cwd")

    assert result.code == 0, result.output
    assert_delivered(tmp_path, lying, files)
    report = json.loads((tmp_path / "jail" / "state" / "run_report.json").read_text())
    profile = report["server_profile"]
    assert profile["reads_in_flight"] == 4
    assert profile["handles_allowed"] == "one at a time"
    assert profile["read_limit"] and profile["read_limit"] > 0
    assert profile["removes_after_read"] is False
    assert profile["exec_available"] is None
    assert profile["rename_semantics"].startswith("posix-rename")
    assert "digests_offered" in profile
    assert any("server answered at most 8 reads in flight; pipelining reduced to 4" in x for x in profile["learned"])
    assert result.stderr.count("server profile:") == 1

    status = run_job(env, tmp_path / "cwd", "status")

    assert "server profile:" in status.stdout
    assert "4 reads in flight" in status.stdout
    assert "open files: one at a time" in status.stdout


def test_a_lesson_learned_counts_as_progress_for_the_retries(
    lying: HostileSftpServer, tmp_path: Path, keys: dict[str, Path]
) -> None:
    # CrushFTP hangs up before answering anything: 64, 32 and 16 reads in flight each
    # cost an attempt. Each lowered the reads in flight, so none is an attempt without
    # progress, and two tries in a row without progress are still allowed at the end.
    lying.lies.when_overloaded, lying.lies.max_outstanding_reads = "hangup", 8
    files = serve(lying, 1, 5 * MiB)

    result = run_job(env_for(lying, tmp_path, keys, RETRY_MAX_TRIES=2), tmp_path / "cwd")

    assert result.code == 0, result.output
    assert_delivered(tmp_path, lying, files)
    assert result.stderr.count(REDUCED) >= 2
