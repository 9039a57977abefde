"""The gauges build_registry adds for the alert rules: what each reports, and that a gauge
whose report field does not exist yet is left out rather than pushed as 0."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

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


def test_held_back_and_late_gauges_are_absent_while_the_report_lacks_their_fields() -> None:
    names = set(values(build_registry(REPORT)))
    assert not names & {"sftp_ipi_held_back_files", "sftp_ipi_oldest_held_back_seconds", "sftp_ipi_late_files"}


def test_held_back_and_late_gauges_read_the_report_fields_once_they_exist() -> None:
    report = SimpleNamespace(
        **vars(REPORT),
        held_back={"a.IPI": "too young", "b.IPI": "no marker"},
        oldest_held_back_seconds=7200.0,
        late_files=["c.IPI"],
    )
    got = values(build_registry(report))  # type: ignore[arg-type]
    assert got["sftp_ipi_held_back_files"] == 2
    assert got["sftp_ipi_oldest_held_back_seconds"] == 7200
    assert got["sftp_ipi_late_files"] == 1
