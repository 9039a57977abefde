"""A mistyped host: a dry run says so at once; a real run keeps trying and says why each time."""

from __future__ import annotations

import time

from conftest import Runner, Server

MISTYPED = "sftp.no-such-host.invalid"  # .invalid never resolves (RFC 6761)


def test_dry_run_with_an_unresolvable_host_makes_one_attempt(server: Server, run: Runner) -> None:
    started = time.monotonic()

    result = run("--dry-run", SFTP_HOST=MISTYPED, RETRY_BACKOFF_FACTOR=2, timeout=60)

    assert result.code == 1, result.output
    assert time.monotonic() - started < 15
    assert "retrying" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "| ERROR" in line]
    assert len(errors) == 1, result.stderr
    assert f"connect to {MISTYPED}:" in errors[0] and "cannot resolve host" in errors[0]
    assert "Traceback" not in result.output


def test_real_run_retries_an_unresolvable_host_saying_so_each_time(server: Server, run: Runner) -> None:
    result = run(SFTP_HOST=MISTYPED, RETRY_MAX_TRIES=3, timeout=60)

    assert result.code == 1, result.output
    attempts = [line for line in result.stderr.splitlines() if "failed:" in line and "retrying in" in line]
    assert len(attempts) == 2, result.stderr
    assert all(f"connect to {MISTYPED}:" in line and "cannot resolve host" in line for line in attempts)
    assert "cannot resolve host" in result.stderr.splitlines()[-2], "the final error says it too"
