"""BANDWIDTH_LIMIT: the token bucket (pure, with a fake clock) and the setting's parser."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
from conftest import Server, file_sha256, run_job, sha256
from hypothesis import given, settings
from hypothesis import strategies as st
from relay import Relay, peak_rate
from test_catchup import assert_all_served_once, put_all

from app import interrupt
from app.config import load_settings
from app.errors import ConfigError, Interrupted
from app.server.bandwidth import TokenBucket, burst_for, limiter, request_cap, throttle_for

KiB = 1024
MiB = 1024 * KiB


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.slept.append(seconds)
        self.now += seconds


def _grants(bucket: TokenBucket, clock: FakeClock, steps: list[tuple[float, int]]) -> list[tuple[float, int]]:
    """Run (idle seconds, request size) steps; returns when each request was granted."""
    granted = []
    for idle, size in steps:
        clock.now += idle
        bucket.take(size)
        granted.append((clock.now, size))
    return granted


@settings(max_examples=300, deadline=None)
@given(
    rate=st.integers(min_value=1024, max_value=100 * MiB),
    request=st.integers(min_value=4 * KiB, max_value=2 * MiB),
    steps=st.lists(
        st.tuples(st.sampled_from([0.0, 0.0, 0.0, 0.001, 0.3, 2.0]), st.integers(min_value=1, max_value=2 * MiB)),
        min_size=1,
        max_size=60,
    ),
)
def test_no_interval_gets_more_than_burst_plus_rate_times_its_length(
    rate: int, request: int, steps: list[tuple[float, int]]
) -> None:
    clock = FakeClock()
    start = clock.now
    bucket = TokenBucket(rate, burst_for(rate, request), clock, clock.sleep)
    # Requests never exceed the read size the bucket was sized for.
    steps = [(idle, min(size, request)) for idle, size in steps]

    granted = _grants(bucket, clock, steps)

    slack = 1e-6 * rate + 1  # float rounding
    for i, (t_i, _) in enumerate(granted):
        total = 0
        for t_j, size in granted[i:]:
            total += size
            assert total <= bucket.burst + rate * (t_j - t_i) + slack
    # From the start: the bucket starts empty, so no opening burst.
    assert sum(size for _, size in granted) <= rate * (granted[-1][0] - start) + slack


def test_sustained_rate_is_the_limit() -> None:
    clock = FakeClock()
    rate = 4 * MiB
    bucket = TokenBucket(rate, burst_for(rate, 255 * KiB), clock, clock.sleep)
    start = clock.now

    for _ in range(64):  # 16 MiB in OpenSSH-sized reads
        bucket.take(256 * KiB)

    assert clock.now - start == pytest.approx(4.0, rel=0.01)


def test_burst_is_half_a_second_or_two_requests() -> None:
    assert burst_for(4 * MiB, 256 * KiB) == 2 * MiB
    assert burst_for(100 * KiB, 256 * KiB) == 512 * KiB


def test_a_request_larger_than_the_bucket_is_granted_and_paid_back() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1000, 500, clock, clock.sleep)

    bucket.take(2000)  # waits for a full bucket, then goes into debt
    assert clock.now - 1000.0 == pytest.approx(0.5)
    bucket.take(500)  # waits for the 1500 owed and the 500 asked
    assert clock.now - 1000.0 == pytest.approx(2.5)


def test_unlimited_means_no_hook() -> None:
    assert limiter(None, 256 * KiB) is None
    hook = limiter(10 * MiB, 256 * KiB)
    assert hook is not None
    hook(0)  # nothing to wait for


def test_waiting_ends_at_once_on_sigterm(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real clock and the job's interruptible sleep: a stop request is not held up by the limit."""
    monkeypatch.setitem(interrupt._state, "signum", None)
    interrupt._wakeup.clear()
    bucket = TokenBucket(1024, 1024)
    timer = threading.Timer(0.2, interrupt._handle, args=(15, None))
    started = time.monotonic()
    timer.start()
    try:
        with pytest.raises(Interrupted) as info:
            bucket.take(100 * 1024)  # 100 s at this rate
    finally:
        timer.cancel()
        interrupt._state["signum"] = None
        interrupt._wakeup.clear()
    assert info.value.exit_code == 143
    assert time.monotonic() - started < 2


# -- the setting --------------------------------------------------------------


def _env(tmp_path: Path, value: str | None) -> dict[str, str]:
    env = {
        "SFTP_HOST": "h",
        "SFTP_USER": "u",
        "SFTP_PASS": "p",
        "LOCAL_DIR": str(tmp_path / "local"),
        "SERVER_DIR": str(tmp_path / "server"),
        "LOG_FILE": str(tmp_path / "job.log"),
        "LAST_FILE_RECORD": str(tmp_path / "last_file.txt"),
    }
    if value is not None:
        env["BANDWIDTH_LIMIT"] = value
    return env


def _load(tmp_path: Path, value: str | None) -> int | None:
    return load_settings(_env(tmp_path, value)).bandwidth_limit


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, None),
        ("", None),
        ("500K", 500 * KiB),
        ("10M", 10 * MiB),
        ("10m", 10 * MiB),
        ("1G", 1024 * MiB),
        ("1.5M", 3 * MiB // 2),
        ("4MiB", 4 * MiB),
        ("65536", 65536),
        (" 2 M ", 2 * MiB),
    ],
)
def test_bandwidth_limit_accepts_rclone_style_rates(tmp_path: Path, raw: str | None, expected: int | None) -> None:
    assert _load(tmp_path, raw) == expected


@pytest.mark.parametrize("raw", ["fast", "10T", "-1M", "0", "1000", "10 M/s"])
def test_bandwidth_limit_refuses_what_it_cannot_mean(tmp_path: Path, raw: str) -> None:
    with pytest.raises(ConfigError, match="BANDWIDTH_LIMIT="):
        _load(tmp_path, raw)


# -- in the read pipeline, through a real link ------------------------------------


def test_requests_under_a_limit_are_a_quarter_second_worth() -> None:
    assert request_cap(None, 256 * KiB) == 256 * KiB
    assert request_cap(4 * MiB, 256 * KiB) == 256 * KiB
    assert request_cap(100 * KiB, 256 * KiB) == 25 * KiB
    assert request_cap(1024, 256 * KiB) == 256


def test_one_bucket_serves_the_whole_run(tmp_path: Path) -> None:
    limited = load_settings(_env(tmp_path, "4M"))

    assert throttle_for(limited) is throttle_for(limited)
    assert throttle_for(load_settings(_env(tmp_path, None))) is None


def test_a_download_through_a_real_link_keeps_to_the_limit(server: Server, relay: Relay) -> None:
    data = os.urandom(16 * MiB)
    server.put("20250101.IPI", data)

    result = run_job(server.env(port=relay.port, BANDWIDTH_LIMIT="4M"), server.tmp / "cwd")

    assert result.code == 0, result.output
    assert file_sha256(server.served / "20250101.IPI") == sha256(data)
    (report,) = json.loads((server.record.parent / "run_report.json").read_text())["files"]
    assert 3.5 <= report["seconds"] <= 5.0, report
    assert peak_rate(relay.down_log) <= 1.5 * 4 * MiB


def test_a_backlog_of_small_files_fetched_together_keeps_to_the_limit(server: Server, relay: Relay) -> None:
    """app/catchup.py sends the reads of many files itself, not through transfer.download:
    they take the same bucket (a backlog fetched together used to ignore BANDWIDTH_LIMIT)."""
    limit = 2 * MiB
    files = {f"202501{day:02d}.IPI": os.urandom(128 * KiB) for day in range(1, 29)}
    files |= {f"202502{day:02d}.IPI": os.urandom(128 * KiB) for day in range(1, 21)}
    put_all(server, files)
    total = sum(len(data) for data in files.values())  # 6 MiB: 3 s at the limit

    # VERIFY_SOURCE=off: files proven by size and mtime alone are fetched together from the start.
    env = server.env(port=relay.port, SELECT_MODE="all", CONCURRENT_FILES=8, VERIFY_SOURCE="off", BANDWIDTH_LIMIT="2M")
    result = run_job(env, server.tmp / "cwd")

    assert result.code == 0, result.output
    assert_all_served_once(server, files)
    lines = server.log.read_text().splitlines()
    first_done = next(n for n, line in enumerate(lines) if ": published" in line)
    assert sum(": downloading" in line for line in lines[:first_done]) >= 8, "fetched together, not one by one"
    seconds = relay.down_log[-1][0] - relay.down_log[0][0]
    assert seconds >= total / limit - 0.5, seconds
    assert peak_rate(relay.down_log) <= 1.5 * limit
