"""Run reports, status, Prometheus metrics, alerts and the terminal progress bar, each against the real thing."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, Server, job_env, run_job
from promstack import running_pushgateway
from relay import Relay
from sshd import free_port

MiB = 1024 * 1024


def report(server: Server) -> dict[str, Any]:
    return json.loads((server.record.parent / "run_report.json").read_text())


# -- run report and status ----------------------------------------------------------


def test_report_describes_a_successful_run(server: Server) -> None:
    data = os.urandom(2 * MiB)
    server.put("20250428.IPI", data)

    result = run_job(server.env(), server.tmp / "cwd")

    assert result.code == 0, result.output
    rep = report(server)
    assert rep["exit_code"] == 0 and rep["ok"] is True and rep["outcome"] == "done, or nothing due"
    [file] = rep["files"]
    assert file["name"] == "20250428.IPI" and file["size"] == len(data)
    assert file["resumed_from"] == 0 and file["bytes_transferred"] == len(data)
    assert file["mb_per_s"] > 0 and len(file["sha256"]) == 64
    assert rep["last_success_at"] == rep["finished_at"]
    assert rep["last_completed_file"] == "20250428.IPI"
    assert rep["error"] is None and rep["retries"] == []


def test_report_of_a_failed_run_keeps_the_last_success(server: Server) -> None:
    server.put("20250428.IPI", b"x" * 1000)
    assert run_job(server.env(), server.tmp / "cwd").code == 0
    success = report(server)["last_success_at"]

    result = run_job(server.env(port=free_port(), RETRY_MAX_TRIES=2), server.tmp / "cwd")

    assert result.code == 1
    rep = report(server)
    assert rep["ok"] is False and rep["exit_code"] == 1
    assert "giving up" in rep["error"]
    assert [r["attempt"] for r in rep["retries"]] == [1], "two tries are one retry"
    assert all("connect to" in r["reason"] for r in rep["retries"])
    assert rep["last_success_at"] == success


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_log_times_are_utc_with_an_offset_like_the_report(server: Server, log_format: str) -> None:
    server.put("20250428.IPI", b"x" * 1000)

    # A zone far from UTC: local time written without its offset would be hours off.
    result = run_job(server.env(TZ="Asia/Kolkata", LOG_FORMAT=log_format), server.tmp / "cwd")

    assert result.code == 0, result.output
    rep = report(server)
    started, finished = (dt.datetime.fromisoformat(rep[k]) for k in ("started_at", "finished_at"))
    assert rep["started_at"].endswith("+00:00")
    for source in (server.log.read_text(), result.stderr):
        lines = source.splitlines()
        assert lines
        for line in lines:
            stamp = json.loads(line)["time"] if log_format == "json" else line.split(" | ", 1)[0]
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", stamp), line
            moment = dt.datetime.fromisoformat(stamp)
            assert started - dt.timedelta(seconds=2) <= moment <= finished + dt.timedelta(seconds=2), line


def test_dry_run_writes_no_report(server: Server) -> None:
    server.put("20250428.IPI", b"x")
    assert run_job(server.env(), server.tmp / "cwd", "--dry-run").code == 0
    assert not (server.record.parent / "run_report.json").exists()


def test_status_reads_local_state_only(server: Server, relay: Relay) -> None:
    data = os.urandom(8 * MiB)
    server.put("20250427.IPI", b"done" * 100)
    server.put("20250428.IPI", data)
    assert run_job(server.env(), server.tmp / "cwd").code == 0
    relay.set_fault(cut_after=3 * MiB)
    assert run_job(server.env(port=relay.port, RETRY_MAX_TRIES=1), server.tmp / "cwd").code == 1
    server.sshd.stop()  # status must not need the server

    text = run_job(server.env(), server.tmp / "cwd", "status")
    machine = run_job(server.env(), server.tmp / "cwd", "status", "--json")

    assert text.code == 1 and machine.code == 1, "the last run failed"
    assert "last completed file: 20250427.IPI" in text.stdout
    assert "in progress: 20250428.IPI:" in text.stdout and "%" in text.stdout
    state = json.loads(machine.stdout)
    assert state["healthy"] is False
    assert state["last_run"]["exit_code"] == 1
    [partial] = state["partials"]
    assert partial["name"] == "20250428.IPI" and partial["size"] == len(data)
    assert 0 < partial["percent"] < 100


def test_status_is_healthy_after_success_and_unhealthy_before_any_run(server: Server) -> None:
    before = run_job(server.env(), server.tmp / "cwd", "status")
    assert before.code == 1 and "last run: none recorded" in before.stdout
    server.put("20250428.IPI", b"ok")
    assert run_job(server.env(), server.tmp / "cwd").code == 0
    after = run_job(server.env(), server.tmp / "cwd", "status")
    assert after.code == 0, after.output
    assert "last run: exit 0" in after.stdout


STATE_SETTINGS = ("LOCAL_DIR", "SERVER_DIR", "LAST_FILE_RECORD", "LOG_FILE")


def test_status_needs_only_the_state_settings(server: Server) -> None:
    server.put("20250428.IPI", b"ok")
    assert run_job(server.env(), server.tmp / "cwd").code == 0
    state_only = {k: v for k, v in server.env().items() if k in STATE_SETTINGS}
    state_only["SFTP_PASS_FILE"] = str(server.tmp / "no-such-password-file")  # a secret not mounted here

    result = run_job(state_only, server.tmp / "another-directory", "status")

    assert result.code == 0, result.output
    assert "last completed file: 20250428.IPI" in result.stdout
    assert "last run: exit 0" in result.stdout


def test_status_reads_an_env_file_given_before_or_after_the_command(server: Server) -> None:
    server.put("20250428.IPI", b"ok")
    assert run_job(server.env(), server.tmp / "cwd").code == 0
    env_file = server.tmp / "state.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in server.env().items() if k in STATE_SETTINGS))
    elsewhere = server.tmp / "elsewhere"

    for args in (("--env-file", str(env_file), "status"), ("status", "--env-file", str(env_file))):
        result = run_job({}, elsewhere, *args)
        assert result.code == 0, result.output
        assert "LAST_FILE_RECORD: 20250428.IPI" in result.stdout


def test_status_without_any_state_settings_warns_where_it_looks(tmp_path: Path) -> None:
    result = run_job({}, tmp_path, "status")
    assert result.code == 1, "no run recorded here"
    assert "no ./.env" in result.stderr and "--env-file" in result.stderr


# -- Prometheus -----------------------------------------------------------------------


@pytest.fixture
def pushgateway() -> Iterator[str]:
    with running_pushgateway() as url:
        yield url


def scrape(url: str, instance: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("sftp_ipi_") and f'instance="{instance}"' in line and 'job="sftp_ipi"' in line:
            name = line.split("{", 1)[0]
            values[name] = float(line.rsplit(" ", 1)[1])
    return values


def test_metrics_reach_a_real_pushgateway(server: Server, pushgateway: str) -> None:
    server.put("20250428.IPI", os.urandom(MiB))
    env = server.env(METRICS_PUSHGATEWAY_URL=pushgateway, METRICS_INSTANCE="site-a")

    assert run_job(env, server.tmp / "cwd").code == 0
    first = scrape(pushgateway, "site-a")

    assert first["sftp_ipi_last_run_exit_code"] == 0
    assert first["sftp_ipi_last_run_success"] == 1
    assert first["sftp_ipi_last_run_files_fetched"] == 1
    assert first["sftp_ipi_last_run_fetched_bytes"] == MiB
    assert first["sftp_ipi_last_success_timestamp_seconds"] == first["sftp_ipi_last_run_timestamp_seconds"]
    assert 3600 < first["sftp_ipi_newest_file_age_seconds"] < 4 * 3600  # the file's mtime is 2 h old
    assert first["sftp_ipi_last_run_duration_seconds"] > 0

    time.sleep(1.1)
    failed = run_job({**env, "SFTP_PORT": str(free_port()), "RETRY_MAX_TRIES": "1"}, server.tmp / "cwd")
    assert failed.code == 1
    second = scrape(pushgateway, "site-a")
    assert second["sftp_ipi_last_run_exit_code"] == 1
    assert second["sftp_ipi_last_run_success"] == 0
    assert second["sftp_ipi_last_run_timestamp_seconds"] > first["sftp_ipi_last_run_timestamp_seconds"]
    assert second["sftp_ipi_last_success_timestamp_seconds"] == first["sftp_ipi_last_success_timestamp_seconds"]
    # Counters carried across runs in the state directory: the failed run adds its
    # failure and keeps the first run's delivery; _created stays where they started.
    assert first["sftp_ipi_files_delivered_total"] == 1 and second["sftp_ipi_files_delivered_total"] == 1
    assert first["sftp_ipi_received_bytes_total"] == MiB == second["sftp_ipi_received_bytes_total"]
    assert second["sftp_ipi_failed_files_total"] == 0
    assert second["sftp_ipi_files_delivered_created"] == first["sftp_ipi_files_delivered_created"]
    server.put("20250429.IPI", b"second")
    assert run_job(env, server.tmp / "cwd").code == 0
    third = scrape(pushgateway, "site-a")
    assert third["sftp_ipi_files_delivered_total"] == 2
    assert third["sftp_ipi_received_bytes_total"] == MiB + len(b"second")


def test_unreachable_pushgateway_never_changes_the_exit_code(server: Server) -> None:
    server.put("20250428.IPI", b"m")
    env = server.env(METRICS_PUSHGATEWAY_URL=f"http://127.0.0.1:{free_port()}", NOTIFY_TIMEOUT=2)

    result = run_job(env, server.tmp / "cwd")

    assert result.code == 0, result.output
    assert "metrics not pushed" in result.stderr


def test_metrics_textfile_is_written_atomically(server: Server) -> None:
    server.put("20250428.IPI", b"t" * 10)
    prom = server.tmp / "textfile" / "sftp_ipi.prom"
    prom.parent.mkdir()

    assert run_job(server.env(METRICS_TEXTFILE=prom), server.tmp / "cwd").code == 0

    text = prom.read_text()
    assert 'sftp_ipi_last_run_exit_code{feed="127.0.0.1"} 0.0' in text
    assert 'sftp_ipi_last_run_files_fetched{feed="127.0.0.1"} 1.0' in text
    assert [p.name for p in prom.parent.iterdir()] == ["sftp_ipi.prom"]


def test_two_feeds_sharing_a_textfile_directory_each_write_their_own_labelled_file(server: Server) -> None:
    """METRICS_TEXTFILE naming node-exporter's directory: each feed writes
    sftp_ipi_<feed>.prom, every series labelled with its feed, so that two feeds on one
    host never overwrite each other's file nor write the same series."""
    server.put("20250428.IPI", b"t" * 10)
    directory = server.tmp / "textfile"
    directory.mkdir()
    for feed, state in (("feed-a", "a"), ("feed b/2", "b")):
        env = server.env(
            METRICS_TEXTFILE=directory,
            METRICS_INSTANCE=feed,
            METRICS_SCHEDULE_SECONDS=3600 if state == "b" else None,
            SERVER_DIR=server.tmp / f"server-{state}",
            LAST_FILE_RECORD=server.tmp / f"state-{state}" / "last_file.txt",
            LOCAL_DIR=server.tmp / f"local-{state}",
        )
        assert run_job(env, server.tmp / "cwd").code == 0

    assert sorted(p.name for p in directory.iterdir()) == ["sftp_ipi_feed-a.prom", "sftp_ipi_feed_b_2.prom"]
    a = (directory / "sftp_ipi_feed-a.prom").read_text()
    b = (directory / "sftp_ipi_feed_b_2.prom").read_text()
    assert 'sftp_ipi_last_run_files_fetched{feed="feed-a"} 1.0' in a
    assert 'sftp_ipi_last_run_files_fetched{feed="feed b/2"} 1.0' in b
    assert 'sftp_ipi_files_delivered_total{feed="feed-a"} 1.0' in a
    info = f'feed="feed-a",host="127.0.0.1",schedule_seconds="900",select_mode="next",sftp_dir="{server.remote}"'
    assert f"sftp_ipi_feed_info{{{info}}} 1.0" in a
    assert 'sftp_ipi_schedule_interval_seconds{feed="feed-a"} 900.0' in a
    assert 'sftp_ipi_schedule_interval_seconds{feed="feed b/2"} 3600.0' in b
    series = [line.rsplit(" ", 1)[0] for text in (a, b) for line in text.splitlines() if not line.startswith("#")]
    assert len(series) == len(set(series)), "no series written twice"


# -- alerts ---------------------------------------------------------------------------


class Webhook:
    def __init__(self, status: int = 200) -> None:
        self.bodies: list[dict[str, Any]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                hook.bodies.append(json.loads(self.rfile.read(length)))
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/T0KEN-SECRET"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.close()


def test_failure_posts_a_webhook_message_without_secrets(server: Server, webhook: Webhook) -> None:
    server.put("20250428.IPI", b"w")
    assert run_job(server.env(), server.tmp / "cwd").code == 0
    secret = "Webhook-test-secret-pw"
    env = server.env(port=free_port(), RETRY_MAX_TRIES=1, NOTIFY_WEBHOOK_URL=webhook.url, SFTP_PASS=secret)

    result = run_job(env, server.tmp / "cwd")

    assert result.code == 1
    [body] = webhook.bodies
    assert body["exit_code"] == 1 and body["ok"] is False
    assert "FAILED" in body["text"] and "exit 1" in body["text"]
    assert body["last_good_file"] == "20250428.IPI"
    assert body["sftp_host"] == "127.0.0.1"
    dumped = json.dumps(body)
    assert secret not in dumped and "T0KEN-SECRET" not in dumped
    assert "T0KEN-SECRET" not in result.output + server.log.read_text(), "the webhook URL is a secret too"


def test_success_notifies_only_with_notify_on_always(server: Server, webhook: Webhook) -> None:
    server.put("20250428.IPI", b"s")
    assert run_job(server.env(NOTIFY_WEBHOOK_URL=webhook.url), server.tmp / "cwd").code == 0
    assert webhook.bodies == []
    server.put("20250429.IPI", b"t")
    assert run_job(server.env(NOTIFY_WEBHOOK_URL=webhook.url, NOTIFY_ON="always"), server.tmp / "cwd").code == 0
    [body] = webhook.bodies
    assert body["ok"] is True and "succeeded" in body["text"]


def test_failing_webhook_does_not_hide_the_result(server: Server) -> None:
    broken = Webhook(status=500)
    try:
        result = run_job(
            server.env(port=free_port(), RETRY_MAX_TRIES=1, NOTIFY_WEBHOOK_URL=broken.url), server.tmp / "cwd"
        )
    finally:
        broken.close()
    assert result.code == 1, "the job's own exit code, not the notifier's"
    assert "webhook notification failed" in result.stderr
    assert "giving up" in result.stderr


@pytest.fixture
def smtp_server() -> Iterator[tuple[int, list[Any]]]:
    from aiosmtpd.controller import Controller

    received: list[Any] = []

    class Collect:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
            received.append(envelope)
            return "250 OK"

    port = free_port()
    controller = Controller(Collect(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port, received
    finally:
        controller.stop()


def test_failure_sends_an_email(server: Server, smtp_server: tuple[int, list[Any]]) -> None:
    port, received = smtp_server
    env = server.env(
        port=free_port(),
        RETRY_MAX_TRIES=1,
        NOTIFY_SMTP_HOST="127.0.0.1",
        NOTIFY_SMTP_PORT=port,
        NOTIFY_SMTP_FROM="sftp-ipi@example.org",
        NOTIFY_SMTP_TO="ops@example.org, oncall@example.org",
        NOTIFY_SMTP_SECURITY="none",  # this test server has no TLS: tests/test_alert_secrets.py covers TLS
    )

    result = run_job(env, server.tmp / "cwd")

    assert result.code == 1
    [mail] = received
    assert mail.mail_from == "sftp-ipi@example.org"
    assert sorted(mail.rcpt_tos) == ["oncall@example.org", "ops@example.org"]
    content = mail.content.decode()
    assert "Subject: sftp-ipi: run failed (exit 1)" in content
    assert "giving up" in content


def test_unreachable_smtp_server_does_not_hide_the_result(server: Server) -> None:
    env = server.env(
        port=free_port(),
        RETRY_MAX_TRIES=1,
        NOTIFY_SMTP_HOST="127.0.0.1",
        NOTIFY_SMTP_PORT=free_port(),
        NOTIFY_SMTP_FROM="a@example.org",
        NOTIFY_SMTP_TO="b@example.org",
        NOTIFY_TIMEOUT=2,
    )
    result = run_job(env, server.tmp / "cwd")
    assert result.code == 1
    assert "e-mail notification failed" in result.stderr


def test_a_stuck_file_is_named_with_its_skip_command_in_the_webhook_and_the_email(
    unprivileged_server: Server, webhook: Webhook, smtp_server: tuple[int, list[Any]]
) -> None:
    """The person alerted reads the way out of a stopped feed in the message itself."""
    server = unprivileged_server
    good, stuck = "20250101.IPI", "20250102.IPI"
    server.put(good, b"a" * 100)
    server.put(stuck, b"b" * 100)
    (server.remote / stuck).chmod(0o000)
    assert run_job(server.env(), server.tmp / "cwd").code == 0  # delivers the first, next run tries the second
    port, received = smtp_server
    env = server.env(
        STUCK_AFTER_RUNS=1,
        NOTIFY_WEBHOOK_URL=webhook.url,
        NOTIFY_SMTP_HOST="127.0.0.1",
        NOTIFY_SMTP_PORT=port,
        NOTIFY_SMTP_FROM="sftp-ipi@example.org",
        NOTIFY_SMTP_TO="ops@example.org",
        NOTIFY_SMTP_SECURITY="none",
    )

    result = run_job(env, server.tmp / "cwd")

    assert result.code == 1, result.output
    [entry] = report(server)["stuck"]
    assert entry["name"] == stuck and entry["command"].startswith(f"sftp-ipi skip {stuck} --reason ")
    [body] = webhook.bodies
    assert (
        f"Stuck: {stuck}: failed the same way on 1 runs in a row (since {entry['since']}); to pass it:"
        f" {entry['command']}"
    ) in body["text"]
    [mail] = received
    text = email.message_from_bytes(mail.content, policy=email.policy.default).get_body().get_content()
    assert f"to pass it: {entry['command']}" in text


def test_a_message_without_stuck_files_says_nothing_of_them(server: Server, webhook: Webhook) -> None:
    env = server.env(port=free_port(), RETRY_MAX_TRIES=1, NOTIFY_WEBHOOK_URL=webhook.url)
    assert run_job(env, server.tmp / "cwd").code == 1
    [body] = webhook.bodies
    assert "Stuck" not in body["text"] and "sftp-ipi skip" not in body["text"]


def test_smtp_settings_must_be_complete(server: Server) -> None:
    result = run_job(server.env(NOTIFY_SMTP_HOST="127.0.0.1"), server.tmp / "cwd")
    assert result.code == 2
    assert "NOTIFY_SMTP_FROM" in result.stderr


# -- the terminal -----------------------------------------------------------------------


def on_terminal(
    env: dict[str, str],
    when: str | None = None,
    then: Callable[[subprocess.Popen[bytes]], None] | None = None,
    args: tuple[str, ...] = (),
) -> tuple[int, str]:
    """Run the job (with ``args``) with a pty as stdout and stderr, as in a terminal;
    ``then`` runs once regex ``when`` matches."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", *args], env=env, cwd=REPO, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave
    )
    os.close(slave)
    screen = b""
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 30)
            if not ready:
                break
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            screen += chunk
            if when is not None and then is not None and re.search(when.encode(), screen):
                then(proc)
                when = None
        proc.wait(30)
    finally:
        proc.kill()
        proc.wait()
        os.close(master)
    return proc.returncode, screen.decode(errors="replace")


# A log line as the console shows it: "<time> | <LEVEL> | ...".
LOG_LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00 \| [A-Z]+ ")


def assert_bar_never_shares_a_line_with_a_log_line(text: str) -> None:
    for line in text.split("\n"):
        if LOG_LINE.search(line):
            assert "IPI [" not in line, f"a log line glued to the bar: {line!r}"
            assert LOG_LINE.match(line.lstrip("\r")), f"a log line not at the start of its line: {line!r}"


def test_terminal_gets_a_live_bar_and_the_log_file_plain_lines(server: Server, relay: Relay) -> None:
    server.put("20250428.IPI", os.urandom(6 * MiB))
    relay.rate = 4 * MiB  # about 1.5 s, so the bar is drawn several times

    code, text = on_terminal(job_env(server.env(port=relay.port), server.tmp))

    assert code == 0, text
    assert text.count("\r20250428.IPI [") >= 2, "the bar is redrawn in place"
    assert "100.0%" in text and "MB/s" in text
    assert "\r" not in server.log.read_text(), "the log file gets no bar"
    assert_bar_never_shares_a_line_with_a_log_line(text)
    assert re.search(r"100\.0%[^\n]*\n[^\r]*" + LOG_LINE.pattern, text), "the summary starts on its own line"


def test_bar_says_stalled_without_a_rate_while_no_data_arrives(server: Server, relay: Relay) -> None:
    data = os.urandom(6 * MiB)
    server.put("20250428.IPI", data)
    relay.rate = 4 * MiB
    relay.set_fault(stall_after=2 * MiB)  # the first connection goes silent; the retry is clean

    code, text = on_terminal(job_env(server.env(port=relay.port, IO_TIMEOUT=6), server.tmp))

    assert code == 0, text
    assert (server.served / "20250428.IPI").read_bytes() == data
    stalled = re.findall(r"\r(20250428\.IPI \[[^\r\n]*stalled (\d+) s[^\r\n]*)", text)
    assert stalled, text
    assert all("MB/s" not in bar and "ETA" not in bar for bar, _ in stalled), "no stale rate or ETA"
    seconds = [int(n) for _, n in stalled]
    assert seconds == sorted(seconds) and seconds[-1] >= 4, "the count goes on while nothing arrives"
    assert_bar_never_shares_a_line_with_a_log_line(text)
    retry = text.index("retrying in")
    assert "stalled" not in text[retry:], "the bar of the failed attempt does not come back"


def test_bar_line_is_ended_before_the_log_line_after_ctrl_c(server: Server, relay: Relay) -> None:
    server.put("20250428.IPI", os.urandom(16 * MiB))
    relay.rate = 2 * MiB

    code, text = on_terminal(
        job_env(server.env(port=relay.port), server.tmp),
        when=r"[1-9]\.\d/16\.8 MB",  # well into the download, the bar drawn with data
        then=lambda p: p.send_signal(signal.SIGINT),
    )

    assert code == 130, text
    assert "stopped by signal" in text
    assert_bar_never_shares_a_line_with_a_log_line(text)
