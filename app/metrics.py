"""Prometheus metrics of a run: pushed to a Pushgateway and/or written for node-exporter.

A metrics failure is logged and never changes the job's exit code.
"""

from __future__ import annotations

import datetime as dt
import time

from loguru import logger
from prometheus_client import CollectorRegistry, Gauge, generate_latest, push_to_gateway

from app.config import Settings
from app.errors import LocalStorageError
from app.fsutil import atomic_write
from app.report import RunReport

JOB = "sftp_ipi"


def _epoch(value: str | None) -> float | None:
    return dt.datetime.fromisoformat(value).timestamp() if value else None


def build_registry(report: RunReport, now: float | None = None) -> CollectorRegistry:
    now = time.time() if now is None else now
    registry = CollectorRegistry()

    def gauge(name: str, doc: str, value: float | None) -> None:
        if value is not None:
            Gauge(f"sftp_ipi_{name}", doc, registry=registry).set(value)

    gauge("last_run_timestamp_seconds", "When the last run finished.", _epoch(report.finished_at))
    gauge("last_success_timestamp_seconds", "When a run last succeeded.", _epoch(report.last_success_at))
    gauge("last_run_exit_code", "Exit code of the last run (0 is success).", report.exit_code)
    gauge("last_run_success", "1 if the last run succeeded, else 0.", 1 if report.ok else 0)
    gauge("last_run_files_fetched", "Files fetched by the last run.", len(report.files))
    gauge(
        "last_run_bytes_fetched",
        "Bytes received from the server by the last run.",
        sum(f.bytes_transferred for f in report.files),
    )
    gauge("last_run_duration_seconds", "Duration of the last run.", report.duration_seconds)
    gauge("last_run_retries", "Retries in the last run.", len(report.retries))
    gauge("last_run_failed_files", "Files that failed in the last run.", len(report.failed))
    age = None if report.newest_completed_mtime is None else max(0.0, now - report.newest_completed_mtime)
    gauge("newest_file_age_seconds", "Age (by remote mtime) of the newest completed file.", age)
    return registry


def publish_metrics(settings: Settings, report: RunReport) -> None:
    registry = build_registry(report)
    if settings.metrics_textfile is not None:
        try:
            atomic_write(settings.metrics_textfile, generate_latest(registry), "METRICS_TEXTFILE")
        except LocalStorageError as exc:
            logger.warning("metrics not written: {}", exc)
    if settings.metrics_pushgateway_url:
        instance = settings.metrics_instance or settings.sftp_host
        try:
            push_to_gateway(
                settings.metrics_pushgateway_url,
                job=JOB,
                registry=registry,
                grouping_key={"instance": instance},
                timeout=settings.notify_timeout,
            )
        except Exception as exc:  # noqa: BLE001 - any push failure is reported, never fatal
            logger.warning("metrics not pushed to METRICS_PUSHGATEWAY_URL: {}", _reason(exc))
        else:
            logger.info("metrics pushed to the Pushgateway (instance {})", instance)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {text[0][:200]}" if text else exc.__class__.__name__
