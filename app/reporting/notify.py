"""Failure alerts: a JSON webhook (Slack- and Teams-compatible) and e-mail.

A notifier that fails is logged and never hides or changes the job's own result.
No secret is ever part of a message: the text is built from the report alone
and passed through the same redaction as the logs.
"""

from __future__ import annotations

import json
import smtplib
import socket
import ssl
import urllib.request
from email.message import EmailMessage
from typing import Any

from loguru import logger

from app.config import Settings
from app.reporting.logs import redact
from app.reporting.report import RunReport
from app.urls import reason, safe_url, split_credentials


class NotificationError(Exception):
    """A notification that was not sent, for a reason the job itself determined."""


def should_notify(settings: Settings, report: RunReport) -> bool:
    # A failed REMOTE_AFTER leaves the run a success (the delivery is done), yet
    # someone must fix the server's permissions or archive: it alerts too.
    return settings.notify_on == "always" or not report.ok or bool(report.remote_after_failed)


def message(settings: Settings, report: RunReport) -> dict[str, Any]:
    machine = socket.gethostname()
    status = "succeeded" if report.ok else "FAILED"
    fetched = ", ".join(f.name for f in report.files if f.completed) or "nothing"
    text = (
        f"sftp-ipi on {machine}: run {status} (exit {report.exit_code}: {report.outcome})."
        f" Server {report.sftp_host}. Fetched: {fetched}."
        f" Last good file: {report.last_completed_file or 'none'}."
    )
    if report.error:
        text += f" Error: {report.error}"
    if report.remote_after_failed:
        failed = "; ".join(f"{name}: {why}" for name, why in sorted(report.remote_after_failed.items()))
        text += f" REMOTE_AFTER failed (retried next run): {failed}"
    for stuck in report.stuck:
        # The way out of a feed one file has stopped, where the person alerted reads first;
        # the error is in the command's reason, so it is not repeated.
        text += (
            f" Stuck: {stuck.name}: failed the same way on {stuck.runs} runs in a row (since {stuck.since});"
            f" to pass it: {stuck.command}"
        )
    secrets = settings.secrets
    return {
        "text": redact(text, secrets),
        "ok": report.ok,
        "exit_code": report.exit_code,
        "outcome": report.outcome,
        "error": redact(report.error, secrets) if report.error else None,
        "last_good_file": report.last_completed_file,
        "sftp_host": report.sftp_host,
        "machine": machine,
        "finished_at": report.finished_at,
    }


def _post_webhook(url: str, body: dict[str, Any], timeout: int) -> None:
    target = split_credentials(url)
    headers = {"Content-Type": "application/json"}
    authorization = target.authorization()
    if authorization is not None:
        headers["Authorization"] = authorization
    request = urllib.request.Request(  # noqa: S310 - the scheme is checked to be http(s) by config
        target.url,
        data=json.dumps(body).encode("utf-8"),
        headers=headers,
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310  # nosec B310
        response.read()


def _send_mail(settings: Settings, host: str, sender: str, body: dict[str, Any]) -> None:
    mail = EmailMessage()
    mail["Subject"] = f"sftp-ipi: run {'succeeded' if body['ok'] else 'failed'} (exit {body['exit_code']})"
    mail["From"] = sender
    mail["To"] = ", ".join(settings.notify_smtp_to)
    mail.set_content(body["text"] + "\n")
    context = ssl.create_default_context()
    port, timeout = settings.notify_smtp_port, settings.notify_timeout
    security = settings.notify_smtp_security
    user, password = settings.notify_smtp_user, settings.notify_smtp_pass
    smtp: smtplib.SMTP
    if security == "tls":
        smtp = smtplib.SMTP_SSL(host, port, timeout=timeout, context=context)
    else:
        smtp = smtplib.SMTP(host, port, timeout=timeout)
    with smtp:
        smtp.ehlo()
        if security == "starttls":
            # Falling back to plain text here is what lets anyone on the path read
            # the password (a stripped STARTTLS offer): refuse instead.
            if not smtp.has_extn("starttls"):
                raise NotificationError(
                    f"{host}:{port} does not offer STARTTLS (NOTIFY_SMTP_SECURITY=starttls); nothing was sent"
                )
            smtp.starttls(context=context)
            smtp.ehlo()
        elif security == "none":
            what = "the SMTP login and the message" if user and password else "the message"
            logger.warning(
                "NOTIFY_SMTP_SECURITY=none: {} go to {}:{} without TLS, readable on the way", what, host, port
            )
        if user and password:
            smtp.login(user, password)
        smtp.send_message(mail)


def notify(settings: Settings, report: RunReport) -> None:
    if not should_notify(settings, report):
        return
    body = message(settings, report)
    if settings.notify_webhook_url:
        try:
            _post_webhook(settings.notify_webhook_url, body, settings.notify_timeout)
        except Exception as exc:  # noqa: BLE001 - a notifier never changes the run's result
            # The URL is a secret (its path or userinfo holds the token), and library errors echo pieces of it.
            url = settings.notify_webhook_url
            logger.warning("webhook notification failed ({}): {}", safe_url(url), reason(exc, url))
        else:
            logger.info("webhook notification sent")
    if settings.notify_smtp_host and settings.notify_smtp_from:
        try:
            _send_mail(settings, settings.notify_smtp_host, settings.notify_smtp_from, body)
        except Exception as exc:  # noqa: BLE001 - a notifier never changes the run's result
            logger.warning("e-mail notification failed: {}", _reason(exc, settings))
        else:
            logger.info("e-mail notification sent to {}", ", ".join(settings.notify_smtp_to))


def _reason(exc: BaseException, settings: Settings) -> str:
    if isinstance(exc, NotificationError):
        return str(exc)
    text = str(exc).strip().splitlines()
    reason = f"{exc.__class__.__name__}: {text[0][:200]}" if text else exc.__class__.__name__
    return redact(reason, settings.secrets)
