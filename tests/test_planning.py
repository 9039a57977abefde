"""What a run reports of the files it did not deliver: the backlog, its metrics, the summary line."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from loguru import logger
from prometheus_client import generate_latest

from app.config import load_settings
from app.job import RunSummary, summary_line
from app.planning import Backlog, Planner, backlog_of
from app.reporting.metrics import build_registry
from app.reporting.report import HeldFile, RunReport
from app.selection import Observation, Plan, RemoteEntry, Skip, SkipReason, order
from app.timestamps import iso

NOW = 1_750_000_000.0


def report_with(held: list[HeldFile], late: list[HeldFile]) -> RunReport:
    moment = iso(dt.datetime.fromtimestamp(NOW, dt.UTC))
    return RunReport(moment, moment, 1.0, 0, "done, or nothing due", True, "h", held_back=held, late=late)


def metric(report: RunReport, name: str) -> float:
    for line in generate_latest(build_registry(report, now=NOW)).decode().splitlines():
        if line.startswith((f"sftp_ipi_{name} ", f"sftp_ipi_{name}{{")):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name}")


def since(seconds_ago: float) -> str:
    return iso(dt.datetime.fromtimestamp(NOW - seconds_ago, dt.UTC))


def test_held_back_gauges_count_files_and_the_longest_wait() -> None:
    held = [HeldFile("a", "r", since(100)), HeldFile("b", "r", since(4000)), HeldFile("c", "r", None)]
    report = report_with(held, [HeldFile("late", "r", since(5))])
    assert metric(report, "held_back_files") == 3
    assert metric(report, "oldest_held_back_seconds") == 4000
    assert metric(report, "late_files") == 1


def test_held_back_gauges_are_zero_not_missing_when_nothing_waits() -> None:
    report = report_with([], [])
    assert metric(report, "held_back_files") == 0
    assert metric(report, "oldest_held_back_seconds") == 0
    assert metric(report, "late_files") == 0


def test_backlog_holds_waiting_and_late_files_but_not_done_or_by_design_skips() -> None:
    skipped = tuple(
        Skip(f"{reason.name}.IPI", reason)
        for reason in SkipReason
        if reason is not SkipReason.NOT_REGULAR  # a directory is not a file to deliver
    )
    seen = {"TOO_YOUNG.IPI": Observation(NOW - 60, NOW - 60, 1, None)}
    backlog = backlog_of(Plan((), skipped), seen)
    assert {h.name for h in backlog.held_back} == {
        "UNSAFE_NAME.IPI",
        "NO_DATE.IPI",
        "AMBIGUOUS_DATE.IPI",
        "NO_MTIME.IPI",
        "TOO_YOUNG.IPI",
        "NO_MARKER.IPI",
        "HELD_BACK.IPI",
    }
    assert [h.name for h in backlog.late] == ["LATE.IPI"]
    young = next(h for h in backlog.held_back if h.name == "TOO_YOUNG.IPI")
    assert young.since == since(60) and young.reason == SkipReason.TOO_YOUNG.value


def test_an_exit_0_summary_says_how_many_files_are_held_back() -> None:
    summary = RunSummary(backlog=Backlog(held_back=(HeldFile("a", "r", None),) * 2, late=(HeldFile("b", "r", None),)))
    assert summary_line(summary, 0, 1.0).endswith("; 0 failed; 2 held back; 1 late")
    assert summary_line(RunSummary(), 0, 1.0).endswith("; 0 failed")


def test_a_retried_attempt_names_each_skipped_file_once_per_run(tmp_path: Path) -> None:
    settings = load_settings(
        {
            "SFTP_HOST": "h",
            "SFTP_USER": "u",
            "SFTP_PASS": "p",
            "LOCAL_DIR": str(tmp_path / "local"),
            "SERVER_DIR": str(tmp_path / "server"),
            "LAST_FILE_RECORD": str(tmp_path / "last_file.txt"),
            "SELECT_MODE": "all",
        }
    )
    planner = Planner(settings)
    entries = [RemoteEntry("undated.IPI", 1, 1), RemoteEntry("20250428.IPI", 1, 4_102_444_800)]
    ordered = order(entries, planner.criteria)
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="INFO")
    try:
        for _attempt in range(3):
            planner.plan(entries, ordered, None, None, frozenset(), {})
    finally:
        logger.remove(sink)
    assert sum("undated.IPI: skipped" in line for line in lines) == 1
    assert sum("20250428.IPI: skipped" in line for line in lines) == 1
    assert sum("ahead of our clock" in line for line in lines) == 1
    assert sum("plan: 0 due" in line for line in lines) == 3
    assert {h.name for h in planner.backlog.held_back} == {"undated.IPI", "20250428.IPI"}
