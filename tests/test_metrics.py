"""The gauges build_registry adds for the alert rules and the dashboard."""

from __future__ import annotations

from dataclasses import replace

from prometheus_client import CollectorRegistry

from app.reporting.metrics import build_registry
from app.reporting.report import FileReport, RunReport, so_far

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


def test_files_verified_counts_completed_files_by_method_and_zero_for_the_rest() -> None:
    def done(name: str, verified_by: str | None, completed: bool = True) -> FileReport:
        return FileReport(name, 1, 1.0, 1.0, 0, "0" * 64, 1, completed=completed, verified_by=verified_by)

    files = [
        done("a", "check-file-handle:sha512"),
        done("b", "check-file-handle:sha256"),
        done("c", "checksum-file:SHA256SUMS"),
        done("d", "size+mtime"),
        done("e", None, completed=False),
    ]
    registry = build_registry(replace(REPORT, files=files))
    counts = {
        s.labels["method"]: s.value
        for metric in registry.collect()
        for s in metric.samples
        if s.name == "sftp_ipi_files_verified"
    }
    assert counts == {"check-file-handle": 2, "checksum-file": 1, "command": 0, "size+mtime": 1}


def test_verification_mismatches_are_a_counter_carried_across_runs() -> None:
    assert so_far("verification_mismatches_total", 1, {"verification_mismatches_total": 3}) == 4
    assert so_far("verification_mismatches_total", 0, None) == 0
    assert so_far("verification_mismatches_total", 1, {"verification_mismatches_total": "x"}) == 1
    report = replace(REPORT, verification_mismatches=1, verification_mismatches_total=4)
    assert values(build_registry(report))["sftp_ipi_verification_mismatches_total"] == 4


def test_no_gauge_is_named_total_and_every_counter_has_its_created() -> None:
    """``_total`` only on counters (before, the mismatch and decryption counts were gauges
    named *_total), each with a ``_created`` from the moment the counts started from zero."""
    report = replace(
        REPORT, verification_mismatches_total=4, files_delivered_total=7, counters_since="2024-12-31T00:00:00+00:00"
    )
    families = {metric.name: metric for metric in build_registry(report).collect()}
    for metric in families.values():
        for sample in metric.samples:
            assert not sample.name.endswith("_total") or metric.type == "counter", sample.name
    counters = {name for name, metric in families.items() if metric.type == "counter"}
    assert {"sftp_ipi_verification_mismatches", "sftp_ipi_decrypt_failures", "sftp_ipi_files_delivered"} <= counters
    samples = values(build_registry(report))
    assert samples["sftp_ipi_verification_mismatches_total"] == 4
    assert samples["sftp_ipi_files_delivered_total"] == 7
    assert samples["sftp_ipi_files_delivered_created"] == 1735603200.0
    assert "sftp_ipi_last_run_fetched_bytes" in samples and "sftp_ipi_last_run_bytes_fetched" not in samples
