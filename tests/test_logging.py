"""What reaches stderr and LOG_FILE: one line per event, secrets masked without mangling other text."""

from __future__ import annotations

import os
import re
import socket
import threading
from collections.abc import Iterator

import pytest
from conftest import Runner, Server, file_sha256, sha256
from relay import Relay

from app.reporting.logs import REDACTED, redact

MiB = 1024 * 1024
# Every line the job writes in text format starts with its timestamp.
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00 \| ")


def assert_one_line_per_event(text: str) -> None:
    for line in text.splitlines():
        assert LOG_LINE.match(line), f"not a log line of its own: {line!r}"
    assert "Traceback" not in text


# -- the last-resort redaction ---------------------------------------------------------


def test_short_secret_is_never_masked_inside_other_text() -> None:
    assert redact("20250101_IPI.dat published", ["0101"]) == "20250101_IPI.dat published"
    assert redact("run 0101 done", ["0101"]) == "run 0101 done", "too short to hide: kept out at the source instead"


@pytest.mark.parametrize(
    "text",
    [
        "blew up while sending password Leaky-secret-value",
        "SFTP_PASS=Leaky-secret-value",
        "'Leaky-secret-value'",
        "http://user:Leaky-secret-value@host:9091/",
        "Leaky-secret-value",
        "the password was Leaky-secret-value.",
    ],
)
def test_long_secret_standing_as_a_token_is_masked(text: str) -> None:
    masked = redact(text, ["Leaky-secret-value"])
    assert "Leaky-secret-value" not in masked
    assert REDACTED in masked


def test_long_secret_inside_a_longer_word_leaves_the_word_alone() -> None:
    assert redact("IPI_x20250101120000y.dat", ["20250101120000"]) == "IPI_x20250101120000y.dat"


@pytest.mark.parametrize(
    "name", ["20250428_Feed2025x_IPI.dat", "20250428.Feed2025x.IPI", "20250428-Feed2025x-IPI", "Feed2025x.IPI"]
)
def test_long_secret_inside_a_file_name_leaves_the_name_alone(name: str) -> None:
    """Masking it there would change the name and, by where it matched, reveal the secret."""
    assert redact(f"{name}: published", ["Feed2025x"]) == f"{name}: published"


def test_short_password_leaves_file_names_unaltered(run: Runner, server: Server) -> None:
    data = os.urandom(1000)
    server.put("20250101_IPI.dat", data)

    result = run(SFTP_PASS="0101")  # the key logs in; the password is only there to be hidden

    assert result.code == 0, result.output
    assert file_sha256(server.served / "20250101_IPI.dat") == sha256(data)
    log = server.log.read_text()
    for sink in (result.stderr, log):
        assert "20250101_IPI.dat: published" in sink
        assert REDACTED not in sink


# -- paramiko's own log records --------------------------------------------------------


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP server that accepts connections and never sends an SSH banner."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            held.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        listener.close()
        for conn in held:
            conn.close()


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
def test_banner_timeout_is_one_line_without_paramikos_traceback(
    run: Runner, server: Server, silent_server: int, level: str
) -> None:
    result = run(SFTP_PORT=silent_server, CONNECT_TIMEOUT=1, RETRY_MAX_TRIES=3, LOG_LEVEL=level)

    assert result.code == 1, result.output
    assert "giving up after 3 attempt(s)" in result.stderr
    for sink in (result.stderr, server.log.read_text()):
        assert_one_line_per_event(sink)
        assert "  File " not in sink
        if level == "INFO":
            assert "paramiko" not in sink, "paramiko's detail is for LOG_LEVEL=DEBUG"


def test_connection_reset_is_logged_once_by_the_job_not_by_paramiko(run: Runner, server: Server, relay: Relay) -> None:
    data = os.urandom(4 * MiB)
    server.put("20250428.IPI", data)
    relay.set_fault(cut_after=MiB, reset=True)

    result = run(port=relay.port)

    assert result.code == 0, result.output
    assert file_sha256(server.served / "20250428.IPI") == sha256(data)
    assert "retrying in" in result.stderr
    for sink in (result.stderr, server.log.read_text()):
        assert_one_line_per_event(sink)
        assert "paramiko" not in sink and "Socket exception" not in sink


def test_paramikos_detail_stays_available_at_debug(run: Runner, server: Server, relay: Relay) -> None:
    server.put("20250428.IPI", os.urandom(4 * MiB))
    relay.set_fault(cut_after=MiB, reset=True)

    result = run(port=relay.port, LOG_LEVEL="DEBUG")

    assert result.code == 0, result.output
    assert "| DEBUG    | paramiko.transport: " in result.stderr
    assert "| ERROR    | paramiko" not in result.stderr
    assert_one_line_per_event(result.stderr)
