"""``sftp-ipi skip NAME... --reason TEXT``: pass files that will never be delivered.

A remote file the server cannot serve (its permissions, a server-side error) fails
every run, and under SELECT_MODE=next nothing after it is ever fetched. Skipping it
appends one ledger line per file, ``{"event": "skipped", "name", "reason", "at",
"by", "host", "size", "mtime"}``; the next run takes the file for done (it is never
fetched, and LAST_FILE_RECORD moves over it), while ``status``, the run report and
``audit`` name it as skipped, never as delivered.

Only names the job has seen are accepted: a file in the ledger (a pending refetch),
or in the last listing, which the job keeps in seen_files.json beside
LAST_FILE_RECORD (every listed, matching, undelivered file). Any other name is
refused with exit 2, and then nothing is written: a typo must not pass a file that
will arrive tomorrow.

Like ``refetch``, it holds the run lock while it writes, waiting up to
LOCK_WAIT_SECONDS for a run in progress. The ledger gets all the notes in one
append, so a crash leaves all of them or none (a torn last line is skipped on read).
"""

from __future__ import annotations

import datetime as dt
import getpass
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from loguru import logger

from app.config import StateSettings
from app.errors import EXIT_OK, ConfigError
from app.names import invalid_name_reason
from app.selection import Observation
from app.storage.state import (
    LOCK_WAIT_SECONDS,
    Ledger,
    SkipNote,
    append_ledger,
    read_ledger,
    read_observations,
    run_lock_waiting,
)

# Longer reasons are a pasted log, not a reason; the ledger line stays readable.
REASON_MAX = 1000


@dataclass(frozen=True)
class SkipPlan:
    notes: tuple[SkipNote, ...]  # to append
    already: tuple[SkipNote, ...]  # skipped before, left as they are
    delivered: tuple[str, ...]  # in the ledger as delivered: nothing to skip


# -- pure -------------------------------------------------------------------------------


def plan_skip(
    names: Sequence[str],
    reason: str,
    ledger: Ledger,
    listed: Mapping[str, Observation],
    *,
    at: str,
    by: str,
    host: str,
) -> SkipPlan:
    """What skipping ``names`` appends; a ConfigError naming every name neither the
    ledger nor the last listing knows (then nothing is appended)."""
    why = reason.strip()
    if not why:
        raise ConfigError("skip: --reason must say why the file is skipped (it goes into the ledger); nothing changed")
    if len(why) > REASON_MAX:
        raise ConfigError(f"skip: --reason is longer than {REASON_MAX} characters; nothing changed")
    wanted = list(dict.fromkeys(names))
    unsafe = [f"{name!r} ({problem})" for name in wanted if (problem := invalid_name_reason(name))]
    if unsafe:
        raise ConfigError(f"skip: not a valid file name: {', '.join(unsafe)}; nothing changed")
    skipped = ledger.skipped
    refetching = {note.name for note in ledger.refetch_pending}
    delivered = ledger.names
    unknown = [
        name
        for name in wanted
        if name not in listed and name not in refetching and name not in delivered and name not in skipped
    ]
    if unknown:
        raise ConfigError(
            f"skip: neither in the ledger nor in the last listing: {', '.join(unknown)}; nothing changed"
            " (a name is known once a run has listed it)"
        )
    notes = []
    for name in wanted:
        if name in skipped or name in delivered:
            continue
        seen = listed.get(name)
        size, mtime = (seen.size, seen.mtime) if seen is not None else (None, None)
        notes.append(SkipNote(name=name, reason=why, at=at, by=by, host=host, size=size, mtime=mtime))
    return SkipPlan(
        notes=tuple(notes),
        already=tuple(skipped[name] for name in wanted if name in skipped),
        delivered=tuple(name for name in wanted if name in delivered and name not in skipped),
    )


def operator(environ: Mapping[str, str]) -> str:
    """Who runs the command: SUDO_USER over USER (sudo keeps the person's name in
    SUDO_USER), else the account's name, else its uid (a container without one)."""
    for variable in ("SUDO_USER", "USER"):
        value = environ.get(variable, "").strip()
        if value:
            return value
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return f"uid {os.getuid()}"


# -- I/O --------------------------------------------------------------------------------


def _last_listing(path: Path) -> dict[str, Observation]:
    try:
        return read_observations(path) or {}
    except ConfigError as exc:
        # The next run rebuilds it; until then only the ledger's names are known.
        logger.warning("{}; only the ledger's names are known", exc)
        return {}


def _owned_like(path: Path, existed: bool, like: Path) -> None:
    """A ledger this command created (run as root) goes to the owner of the state
    beside it: the service user's next run must be able to append to it."""
    if existed or os.geteuid() != 0:
        return
    try:
        owner = like.stat()
        os.chown(path, owner.st_uid, owner.st_gid)
    except OSError:
        logger.warning("{}: created as root; give it to the service user (chown)", path)


def skip(settings: StateSettings, names: Sequence[str], reason: str, *, out: TextIO) -> int:
    with run_lock_waiting(settings.lock_path, LOCK_WAIT_SECONDS):
        ledger = read_ledger(settings.ledger_path)
        at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        by = operator(os.environ)
        plan = plan_skip(
            names,
            reason,
            ledger,
            _last_listing(settings.observations_path),
            at=at,
            by=by,
            host=socket.gethostname(),
        )
        for note in plan.already:
            print(f"already skipped: {note.name} ({note.reason}; by {note.by} at {note.at})", file=out)
        for name in plan.delivered:
            print(f"already delivered: {name}; nothing to skip (sftp-ipi refetch makes it due again)", file=out)
        if not plan.notes:
            return EXIT_OK
        existed = settings.ledger_path.exists()
        append_ledger(settings.ledger_path, *plan.notes)
        _owned_like(settings.ledger_path, existed, settings.ledger_path.parent)
        log = logger.bind(_file_only=True, skipped_by=by)
        for note in plan.notes:
            print(f"skipped: {note.name} ({note.reason}): the next run passes it; never delivered", file=out)
            log.info("{} skipped by {}: {}; the next run passes it", note.name, by, note.reason)
    return EXIT_OK
