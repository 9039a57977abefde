"""``sftp-ipi refetch``: a delivered file made due again is fetched once by the next run, for real."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from conftest import Runner, Server, sha256

from app.errors import ConfigError
from app.storage.refetch import plan_refetch, rewound_record
from app.storage.state import Ledger, LedgerEntry, RefetchNote

A, B, C = "20250101.IPI", "20250102.IPI", "20250103.IPI"
MiB = 1024 * 1024


def report(server: Server) -> dict[str, Any]:
    return json.loads((server.record.parent / "run_report.json").read_text())


def fetched(server: Server) -> list[str]:
    return [f["name"] for f in report(server)["files"]]


def ledger_lines(server: Server) -> list[dict[str, Any]]:
    return [json.loads(line) for line in server.ledger.read_text().splitlines()]


def deliver_three(server: Server, run: Runner) -> dict[str, bytes]:
    # B is large enough to go through the resumable .part path, the others are fetched whole.
    files = {A: os.urandom(4000), B: os.urandom(MiB + 12345), C: os.urandom(5000)}
    for name, data in files.items():
        server.put(name, data)
    result = run(SELECT_MODE="all")
    assert result.code == 0, result.output
    assert fetched(server) == [A, B, C]
    assert server.record.read_text() == f"{C}\n"
    return files


def state_of(server: Server) -> tuple[bytes, bytes, list[str]]:
    return server.ledger.read_bytes(), server.record.read_bytes(), sorted(p.name for p in server.local.iterdir())


def test_refetched_file_is_fetched_once_by_the_next_run(server: Server, run: Runner) -> None:
    deliver_three(server, run)
    # Rewritten on the server with the same size and mtime: only a real download can see it.
    new = os.urandom(MiB + 12345)
    server.put(B, new)

    result = run("refetch", B)

    assert result.code == 0, result.output
    assert f"refetch: {B}" in result.stdout
    assert f"move LAST_FILE_RECORD: {C} -> {A}" in result.stdout
    assert server.record.read_text() == f"{A}\n"
    assert not (server.local / B).exists(), "a same-size same-mtime local copy would pass for the new file"
    note = ledger_lines(server)[-1]
    assert note["name"] == B and note["refetch"] is True
    assert "@" in note["requested_by"] and note["requested_at"].endswith("+00:00")
    assert f"refetch of {B} requested by" in server.log.read_text()
    assert f"due again: {B} (refetch asked" in run("status").stdout

    again = run()  # SELECT_MODE=next: the refetched file is the next one due

    assert again.code == 0, again.output
    assert fetched(server) == [B]
    assert report(server)["files"][0]["bytes_transferred"] == len(new)
    assert sha256((server.served / B).read_bytes()) == sha256(new)
    assert server.record.read_text() == f"{C}\n", "the record moves forward over the files delivered before"
    assert [line["sha256"] for line in ledger_lines(server) if line["name"] == B and "sha256" in line][-1] == sha256(
        new
    )

    assert "due again" not in run("status").stdout
    after = run(SELECT_MODE="all")
    assert after.code == 0, after.output
    assert fetched(server) == []
    assert run("audit").code == 0, "the ledger's newest entry for the file is the one audited"


def test_refetch_dry_run_shows_the_changes_and_makes_none(server: Server, run: Runner) -> None:
    deliver_three(server, run)
    before = state_of(server)

    result = run("refetch", "--dry-run", B)

    assert result.code == 0, result.output
    assert f"would refetch: {B}" in result.stdout
    assert f"would remove LOCAL_DIR copy: {server.local / B}" in result.stdout
    assert f"would move LAST_FILE_RECORD: {C} -> {A}" in result.stdout
    assert state_of(server) == before


def test_refetch_of_unknown_names_exits_2_naming_them_and_changes_nothing(server: Server, run: Runner) -> None:
    deliver_three(server, run)
    before = state_of(server)

    result = run("refetch", B, "20250109.IPI", "nonsense")

    assert result.code == 2, result.output
    assert "Traceback" not in result.output
    error = [line for line in result.stderr.splitlines() if "| ERROR" in line][-1]
    assert "20250109.IPI" in error and "nonsense" in error and B not in error
    assert state_of(server) == before


def test_refetch_of_the_oldest_file_clears_the_record_and_nothing_else_is_fetched(server: Server, run: Runner) -> None:
    deliver_three(server, run)

    assert run("refetch", A).code == 0
    assert server.record.read_text() == ""
    result = run(SELECT_MODE="all")

    assert result.code == 0, result.output
    assert fetched(server) == [A]
    assert server.record.read_text() == f"{C}\n"


def test_refetch_of_a_file_after_the_record_leaves_the_record_alone(server: Server, run: Runner) -> None:
    deliver_three(server, run)
    server.record.write_text(f"{A}\n")  # e.g. B held the record back while C completed

    result = run("refetch", C)

    assert result.code == 0, result.output
    assert "LAST_FILE_RECORD" not in result.stdout
    assert server.record.read_text() == f"{A}\n"


# -- the pure part ---------------------------------------------------------------------------


def entry(name: str, mtime: int = 1_700_000_000) -> LedgerEntry:
    return LedgerEntry(name, 10, mtime, "ab" * 32, 10, 0.1, "2025-01-01T00:00:00+00:00")


def test_record_rewinds_to_the_latest_delivered_file_before_the_earliest_refetched() -> None:
    done = [entry("20250101.IPI"), entry("20250103.IPI"), entry("20250105.IPI")]
    targets = [entry("20250106.IPI"), entry("20250104.IPI")]
    assert rewound_record("20250106.IPI", targets, done, "name-date", {}) == "20250103.IPI"


def test_record_already_before_the_refetched_files_stays() -> None:
    assert rewound_record("20250101.IPI", [entry("20250104.IPI")], [entry("20250101.IPI")], "name-date", {}) == (
        "20250101.IPI"
    )


def test_record_rewinds_by_ledger_mtime_under_order_by_mtime() -> None:
    old, mid, new = entry("x.IPI", 100), entry("y.IPI", 200), entry("z.IPI", 300)
    mtimes = {"x.IPI": 100, "y.IPI": 200, "z.IPI": 300}
    assert rewound_record("z.IPI", [mid], [old, new], "mtime", mtimes) == "x.IPI"


def test_unplaceable_refetched_file_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no YYYYMMDD date"):
        rewound_record("20250101.IPI", [entry("nodate.IPI")], [], "name-date", {})


def test_plan_names_every_unknown_file_and_reports_pending_ones() -> None:
    note = RefetchNote("20250102.IPI", "2025-01-02T00:00:00+00:00", "ops@host")
    ledger = Ledger(entries=(entry("20250101.IPI"),), refetch_pending=(note,))
    with pytest.raises(ConfigError, match=r"x\.IPI, y\.IPI"):
        plan_refetch(["x.IPI", "20250101.IPI", "y.IPI"], ledger, "20250101.IPI", "name-date")
    plan = plan_refetch(["20250102.IPI", "20250101.IPI", "20250101.IPI"], ledger, "20250101.IPI", "name-date")
    assert [e.name for e in plan.files] == ["20250101.IPI"]
    assert plan.already_due == (note,)
    assert plan.record_after is None


def test_refetch_notes_in_the_ledger_are_read_back(tmp_path: Path) -> None:
    from app.storage.state import append_ledger, read_ledger

    path = tmp_path / "completed_files.jsonl"
    append_ledger(path, entry("20250101.IPI"), entry("20250102.IPI"))
    append_ledger(path, RefetchNote("20250101.IPI", "2025-02-01T00:00:00+00:00", "ops@host"))
    pending = read_ledger(path)
    assert pending.names == {"20250102.IPI"}
    assert [n.name for n in pending.refetch_pending] == ["20250101.IPI"]

    append_ledger(path, entry("20250101.IPI"))
    fetched_again = read_ledger(path)
    assert fetched_again.names == {"20250101.IPI", "20250102.IPI"}
    assert fetched_again.refetch_pending == () and fetched_again.damaged_lines == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a state file to a service account needs root")
def test_refetch_run_as_root_keeps_the_service_users_owner_group_and_mode(server: Server, run: Runner) -> None:
    import pwd

    deliver_three(server, run)
    service = pwd.getpwnam("nobody")
    os.chown(server.record, service.pw_uid, service.pw_gid)
    server.record.chmod(0o640)

    result = run("refetch", B)

    assert result.code == 0, result.output
    assert server.record.read_text() == f"{A}\n"
    after = server.record.stat()
    assert (after.st_uid, after.st_gid, after.st_mode & 0o777) == (service.pw_uid, service.pw_gid, 0o640)
