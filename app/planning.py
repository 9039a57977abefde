"""Planning one attempt: the observations it keeps, the plan it logs, and what it holds back.

Selection (app/selection.py) decides; this module does the I/O around it: reads
and writes the observation state, takes the clock, and names every file that is
not delivered, in the log, on a dry run's output, and in the run's backlog for
the report, ``status`` and the metrics.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from loguru import logger

from app.claims import conflicts, published_name
from app.config import Settings
from app.errors import ConfigError
from app.names import shown
from app.reporting.report import SKIPS_NAMED, HeldFile
from app.selection import (
    HOLDING,
    Criteria,
    Observation,
    Ordered,
    OrderKey,
    Plan,
    RemoteEntry,
    Skip,
    SkipReason,
    make_plan,
    observe,
)
from app.server.proof import awaited_marker, is_companion, is_ready
from app.storage.state import read_observations, write_observations
from app.timestamps import iso

# Files left for a later run named in the run report, before they are only counted:
# enough to see which files wait, few enough that a 50,000-file catch-up keeps the
# report small.
DUE_NAMED = 100

# Reasons that mean "done", not "skipped": counted in the plan line, never named.
_DONE = frozenset({SkipReason.NOT_AFTER_RECORD, SkipReason.COMPLETED})
# Skips by design of SELECT_MODE, or of MIN_FILE_AGE (a young file, and the files
# held back behind it, are waited for): named at INFO, nothing is wrong. A file that
# waits too long is SftpIpiFilesHeldBack's business, from the run report.
_BY_DESIGN = frozenset({SkipReason.LATER_RUN, SkipReason.NOT_NEWEST, SkipReason.TOO_YOUNG, SkipReason.HELD_BACK})


def criteria_of(settings: Settings) -> Criteria:
    return Criteria(
        pattern=settings.file_pattern,
        order_by=settings.order_by,
        mode=settings.select_mode,
        min_age=settings.min_file_age,
        date_pattern=re.compile(settings.date_pattern) if settings.date_pattern else None,
        late_files=settings.late_files,
        companion=functools.partial(is_companion, settings=settings),
    )


def observations_path(settings: Settings) -> Path:
    return settings.observations_path


@dataclass(frozen=True)
class Backlog:
    """The files the run did not deliver although they are (or would be) due."""

    held_back: tuple[HeldFile, ...] = ()
    late: tuple[HeldFile, ...] = ()
    # Due and matched, but left for a later run by SELECT_MODE=next: how many, and the
    # first DUE_NAMED of them in delivery order. Not SELECT_MODE=latest's passed-over
    # files: those are never due again once the newest is delivered.
    due_remaining: int = 0
    due_names: tuple[str, ...] = ()


@dataclass
class Planner:
    """One per run: plans each attempt and keeps what the run must report."""

    settings: Settings
    dry_run: bool = False
    out: TextIO | None = None
    criteria: Criteria = field(init=False)
    backlog: Backlog = field(default_factory=Backlog)
    _skew_logged: bool = False
    # (name, reason) already named in this run: a retried attempt plans again, and
    # says again only what changed.
    _named: set[tuple[str, SkipReason]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.criteria = criteria_of(self.settings)

    def plan(
        self,
        entries: list[RemoteEntry],
        ordered: Ordered,
        record: str | None,
        last_key: OrderKey | None,
        completed: frozenset[str],
        failed: dict[str, str],
        publishers: Mapping[str, tuple[str, ...]] | None = None,
    ) -> Plan:
        """This attempt's plan, with the observations brought up to date and everything
        not delivered named; files that failed for good earlier in the run are left out.

        A due file whose published name is taken (``publishers``: the ledger's, see
        app/claims.py) fails for good here: it is added to ``failed`` and never fetched."""
        now = time.time()
        previous = self._read_observations()
        observations = observe(previous, ordered, last_key, completed, now)
        if not self.dry_run and observations != previous:
            write_observations(observations_path(self.settings), observations)
        plan = make_plan(ordered, self.criteria, last_key, completed, now, observations, self._ready(entries))
        self._refuse_taken_names(plan, publishers or {}, failed)
        if failed:
            due = tuple(e for e in plan.due if e.name not in failed)
            plan = Plan(due, plan.skipped, plan.unmatched, plan.skipped_by_reason)
        self.backlog = backlog_of(plan, observations)
        self._log_skew(entries, now)
        self._log(plan, observations, entries, record)
        if self.dry_run and self.out is not None:
            _print(plan, record, self.settings.file_pattern, self.out)
        return plan

    def _refuse_taken_names(
        self, plan: Plan, publishers: Mapping[str, tuple[str, ...]], failed: dict[str, str]
    ) -> None:
        # Before the failed files are left out: one that failed earlier in the run still
        # holds its published name against a later one.
        publish_as = functools.partial(published_name, settings=self.settings)
        for name, why in conflicts(plan.due, publishers, publish_as).items():
            if name not in failed:
                failed[name] = why
                logger.bind(file=shown(name)).error("{}: {}", shown(name), why)

    def _ready(self, entries: list[RemoteEntry]) -> Callable[[str], bool] | None:
        """Whether a file's READY_MARKER is listed; None when no marker is asked for."""
        if self.settings.ready_marker is None:
            return None
        listed = frozenset(e.name for e in entries)
        return functools.partial(is_ready, listing_names=listed, settings=self.settings)

    def _marker_detail(self, skip: Skip, entries: list[RemoteEntry]) -> str:
        """For a file waiting for its ready marker: which name it waits for."""
        if skip.reason is not SkipReason.NO_MARKER:
            return ""
        awaited = awaited_marker(skip.name, frozenset(e.name for e in entries), self.settings)
        return f": {shown(awaited)} is not listed" if awaited else ""

    def _read_observations(self) -> dict[str, Observation] | None:
        path = observations_path(self.settings)
        try:
            return read_observations(path)
        except ConfigError as exc:
            # Rebuildable: what it loses is how long files have been waiting and
            # which were late; everything listed now becomes the new baseline.
            logger.warning("{}; starting it afresh", exc)
            return None

    def _log_skew(self, entries: list[RemoteEntry], now: float) -> None:
        ahead = [e.mtime - now for e in entries if e.mtime is not None and e.mtime > now]
        if ahead and not self._skew_logged:
            self._skew_logged = True
            logger.warning(
                "{} file(s) have a modification time ahead of our clock, the furthest by {:.0f} s;"
                " their age is judged by how long they are seen unchanged",
                len(ahead),
                max(ahead),
            )

    def _log(
        self, plan: Plan, observations: Mapping[str, Observation], entries: list[RemoteEntry], record: str | None
    ) -> None:
        # Each run repeats these, so a directory full of odd names must not flood
        # the log: the first few of each reason are named, the rest counted.
        named: dict[SkipReason, int] = {}
        for skip in plan.skipped:
            if skip.reason in _DONE or (skip.name, skip.reason) in self._named:
                continue
            self._named.add((skip.name, skip.reason))
            named[skip.reason] = named.get(skip.reason, 0) + 1
            if named[skip.reason] > SKIPS_NAMED:
                continue
            log = logger.bind(file=shown(skip.name))
            since = _since(observations.get(skip.name))
            if skip.reason in _BY_DESIGN:
                log.info("{}: skipped, {}", shown(skip.name), skip.reason.value)
            else:
                detail = self._marker_detail(skip, entries)
                log.warning(
                    "{}: skipped, {}{}{}",
                    shown(skip.name),
                    skip.reason.value,
                    detail,
                    f" (seen since {since})" if since else "",
                )
        for reason, count in named.items():
            if count > SKIPS_NAMED:
                logger.warning("{} more file(s) skipped: {}", count - SKIPS_NAMED, reason.value)
        for entry in plan.due:
            observation = observations.get(entry.name)
            if observation is not None and observation.late:
                logger.bind(file=entry.name).warning("{}: arrived late; fetching it (LATE_FILES=fetch)", entry.name)
        # Reasons by their short names: each full reason was named with its files above.
        reasons = ", ".join(f"{reason.name.lower()}: {count}" for reason, count in plan.skipped_by_reason.items())
        logger.bind(due=[e.name for e in plan.due]).info(
            "plan: {} due ({}); last completed: {}; {} listed, {} skipped{}, {} not matching {}",
            len(plan.due),
            ", ".join(e.name for e in plan.due) or "nothing",
            record or "none",
            len(entries),
            len(plan.skipped),
            f" ({reasons})" if reasons else "",
            plan.unmatched,
            self.settings.file_pattern,
        )


def _since(observation: Observation | None) -> str | None:
    if observation is None:
        return None
    return iso(dt.datetime.fromtimestamp(observation.first_seen, dt.UTC))


def backlog_of(plan: Plan, observations: Mapping[str, Observation]) -> Backlog:
    held: list[HeldFile] = []
    late: list[HeldFile] = []
    later: list[str] = []
    for skip in plan.skipped:
        if skip.reason is SkipReason.LATER_RUN:
            later.append(skip.name)
            continue
        since = _since(observations.get(skip.name))
        if skip.reason in HOLDING:
            held.append(HeldFile(skip.name, skip.reason.value, since))
        elif skip.reason is SkipReason.LATE:
            late.append(HeldFile(skip.name, skip.reason.value, since))
    return Backlog(tuple(held), tuple(late), len(later), tuple(later[:DUE_NAMED]))


def _print(plan: Plan, record: str | None, pattern: str, out: TextIO) -> None:
    print(f"last completed file: {record or 'none'}", file=out)
    if plan.due:
        for entry in plan.due:
            size = "size unknown" if entry.size is None else f"{entry.size} bytes"
            print(f"would download: {entry.name} ({size})", file=out)
    else:
        print("nothing due", file=out)
    for skip in plan.skipped:
        if skip.reason not in _DONE:
            print(f"skip: {shown(skip.name)}: {skip.reason.value}", file=out)
    for reason in _DONE:
        count = plan.skipped_by_reason.get(reason, 0)
        if count:
            print(f"skip: {count} file(s) {reason.value}", file=out)
    if plan.unmatched:
        print(f"ignored: {plan.unmatched} entries not matching FILE_PATTERN={pattern}", file=out)
