"""Command line: ``python -m app`` (or ``sftp-ipi``) runs the job once."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
import traceback
from pathlib import Path

from loguru import logger

from app import __version__, interrupt
from app.config import Settings, load_settings, read_environment, setting_docs
from app.errors import EXIT_LOCKED, EXIT_STORAGE, Interrupted, JobError, LocalStorageError
from app.job import Job, build_report, summary_line
from app.logs import setup, setup_bootstrap
from app.report import write_report
from app.status import gather, render

# Restrictive by default: downloaded files are readable by the group, not by others.
DEFAULT_UMASK = 0o027


def _help_epilog() -> str:
    lines = ["settings (environment variables, also read from ./.env; the environment wins):"]
    for doc in setting_docs():
        default = "required" if doc.required else f"default: {doc.default or '(empty)'}"
        lines.append(f"  {doc.env}  [{default}]\n      {doc.doc}")
    lines.append(
        "\nexit codes: 0 done or nothing due; 1 transfer failed after retries; 2 configuration error;"
        " 3 authentication or host-key failure; 4 another run in progress; 5 local storage error;"
        " 130/143 interrupted by SIGINT/SIGTERM."
    )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="sftp-ipi",
        description="Pull the next IPI file(s) from an SFTP server: resumable, verified, published atomically.",
        epilog=_help_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "command",
        nargs="?",
        choices=("run", "status"),
        default="run",
        help="run: one run of the job (the default); status: report from local state only, without connecting"
        " (exit 0 if the last run succeeded, 1 otherwise)",
    )
    parser.add_argument("--env-file", type=Path, metavar="PATH", help="read settings from this dotenv file")
    parser.add_argument(
        "--dry-run", action="store_true", help="connect, list and print what would be downloaded; change nothing"
    )
    parser.add_argument("--json", action="store_true", help="with status: print JSON for machines")
    parser.add_argument("--version", action="version", version=f"sftp-ipi {__version__}")
    args = parser.parse_args(argv)
    if args.json and args.command != "status":
        parser.error("--json goes with the status command")
    return args


def _status(settings: Settings, as_json: bool) -> int:
    state = gather(settings)
    print(json.dumps(state.to_json(), indent=2) if as_json else render(state))
    return 0 if state.healthy else 1


def _after_run(settings: Settings, job: Job, code: int, error: str | None, started: dt.datetime) -> None:
    """Report, metrics and alerts: each failure here is logged, none changes the exit code."""
    report = build_report(settings, job.summary, code, error, started, dt.datetime.now(dt.UTC))
    # A run refused by the lock did nothing; its report would hide the running one's.
    if code != EXIT_LOCKED:
        try:
            write_report(settings.report_path, report)
        except LocalStorageError as exc:
            logger.warning("run report not written: {}", exc)
        if settings.metrics_pushgateway_url or settings.metrics_textfile:
            # Imported only when used: prometheus-client adds start-up time to every run.
            from app.metrics import publish_metrics

            publish_metrics(settings, report)
    if settings.notify_webhook_url or settings.notify_smtp_host:
        from app.notify import notify

        notify(settings, report)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    interrupt.install()
    os.umask(DEFAULT_UMASK)
    setup_bootstrap()
    started = time.monotonic()
    started_at = dt.datetime.now(dt.UTC)
    job: Job | None = None
    settings: Settings | None = None
    error: str | None = None
    try:
        settings = load_settings(read_environment(args.env_file, os.environ))
        os.umask(settings.umask)
        if args.command == "status":
            setup(settings.log_level, settings.log_format, None, settings.secrets)
            return _status(settings, args.json)
        # A dry run writes nothing: not even LOG_FILE or its directory.
        log_file = None if args.dry_run else settings.log_file
        setup(settings.log_level, settings.log_format, log_file, settings.secrets)
        job = Job(settings, dry_run=args.dry_run, out=sys.stdout)
        code = job.run()
    except JobError as exc:
        logger.error("{}", exc)
        code, error = exc.exit_code, str(exc)
    except Interrupted as exc:
        logger.warning("stopped by signal {}; any partial download is kept for the next run", exc.signum)
        code, error = exc.exit_code, str(exc)
    except OSError as exc:
        # Anything local that escaped translation still deserves one line and exit 5.
        logger.error("local storage error: {}", exc)
        code, error = EXIT_STORAGE, f"local storage error: {exc}"
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, no traceback
        logger.error("internal error: {}: {}", exc.__class__.__name__, exc)
        # Formatted here, not by loguru, so that the secret redaction sees it too.
        trace = "".join(traceback.format_exception(exc))
        logger.bind(_file_only=True).error("traceback of the internal error:\n{}", trace)
        code, error = 1, f"internal error: {exc.__class__.__name__}"
    if job is not None and settings is not None and not args.dry_run:
        logger.info(summary_line(job.summary, code, time.monotonic() - started))
        _after_run(settings, job, code, error, started_at)
    return code


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
