"""The gauges build_registry adds for the alert rules and the dashboard."""

from __future__ import annotations

from dataclasses import replace

from prometheus_client import CollectorRegistry

from app.metrics import build_registry
from app.report import RunReport

REPORT = RunReport(
    started_at="2025-01-01T00:00:00+00:00",
    finished_at="2025-01-01T00:01:00+00:00",
    duration_seconds=60.0,
    exit_code=1,
    outcome="transfer failed after retries",
    ok=False,
    sftp_host="sftp.example",
)


def values(registry: CollectorRegistry) -> dict[str, float]:
    return {s.name: s.value for metric in registry.collect() for s in metric.samples}


def test_failed_files_counts_the_files_that_failed_in_the_run() -> None:
    failed = replace(REPORT, failed={"20250101.IPI": "size changed", "20250102.IPI": "permission denied"})
    assert values(build_registry(failed))["sftp_ipi_last_run_failed_files"] == 2
    assert values(build_registry(REPORT))["sftp_ipi_last_run_failed_files"] == 0
