"""Which remote files are due, in what order. Pure: no I/O, no clock, no logging.

Two ideas carry the module:

* An *order key* places every candidate file on one line (by the date in its
  name, its mtime, or its name). LAST_FILE_RECORD is a *watermark* on that
  line: every file at or before it is done.
* The watermark only moves over files that are really complete. A file that
  failed, or is still too young, stops it; files after it that did complete
  are kept out of later plans by the ledger, not by the watermark. So no file
  is ever passed over, and none is fetched twice.
* Server metadata is a claim. A missing attribute never defaults to a value
  that decides the outcome: an unknown type is tried as a regular file, and a
  missing (or future) mtime is judged by what the job itself observed
  (``Observation``), by its own clock.
"""

from __future__ import annotations

import bisect
import datetime as dt
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from fnmatch import fnmatchcase

from app.names import invalid_name_reason

OrderKey = tuple[int, str]

# A YYYYMMDD date not embedded in a longer run of digits ("x120250428" is not one).
_DATE = re.compile(r"(?<!\d)(\d{8})(?!\d)")
# Eight digits outside these years are some other number (an ID, a counter), not
# a date: "IPI_12340115_20250102.dat" is dated 2025, not 1234.
FIRST_YEAR, LAST_YEAR = 1970, 2199


@dataclass(frozen=True, slots=True)
class RemoteEntry:
    """One directory entry as listed by the server. Each attribute is the server's claim, None where it sent none."""

    name: str
    size: int | None
    mtime: int | None
    is_regular: bool | None = True


class SkipReason(Enum):
    UNSAFE_NAME = "unsafe file name from the server"
    NOT_REGULAR = "not a regular file"
    NO_DATE = "no YYYYMMDD date in the name"  # plausible: years 1970-2199
    AMBIGUOUS_DATE = "several different dates in the name (set DATE_PATTERN to choose one)"
    NO_MTIME = "no modification time from the server, so ORDER_BY=mtime cannot place it"
    NOT_AFTER_RECORD = "at or before the last completed file"
    COMPLETED = "already completed (in the ledger)"
    LATE = "arrived after the last completed file had passed its place (LATE_FILES=warn)"
    TOO_YOUNG = "not yet unchanged for MIN_FILE_AGE"
    NO_MARKER = "waiting for its ready marker (READY_MARKER)"
    HELD_BACK = "held back behind a file still too young or waiting for its ready marker"
    LATER_RUN = "left for a later run (SELECT_MODE=next)"
    NOT_NEWEST = "not the newest due file (SELECT_MODE=latest)"


# Why a file that would otherwise be delivered is not: each of these is reported
# (log, run report, status, metrics) until it clears. Not NOT_REGULAR: the server
# says that entry is a directory or a link, so it is not a file to deliver.
HOLDING = frozenset(
    {
        SkipReason.UNSAFE_NAME,
        SkipReason.NO_DATE,
        SkipReason.AMBIGUOUS_DATE,
        SkipReason.NO_MTIME,
        SkipReason.TOO_YOUNG,
        SkipReason.NO_MARKER,
        SkipReason.HELD_BACK,
    }
)


@dataclass(frozen=True, slots=True)
class Observation:
    """What the job itself saw of a listed name, timed by its own clock."""

    first_seen: float  # when the name was first listed
    stable_since: float  # since when its listed size and mtime have not changed
    size: int | None
    mtime: int | None
    late: bool = False  # first listed when the watermark had already passed its place


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


def _plausible_date(digits: str) -> int | None:
    if len(digits) != 8 or not digits.isascii() or not digits.isdigit():
        return None
    year = int(digits[:4])
    if not FIRST_YEAR <= year <= LAST_YEAR:
        return None
    try:
        dt.date(year, int(digits[4:6]), int(digits[6:]))
    except ValueError:
        return None
    return int(digits)


def dates_in_name(name: str, pattern: re.Pattern[str] | None = None) -> set[int]:
    """Every plausible YYYYMMDD date in ``name``; with ``pattern``, only the one its
    ``date`` group captures (DATE_PATTERN)."""
    if pattern is not None:
        match = pattern.search(name)
        date = None if match is None or match.group("date") is None else _plausible_date(match.group("date"))
        return set() if date is None else {date}
    found = (_plausible_date(m.group(1)) for m in _DATE.finditer(name))
    return {d for d in found if d is not None}


def date_in_name(name: str, pattern: re.Pattern[str] | None = None) -> int | None:
    """The date of ``name``, or None if it has no plausible date or several different ones."""
    dates = dates_in_name(name, pattern)
    return dates.pop() if len(dates) == 1 else None


def order_key(
    name: str, mtime: int | None, order_by: str, date_pattern: re.Pattern[str] | None = None
) -> OrderKey | None:
    """Where a file stands in the processing order; None if it has no place."""
    if order_by == "name-date":
        date = date_in_name(name, date_pattern)
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
    listed_mtimes: Mapping[str, int | None],
    ledger_mtimes: Mapping[str, int],
    date_pattern: re.Pattern[str] | None = None,
) -> OrderKey | None:
    """The watermark's order key. For ``mtime`` the record's mtime is the one it had
    when it was fetched (the ledger's): touching the file on the server later must
    not move the watermark over the files in between. The listing places only a
    record the ledger does not know (one completed by the original script)."""
    if record is None:
        return None
    mtime = ledger_mtimes[record] if record in ledger_mtimes else listed_mtimes.get(record)
    key = order_key(record, mtime, order_by, date_pattern)
    if key is None:
        if order_by == "name-date":
            raise UnplaceableRecordError(
                f"{record!r} has no single plausible YYYYMMDD date, so ORDER_BY=name-date cannot place it"
                " (DATE_PATTERN chooses among several)"
            )
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
    date_pattern: re.Pattern[str] | None = None
    late_files: str = "warn"
    # Checksum files and ready markers: never data, never "not matching FILE_PATTERN".
    companion: Callable[[str], bool] = lambda name: False


@dataclass(frozen=True)
class Ordered:
    """A listing placed in processing order: computed once per listing, then
    shared by planning and by every move of the watermark."""

    keyed: tuple[tuple[OrderKey, RemoteEntry], ...]
    skipped: tuple[Skip, ...]
    unmatched: int
    unplaced: tuple[RemoteEntry, ...] = ()  # the matching entries behind ``skipped``

    def after(self, key: OrderKey | None) -> int:
        """Index of the first entry ordered after ``key``."""
        if key is None:
            return 0
        return bisect.bisect_right(self.keyed, key, key=lambda pair: pair[0])


def _unplaceable(entry: RemoteEntry, criteria: Criteria) -> SkipReason:
    if criteria.order_by == "mtime":
        return SkipReason.NO_MTIME
    if len(dates_in_name(entry.name, criteria.date_pattern)) > 1:
        return SkipReason.AMBIGUOUS_DATE
    return SkipReason.NO_DATE


def order(
    entries: Iterable[RemoteEntry], criteria: Criteria, ledger_mtimes: Mapping[str, int] | None = None
) -> Ordered:
    """Place the matching entries. Under ``mtime`` a completed file keeps the place
    its ledger mtime gives it, whatever the server says of it now."""
    fetched_mtimes = ledger_mtimes or {}
    keyed: list[tuple[OrderKey, RemoteEntry]] = []
    skipped: list[Skip] = []
    unplaced: list[RemoteEntry] = []
    unmatched = 0
    for entry in entries:
        if criteria.companion(entry.name):
            continue
        if not fnmatchcase(entry.name, criteria.pattern):
            unmatched += 1
            continue
        if invalid_name_reason(entry.name) is not None:
            # Never used to build a local path; and out of the order entirely, so
            # that it can never hold the watermark back either.
            reason = SkipReason.UNSAFE_NAME
        elif entry.is_regular is False:
            # Only a server that says so makes an entry "not a file": without a
            # type attribute the download itself finds out.
            reason = SkipReason.NOT_REGULAR
        else:
            mtime = fetched_mtimes.get(entry.name, entry.mtime)
            key = order_key(entry.name, mtime, criteria.order_by, criteria.date_pattern)
            if key is not None:
                keyed.append((key, entry))
                continue
            reason = _unplaceable(entry, criteria)
        skipped.append(Skip(entry.name, reason))
        unplaced.append(entry)
    keyed.sort(key=lambda pair: pair[0])
    return Ordered(tuple(keyed), tuple(skipped), unmatched, tuple(unplaced))


def _ordered(entries: Iterable[RemoteEntry] | Ordered, criteria: Criteria) -> Ordered:
    return entries if isinstance(entries, Ordered) else order(entries, criteria)


def observe(
    previous: Mapping[str, Observation] | None,
    ordered: Ordered,
    last_key: OrderKey | None,
    completed: frozenset[str] | set[str],
    now: float,
) -> dict[str, Observation]:
    """The observations after this listing: one per matching name still listed and not completed.

    ``previous`` is None when there were none (the first run of this version, or
    a lost state file): then every name listed is the baseline, never "late".
    """
    seen = previous or {}
    placed = {entry.name: key for key, entry in ordered.keyed}
    result: dict[str, Observation] = {}
    for entry in (*(e for _, e in ordered.keyed), *ordered.unplaced):
        if entry.name in completed:
            continue
        before = seen.get(entry.name)
        if before is None:
            key = placed.get(entry.name)
            passed = key is not None and last_key is not None and key <= last_key
            result[entry.name] = Observation(now, now, entry.size, entry.mtime, late=previous is not None and passed)
        elif (before.size, before.mtime) != (entry.size, entry.mtime) or before.stable_since > now:
            # Changed, or timed by a clock that has since gone back: watch it afresh.
            first = min(before.first_seen, now)
            result[entry.name] = Observation(first, now, entry.size, entry.mtime, before.late)
        else:
            result[entry.name] = before
    return result


def _age(entry: RemoteEntry, observation: Observation | None, now: float) -> float:
    """How long ``entry`` has been unchanged. The server's mtime is believed only when
    it is not ahead of our clock; otherwise (or without one) only our own observation
    counts, and a name not observed before has just appeared."""
    if entry.mtime is not None and entry.mtime <= now:
        return now - entry.mtime
    return 0.0 if observation is None else now - observation.stable_since


def make_plan(
    entries: Iterable[RemoteEntry] | Ordered,
    criteria: Criteria,
    last_key: OrderKey | None,
    completed: frozenset[str] | set[str],
    now: float,
    observations: Mapping[str, Observation] | None = None,
    ready: Callable[[str], bool] | None = None,
) -> Plan:
    """The files to fetch this run, oldest first, and why every other match is skipped.

    ``ready`` says whether a file's ready marker is listed (READY_MARKER); a file
    waiting for it holds back later files in ``next``/``all`` mode, like a young one.
    """
    ordered = _ordered(entries, criteria)
    seen = observations or {}
    # A name the job holds for done (delivered, or passed by ``sftp-ipi skip``) is
    # not held back for want of a place in the order: nothing about it is waiting.
    skipped = [Skip(s.name, SkipReason.COMPLETED) if s.name in completed else s for s in ordered.skipped]
    hold_back = criteria.mode in ("next", "all")
    due: list[RemoteEntry] = []
    held = False
    for key, entry in ordered.keyed:
        passed = last_key is not None and key <= last_key
        observation = seen.get(entry.name)
        if passed:
            late = observation is not None and observation.late and entry.name not in completed
            if not late or criteria.late_files == "ignore":
                skipped.append(Skip(entry.name, SkipReason.NOT_AFTER_RECORD))
                continue
            if criteria.late_files == "warn":
                skipped.append(Skip(entry.name, SkipReason.LATE))
                continue
            # LATE_FILES=fetch: a candidate like any other, except that it sits
            # behind the watermark already, so it holds nothing back.
        if entry.name in completed:
            skipped.append(Skip(entry.name, SkipReason.COMPLETED))
        elif held:
            skipped.append(Skip(entry.name, SkipReason.HELD_BACK))
        elif _age(entry, observation, now) < criteria.min_age:
            skipped.append(Skip(entry.name, SkipReason.TOO_YOUNG))
            # Taking a later file now would move the watermark past this one.
            held = hold_back and not passed
        elif ready is not None and not ready(entry.name):
            skipped.append(Skip(entry.name, SkipReason.NO_MARKER))
            held = hold_back and not passed
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
