"""Selection and state against real servers: every due file is delivered or named, and
damaged state stops the job with one line instead of a traceback (issue 10)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import OLD, Runner, Server, file_sha256, run_job, sha256
from hostile_sftp import HostileSftpServer, hostile_env

from app.selection import SkipReason

MiB = 1024 * 1024
FUTURE_2100 = 4_102_444_800  # 2100-01-01T00:00:00Z: a server clock (or file) far ahead of ours


def report_of(record: Path) -> dict[str, Any]:
    return json.loads((record.parent / "run_report.json").read_text())


def jail(tmp_path: Path) -> Path:
    return tmp_path / "jail"


# -- the watermark (item 3) ------------------------------------------------------------


def test_touching_the_recorded_file_does_not_skip_the_files_after_it(server: Server, run: Runner) -> None:
    server.put("a.IPI", b"first", mtime=OLD)
    server.put("b.IPI", b"second", mtime=OLD + 100)
    server.put("c.IPI", b"third", mtime=OLD + 200)
    assert run(ORDER_BY="mtime").code == 0
    assert server.record.read_text() == "a.IPI\n"
    os.utime(server.remote / "a.IPI", (OLD + 1000, OLD + 1000))  # touched on the server

    result = run(ORDER_BY="mtime")

    assert result.code == 0, result.output
    assert (server.served / "b.IPI").read_bytes() == b"second"
    assert server.record.read_text() == "b.IPI\n"


# -- the record round-trips every name (item 9) ------------------------------------------


def test_a_name_with_a_trailing_space_round_trips_through_the_record(server: Server, run: Runner) -> None:
    server.put("a.IPI ", b"spaced", mtime=OLD)
    server.put("b.IPI", b"plain", mtime=OLD + 100)
    assert run(ORDER_BY="mtime").code == 0
    assert server.record.read_bytes() == b"a.IPI \n"

    result = run(ORDER_BY="mtime")

    assert result.code == 0, result.output
    assert (server.served / "b.IPI").read_bytes() == b"plain"


# -- server metadata is a claim (items 4, 5) ---------------------------------------------


def test_a_file_dated_2100_is_fetched_with_min_file_age_zero(
    hostile: HostileSftpServer, tmp_path: Path, keys: dict[str, Path]
) -> None:
    data = os.urandom(5000)
    hostile.lies.files[b"20250501.IPI"] = data
    hostile.lies.attrs[b"20250501.IPI"] = {"mtime": FUTURE_2100}

    result = run_job(hostile_env(hostile, tmp_path, keys["client"], MIN_FILE_AGE=0), tmp_path / "cwd")

    assert result.code == 0, result.output
    assert file_sha256(jail(tmp_path) / "server" / "20250501.IPI") == sha256(data)
    assert result.stderr.count("ahead of our clock") == 1, "the skew is logged once per run"


def test_a_file_without_permissions_is_tried_as_a_regular_file(
    hostile: HostileSftpServer, tmp_path: Path, keys: dict[str, Path]
) -> None:
    data = os.urandom(3000)
    hostile.lies.files[b"20250501.IPI"] = data
    hostile.lies.attrs[b"20250501.IPI"] = {"permissions": None}

    result = run_job(hostile_env(hostile, tmp_path, keys["client"]), tmp_path / "cwd")

    assert result.code == 0, result.output
    assert file_sha256(jail(tmp_path) / "server" / "20250501.IPI") == sha256(data)


def test_a_file_without_mtime_is_held_back_and_named_everywhere(
    hostile: HostileSftpServer, tmp_path: Path, keys: dict[str, Path]
) -> None:
    """A missing mtime is not 1970: the file waits MIN_FILE_AGE by our clock, and while it
    waits it is named in the log, the report, status and the metrics, and the exit 0 says so."""
    hostile.lies.files[b"20250501.IPI"] = b"fresh"
    hostile.lies.files[b"20250502.IPI"] = b"behind it"
    hostile.lies.attrs[b"20250501.IPI"] = {"mtime": None}
    metrics = tmp_path / "metrics.prom"
    env = hostile_env(hostile, tmp_path, keys["client"], MIN_FILE_AGE=3600, METRICS_TEXTFILE=metrics)

    result = run_job(env, tmp_path / "cwd")
    status = run_job(env, tmp_path / "cwd", "status")
    machine = run_job(env, tmp_path / "cwd", "status", "--json")

    assert result.code == 0, result.output
    assert not (jail(tmp_path) / "server" / "20250501.IPI").exists()
    assert not (jail(tmp_path) / "server" / "20250502.IPI").exists(), "the record never passes a waiting file"
    assert "20250501.IPI: skipped, not yet unchanged for MIN_FILE_AGE" in result.stderr
    assert "; 2 held back" in result.stderr
    held = {h["name"]: h for h in report_of(jail(tmp_path) / "state" / "last_file.txt")["held_back"]}
    assert set(held) == {"20250501.IPI", "20250502.IPI"}
    assert held["20250501.IPI"]["reason"] == "not yet unchanged for MIN_FILE_AGE" and held["20250501.IPI"]["since"]
    assert held["20250502.IPI"]["reason"] == SkipReason.HELD_BACK.value
    assert "held back: '20250501.IPI': not yet unchanged for MIN_FILE_AGE (since " in status.stdout
    assert {h["name"] for h in json.loads(machine.stdout)["held_back"]} == set(held)
    prom = metrics.read_text()
    assert 'sftp_ipi_held_back_files{feed="127.0.0.1"} 2.0' in prom
    assert 'sftp_ipi_late_files{feed="127.0.0.1"} 0.0' in prom
    assert "sftp_ipi_oldest_held_back_seconds " in prom


def test_every_skip_reason_is_named_in_the_log(server: Server, run: Runner) -> None:
    (server.remote / "20250430.IPI").mkdir()
    server.put("20250428_20250501.IPI", b"two dates")
    server.put("20250429.IPI", b"ok")

    result = run(SELECT_MODE="all")

    assert result.code == 0, result.output
    assert "20250430.IPI: skipped, not a regular file" in result.stderr
    assert "20250428_20250501.IPI: skipped, several different dates in the name" in result.stderr
    assert (server.served / "20250429.IPI").read_bytes() == b"ok"


def test_date_pattern_picks_the_date_of_names_with_several(server: Server, run: Runner) -> None:
    server.put("20250601_20250428.IPI", b"x")

    result = run(DATE_PATTERN=r"_(?P<date>\d{8})\.IPI$", SELECT_MODE="all")

    assert result.code == 0, result.output
    assert (server.served / "20250601_20250428.IPI").read_bytes() == b"x"


@pytest.mark.parametrize("pattern", [r"(\d{8})", r"(?P<date>\d{8}"])
def test_a_bad_date_pattern_is_a_config_error(server: Server, run: Runner, pattern: str) -> None:
    result = run(DATE_PATTERN=pattern)
    assert result.code == 2
    assert "DATE_PATTERN" in result.stderr and "Traceback" not in result.output


# -- late arrivals (item 6) --------------------------------------------------------------


def test_a_late_file_is_named_and_fetched_only_when_asked(server: Server, run: Runner) -> None:
    server.put("B_20250428.IPI", b"b")
    server.put("20250429.IPI", b"c")
    assert run(SELECT_MODE="all").code == 0
    server.put("A_20250428.IPI", b"late")  # same date, sorts before the record's place

    warned = run(SELECT_MODE="all")
    status = run("status")

    assert warned.code == 0, warned.output
    assert "A_20250428.IPI: skipped, arrived after the last completed file" in warned.stderr
    assert "; 1 late" in warned.stderr
    [late] = report_of(server.record)["late"]
    assert late["name"] == "A_20250428.IPI" and late["since"]
    assert "late: 'A_20250428.IPI'" in status.stdout
    assert not (server.served / "A_20250428.IPI").exists()

    fetched = run(SELECT_MODE="all", LATE_FILES="fetch")
    again = run(SELECT_MODE="all", LATE_FILES="fetch")

    assert fetched.code == 0 and again.code == 0, fetched.output + again.output
    assert (server.served / "A_20250428.IPI").read_bytes() == b"late"
    assert server.record.read_text() == "20250429.IPI\n", "the record never moves back"
    names = [json.loads(line)["name"] for line in server.ledger.read_text().splitlines()]
    assert names.count("A_20250428.IPI") == 1
    assert report_of(server.record)["late"] == []


def test_a_file_uploaded_with_a_preserved_older_mtime_is_late_under_order_by_mtime(server: Server, run: Runner) -> None:
    server.put("a.IPI", b"a", mtime=OLD)
    server.put("b.IPI", b"b", mtime=OLD + 100)
    assert run(ORDER_BY="mtime", SELECT_MODE="all").code == 0
    server.put("old.IPI", b"copied with its mtime", mtime=OLD + 50)  # e.g. rsync -t, scp -p

    warned = run(ORDER_BY="mtime", SELECT_MODE="all")
    fetched = run(ORDER_BY="mtime", SELECT_MODE="all", LATE_FILES="fetch")

    assert warned.code == 0 and fetched.code == 0, warned.output + fetched.output
    assert "old.IPI: skipped, arrived after the last completed file" in warned.stderr
    assert (server.served / "old.IPI").read_bytes() == b"copied with its mtime"
    assert server.record.read_text() == "b.IPI\n"


def test_files_behind_a_migrated_record_are_the_baseline_not_late(server: Server, run: Runner) -> None:
    """The original script left only last_file.txt: what it fetched is not in the ledger."""
    for name in ("20250427.IPI", "20250428.IPI", "20250429.IPI", "20250430.IPI"):
        server.put(name, name.encode())
    server.record.parent.mkdir(parents=True)
    server.record.write_text("20250429.IPI\n")

    first = run(SELECT_MODE="all")
    second = run(SELECT_MODE="all")

    assert first.code == 0 and second.code == 0, first.output + second.output
    assert sorted(p.name for p in server.served.iterdir()) == ["20250430.IPI"]
    assert report_of(server.record)["late"] == []
    assert "arrived after" not in first.stderr + second.stderr


# -- damaged state (item 13) -------------------------------------------------------------


def test_a_ledger_line_with_a_string_mtime_is_exit_2_naming_file_and_line(server: Server, run: Runner) -> None:
    server.put("20250428.IPI", b"x")
    assert run().code == 0
    line = json.loads(server.ledger.read_text())
    with server.ledger.open("a") as f:
        f.write(json.dumps({**line, "name": "20250429.IPI", "mtime": "1745800000"}) + "\n")
    before = server.ledger.read_bytes()
    server.put("20250430.IPI", b"y")

    result = run()
    status = run("status")

    for answer in (result, status):
        assert answer.code == 2, answer.output
        assert f"{server.ledger}:2:" in answer.stderr and "'mtime'" in answer.stderr
        assert "Traceback" not in answer.output and "internal error" not in answer.output
    assert server.ledger.read_bytes() == before, "no other state is lost"
    assert not (server.served / "20250430.IPI").exists()


def test_partial_metadata_with_1e400_starts_the_partial_again(server: Server, run: Runner) -> None:
    data = os.urandom(3 * MiB)
    server.put("20250428.IPI", data)
    server.local.mkdir(parents=True)
    (server.local / "20250428.IPI.part").write_bytes(b"\0" * MiB)
    (server.local / "20250428.IPI.part.json").write_text('{"name": "20250428.IPI", "size": 1e400, "mtime": 1e400}')

    status = run("status")
    result = run()

    assert status.code == 1 and "in progress: 20250428.IPI" in status.stdout, status.output
    assert result.code == 0, result.output
    assert file_sha256(server.served / "20250428.IPI") == sha256(data)


def test_damaged_observations_are_rebuilt_with_a_warning(server: Server, run: Runner) -> None:
    server.put("20250428.IPI", b"x")
    seen = server.record.parent / "seen_files.json"
    seen.parent.mkdir(parents=True)
    seen.write_bytes(b'{"version": 1, "files": {"x": {"first_seen": "soon"}}}')

    result = run()

    assert result.code == 0, result.output
    assert f"observations {seen}" in result.stderr
    assert (server.served / "20250428.IPI").read_bytes() == b"x"
    assert json.loads(seen.read_text())["version"] == 1


def test_a_report_with_wrong_types_is_ignored_by_status(server: Server, run: Runner) -> None:
    report = server.record.parent / "run_report.json"
    report.parent.mkdir(parents=True)
    report.write_text('{"exit_code": 0, "ok": "false"}')

    status = run("status")

    assert status.code == 1, "a damaged report never reads as healthy"
    assert "last run: none recorded" in status.stdout
    assert f"run report {report} ignored" in status.stderr


def test_a_dry_run_keeps_no_observations(server: Server, run: Runner) -> None:
    server.put("20250428.IPI", b"x", mtime=4_102_444_800)

    result = run("--dry-run", MIN_FILE_AGE=60)

    assert result.code == 0, result.output
    assert "skip: 20250428.IPI: not yet unchanged for MIN_FILE_AGE" in result.stdout
    assert not server.record.parent.exists(), "a dry run writes no state"


# -- the backlog of SELECT_MODE=next ------------------------------------------------------


def test_files_left_for_a_later_run_are_counted_and_named_everywhere(server: Server, run: Runner) -> None:
    """A success with files still waiting on the server says so: the run report counts and
    names them, status says "N more due", the metrics carry sftp_ipi_due_files, and a run
    that leaves as many due as the one before counts as a stalled run."""
    for day in range(1, 5):
        server.put(f"2025050{day}.IPI", b"x" * day)
    metrics = server.tmp / "metrics.prom"

    first = run(SELECT_MODE="next", METRICS_TEXTFILE=metrics)
    status = run("status", SELECT_MODE="next")
    machine = json.loads(run("status", "--json", SELECT_MODE="next").stdout)

    assert first.code == 0, first.output
    assert (server.served / "20250501.IPI").read_bytes() == b"x"
    report = report_of(server.record)
    assert report["due_remaining"] == 3
    assert report["due_names"] == ["20250502.IPI", "20250503.IPI", "20250504.IPI"]
    assert report["due_stalled_runs"] == 0
    assert "; 3 more due" in first.stderr
    assert status.code == 0, status.output
    assert "3 more due (left for later runs: 20250502.IPI, 20250503.IPI, 20250504.IPI)" in status.stdout
    assert machine["due_remaining"] == 3 and machine["due_names"][0] == "20250502.IPI"
    prom = metrics.read_text()
    assert 'sftp_ipi_due_files{feed="127.0.0.1"} 3.0' in prom
    assert 'sftp_ipi_due_stalled_runs{feed="127.0.0.1"} 0.0' in prom

    # Two new files arrive for each one delivered: the backlog does not shrink.
    server.put("20250505.IPI", b"new")
    second = run(SELECT_MODE="next", METRICS_TEXTFILE=metrics)
    assert second.code == 0, second.output
    assert report_of(server.record)["due_remaining"] == 3
    assert report_of(server.record)["due_stalled_runs"] == 1
    assert 'sftp_ipi_due_stalled_runs{feed="127.0.0.1"} 1.0' in metrics.read_text()

    # Nothing new: it shrinks, and the stall count starts again.
    third = run(SELECT_MODE="next", METRICS_TEXTFILE=metrics)
    assert third.code == 0, third.output
    assert report_of(server.record)["due_remaining"] == 2
    assert report_of(server.record)["due_stalled_runs"] == 0


def test_due_names_stop_at_100_while_the_count_goes_on(server: Server, run: Runner) -> None:
    for index in range(105):
        server.put(f"2025{1 + index // 28:02d}{1 + index % 28:02d}.IPI", b"y")

    result = run(SELECT_MODE="next")

    assert result.code == 0, result.output
    report = report_of(server.record)
    assert report["due_remaining"] == 104
    assert len(report["due_names"]) == 100
    assert report["due_names"][0] == "20250102.IPI"


def test_a_healthy_run_against_openssh_logs_no_warning(server: Server, run: Runner) -> None:
    """OpenSSH offers no server-side proof and a young file waits for MIN_FILE_AGE: both
    are normal, said at INFO, and a healthy run logs no WARNING at all."""
    server.put("20250501.IPI", b"settled")
    server.put("20250502.IPI", b"just uploaded", mtime=time.time())

    result = run(MIN_FILE_AGE=3600)

    assert result.code == 0, result.output
    assert (server.served / "20250501.IPI").read_bytes() == b"settled"
    assert "no proof from the server side" in result.stderr
    assert "20250502.IPI: skipped, not yet unchanged for MIN_FILE_AGE" in result.stderr
    assert [line for line in result.stderr.splitlines() if "| WARNING" in line] == []
