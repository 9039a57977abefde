"""The whole observability path for real: the job pushes to a Pushgateway, Prometheus scrapes
it and evaluates deploy/prometheus/sftp-ipi-rules.yaml, and the alerts and every dashboard
query answer as an operator would see them.

The rules are the shipped file with one change: every ``for:`` is 2s instead of minutes,
so that a failure alert goes pending and then firing within the test (made by loading the
YAML and rewriting that one key; every expression is the real one).
"""

from __future__ import annotations

import getpass
import os
import re
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import Server, _start_server, run_job, wait_until
from observability import (
    ANNOUNCED,
    FOREIGN,
    RULES,
    base_metrics,
    dashboard,
    dashboard_queries,
    exported_metrics,
    for_feed,
)
from prometheus_client import CollectorRegistry, Gauge, push_to_gateway
from promstack import Prometheus, running_prometheus, running_pushgateway
from sshd import free_port

INSTANCE = "feed-a"
# A second feed on the same Pushgateway with its own schedule: 2 s, so that its
# schedule-based alerts (2 and 3 periods) come due within the test, while feed-a's
# (the default 900 s) stay far off.
OTHER = "feed-b"
OTHER_SCHEDULE = 2
TEST_FOR = "2s"
GROUP = {"job": "sftp_ipi", "instance": INSTANCE}  # the Pushgateway's grouping key
LABELS = {**GROUP, "feed": INSTANCE}  # every series the job pushes also names its feed


def fast_rules(path: Path) -> Path:
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                rule["for"] = TEST_FOR
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


@dataclass
class Feed:
    """A feed that succeeded once, then failed (exit 1), as Prometheus saw it."""

    prometheus: Prometheus
    pushgateway: str
    succeeded_at: float  # a moment when Prometheus had the successful run
    success_code: int
    failure_code: int
    started: float


def _has(prom: Prometheus, expr: str) -> bool:
    return bool(prom.query(expr))


@pytest.fixture(scope="module")
def feed(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Path]) -> Iterator[Feed]:
    tmp = tmp_path_factory.mktemp("alerting")
    with (
        running_pushgateway() as gateway,
        running_prometheus(tmp / "prometheus", gateway, fast_rules(tmp / "rules.yaml")) as prom,
    ):
        (tmp / "job").mkdir()
        server: Server = _start_server(tmp / "job", keys, getpass.getuser(), tmp / "job")
        try:
            started = time.time()
            server.put("20250428.IPI", os.urandom(256 * 1024))
            env = server.env(METRICS_PUSHGATEWAY_URL=gateway, METRICS_INSTANCE=INSTANCE)
            success = run_job(env, server.tmp / "cwd")
            assert success.code == 0, success.output
            assert wait_until(lambda: _has(prom, f'sftp_ipi_last_run_success{{instance="{INSTANCE}"}} == 1'), 15, 0.2)
            succeeded_at = time.time()

            failure = run_job(
                server.env(
                    port=free_port(), METRICS_PUSHGATEWAY_URL=gateway, METRICS_INSTANCE=INSTANCE, RETRY_MAX_TRIES=1
                ),
                server.tmp / "cwd",
            )
            assert failure.code == 1, failure.output
            firing = 'ALERTS{alertname="SftpIpiRunFailed", alertstate="firing"}'
            assert wait_until(lambda: _has(prom, firing), 20, 0.2), "SftpIpiRunFailed never fired"

            # The second feed: its own state, one good run.
            other = server.tmp / OTHER
            (other / "cwd").mkdir(parents=True)
            other_run = run_job(
                server.env(
                    METRICS_PUSHGATEWAY_URL=gateway,
                    METRICS_INSTANCE=OTHER,
                    METRICS_SCHEDULE_SECONDS=OTHER_SCHEDULE,
                    LOCAL_DIR=other / "local",
                    SERVER_DIR=other / "server",
                    LOG_FILE=other / "logs" / "job.log",
                    LAST_FILE_RECORD=other / "state" / "last_file.txt",
                ),
                other / "cwd",
            )
            assert other_run.code == 0, other_run.output
            assert (other / "server" / "20250428.IPI").stat().st_size == 256 * 1024
            yield Feed(prom, gateway, succeeded_at, success.code, failure.code, started)
        finally:
            server.sshd.stop()


def labels(sample: dict[str, Any]) -> dict[str, str]:
    return {k: v for k, v in sample["metric"].items() if k != "__name__"}


def A(metric: str) -> str:  # noqa: N802 - reads as the feed's name in the assertions
    """``metric`` of feed-a alone: the Pushgateway holds two feeds."""
    return f'{metric}{{instance="{INSTANCE}"}}'


def value(prom: Prometheus, expr: str, at: float | None = None) -> float:
    [sample] = prom.query(expr, at)
    return float(sample["value"][1])


def test_pushed_series_reach_prometheus_with_the_job_and_instance_labels(feed: Feed) -> None:
    prom = feed.prometheus
    names = {s["metric"]["__name__"] for s in prom.query(f'{{__name__=~"sftp_ipi_.+", instance="{INSTANCE}"}}')}
    assert names == exported_metrics()
    for sample in prom.query(f'{{__name__=~"sftp_ipi_.+", instance="{INSTANCE}"}}'):
        # Files by proof method are one series per method, the feed's facts one info
        # series; everything else is one series.
        extra = {
            "sftp_ipi_files_verified": {"method"},
            "sftp_ipi_feed_info": {"host", "sftp_dir", "select_mode", "schedule_seconds"},
        }.get(sample["metric"]["__name__"], set())
        assert set(labels(sample)) - extra == set(LABELS), sample["metric"]
        assert {k: v for k, v in labels(sample).items() if k not in extra} == LABELS, sample["metric"]
    [push] = prom.query(f'push_time_seconds{{job="sftp_ipi", instance="{INSTANCE}"}}')
    assert labels(push) == GROUP

    # What the successful run pushed, as Prometheus stored it ...
    at = feed.succeeded_at
    assert value(prom, A("sftp_ipi_last_run_success"), at) == 1
    assert value(prom, A("sftp_ipi_last_run_exit_code"), at) == feed.success_code
    assert value(prom, A("sftp_ipi_last_run_files_fetched"), at) == 1
    assert value(prom, A("sftp_ipi_last_run_fetched_bytes"), at) == 256 * 1024
    success_time = value(prom, A("sftp_ipi_last_success_timestamp_seconds"), at)
    # The report keeps whole seconds: a run that ends within the second it started is at that second.
    assert int(feed.started) <= success_time <= at
    # ... and what the failed run changed: the outcome, not the last success.
    assert value(prom, A("sftp_ipi_last_run_success")) == 0
    assert value(prom, A("sftp_ipi_last_run_exit_code")) == feed.failure_code
    assert value(prom, A("sftp_ipi_last_success_timestamp_seconds")) == success_time
    assert value(prom, A("sftp_ipi_last_run_timestamp_seconds")) > success_time
    # The recording rules keep the labels the alerts and the dashboard group by.
    [since] = prom.query(A("sftp_ipi:seconds_since_last_success"))
    assert labels(since) == LABELS and float(since["value"][1]) >= 0


def test_a_failed_run_makes_the_failure_alert_pending_then_firing(feed: Feed) -> None:
    prom = feed.prometheus
    # Every sample Prometheus stored for the alert, pending and firing (a range selector, not
    # query_range, whose steps could fall between the two).
    history = prom.api("query", query='ALERTS{alertname="SftpIpiRunFailed"}[5m]')["result"]
    states = {s["metric"]["alertstate"]: s for s in history}
    assert set(states) == {"pending", "firing"}
    first = {state: float(s["values"][0][0]) for state, s in states.items()}
    assert first["pending"] < first["firing"], "pending comes first"
    for sample in states.values():
        assert labels(sample) == {
            **LABELS,
            "alertname": "SftpIpiRunFailed",
            "alertstate": sample["metric"]["alertstate"],
            "severity": "warning",
        }

    [alert] = [
        a
        for a in prom.api("alerts")["alerts"]
        if a["labels"]["alertname"] == "SftpIpiRunFailed" and a["labels"]["instance"] == INSTANCE
    ]
    assert alert["state"] == "firing"
    assert alert["annotations"]["summary"] == f"sftp-ipi {INSTANCE}: last run failed with exit 1"
    assert f"on {INSTANCE} exited 1: transfer failed after retries" in alert["annotations"]["description"]
    assert alert["annotations"]["runbook_url"].endswith("/docs/operations.md#sftpipirunfailed")

    # Exit 1 is worth retrying, and the last success is minutes old: nothing else fires.
    others = prom.query(f'ALERTS{{alertname!="SftpIpiRunFailed", instance="{INSTANCE}"}}')
    assert others == [], [o["metric"] for o in others]


def test_every_dashboard_query_parses_and_returns_data_for_a_feed_that_ran(feed: Feed) -> None:
    prom = feed.prometheus
    pushed = {s["metric"]["__name__"] for s in prom.query(f'{{__name__=~"sftp_ipi_.+", instance="{INSTANCE}"}}')}
    checked = 0
    for title, expr in dashboard_queries():
        result = prom.query(for_feed(expr, INSTANCE))  # a query that does not parse fails here
        missing = base_metrics(expr) - pushed - FOREIGN
        if missing:
            # Announced by another issue and not pushed yet: parsing is all that can be asked.
            assert missing <= set(ANNOUNCED), f"panel {title!r} reads {missing}, which the job never pushes"
            continue
        assert result, f"panel {title!r}: no data for {INSTANCE}: {expr}"
        checked += 1
    assert checked >= len(dashboard_queries()) // 2, "most panels must be checked with data"


def test_each_test_pushgateway_starts_empty() -> None:
    """Debian's Pushgateway persists its groups to a machine-wide file by default: one test's
    pushes must never show up in another test's gateway."""
    registry = CollectorRegistry()
    Gauge("sftp_ipi_isolation_probe", "A group pushed by an earlier test.", registry=registry).set(1)
    with running_pushgateway() as first:
        push_to_gateway(first, job="isolation_probe", registry=registry)
    with running_pushgateway() as second, urllib.request.urlopen(f"{second}/metrics", timeout=5) as response:
        assert "isolation_probe" not in response.read().decode()


def test_the_dashboard_feed_variable_lists_a_feed_that_ran(feed: Feed) -> None:
    board = dashboard()
    [variable] = [v for v in board["templating"]["list"] if v["name"] == "feed"]
    metric = re.fullmatch(r"label_values\((\w+), feed\)", variable["query"]["query"])
    assert metric, variable["query"]
    assert INSTANCE in feed.prometheus.api("label/feed/values", **{"match[]": metric[1]})


def test_two_feeds_with_different_schedules_alert_each_at_its_own_threshold(feed: Feed) -> None:
    prom = feed.prometheus

    def schedules() -> dict[str, float]:
        return {s["metric"]["feed"]: float(s["value"][1]) for s in prom.query("sftp_ipi:schedule_interval_seconds")}

    # feed-b pushed last: Prometheus has it after its next scrape and rule evaluation.
    wait_until(lambda: OTHER in schedules(), 20, 0.2)
    assert schedules() == {INSTANCE: 900, OTHER: OTHER_SCHEDULE}
    assert value(prom, f'sftp_ipi_last_run_fetched_bytes{{instance="{OTHER}"}}') == 256 * 1024

    # feed-b has not run for two of its 2 s periods: stale, then (3 periods) no recent success.
    for alert in ("SftpIpiMetricsStale", "SftpIpiNoRecentSuccess"):
        firing = f'ALERTS{{alertname="{alert}", alertstate="firing", instance="{OTHER}"}}'
        assert wait_until(lambda firing=firing: _has(prom, firing), 30, 0.2), f"{alert} never fired for {OTHER}"
    # feed-a ran as recently, but its threshold is 2 x 900 s.
    stale_a = prom.query(f'ALERTS{{alertname=~"SftpIpiMetricsStale|SftpIpiNoRecentSuccess", instance="{INSTANCE}"}}')
    assert stale_a == [], [a["metric"] for a in stale_a]
    # Each feed's alert names its runbook.
    stale = next(
        a
        for a in prom.api("alerts")["alerts"]
        if a["labels"]["alertname"] == "SftpIpiMetricsStale" and a["labels"]["instance"] == OTHER
    )
    assert stale["annotations"]["runbook_url"].endswith("/docs/operations.md#sftpipimetricsstale")
