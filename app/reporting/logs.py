"""loguru setup: console (stderr) and LOG_FILE, as text or one JSON object per line.

Secrets are kept out of messages where the messages are built; a patcher is the
last resort for text we do not build (library exceptions), and ``diagnose=False``
keeps variable values (which may hold them) out of any traceback.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from app.errors import LocalStorageError
from app.progress import bar_aware

if TYPE_CHECKING:
    from loguru import Record

# ISO 8601 in UTC with its offset, as the run report and status write times: one
# convention whatever TZ the host or container has.
TEXT_FORMAT = "{time:YYYY-MM-DDTHH:mm:ss.SSSZ!UTC} | {level: <8} | {message}"
# Rotate so an unattended job cannot fill its volume with logs.
ROTATION = "20 MB"
RETENTION = 10
REDACTED = "***"
# The last-resort filter masks only secrets at least this long. A shorter one is
# guessable from the few characters around a mask, and as a plain substring it
# also matches ordinary text (SFTP_PASS=0101 inside 20250101_IPI.dat): masking it
# there would mangle file names and, by showing where it matched, reveal it.
MIN_REDACTED_LENGTH = 8
# A secret is masked only where it stands as a token of its own (after "=", ":", a
# space, inside quotes, before a sentence's full stop...), never inside a longer word,
# number or file name that merely contains it: letters, digits, "_", "-" and a "."
# followed by more of the name all continue a word (20250428_Feed2025x_IPI.dat).
_BEFORE = r"(?<![\w.\-])"
_AFTER = r"(?![\w\-]|\.\w)"


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with each long-enough secret that stands as a whole token masked; other text unchanged."""
    for secret in secrets:
        if len(secret) >= MIN_REDACTED_LENGTH and secret in text:
            pattern = f"{_BEFORE}{re.escape(secret)}{_AFTER}"
            text = re.sub(pattern, REDACTED, text)
    return text


def _redactor(secrets: tuple[str, ...]) -> Any:
    def patch(record: Record) -> None:
        record["message"] = redact(record["message"], secrets)

    return patch


def _json_format(record: Record) -> str:
    payload: dict[str, Any] = {
        "time": record["time"].astimezone(dt.UTC).isoformat(timespec="milliseconds"),
        "level": record["level"].name,
        "message": record["message"],
    }
    payload.update({k: v for k, v in record["extra"].items() if not k.startswith("_")})
    exc = record["exception"]
    if exc is not None and exc.type is not None:
        payload["exception"] = exc.type.__name__
    record["extra"]["_json"] = json.dumps(payload, default=str)
    return "{extra[_json]}\n"


def _console_only(record: Record) -> bool:
    return not record["extra"].get("_file_only", False)


def _is_traceback_line(text: str) -> bool:
    """paramiko logs a traceback as one record per line (util.tb_strings)."""
    return (
        not text.strip()
        or text[0].isspace()
        or text.startswith(("Traceback (most recent call last)", "During handling of the above exception"))
        or text.startswith("The above exception was the direct cause")
    )


class _InterceptHandler(logging.Handler):
    """Route paramiko's standard-library log records into loguru's sinks, at DEBUG.

    Whatever paramiko reports that matters to a run (a reset connection, a banner
    timeout) reaches the job as an exception and is logged once, by the job, with
    context; paramiko's own account of it is detail for LOG_LEVEL=DEBUG. Each record
    becomes one line: tracebacks (exc_info, or a traceback logged line by line) are
    dropped, as everywhere else in the job's output.
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed library record must not break logging
            text = str(record.msg)
        if _is_traceback_line(text):
            return
        first = text.strip().splitlines()[0]
        logger.bind(source=record.name).debug("{}: {}", record.name, first)


def _route_paramiko(level: str) -> None:
    paramiko_logger = logging.getLogger("paramiko")
    paramiko_logger.handlers = [_InterceptHandler()]
    # Records below our own level would be dropped anyway: do not have paramiko build them.
    verbose = logger.level(level).no <= logger.level("DEBUG").no
    paramiko_logger.setLevel(logging.DEBUG if verbose else logging.CRITICAL + 1)
    paramiko_logger.propagate = False


def setup_bootstrap() -> None:
    """Console-only logging for the moments before the settings are known."""
    logger.remove()
    logger.add(sys.stderr, level="INFO", format=TEXT_FORMAT, backtrace=False, diagnose=False, colorize=False)


def setup(level: str, fmt: str, log_file: Path | None, secrets: Iterable[str]) -> None:
    logger.remove()
    logger.configure(patcher=_redactor(tuple(secrets)))
    formatter: Any = _json_format if fmt == "json" else TEXT_FORMAT
    logger.add(
        bar_aware(sys.stderr),
        level=level,
        format=formatter,
        filter=_console_only,
        backtrace=False,
        diagnose=False,
        colorize=False,
    )
    if log_file is not None:
        try:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            logger.add(
                log_file,
                level=level,
                format=formatter,
                rotation=ROTATION,
                retention=RETENTION,
                encoding="utf-8",
                backtrace=False,
                diagnose=False,
                colorize=False,
            )
        except OSError as exc:
            raise LocalStorageError(f"cannot write LOG_FILE={log_file}: {exc.strerror or exc}") from None
    _route_paramiko(level)
