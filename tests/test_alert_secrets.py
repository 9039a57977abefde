"""Credentials of the alerting side: SMTP only over TLS unless told otherwise, URL credentials never echoed."""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import ipaddress
import json
import ssl
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import Server, run_job
from promstack import running_pushgateway
from sshd import free_port

from app.config import load_settings
from app.urls import reason, safe_url, split_credentials

SMTP_PASSWORD = "Smtp-pa55-never-in-clear"
PUSH_PASSWORD = "PushPw-123"

# -- URLs (pure) ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://user:PushPw-123@127.0.0.1:9091", "http://127.0.0.1:9091"),
        ("https://hooks.example.org/services/T0KEN/SECRET?x=1#f", "https://hooks.example.org"),
        ("http://[::1]:9091/", "http://[::1]:9091"),
        ("http://u:pa/ss@host", "<unparseable URL>"),
    ],
)
def test_safe_url_keeps_only_scheme_host_and_port(url: str, shown: str) -> None:
    assert safe_url(url) == shown


def test_credentials_leave_the_url_for_a_header() -> None:
    target = split_credentials("http://us%40er:Push%3APw@127.0.0.1:9091/x?y=1")
    assert target.url == "http://127.0.0.1:9091/x?y=1"
    assert (target.username, target.password) == ("us@er", "Push:Pw")
    assert target.authorization() == "Basic dXNAZXI6UHVzaDpQdw=="
    assert split_credentials("http://127.0.0.1:9091").authorization() is None


@pytest.mark.parametrize(
    "exc",
    [
        http.client.InvalidURL("nonnumeric port: 'PushPw-123@127.0.0.1:9091'"),
        http.client.InvalidURL("nonnumeric port: PushPw-123@127.0.0.1:9091"),
        ValueError("unknown url type: user:PushPw-123@127.0.0.1/metrics/job/sftp_ipi"),
        OSError("error near ushPw-1 in the request"),
        ValueError("bad token=abcdef-query-token"),
    ],
)
def test_reason_never_echoes_a_piece_of_a_secret(exc: Exception) -> None:
    url = "http://user:PushPw-123@127.0.0.1:9091/?token=abcdef-query-token"
    text = reason(exc, url)
    assert text.startswith(exc.__class__.__name__ + ": ")
    for piece in ("PushPw", "ushPw-1", "Pw-123", "abcdef", "query-token"):
        assert piece not in text


def test_reason_keeps_what_is_not_secret() -> None:
    url = "http://user:PushPw-123@127.0.0.1:9091"
    assert reason(ConnectionRefusedError(111, "Connection refused"), url) == (
        "ConnectionRefusedError: [Errno 111] Connection refused"
    )


def test_pushgateway_url_is_not_in_the_settings_repr(tmp_path: Path) -> None:
    url = f"http://user:{PUSH_PASSWORD}@127.0.0.1:9091"
    settings = load_settings(
        {
            "SFTP_HOST": "h",
            "SFTP_USER": "u",
            "SFTP_PASS": "x" * 12,
            "LOCAL_DIR": str(tmp_path / "l"),
            "SERVER_DIR": str(tmp_path / "s"),
            "METRICS_PUSHGATEWAY_URL": url,
        }
    )
    assert PUSH_PASSWORD not in repr(settings)
    assert PUSH_PASSWORD in settings.secrets and url in settings.secrets


# -- URLs against real servers ------------------------------------------------------------


def everything(server: Server, *texts: str) -> str:
    return "\n".join(texts) + (server.log.read_text() if server.log.exists() else "")


@pytest.fixture
def pushgateway() -> Iterator[str]:
    # promstack's gateway keeps its groups in memory: Debian's build would otherwise
    # persist them to /var/lib/prometheus/pushgateway.data on the developer's machine.
    with running_pushgateway() as url:
        yield url


DEBIAN_PERSISTENCE = Path("/var/lib/prometheus/pushgateway.data")


def _persisted() -> tuple[float, int] | None:
    try:
        st = DEBIAN_PERSISTENCE.stat()
    except FileNotFoundError:
        return None
    return st.st_mtime, st.st_size


def test_the_pushgateway_fixture_leaves_no_state_on_the_machine(server: Server) -> None:
    before = _persisted()
    with running_pushgateway() as url:
        result = run_job(server.env(METRICS_PUSHGATEWAY_URL=url), server.tmp / "cwd")
        assert result.code == 0, result.output
    # The gateway writes its persistence file when it stops, so this is checked after the stop.
    assert _persisted() == before


def test_pushgateway_credentials_in_the_url_are_sent_as_basic_auth_never_logged(
    server: Server, pushgateway: str
) -> None:
    server.put("20250428.IPI", b"m" * 100)
    url = pushgateway.replace("http://", f"http://ipi:{PUSH_PASSWORD}@")

    result = run_job(server.env(METRICS_PUSHGATEWAY_URL=url, METRICS_INSTANCE="site-b"), server.tmp / "cwd")

    assert result.code == 0, result.output
    assert "metrics pushed" in result.stderr
    with urllib.request.urlopen(f"{pushgateway}/metrics", timeout=5) as response:
        assert (
            'sftp_ipi_last_run_exit_code{feed="site-b",instance="site-b",job="sftp_ipi"} 0' in response.read().decode()
        )
    assert PUSH_PASSWORD not in everything(server, result.stdout, result.stderr)


@pytest.mark.parametrize(
    "url",
    [
        f"http://ipi:{PUSH_PASSWORD}@127.0.0.1:notaport",
        f"http://ipi:{PUSH_PASSWORD}/x@127.0.0.1:1",
        f"http://127.0.0.1:1/?token={PUSH_PASSWORD}",
    ],
)
def test_failed_push_names_the_gateway_without_credentials(server: Server, url: str) -> None:
    server.put("20250428.IPI", b"m")

    result = run_job(server.env(METRICS_PUSHGATEWAY_URL=url, NOTIFY_TIMEOUT=2), server.tmp / "cwd")

    assert result.code == 0, result.output
    [line] = [line for line in result.stderr.splitlines() if "metrics not pushed" in line]
    assert "METRICS_PUSHGATEWAY_URL=" in line
    output = everything(server, result.stdout, result.stderr)
    for piece in (PUSH_PASSWORD, "PushPw", "Pw-123"):
        assert piece not in output


@dataclass
class Hook:
    url: str
    headers: list[dict[str, str]] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
def hook() -> Iterator[Hook]:
    received = Hook("")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.headers.append(dict(self.headers))
            received.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    received.url = f"http://hook:{PUSH_PASSWORD}@127.0.0.1:{httpd.server_address[1]}/hooks/T0KEN-SECRET"
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield received
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_webhook_userinfo_becomes_basic_auth_and_is_never_logged(server: Server, hook: Hook) -> None:
    server.put("20250428.IPI", b"w")

    result = run_job(server.env(NOTIFY_WEBHOOK_URL=hook.url, NOTIFY_ON="always"), server.tmp / "cwd")

    assert result.code == 0, result.output
    [headers] = hook.headers
    assert headers["Authorization"] == split_credentials(hook.url).authorization()
    assert hook.bodies[0]["ok"] is True
    assert "webhook notification sent" in result.stderr
    assert PUSH_PASSWORD not in everything(server, result.stdout, result.stderr)


def test_failed_webhook_is_named_without_its_token(server: Server) -> None:
    url = f"http://hook:{PUSH_PASSWORD}@127.0.0.1:bad/hooks/T0KEN-SECRET"

    result = run_job(server.env(port=free_port(), RETRY_MAX_TRIES=1, NOTIFY_WEBHOOK_URL=url), server.tmp / "cwd")

    assert result.code == 1, "the job's own exit code"
    assert "webhook notification failed (<unparseable URL>)" in result.stderr
    output = everything(server, result.stdout, result.stderr)
    for piece in (PUSH_PASSWORD, "PushPw", "T0KEN"):
        assert piece not in output


# -- SMTP ---------------------------------------------------------------------------------


@dataclass
class Mailbox:
    port: int
    mails: list[Any] = field(default_factory=list)
    logins: list[tuple[str, bool]] = field(default_factory=list)  # (user, over TLS)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, trusted by the job through SSL_CERT_FILE."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


@contextlib.contextmanager
def smtp_server(tls_files: tuple[Path, Path], mode: str) -> Iterator[Mailbox]:
    """aiosmtpd offering AUTH; mode: plain (no TLS at all), starttls, or tls (implicit)."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*map(str, tls_files))
    box = Mailbox(free_port())

    class Collect:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
            box.mails.append(envelope)
            return "250 OK"

    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        assert isinstance(data, LoginPassword)
        # session.ssl is set by STARTTLS; implicit TLS shows on the transport.
        over_tls = session.ssl is not None or server.transport.get_extra_info("ssl_object") is not None
        box.logins.append((data.login.decode(), over_tls))
        return AuthResult(success=data.password.decode() == SMTP_PASSWORD)

    options: dict[str, Any] = {"authenticator": authenticate, "auth_require_tls": False}
    if mode == "starttls":
        options["tls_context"] = context
    if mode == "tls":
        options["ssl_context"] = context
    controller = Controller(Collect(), hostname="127.0.0.1", port=box.port, **options)
    controller.start()
    try:
        yield box
    finally:
        controller.stop()


def smtp_env(server: Server, tls_files: tuple[Path, Path], box: Mailbox, **extra: object) -> dict[str, str]:
    secret = server.tmp / "smtp_password"
    secret.write_text(SMTP_PASSWORD + "\n")
    env = server.env(
        port=free_port(),
        RETRY_MAX_TRIES=1,
        NOTIFY_SMTP_HOST="127.0.0.1",
        NOTIFY_SMTP_PORT=box.port,
        NOTIFY_SMTP_USER="alerts",
        NOTIFY_SMTP_PASS_FILE=secret,
        NOTIFY_SMTP_FROM="sftp-ipi@example.org",
        NOTIFY_SMTP_TO="ops@example.org",
        NOTIFY_TIMEOUT=5,
        **extra,
    )
    return {**env, "SSL_CERT_FILE": str(tls_files[0])}


def test_smtp_without_starttls_gets_no_password_by_default(server: Server, tls_files: tuple[Path, Path]) -> None:
    with smtp_server(tls_files, "plain") as box:
        result = run_job(smtp_env(server, tls_files, box), server.tmp / "cwd")

    assert result.code == 1, "the job's own exit code, whatever the notifier did"
    assert box.logins == [] and box.mails == [], "neither the password nor the message went in the clear"
    [line] = [line for line in result.stderr.splitlines() if "e-mail notification failed" in line]
    assert "| WARNING  |" in line and "does not offer STARTTLS" in line and "NOTIFY_SMTP_SECURITY" in line


def test_smtp_starttls_logs_in_and_sends_over_tls(server: Server, tls_files: tuple[Path, Path]) -> None:
    with smtp_server(tls_files, "starttls") as box:
        result = run_job(smtp_env(server, tls_files, box), server.tmp / "cwd")

    assert result.code == 1
    assert box.logins == [("alerts", True)]
    [mail] = box.mails
    assert mail.rcpt_tos == ["ops@example.org"] and "giving up" in mail.content.decode()
    assert "e-mail notification sent" in result.stderr


def test_smtp_implicit_tls(server: Server, tls_files: tuple[Path, Path]) -> None:
    with smtp_server(tls_files, "tls") as box:
        result = run_job(smtp_env(server, tls_files, box, NOTIFY_SMTP_SECURITY="tls"), server.tmp / "cwd")

    assert result.code == 1
    assert box.logins == [("alerts", True)] and len(box.mails) == 1, result.stderr


def test_smtp_none_sends_in_the_clear_only_when_asked_and_says_so(server: Server, tls_files: tuple[Path, Path]) -> None:
    with smtp_server(tls_files, "plain") as box:
        result = run_job(smtp_env(server, tls_files, box, NOTIFY_SMTP_SECURITY="none"), server.tmp / "cwd")

    assert result.code == 1
    assert box.logins == [("alerts", False)] and len(box.mails) == 1
    [line] = [line for line in result.stderr.splitlines() if "NOTIFY_SMTP_SECURITY=none" in line]
    assert "| WARNING  |" in line and "without TLS" in line
    assert SMTP_PASSWORD not in everything(server, result.stdout, result.stderr)


@pytest.mark.parametrize(
    ("overrides", "security", "port"),
    [
        ({}, "starttls", 587),
        ({"NOTIFY_SMTP_PORT": "465"}, "tls", 465),
        ({"NOTIFY_SMTP_SECURITY": "tls"}, "tls", 465),
        ({"NOTIFY_SMTP_SECURITY": "tls", "NOTIFY_SMTP_PORT": "2465"}, "tls", 2465),
        ({"NOTIFY_SMTP_SECURITY": "STARTTLS", "NOTIFY_SMTP_PORT": "465"}, "starttls", 465),
        ({"NOTIFY_SMTP_SECURITY": "none"}, "none", 587),
    ],
)
def test_smtp_security_and_port_resolve_sanely(
    tmp_path: Path, overrides: dict[str, str], security: str, port: int
) -> None:
    env = {"SFTP_HOST": "h", "SFTP_USER": "u", "SFTP_PASS": "p", "LOCAL_DIR": str(tmp_path / "l")}
    settings = load_settings({**env, "SERVER_DIR": str(tmp_path / "s"), **overrides})
    assert (settings.notify_smtp_security, settings.notify_smtp_port) == (security, port)


def test_unknown_smtp_security_is_a_config_error(server: Server) -> None:
    result = run_job(server.env(NOTIFY_SMTP_SECURITY="ssl"), server.tmp / "cwd")
    assert result.code == 2
    assert "NOTIFY_SMTP_SECURITY='ssl' is not one of: starttls, tls, none" in result.stderr
