"""Report, metrics and alerts are written under the run lock, and their failures are one line."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Server, run_job, start_job, wait_until
from sshd import free_port

from app.__main__ import STOP_GRACE


class Webhook:
    """An HTTP endpoint on loopback that answers its first POST only when released
    (later ones at once), or, with ``hang_up``, closes every connection without a word."""

    def __init__(self, *, hang_up: bool = False) -> None:
        self.requests = 0
        self.release = threading.Event()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/hook"
        self._hang_up = hang_up
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self._sock.accept()
                self.requests += 1
                threading.Thread(target=self._answer, args=(conn, self.requests == 1), daemon=True).start()

    def _answer(self, conn: socket.socket, first: bool) -> None:
        with conn, contextlib.suppress(OSError):
            conn.recv(65536)
            if self._hang_up:
                return
            if first:
                self.release.wait(60)
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")

    def close(self) -> None:
        self.release.set()
        self._sock.close()


@contextlib.contextmanager
def webhook(*, hang_up: bool = False) -> Iterator[Webhook]:
    hook = Webhook(hang_up=hang_up)
    try:
        yield hook
    finally:
        hook.close()


def a_file(tmp: Path) -> Path:
    path = tmp / "a-file"
    path.write_text("not a directory\n")
    return path


def warnings(text: str) -> list[str]:
    return [line for line in text.splitlines() if "| WARNING" in line]


@pytest.mark.parametrize(
    ("setting", "failure"),
    [("REPORT_FILE", "run report not written"), ("METRICS_TEXTFILE", "metrics not written")],
)
def test_unwritable_report_or_metrics_is_one_line_and_the_run_still_succeeds(
    server: Server, setting: str, failure: str
) -> None:
    server.put("20250428.IPI", b"x" * 1000)
    target = a_file(server.tmp) / "out"  # its parent is a file

    result = run_job(server.env(**{setting: target}), server.tmp / "cwd")

    assert result.code == 0, result.output
    assert "Traceback" not in result.output
    [line] = [w for w in warnings(result.stderr) if failure in w]
    assert str(target) in line and "Not a directory" in line
    assert (server.served / "20250428.IPI").read_bytes() == b"x" * 1000


def test_a_damaged_last_success_time_is_ignored_with_a_warning_and_metrics_still_written(server: Server) -> None:
    report = server.tmp / "state" / "run_report.json"
    report.parent.mkdir(parents=True)
    report.write_text(json.dumps({"exit_code": 0, "ok": True, "last_success_at": "last Tuesday"}))
    textfile = server.tmp / "metrics" / "sftp_ipi.prom"
    textfile.parent.mkdir()

    result = run_job(
        server.env(port=free_port(), RETRY_MAX_TRIES=1, METRICS_TEXTFILE=textfile), server.tmp / "cwd", timeout=60
    )

    assert result.code == 1, result.output
    assert "Traceback" not in result.output
    [line] = [w for w in warnings(result.stderr) if "run report" in w and "ignored" in w]
    assert "last_success_at" in line
    published = textfile.read_text()
    assert 'sftp_ipi_last_run_exit_code{feed="127.0.0.1"} 1.0' in published, "the metrics are still published"
    assert json.loads(report.read_text())["exit_code"] == 1, "the report is still written"


def test_a_webhook_that_hangs_up_is_one_line_with_the_exit_code_unchanged(server: Server) -> None:
    with webhook(hang_up=True) as hook:
        result = run_job(
            server.env(port=free_port(), RETRY_MAX_TRIES=1, NOTIFY_WEBHOOK_URL=hook.url), server.tmp / "cwd"
        )

    assert result.code == 1, result.output
    assert hook.requests == 1
    assert "Traceback" not in result.output
    assert len([w for w in warnings(result.stderr) if "webhook notification failed" in w]) == 1, result.stderr


def test_no_second_run_while_the_first_is_still_sending_its_alert(server: Server) -> None:
    server.put("20250428.IPI", b"x" * 1000)
    with webhook() as hook:
        env = server.env(NOTIFY_WEBHOOK_URL=hook.url, NOTIFY_ON="always", NOTIFY_TIMEOUT=60)
        first = start_job(env, server.tmp / "cwd")
        try:
            assert wait_until(lambda: hook.requests == 1, 60), "the first run never sent its alert"
            report = json.loads((server.tmp / "state" / "run_report.json").read_text())

            second = run_job(env, server.tmp / "cwd", timeout=60)

            assert second.code == 4, second.output
            assert "another run is in progress" in second.stderr
            assert json.loads((server.tmp / "state" / "run_report.json").read_text()) == report
            hook.release.set()
            out, err = first.communicate(timeout=60)
        finally:
            if first.poll() is None:
                first.kill()
    assert first.returncode == 0, out + err
    assert report["exit_code"] == 0 and report["files"][0]["name"] == "20250428.IPI"
    assert hook.requests == 1, "the refused run writes nothing and sends no alert: exit 4 is not a failure"
    assert "this run exits 4: not a failure" in second.stderr
    assert "| ERROR" not in second.stderr


def test_a_stopped_run_alerts_within_a_short_grace_not_notify_timeout(server: Server) -> None:
    """SIGTERM mid-download: the alert is still attempted, but a webhook that never
    answers holds the stop up for STOP_GRACE seconds, not NOTIFY_TIMEOUT."""
    from relay import Relay

    server.put("20250428.IPI", b"x" * (8 * 1024 * 1024))
    relay = Relay(server.port)
    relay.rate = 1024 * 1024
    part = server.local / "20250428.IPI.part"
    try:
        with webhook() as hook:
            env = server.env(relay.port, NOTIFY_WEBHOOK_URL=hook.url, NOTIFY_TIMEOUT=60)
            proc = start_job(env, server.tmp / "cwd")
            try:
                assert wait_until(lambda: part.exists() and part.stat().st_size > 1024 * 1024, 60)
                proc.terminate()
                sent = time.monotonic()
                out, err = proc.communicate(timeout=60)
                took = time.monotonic() - sent
            finally:
                if proc.poll() is None:
                    proc.kill()
            assert proc.returncode == 143, out + err
            assert hook.requests == 1, "a stopped run still sends its alert"
            assert took < STOP_GRACE + 5, f"took {took:.1f} s to stop"
            assert len([w for w in warnings(err) if "notification failed" in w]) == 1, err
    finally:
        relay.close()
