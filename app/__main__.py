"""Command line: ``python -m app`` (or ``sftp-ipi``) runs the job once; ``status``, ``audit``,
``refetch`` and ``skip`` work on the local state only."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
import sys
import textwrap
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

from loguru import logger

from app import __version__, interrupt
from app.config import (
    MissingSettingError,
    Settings,
    StateSettings,
    load_settings,
    load_state_settings,
    read_environment,
    setting_docs,
    state_setting_names,
)
from app.errors import EXIT_LOCKED, EXIT_STORAGE, ConfigError, Interrupted, JobError, LockedError, describe
from app.job import Job, build_report, log_server_profile, log_stuck, summary_line
from app.reporting.logs import setup, setup_bootstrap
from app.reporting.report import write_report
from app.reporting.status import gather, render
from app.storage.audit import audit
from app.storage.audit import render as render_audit
from app.storage.fsutil import ensure_dir
from app.storage.refetch import refetch
from app.storage.skip import skip
from app.storage.state import RunLock

T = TypeVar("T")

# Seconds each network step after the run (metrics push, webhook, e-mail) may take
# once a stop was requested: three of them stay well within a 30 s stop budget.
STOP_GRACE = 5

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


# Commands that read local state only: they need no connection settings and never connect.
STATE_COMMANDS = ("status", "audit", "refetch", "skip")
# Commands that change the state they name (and leave their trace in LOG_FILE).
_CHANGING_COMMANDS = ("refetch", "skip")
_JSON_COMMANDS = ("status", "audit", "config")
_DRY_RUN_COMMANDS = ("run", "refetch")


def _state_epilog(command: str) -> str:
    changes = "changes only the state it names" if command in _CHANGING_COMMANDS else "changes nothing"
    text = (
        f"reads only these settings (environment variables, also read from ./.env): {', '.join(state_setting_names())};"
        f" never connects, {changes}. Every setting: sftp-ipi --help."
    )
    return textwrap.fill(text, width=100)


def _add_options(parser: argparse.ArgumentParser, command: str | None) -> None:
    """The options of ``command`` (None: the top level, where they mean run's, or any command's).

    After a command they default to SUPPRESS, so that ``--env-file X status`` and
    ``status --env-file X`` both work: a command's own default would undo the one given before it.
    """
    default = None if command is None else argparse.SUPPRESS
    parser.add_argument(
        "--env-file", type=Path, metavar="PATH", default=default, help="read settings from this dotenv file"
    )
    if command in (None, *_DRY_RUN_COMMANDS):
        what = (
            "print what would change; change nothing"
            if command == "refetch"
            else "connect, list and print what would be downloaded; change nothing"
        )
        parser.add_argument("--dry-run", action="store_true", default=default or False, help=what)
    if command in (None, *_JSON_COMMANDS):
        parser.add_argument(
            "--json",
            action="store_true",
            default=default or False,
            help="print JSON for machines" if command else "with status or audit: print JSON for machines",
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="sftp-ipi",
        description="Pull the next IPI file(s) from an SFTP server: resumable, verified, published atomically.",
        usage="%(prog)s [run|status|audit|refetch|skip|config] [options]",
        epilog=_help_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_options(parser, None)
    parser.add_argument("--version", action="version", version=f"sftp-ipi {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands (default: run)")
    described = {
        "run": "one run of the job (the default)",
        "status": "report from local state only, without connecting (exit 0 if the last run succeeded, 1 otherwise)",
        "audit": "re-hash SERVER_DIR (and LOCAL_DIR's copies) against the ledger; report missing, changed and"
        " unknown files (exit 0 if all match, 1 otherwise, 2 if the ledger is damaged)",
        "refetch": "make delivered (or skipped) files due again: the next run fetches each once and records it",
        "skip": "pass files that cannot be delivered (e.g. unreadable on the server): the next run takes each"
        " for done without fetching it, and status, the run report and audit name it as skipped",
        "config": "print every effective setting and where it came from (default, env file:line, environment);"
        " secrets masked; exit 2 if one is invalid",
    }
    for command, text in described.items():
        sub = commands.add_parser(
            command,
            prog=f"sftp-ipi {command}",
            help=text,
            description=text,
            epilog=_help_epilog() if command in ("run", "config") else _state_epilog(command),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _add_options(sub, command)
        if command == "refetch":
            sub.add_argument(
                "names", nargs="+", metavar="NAME", help="a delivered or skipped file's name, as in the ledger"
            )
        if command == "skip":
            sub.add_argument("names", nargs="+", metavar="NAME", help="a remote file's name, as the last run listed it")
            sub.add_argument(
                "--reason", required=True, metavar="TEXT", help="why it is skipped; recorded in the ledger"
            )
    args = parser.parse_args(argv)
    args.command = args.command or "run"
    if args.json and args.command not in _JSON_COMMANDS:
        parser.error(f"--json goes with the {' and '.join(_JSON_COMMANDS)} commands")
    if args.dry_run and args.command not in _DRY_RUN_COMMANDS:
        parser.error(f"--dry-run goes with the {' and '.join(_DRY_RUN_COMMANDS)} commands")
    return args


_Loaded = TypeVar("_Loaded", Settings, StateSettings)


def _load(args: argparse.Namespace, loader: Callable[[Mapping[str, str]], _Loaded]) -> _Loaded:
    environment = read_environment(args.env_file, os.environ)
    # Logged at once (to the console), so a misspelt name shows even when it makes the settings fail.
    for warning in environment.warnings:
        logger.warning("{}", warning)
    if environment.warnings and environment.get("STRICT_SETTINGS", "").strip().lower() in ("1", "true", "yes", "on"):
        raise ConfigError(f"{environment.warnings[0]} (STRICT_SETTINGS is set)")
    try:
        return loader(environment)
    except MissingSettingError as exc:
        if args.env_file is None and not Path(".env").is_file():
            raise MissingSettingError(
                f"{exc} (there is no ./.env in {Path.cwd()}: use --env-file PATH, or set it in the environment)"
            ) from None
        raise


def _status(settings: StateSettings, as_json: bool) -> int:
    state = gather(settings)
    print(json.dumps(state.to_json(), indent=2) if as_json else render(state))
    return 0 if state.healthy else 1


def _audit(settings: StateSettings, as_json: bool) -> int:
    result = audit(settings)
    print(json.dumps(result.to_json(), indent=2) if as_json else render_audit(result))
    return result.exit_code


def _config(args: argparse.Namespace) -> int:
    """Every effective setting and its source; exit 2 with the run's own message when one is invalid."""
    from app.config_show import effective, render

    settings = _load(args, load_settings)
    print(render(effective(settings, args.env_file, os.environ), args.json))
    return 0


def _state_command(args: argparse.Namespace) -> int:
    settings = _load(args, load_state_settings)
    os.umask(settings.umask)
    changes = args.command in _CHANGING_COMMANDS and not args.dry_run
    # Only refetch and skip change state, so only they leave their trace in LOG_FILE.
    setup(settings.log_level, settings.log_format, settings.log_file if changes else None, ())
    if args.env_file is None and not Path(".env").is_file() and not set(state_setting_names()) & set(os.environ):
        logger.warning(
            "no ./.env in {} and no state setting in the environment: reading the default paths from here"
            " (use --env-file PATH)",
            Path.cwd(),
        )
    if args.command == "status":
        return _status(settings, args.json)
    if args.command == "audit":
        return _audit(settings, args.json)
    if args.command == "skip":
        return skip(settings, args.names, args.reason, out=sys.stdout)
    return refetch(settings, args.names, dry_run=args.dry_run, out=sys.stdout)


def _run_lock(settings: Settings) -> RunLock:
    """The lock that makes this the only run writing this feed's state."""
    # It lives beside LAST_FILE_RECORD, whose directory a first run creates.
    ensure_dir(settings.last_file_record.parent, "the LAST_FILE_RECORD directory")
    return RunLock(settings.lock_path)


def _after_run(settings: Settings, job: Job, code: int, error: str | None, started: dt.datetime) -> None:
    """Report, metrics and alerts, still under the run lock: each failure here is
    one line, and none changes the exit code."""
    report = _step("run report not built", lambda: build_report(settings, job.summary, code, error, started, _now()))
    if report is None:
        return
    if code != EXIT_LOCKED:
        log_stuck(report)
    if interrupt.requested() is not None and settings.notify_timeout > STOP_GRACE:
        # A stopped run still reports and alerts, but within the grace a supervisor
        # allows after SIGTERM (systemd's TimeoutStopSec, Kubernetes' grace period),
        # not NOTIFY_TIMEOUT per step.
        settings = dataclasses.replace(settings, notify_timeout=STOP_GRACE)
    # A run refused by the lock did nothing; its report would hide the running one's.
    if code != EXIT_LOCKED:
        _step("run report not written", lambda: write_report(settings.report_path, report))
        if settings.metrics_pushgateway_url or settings.metrics_textfile:
            # Imported only when used: prometheus-client adds start-up time to every run.
            from app.reporting.metrics import publish_metrics

            _step("metrics not published", lambda: publish_metrics(settings, report))
    # Nor does it alert: the run holding the lock reports its own outcome.
    if code != EXIT_LOCKED and (settings.notify_webhook_url or settings.notify_smtp_host):
        from app.reporting.notify import notify

        _step("notification not sent", lambda: notify(settings, report))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _step(failure: str, step: Callable[[], T]) -> T | None:
    """Run one after-run step; whatever it raises becomes one warning line."""
    try:
        return step()
    except JobError as exc:
        logger.warning("{}: {}", failure, exc)
    except Exception as exc:  # noqa: BLE001 - reporting never turns a run's result into a traceback
        logger.warning("{}: {}", failure, describe(exc))
    return None


def _hold_standard_descriptors() -> None:
    """Reopen a closed standard input, output or error (``>&-`` in a cron line) on
    /dev/null: otherwise the next file opened (a partial, the ledger) takes its
    number, and whatever writes to it, a child process or a library, writes into
    that file. Python leaves sys.stdout or sys.stderr None for a closed one."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # the lowest free number: ``fd`` itself
    if sys.stdout is None:
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 - lives as long as the process
    if sys.stderr is None:
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115 - lives as long as the process


def main(argv: list[str] | None = None) -> int:
    _hold_standard_descriptors()
    args = parse_args(argv)
    interrupt.install()
    os.umask(DEFAULT_UMASK)
    setup_bootstrap()
    started = time.monotonic()
    started_at = _now()
    job: Job | None = None
    settings: Settings | None = None
    error: str | None = None
    # Released last: the report, metrics and alerts are state too, and a second
    # run must not start while this one is still writing them.
    with contextlib.ExitStack() as held:
        try:
            if args.command in STATE_COMMANDS:
                return _state_command(args)
            if args.command == "config":
                return _config(args)
            settings = _load(args, load_settings)
            os.umask(settings.umask)
            # A dry run writes nothing: not even LOG_FILE or its directory.
            log_file = None if args.dry_run else settings.log_file
            setup(settings.log_level, settings.log_format, log_file, settings.secrets)
            job = Job(settings, dry_run=args.dry_run, out=sys.stdout)
            if not args.dry_run:
                held.enter_context(_run_lock(settings))
            code = job.run()
        except LockedError as exc:
            # Exit 4 means one thing everywhere (README, alert rules, systemd's
            # SuccessExitStatus, the CronJob's podFailurePolicy, notifications): the
            # other run does the work; this one is not a failure.
            logger.warning("{}; this run exits 4: not a failure", exc)
            code, error = exc.exit_code, str(exc)
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
            log_server_profile(job.summary)
            logger.info(summary_line(job.summary, code, time.monotonic() - started))
            _after_run(settings, job, code, error, started_at)
    return code


def run() -> None:
    code = main()
    if threading.active_count() == 1:
        # The run's state, report and published files are durable by now; tearing
        # the interpreter down (every module, object and thread state freed) took
        # 0.1-0.17 s, a tenth of a catch-up run. With any other thread alive (the
        # SSH transport, a progress display), the normal exit is taken instead.
        # What is left is closed here; a failure to close changes no exit code.
        with contextlib.suppress(Exception):
            logger.remove()  # closes LOG_FILE
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
