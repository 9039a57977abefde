"""Which remote files are due, in what order. Pure: no I/O, no clock, no logging.

Two ideas carry the module:

* An *order key* places every candidate file on one line (by the date in its
  name, its mtime, or its name). LAST_FILE_RECORD is a *watermark* on that
  line: every file at or before it is done.
* The watermark only moves over files that are really complete. A file that
  failed, or is still too young, stops it; files after it that did complete
  are kept out of later plans by the ledger, not by the watermark. So no file
  is ever passed over, and none is fetched twice.
"""

from __future__ import annotations

import bisect
import datetime as dt
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from fnmatch import fnmatchcase

from app.names import invalid_name_reason

OrderKey = tuple[int, str]

# A YYYYMMDD date not embedded in a longer run of digits ("x120250428" is not one).
_DATE = re.compile(r"(?<!\d)(\d{8})(?!\d)")


@dataclass(frozen=True)
class RemoteEntry:
    """One directory entry as listed by the server. Each attribute is the server's claim, None where it sent none."""

    name: str
    size: int | None
    mtime: int | None
    is_regular: bool | None = True


class SkipReason(Enum):
    UNSAFE_NAME = "unsafe file name from the server"
    NOT_REGULAR = "not a regular file"
    NO_DATE = "no YYYYMMDD date in the name"
    NOT_AFTER_RECORD = "at or before the last completed file"
    COMPLETED = "already completed (in the ledger)"
    TOO_YOUNG = "modified less than MIN_FILE_AGE ago"
    HELD_BACK = "held back behind a file still too young"
    LATER_RUN = "left for a later run (SELECT_MODE=next)"
    NOT_NEWEST = "not the newest due file (SELECT_MODE=latest)"


@dataclass(frozen=True)
class Skip:
    name: str
    reason: SkipReason


@dataclass(frozen=True)
class Plan:
    due: tuple[RemoteEntry, ...]
    skipped: tuple[Skip, ...]
    unmatched: int = 0  # entries whose names do not match FILE_PATTERN
    skipped_by_reason: Mapping[SkipReason, int] = field(default_factory=dict)


def date_in_name(name: str) -> int | None:
    """The first valid YYYYMMDD date in ``name`` as an int, or None."""
    for match in _DATE.finditer(name):
        digits = match.group(1)
        try:
            dt.date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
        except ValueError:
            continue
        return int(digits)
    return None


def order_key(name: str, mtime: int | None, order_by: str) -> OrderKey | None:
    """Where a file stands in the processing order; None if it has no place."""
    if order_by == "name-date":
        date = date_in_name(name)
        return None if date is None else (date, name)
    if order_by == "mtime":
        return None if mtime is None else (mtime, name)
    if order_by == "name":
        return (0, name)
    raise ValueError(f"unknown ordering {order_by!r}")


class UnplaceableRecordError(ValueError):
    """LAST_FILE_RECORD names a file the ordering cannot place."""


def record_key(
    record: str | None,
    order_by: str,
    listed_mtimes: Mapping[str, int],
    ledger_mtimes: Mapping[str, int],
) -> OrderKey | None:
    """The watermark's order key. For ``mtime`` the record's mtime comes from the
    listing or, if the file is gone from the server, from the ledger."""
    if record is None:
        return None
    mtime = listed_mtimes.get(record, ledger_mtimes.get(record))
    key = order_key(record, mtime, order_by)
    if key is None:
        if order_by == "name-date":
            raise UnplaceableRecordError(f"{record!r} has no YYYYMMDD date, so ORDER_BY=name-date cannot place it")
        raise UnplaceableRecordError(
            f"{record!r} is neither on the server nor in the ledger, so ORDER_BY=mtime cannot place it"
        )
    return key


@dataclass(frozen=True)
class Criteria:
    pattern: str
    order_by: str
    mode: str
    min_age: int


@dataclass(frozen=True)
class Ordered:
    """A listing placed in processing order: computed once per listing, then
    shared by planning and by every move of the watermark."""

    keyed: tuple[tuple[OrderKey, RemoteEntry], ...]
    skipped: tuple[Skip, ...]
    unmatched: int

    def after(self, key: OrderKey | None) -> int:
        """Index of the first entry ordered after ``key``."""
        if key is None:
            return 0
        return bisect.bisect_right(self.keyed, key, key=lambda pair: pair[0])


def order(entries: Iterable[RemoteEntry], criteria: Criteria) -> Ordered:
    keyed: list[tuple[OrderKey, RemoteEntry]] = []
    skipped: list[Skip] = []
    unmatched = 0
    for entry in entries:
        if not fnmatchcase(entry.name, criteria.pattern):
            unmatched += 1
            continue
        if invalid_name_reason(entry.name) is not None:
            # Never used to build a local path; and out of the order entirely, so
            # that it can never hold the watermark back either.
            skipped.append(Skip(entry.name, SkipReason.UNSAFE_NAME))
            continue
        if not entry.is_regular:
            skipped.append(Skip(entry.name, SkipReason.NOT_REGULAR))
            continue
        key = order_key(entry.name, entry.mtime, criteria.order_by)
        if key is None:
            skipped.append(Skip(entry.name, SkipReason.NO_DATE))
            continue
        keyed.append((key, entry))
    keyed.sort(key=lambda pair: pair[0])
    return Ordered(tuple(keyed), tuple(skipped), unmatched)


def _ordered(entries: Iterable[RemoteEntry] | Ordered, criteria: Criteria) -> Ordered:
    return entries if isinstance(entries, Ordered) else order(entries, criteria)


def make_plan(
    entries: Iterable[RemoteEntry] | Ordered,
    criteria: Criteria,
    last_key: OrderKey | None,
    completed: frozenset[str] | set[str],
    now: float,
) -> Plan:
    """The files to fetch this run, oldest first, and why every other match is skipped."""
    ordered = _ordered(entries, criteria)
    skipped = list(ordered.skipped)
    hold_back = criteria.mode in ("next", "all")
    due: list[RemoteEntry] = []
    held = False
    for key, entry in ordered.keyed:
        if last_key is not None and key <= last_key:
            skipped.append(Skip(entry.name, SkipReason.NOT_AFTER_RECORD))
        elif entry.name in completed:
            skipped.append(Skip(entry.name, SkipReason.COMPLETED))
        elif held:
            skipped.append(Skip(entry.name, SkipReason.HELD_BACK))
        elif now - entry.mtime < criteria.min_age:
            skipped.append(Skip(entry.name, SkipReason.TOO_YOUNG))
            # Taking a later file now would move the watermark past this one.
            held = hold_back
        else:
            due.append(entry)

    if criteria.mode == "next" and len(due) > 1:
        skipped.extend(Skip(e.name, SkipReason.LATER_RUN) for e in due[1:])
        due = due[:1]
    elif criteria.mode == "latest" and len(due) > 1:
        skipped.extend(Skip(e.name, SkipReason.NOT_NEWEST) for e in due[:-1])
        due = due[-1:]

    counts: dict[SkipReason, int] = {}
    for skip in skipped:
        counts[skip.reason] = counts.get(skip.reason, 0) + 1
    return Plan(due=tuple(due), skipped=tuple(skipped), unmatched=ordered.unmatched, skipped_by_reason=counts)


def advance_record(
    entries: Iterable[RemoteEntry] | Ordered,
    criteria: Criteria,
    last_key: OrderKey | None,
    record: str | None,
    completed: frozenset[str] | set[str],
) -> str | None:
    """The new watermark: moved forward over consecutive completed files only.

    In ``latest`` mode older files are skipped by design, so the watermark
    moves to the newest completed file after it instead.
    """
    ordered = _ordered(entries, criteria)
    start = ordered.after(last_key)
    if criteria.mode == "latest":
        for _, entry in reversed(ordered.keyed[start:]):
            if entry.name in completed:
                return entry.name
        return record
    new = record
    for _, entry in ordered.keyed[start:]:
        if entry.name not in completed:
            break
        new = entry.name
    return new
