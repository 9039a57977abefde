"""Prometheus metrics of a run: pushed to a Pushgateway and/or written for node-exporter.

A metrics failure is logged and never changes the job's exit code.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loguru import logger
from prometheus_client import CollectorRegistry, Gauge, generate_latest, push_to_gateway
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import basic_auth_handler, default_handler
from prometheus_client.registry import Collector

from app.config import Settings
from app.errors import LocalStorageError
from app.reporting.report import RunReport
from app.server.proof import METHODS
from app.storage.fsutil import atomic_write
from app.urls import reason, safe_url, split_credentials

JOB = "sftp_ipi"


def _epoch(value: str | None) -> float | None:
    return dt.datetime.fromisoformat(value).timestamp() if value else None


@dataclass(frozen=True)
class Feed:
    """The static facts of one feed: its name labels every series (``feed``), the rest
    is published once in sftp_ipi_feed_info for dashboards and per-feed thresholds."""

    name: str
    host: str
    sftp_dir: str
    select_mode: str
    schedule_seconds: int

    @classmethod
    def of(cls, settings: Settings) -> Feed:
        return cls(
            name=feed_name(settings),
            host=settings.sftp_host,
            sftp_dir=settings.sftp_dir,
            select_mode=settings.select_mode,
            schedule_seconds=settings.metrics_schedule_seconds,
        )


def feed_name(settings: Settings) -> str:
    """METRICS_INSTANCE names the feed; SFTP_HOST when it is unset."""
    return settings.metrics_instance or settings.sftp_host


def textfile_path(settings: Settings) -> Path | None:
    """METRICS_TEXTFILE, or sftp_ipi_<feed>.prom in it when it names a directory: two
    feeds sharing node-exporter's directory then never overwrite each other's file."""
    path = settings.metrics_textfile
    if path is None:
        return None
    if path.is_dir():
        return path / f"sftp_ipi_{_FILE_UNSAFE.sub('_', feed_name(settings))}.prom"
    return path


# node-exporter reads *.prom; a feed name may hold anything a label value may.
_FILE_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def build_registry(report: RunReport, now: float | None = None, feed: Feed | None = None) -> CollectorRegistry:
    now = time.time() if now is None else now
    registry = CollectorRegistry()
    name = feed.name if feed is not None else report.sftp_host

    def gauge(metric: str, doc: str, value: float | None) -> None:
        # Every series carries the feed: two feeds on one host (one node-exporter)
        # must not write the same series.
        if value is not None:
            Gauge(f"sftp_ipi_{metric}", doc, ["feed"], registry=registry).labels(feed=name).set(value)

    if feed is not None:
        info = Gauge(
            "sftp_ipi_feed_info",
            "The feed's static facts (always 1); schedule_seconds is METRICS_SCHEDULE_SECONDS.",
            ["feed", "host", "sftp_dir", "select_mode", "schedule_seconds"],
            registry=registry,
        )
        info.labels(
            feed=feed.name,
            host=feed.host,
            sftp_dir=feed.sftp_dir,
            select_mode=feed.select_mode,
            schedule_seconds=str(feed.schedule_seconds),
        ).set(1)
        # The same interval as a number: PromQL cannot compute with a label's value.
        gauge("schedule_interval_seconds", "How often the feed is scheduled to run.", feed.schedule_seconds)

    gauge("last_run_timestamp_seconds", "When the last run finished.", _epoch(report.finished_at))
    gauge("last_success_timestamp_seconds", "When a run last succeeded.", _epoch(report.last_success_at))
    gauge("last_run_exit_code", "Exit code of the last run (0 is success).", report.exit_code)
    gauge("last_run_success", "1 if the last run succeeded, else 0.", 1 if report.ok else 0)
    gauge("last_run_files_fetched", "Files fetched by the last run.", sum(f.completed for f in report.files))
    gauge(
        "last_run_fetched_bytes",
        "Bytes received from the server by the last run.",
        sum(f.bytes_transferred for f in report.files),
    )
    gauge("last_run_duration_seconds", "Duration of the last run.", report.duration_seconds)
    gauge("last_run_retries", "Retries in the last run.", len(report.retries))
    gauge("last_run_failed_files", "Files that failed in the last run.", len(report.failed))
    age = None if report.newest_completed_mtime is None else max(0.0, now - report.newest_completed_mtime)
    gauge("newest_file_age_seconds", "Age (by remote mtime) of the newest completed file.", age)
    # Always set, 0 included, so that an alert on them never sees a missing series.
    gauge("held_back_files", "Files due but not delivered by the last run (see the run report).", len(report.held_back))
    oldest = min((since for f in report.held_back if (since := _epoch(f.since)) is not None), default=None)
    gauge(
        "oldest_held_back_seconds",
        "How long the longest held-back file has been waiting, by our clock (0 if none).",
        0.0 if oldest is None else max(0.0, now - oldest),
    )
    gauge(
        "due_files",
        "Files due but left for a later run by SELECT_MODE=next (0 if none).",
        report.due_remaining,
    )
    gauge(
        "due_stalled_runs",
        "Consecutive runs that ended with files due and no fewer than the run before (0 if shrinking or none).",
        report.due_stalled_runs,
    )
    gauge("late_files", "Files that arrived behind the last completed file and were not fetched.", len(report.late))
    gauge(
        "stuck_files",
        "Due files that failed the same way on STUCK_AFTER_RUNS runs or more in a row (the log and the run"
        " report give the `sftp-ipi skip` command for each; 0 if none).",
        len(report.stuck),
    )
    # By method only (check-file-handle, checksum-file, command, size+mtime): the
    # algorithm or checksum file's name would make a series per partner file name.
    verified = Gauge(
        "sftp_ipi_files_verified",
        "Files completed by the last run, by how they were proven against the server.",
        ["feed", "method"],
        registry=registry,
    )
    methods = [f.verified_by.partition(":")[0] for f in report.files if f.completed and f.verified_by]
    for method in METHODS:
        verified.labels(feed=name, method=method).set(methods.count(method))
    # Counters over all runs, carried over from report to report in the state
    # directory, with the moment they started from zero as their _created: increase()
    # over a day works from the textfile and the Pushgateway alike (which keeps only
    # the last push). A lost run report starts them again, as a restart would.
    registry.register(_Counters(report, name))
    return registry


# (metric name without _total, help, RunReport field)
COUNTERS = (
    ("files_delivered", "Files delivered (published and recorded), over all runs.", "files_delivered_total"),
    ("received_bytes", "Bytes received from the server, every attempt, over all runs.", "bytes_received_total"),
    ("failed_files", "Files that failed a run, over all runs.", "failed_files_total"),
    ("retries", "Retries made, over all runs.", "retries_total"),
    (
        "verification_mismatches",
        "Files failed because the server's evidence contradicted the download twice, over all runs.",
        "verification_mismatches_total",
    ),
    (
        "decrypt_failures",
        "Files that did not decrypt or lacked a required good signature, over all runs.",
        "decrypt_failures_total",
    ),
    (
        "remote_after_failures",
        "REMOTE_AFTER actions (delete, move) that failed on the server, over all runs.",
        "remote_after_failures_total",
    ),
)


class _Counters(Collector):
    """The run report's carried-over counts as Prometheus counters (``_total`` and ``_created``)."""

    def __init__(self, report: RunReport, feed: str) -> None:
        self._report = report
        self._feed = feed

    def collect(self) -> Iterator[CounterMetricFamily]:
        created = _epoch(self._report.counters_since or self._report.started_at)
        for name, doc, attribute in COUNTERS:
            family = CounterMetricFamily(f"sftp_ipi_{name}", doc, labels=("feed",))
            family.add_metric((self._feed,), getattr(self._report, attribute), created=created)
            yield family


def publish_metrics(settings: Settings, report: RunReport) -> None:
    registry = build_registry(report, feed=Feed.of(settings))
    textfile = textfile_path(settings)
    if textfile is not None:
        try:
            atomic_write(textfile, generate_latest(registry), "METRICS_TEXTFILE")
        except LocalStorageError as exc:
            logger.warning("metrics not written: {}", exc)
    url = settings.metrics_pushgateway_url
    if url:
        instance = feed_name(settings)
        target = split_credentials(url)
        try:
            push_to_gateway(
                target.url,
                job=JOB,
                registry=registry,
                grouping_key={"instance": instance},
                timeout=settings.notify_timeout,
                handler=_handler(target.username, target.password),
            )
        except Exception as exc:  # noqa: BLE001 - any push failure is reported, never fatal
            # The URL may carry credentials, and library errors echo pieces of it.
            logger.warning("metrics not pushed to METRICS_PUSHGATEWAY_URL={}: {}", safe_url(url), reason(exc, url))
        else:
            logger.info("metrics pushed to the Pushgateway (instance {})", instance)


def _handler(username: str | None, password: str | None) -> Callable[..., Any]:
    """Basic auth from the URL's userinfo, which urllib would otherwise take for part of the host."""
    if username is None:
        return default_handler
    return functools.partial(basic_auth_handler, username=username, password=password)
