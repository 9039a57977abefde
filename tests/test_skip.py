"""``sftp-ipi skip``: one unreadable file no longer stops a chronological feed, for real;
and the failure streaks that name a stuck file with the command that skips it."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Result, Server, file_sha256, run_job, sha256, start_job
from test_resilience import kill_at_random, kill_campaign_seed

from app.errors import ConfigError
from app.selection import Observation
from app.storage.skip import operator, plan_skip
from app.storage.state import (
    SKIP_CHECKS,
    Ledger,
    LedgerEntry,
    RefetchNote,
    RunLock,
    SkipNote,
    append_ledger,
    read_ledger,
)
from app.streaks import Streak, next_streaks, reason_class, skip_command, streaks_from_json, stuck

A, B, C = "20250101.IPI", "20250102.IPI", "20250103.IPI"
FEED = "skipfeed"


def job(server: Server, *args: str, **overrides: object) -> Result:
    settings = {"METRICS_TEXTFILE": server.tmp / "metrics.prom", "METRICS_INSTANCE": FEED, **overrides}
    return run_job(server.env(**settings), server.tmp / "cwd", *args)


def report(server: Server) -> dict[str, Any]:
    return json.loads((server.record.parent / "run_report.json").read_text())


def ledger_lines(server: Server) -> list[dict[str, Any]]:
    return [json.loads(line) for line in server.ledger.read_text().splitlines() if line.strip()]


def metric(server: Server, name: str) -> float:
    for line in (server.tmp / "metrics.prom").read_text().splitlines():
        if line.startswith(f'{name}{{feed="{FEED}"}} '):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in the metrics")


def unreadable_b(server: Server) -> dict[str, bytes]:
    """A, an unreadable B, and C on the server; A delivered, B failing."""
    files = {A: b"a" * 5000, B: b"b" * 5000, C: b"c" * 5000}
    for name, data in files.items():
        server.put(name, data)
    (server.remote / B).chmod(0o000)
    first = job(server)
    assert first.code == 0, first.output
    assert server.record.read_text() == f"{A}\n"
    return files


def test_an_unreadable_file_blocks_next_until_skipped_then_the_following_file_is_delivered(
    unprivileged_server: Server,
) -> None:
    server = unprivileged_server
    files = unreadable_b(server)
    for _ in range(2):
        blocked = job(server)
        assert blocked.code == 1, blocked.output
        assert B in blocked.stderr
        assert not (server.served / C).exists(), "SELECT_MODE=next never passes the failing file by itself"
    assert server.record.read_text() == f"{A}\n"

    skipped = job(server, "skip", B, "--reason", "unreadable on the server, partner ticket 123", SUDO_USER="alice")

    assert skipped.code == 0, skipped.output
    assert f"skipped: {B}" in skipped.stdout
    note = ledger_lines(server)[-1]
    assert note["event"] == "skipped" and note["name"] == B
    assert note["reason"] == "unreadable on the server, partner ticket 123"
    assert note["by"] == "alice", "SUDO_USER names the person behind sudo"
    assert note["at"].endswith("+00:00") and note["size"] == 5000
    assert f"{B} skipped by alice" in server.log.read_text()

    after = job(server)

    assert after.code == 0, after.output
    assert file_sha256(server.served / C) == sha256(files[C])
    assert not (server.served / B).exists()
    assert server.record.read_text() == f"{C}\n"
    ledger = read_ledger(server.ledger)
    assert ledger.names == {A, C}, "a skipped file is never counted as delivered"
    assert set(ledger.skipped) == {B}
    assert report(server)["skipped"] == [
        {"name": B, "reason": note["reason"], "by": "alice", "at": note["at"]},
    ]

    status = job(server, "status")
    assert status.code == 0, status.output
    assert f"skipped: '{B}': {note['reason']} (by alice at {note['at']}" in status.stdout
    as_json = json.loads(job(server, "status", "--json").stdout)
    assert [s["name"] for s in as_json["skipped"]] == [B]

    audit = job(server, "audit")
    assert audit.code == 0, audit.output
    assert f"skipped: {B}: {note['reason']}" in audit.stdout
    assert "missing" not in audit.stdout and "unknown" not in audit.stdout
    audited = json.loads(job(server, "audit", "--json").stdout)
    assert audited["findings"] == [] and [s["name"] for s in audited["skipped"]] == [B]


def test_under_select_mode_all_a_skipped_file_lets_the_record_move_past_it(unprivileged_server: Server) -> None:
    server = unprivileged_server
    unreadable_b(server)
    held = job(server, SELECT_MODE="all")
    assert held.code == 1, held.output
    assert (server.served / C).exists(), "SELECT_MODE=all delivers the files after it"
    assert server.record.read_text() == f"{A}\n", "but the record never passes the failing file"

    assert job(server, "skip", B, "--reason", "unreadable", USER="bob").code == 0
    after = job(server, SELECT_MODE="all")

    assert after.code == 0, after.output
    assert server.record.read_text() == f"{C}\n"
    assert ledger_lines(server)[-1]["by"] == "bob"
    assert [f["name"] for f in report(server)["files"]] == [], "nothing fetched again, the skipped file never"


def test_a_skipped_file_fixed_on_the_server_is_fetched_after_all_with_refetch(unprivileged_server: Server) -> None:
    server = unprivileged_server
    files = unreadable_b(server)
    assert job(server, "skip", B, "--reason", "unreadable").code == 0
    assert job(server).code == 0
    assert server.record.read_text() == f"{C}\n"
    (server.remote / B).chmod(0o644)  # the partner fixed it

    undo = job(server, "refetch", B)

    assert undo.code == 0, undo.output
    assert f"refetch: {B} (skipped" in undo.stdout
    assert server.record.read_text() == f"{A}\n"
    assert read_ledger(server.ledger).skipped == {}
    again = job(server)
    assert again.code == 0, again.output
    assert file_sha256(server.served / B) == sha256(files[B])
    assert server.record.read_text() == f"{C}\n"
    assert read_ledger(server.ledger).names == {A, B, C}
    assert report(server)["skipped"] == []
    assert job(server, "audit").code == 0


def test_skip_uses_user_when_not_run_with_sudo() -> None:
    assert operator({"USER": "bob"}) == "bob"
    assert operator({"USER": "root", "SUDO_USER": "alice"}) == "alice"
    assert operator({"USER": "", "SUDO_USER": " "}) != ""


def test_skip_of_a_name_neither_the_ledger_nor_the_last_listing_knows_exits_2_and_changes_nothing(
    unprivileged_server: Server,
) -> None:
    server = unprivileged_server
    unreadable_b(server)
    assert job(server).code == 1
    before = server.ledger.read_bytes()

    result = job(server, "skip", B, "20250109.IPI", "typo.IPI", "--reason", "x")

    assert result.code == 2, result.output
    assert "Traceback" not in result.output
    error = [line for line in result.stderr.splitlines() if "| ERROR" in line][-1]
    assert "20250109.IPI" in error and "typo.IPI" in error and B not in error
    assert server.ledger.read_bytes() == before, "one unknown name: nothing is skipped"

    blank = job(server, "skip", B, "--reason", "  ")
    assert blank.code == 2 and "--reason" in blank.stderr
    assert server.ledger.read_bytes() == before


def test_skip_waits_for_a_run_in_progress(unprivileged_server: Server) -> None:
    server = unprivileged_server
    unreadable_b(server)
    assert job(server).code == 1
    before = server.ledger.read_bytes()
    lock = RunLock(server.record.with_name("last_file.txt.lock"))
    lock.acquire()
    proc = start_job(server.env(), server.tmp / "cwd", "skip", B, "--reason", "unreadable")
    try:
        time.sleep(2.0)
        assert proc.poll() is None, "skip waits while a run holds the lock"
        assert server.ledger.read_bytes() == before, "nothing is written under a run in progress"
    finally:
        lock.release()
    out, err = proc.communicate(timeout=60)

    assert proc.returncode == 0, out + err
    assert set(read_ledger(server.ledger).skipped) == {B}


def test_a_file_failing_the_same_way_three_runs_in_a_row_is_stuck_with_the_command_that_skips_it(
    unprivileged_server: Server,
) -> None:
    server = unprivileged_server
    unreadable_b(server)
    for runs in (1, 2):  # unreadable_b's run delivered A and did not try B
        assert job(server).code == 1
        assert report(server)["failure_streaks"][B]["runs"] == runs
    assert report(server)["stuck"] == []
    assert metric(server, "sftp_ipi_stuck_files") == 0
    assert "stuck" not in server.log.read_text()

    third = job(server)

    assert third.code == 1, third.output
    stuck_files = report(server)["stuck"]
    assert [s["name"] for s in stuck_files] == [B] and stuck_files[0]["runs"] == 3
    command = stuck_files[0]["command"]
    assert command.startswith(f"sftp-ipi skip {B} --reason ")
    assert metric(server, "sftp_ipi_stuck_files") == 1
    assert f"{B}: stuck: failed the same way on 3 runs in a row" in third.stderr
    assert command in third.stderr and command in server.log.read_text()
    assert command in job(server, "status").stdout

    # The command works as it is printed.
    pasted = shlex.split(command)
    assert pasted[:2] == ["sftp-ipi", "skip"]
    assert job(server, *pasted[1:]).code == 0
    after = job(server)
    assert after.code == 0, after.output
    assert (server.served / C).exists()
    assert report(server)["stuck"] == [] and report(server)["failure_streaks"] == {}
    assert metric(server, "sftp_ipi_stuck_files") == 0


def test_stuck_after_runs_zero_names_no_file_stuck(unprivileged_server: Server) -> None:
    server = unprivileged_server
    unreadable_b(server)
    for _ in range(3):
        assert job(server, STUCK_AFTER_RUNS=0).code == 1
    assert report(server)["failure_streaks"][B]["runs"] == 3
    assert report(server)["stuck"] == []


def test_skip_killed_at_random_instants_leaves_the_skip_whole_or_absent(unprivileged_server: Server) -> None:
    """kill -9 of ``skip`` at random moments: after each, the ledger parses without a
    damaged line, and both names are skipped or neither is."""
    server = unprivileged_server
    unreadable_b(server)
    (server.remote / C).chmod(0o000)
    assert job(server, SELECT_MODE="all").code == 1  # B and C both in the last listing now
    baseline = server.tmp / "baseline.jsonl"
    shutil.copyfile(server.ledger, baseline)
    settings = server.env()
    args = ("skip", B, C, "--reason", "unreadable on the server")
    started = time.monotonic()
    clean = run_job(settings, server.tmp / "cwd", *args)
    took = time.monotonic() - started
    assert clean.code == 0, clean.output
    seed, rng = kill_campaign_seed()
    outcomes: list[frozenset[str]] = []

    def check(killed: bool) -> None:
        ledger = read_ledger(server.ledger)  # raises on any damaged line that is not a torn last one
        assert ledger.damaged_lines == 0, f"seed {seed}: a torn ledger line"
        skipped = frozenset(ledger.skipped)
        assert skipped in (frozenset(), frozenset({B, C})), f"seed {seed}: half a skip: {sorted(skipped)}"
        assert ledger.names == {A}, f"seed {seed}"
        outcomes.append(skipped)
        shutil.copyfile(baseline, server.ledger)

    shutil.copyfile(baseline, server.ledger)
    kills = kill_at_random(
        settings, server.tmp / "cwd", rng, kills=15, runs=40, args=args, within=(0.0, took * 1.2), after=check
    )

    assert kills >= 8, f"seed {seed}: only {kills} runs were killed"
    assert frozenset() in outcomes, f"seed {seed}: no kill landed before the write"


# -- the pure part ---------------------------------------------------------------------------


def entry(name: str, mtime: int = 1_700_000_000) -> LedgerEntry:
    return LedgerEntry(name, 10, mtime, "ab" * 32, 10, 0.1, "2025-01-01T00:00:00+00:00")


def note(name: str, at: str = "2025-02-01T00:00:00+00:00", mtime: int | None = None) -> SkipNote:
    return SkipNote(name, "unreadable", at, "alice", "host", 10, mtime)


LISTED = {B: Observation(1.0, 1.0, 5000, 1_700_000_100), C: Observation(1.0, 1.0, 7, None)}


def plan(names: list[str], ledger: Ledger, reason: str = "unreadable") -> Any:
    return plan_skip(names, reason, ledger, LISTED, at="2025-02-01T00:00:00+00:00", by="alice", host="h")


def test_skip_notes_are_read_back_as_skipped_and_passed_but_not_delivered(tmp_path: Path) -> None:
    path = tmp_path / "completed_files.jsonl"
    append_ledger(path, entry(A), note(B, mtime=1_700_000_100))
    ledger = read_ledger(path)
    assert ledger.names == {A}
    assert set(ledger.skipped) == {B} and ledger.passed == {A, B}
    assert ledger.skipped[B].by == "alice"
    assert ledger.mtimes[B] == 1_700_000_100, "a skipped file keeps its place under ORDER_BY=mtime"


def test_a_later_delivery_or_refetch_of_the_name_ends_its_skip(tmp_path: Path) -> None:
    path = tmp_path / "completed_files.jsonl"
    append_ledger(path, note(B), note(C))
    append_ledger(path, entry(B), RefetchNote(C, "2025-03-01T00:00:00+00:00", "ops@host"))
    ledger = read_ledger(path)
    assert ledger.skipped == {} and ledger.names == {B}


def test_refetch_plan_takes_a_skipped_file_and_rewinds_the_record_before_it() -> None:
    from app.storage.refetch import plan_refetch

    ledger = Ledger(entries=(entry(A), entry(C)), skips=(note(B),))
    refetch = plan_refetch([B], ledger, C, "name-date")
    assert [n.name for n in refetch.unskipped] == [B] and refetch.files == ()
    assert refetch.record_after == A


def test_skip_checks_cover_every_field_of_the_note() -> None:
    fields = set(SkipNote.__dataclass_fields__) - {"event"}
    assert set(SKIP_CHECKS) == fields


def test_a_damaged_skip_line_is_a_config_error_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "completed_files.jsonl"
    path.write_text(json.dumps({"event": "skipped", "name": B, "reason": "", "at": "x", "by": "a", "host": "h"}) + "\n")
    with pytest.raises(ConfigError, match=":1: 'reason' is not a reason"):
        read_ledger(path)


def test_plan_skip_names_every_unknown_file_and_leaves_delivered_and_skipped_ones() -> None:
    ledger = Ledger(entries=(entry(A),), skips=(note(C),))
    with pytest.raises(ConfigError, match=r"20250109\.IPI, x\.IPI"):
        plan(["20250109.IPI", B, "x.IPI"], ledger)
    skip = plan([A, B, C, B], ledger)
    assert [(n.name, n.size, n.mtime) for n in skip.notes] == [(B, 5000, 1_700_000_100)]
    assert skip.delivered == (A,) and [n.name for n in skip.already] == [C]


def test_plan_skip_takes_a_pending_refetch_and_refuses_an_empty_reason_or_an_unsafe_name() -> None:
    ledger = Ledger(entries=(), refetch_pending=(RefetchNote(A, "2025-03-01T00:00:00+00:00", "ops"),))
    assert [n.name for n in plan([A], ledger).notes] == [A]
    with pytest.raises(ConfigError, match="--reason"):
        plan([B], ledger, reason=" \n")
    with pytest.raises(ConfigError, match="not a valid file name"):
        plan(["../etc"], ledger)


def test_reason_class_ignores_the_name_numbers_and_quoted_parts() -> None:
    one = reason_class(B, f"download '{B}': Permission denied")
    assert one == reason_class(B, f"download {B!r}: Permission denied")
    assert reason_class(B, "file ended at byte 100, before its listed size of 5000") == reason_class(
        B, "file ended at byte 4096, before its listed size of 5001"
    )
    assert one != reason_class(B, "server refused a read: Failure")


def test_streaks_grow_on_the_same_failure_restart_on_another_and_end_when_the_file_does_not_fail() -> None:
    first = next_streaks({}, {B: "download 'x': Permission denied"}, True, "t1")
    assert first[B].runs == 1 and first[B].since == "t1"
    second = next_streaks(first, {B: "download 'y': Permission denied"}, True, "t2")
    assert second[B].runs == 2 and second[B].since == "t1"
    other = next_streaks(second, {B: "server refused a read: Failure"}, True, "t3")
    assert other[B].runs == 1 and other[B].since == "t3"
    assert next_streaks(second, {}, True, "t3") == {}, "delivered, skipped or gone: the streak ends"
    assert next_streaks(second, {}, False, "t3") == second, "a run that never listed tried no file"


def test_stuck_files_reach_the_threshold_and_zero_means_never() -> None:
    streaks = {B: Streak(B, "k", 3, "t", "e"), C: Streak(C, "k", 2, "t", "e")}
    assert [s.name for s in stuck(streaks, 3)] == [B]
    assert stuck(streaks, 0) == []


def test_the_skip_command_survives_a_shell() -> None:
    odd = "IPI 20250102 it's.csv"
    command = skip_command(Streak(odd, "k", 3, "2025-01-01T00:00:00+00:00", "download 'x': Permission denied"))
    words = shlex.split(command)
    assert words[:3] == ["sftp-ipi", "skip", odd] and words[3] == "--reason"
    assert "failed 3 runs in a row" in words[4] and "Permission denied" in words[4]


def test_streaks_from_a_damaged_report_are_dropped_one_by_one() -> None:
    good = Streak(B, "k", 2, "t", "e")
    value = {B: good.to_json(), C: {"runs": "three"}, "": good.to_json(), A: {**good.to_json(), "runs": True}}
    assert streaks_from_json(value) == {B: good}
    assert streaks_from_json(["not", "a", "dict"]) == {}


@pytest.mark.skipif(os.geteuid() != 0, reason="giving state files to a service account needs root")
def test_skip_run_as_root_leaves_the_ledger_to_the_service_user(unprivileged_server: Server) -> None:
    import pwd

    server = unprivileged_server
    server.put(B, b"b" * 5000).chmod(0o000)
    assert job(server).code == 1  # the first file of the feed fails: no ledger yet
    assert not server.ledger.exists()
    service = pwd.getpwnam("nobody")
    os.chown(server.record.parent, service.pw_uid, service.pw_gid)

    assert job(server, "skip", B, "--reason", "unreadable").code == 0
    created = server.ledger.stat()
    assert (created.st_uid, created.st_gid) == (service.pw_uid, service.pw_gid), "created for the service user"

    server.put(C, b"c" * 10).chmod(0o000)
    assert job(server).code == 1
    os.chown(server.ledger, service.pw_uid, service.pw_gid)
    server.ledger.chmod(0o640)
    assert job(server, "skip", C, "--reason", "unreadable").code == 0
    kept = server.ledger.stat()
    assert (kept.st_uid, kept.st_gid, kept.st_mode & 0o777) == (service.pw_uid, service.pw_gid, 0o640)
    assert set(read_ledger(server.ledger).skipped) == {B, C}


def test_a_skipped_file_without_a_place_in_the_order_is_no_longer_held_back() -> None:
    from app.selection import Criteria, RemoteEntry, SkipReason, make_plan

    criteria = Criteria("*IPI*", "name-date", "next", 0)
    listing = [RemoteEntry("README_IPI.txt", 10, 1), RemoteEntry(A, 10, 1)]
    before = make_plan(listing, criteria, None, frozenset(), 100.0)
    assert {s.name: s.reason for s in before.skipped}["README_IPI.txt"] is SkipReason.NO_DATE
    after = make_plan(listing, criteria, None, frozenset({"README_IPI.txt"}), 100.0)
    assert {s.name: s.reason for s in after.skipped}["README_IPI.txt"] is SkipReason.COMPLETED
    assert [e.name for e in after.due] == [A]
