"""loguru setup: console (stderr) and LOG_FILE, as text or one JSON object per line.

Secrets are removed from every message by a patcher, and ``diagnose=False``
keeps variable values (which may hold them) out of any traceback.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
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


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, REDACTED)
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


class _InterceptHandler(logging.Handler):
    """Route paramiko's standard-library log records into loguru's sinks."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.bind(source=record.name).log(level, "{}: {}", record.name, record.getMessage())


def _route_paramiko() -> None:
    paramiko_logger = logging.getLogger("paramiko")
    paramiko_logger.handlers = [_InterceptHandler()]
    paramiko_logger.setLevel(logging.WARNING)
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
    _route_paramiko()
