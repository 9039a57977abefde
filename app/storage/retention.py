"""LOCAL_RETENTION: LOCAL_DIR copies of files that are published and recorded are
deleted right away or after some days, so LOCAL_DIR does not grow forever.

Only a name that the (fsynced) ledger records and that SERVER_DIR holds as a
regular file is ever touched; partials, temp files and downloads not yet
recorded are never candidates, as they are not in the ledger under their name.
"""

from __future__ import annotations

import datetime as dt
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from loguru import logger

from app.storage.fsutil import storage_error
from app.storage.state import LedgerEntry, as_published, read_ledger


def expired(entries: Iterable[LedgerEntry], days: int, now: dt.datetime) -> list[str]:
    """Recorded names whose latest completion is at least ``days`` old. Pure; an
    unreadable completion time keeps the file (never delete on doubt)."""
    latest: dict[str, dt.datetime | None] = {}
    for entry in entries:
        try:
            when: dt.datetime | None = dt.datetime.fromisoformat(entry.completed_at)
        except (TypeError, ValueError):
            when = None
        if when is not None and when.tzinfo is None:
            when = None
        previous = latest.get(entry.name, dt.datetime.min.replace(tzinfo=dt.UTC))
        latest[entry.name] = None if when is None or previous is None else max(previous, when)
    cutoff = now - dt.timedelta(days=days)
    return sorted(name for name, when in latest.items() if when is not None and when <= cutoff)


def _regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise storage_error("inspect", path, exc) from None


def apply_retention(
    ledger_path: Path, local_dir: Path, server_dir: Path, days: int | None, now: dt.datetime
) -> list[Path]:
    """Delete the LOCAL_DIR copies LOCAL_RETENTION lets go; returns what was deleted.
    Call only after the run's ledger commit, holding the run lock."""
    if days is None:
        return []
    deleted: list[Path] = []
    entries = read_ledger(ledger_path).entries
    published = {entry.name: as_published(entry).name for entry in entries}
    for name in expired(entries, days, now):
        # A decrypted delivery: SERVER_DIR holds the plaintext; LOCAL_DIR both copies.
        if not _regular(server_dir / published[name]):
            continue
        for local in dict.fromkeys((local_dir / name, local_dir / published[name])):
            if not _regular(local):
                continue
            try:
                os.unlink(local)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise storage_error("delete (LOCAL_RETENTION)", local, exc) from None
            deleted.append(local)
    if deleted:
        logger.bind(files=[p.name for p in deleted]).info(
            "LOCAL_RETENTION: deleted {} published file(s) from LOCAL_DIR", len(deleted)
        )
    return deleted
