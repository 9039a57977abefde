"""What the alert rules and the dashboard refer to, and what the job exports: shared by their tests."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from app.reporting.metrics import Feed, build_registry
from app.reporting.report import FileReport, RetryRecord, RunReport

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "deploy" / "prometheus" / "sftp-ipi-rules.yaml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "tests"
DASHBOARD = REPO / "deploy" / "grafana" / "sftp-ipi-dashboard.json"

# Metrics other issues announce; the rules and the dashboard use them already, and
# they have no data until the job pushes them. Once app/reporting/metrics.py exports a name,
# the tests hold it to the same standard as every other metric.
ANNOUNCED = {
    "sftp_ipi_held_back_files": "issue 10 (hardening)",
    "sftp_ipi_oldest_held_back_seconds": "issue 10 (hardening)",
    "sftp_ipi_late_files": "issue 10 (hardening)",
}
# Series that are not the job's own: the Pushgateway's push time, Prometheus's alerts.
FOREIGN = {"push_time_seconds", "ALERTS"}

_NAME = re.compile(r"(?<![\w:\"])(sftp_ipi[_:][A-Za-z0-9_:]*|push_time_seconds|ALERTS)\b")


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"]]


def alerts() -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for r in rules() if "alert" in r}


def recording_rules() -> dict[str, str]:
    return {r["record"]: r["expr"] for r in rules() if "record" in r}


def names_in(expr: str) -> set[str]:
    """The series names a PromQL expression reads (the job's, its recording rules', and FOREIGN)."""
    return set(_NAME.findall(expr))


def base_metrics(expr: str) -> set[str]:
    """The raw metrics behind ``expr``, through any recording rules it reads."""
    recorded = recording_rules()
    found: set[str] = set()
    todo = list(names_in(expr))
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in recorded:
            todo.extend(names_in(recorded[name]))
        else:
            found.add(name)
    return found


def exported_metrics() -> set[str]:
    """Every series name build_registry emits for a run report with its fields set."""
    report = RunReport(
        started_at="2025-01-01T00:00:00+00:00",
        finished_at="2025-01-01T00:01:00+00:00",
        duration_seconds=60.0,
        exit_code=1,
        outcome="transfer failed after retries",
        ok=False,
        sftp_host="sftp.example",
        files=[FileReport("20250101.IPI", 10, 1.0, 1.0, 0, "0" * 64, 10)],
        failed={"20250102.IPI": "connection lost"},
        retries=[RetryRecord(1, "connection lost", 1.0)],
        last_success_at="2024-12-31T00:00:00+00:00",
        newest_completed_mtime=1735689600,
    )
    # By sample name: a counter family "x" exports the series x_total and x_created.
    feed = Feed("feed-a", "sftp.example", "/outbound", "all", 900)
    return {s.name for metric in build_registry(report, now=1735700000.0, feed=feed).collect() for s in metric.samples}


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def panels(board: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    board = dashboard() if board is None else board
    out: list[dict[str, Any]] = []
    for panel in board["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # panels inside a collapsed row
    return out


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query of every panel."""
    return [(p["title"], t["expr"]) for p in panels() for t in p.get("targets", []) if t.get("expr")]


def for_feed(expr: str, feed: str) -> str:
    """A dashboard query as Grafana sends it with the feed variable set to ``feed``."""
    return expr.replace("${feed}", feed).replace("$feed", feed)
