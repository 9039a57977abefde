"""Failure streaks: how many runs in a row each file failed the same way. Pure: no I/O.

A remote file the server cannot serve (permissions, a server-side error) fails every
run, and under SELECT_MODE=next nothing after it is ever delivered. Once it has failed
the same way on STUCK_AFTER_RUNS runs in a row, it is *stuck*: the log, the run report
and the metrics name it, with the ``sftp-ipi skip`` command that passes it.

The streaks travel in the run report, from one run to the next, like
``due_stalled_runs``: a lost report starts them again, which costs only a few runs'
delay before a stuck file is named.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Quoted text and numbers in a failure message vary from run to run for the same
# failure (byte offsets, sizes, a request's id); what is left is its class.
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_NUMBER = re.compile(r"\d+")
# The longest failure message kept for the report and the suggested command.
MESSAGE_MAX = 200


@dataclass(frozen=True)
class Streak:
    """A file that failed on ``runs`` runs in a row, each time with a reason of ``reason_class``."""

    name: str
    reason_class: str
    runs: int
    since: str  # when the first run of the streak finished (ISO 8601 UTC)
    last_error: str  # the latest failure's message, as the log has it

    def to_json(self) -> dict[str, Any]:
        return {
            "reason_class": self.reason_class,
            "runs": self.runs,
            "since": self.since,
            "last_error": self.last_error,
        }


def reason_class(name: str, message: str) -> str:
    """What a failure of ``name`` is, without what varies between two runs of the same failure."""
    text = message.replace(repr(name), "NAME").replace(name, "NAME")
    text = _QUOTED.sub("'…'", text)
    return _NUMBER.sub("N", text).strip()


def next_streaks(
    previous: Mapping[str, Streak], failed: Mapping[str, str], planned: bool, finished_at: str
) -> dict[str, Streak]:
    """The streaks after a run that failed the files ``failed`` (name -> message).

    A file failed again the same way extends its streak; failed another way, it starts
    a new one. A run that never got as far as a plan (the server unreachable, a login
    refused) tried no file, so it neither extends nor ends a streak; a run that did
    plan ends the streak of every file it did not fail (delivered, skipped, or gone).
    """
    result: dict[str, Streak] = {} if planned else dict(previous)
    for name, message in failed.items():
        kind = reason_class(name, message)
        before = previous.get(name)
        error = message[:MESSAGE_MAX]
        if before is not None and before.reason_class == kind:
            result[name] = Streak(name, kind, before.runs + 1, before.since, error)
        else:
            result[name] = Streak(name, kind, 1, finished_at, error)
    return result


def stuck(streaks: Mapping[str, Streak], after_runs: int) -> list[Streak]:
    """The files stuck after ``after_runs`` runs (0: never), by name."""
    if after_runs <= 0:
        return []
    return sorted((s for s in streaks.values() if s.runs >= after_runs), key=lambda s: s.name)


def skip_command(streak: Streak) -> str:
    """The command that passes a stuck file, ready to paste into a shell."""
    reason = f"failed {streak.runs} runs in a row since {streak.since}: {streak.last_error}"
    return f"sftp-ipi skip {shlex.quote(streak.name)} --reason {shlex.quote(reason)}"


def streaks_from_json(value: object) -> dict[str, Streak]:
    """The streaks a previous run report carried; whatever is malformed in it is dropped
    (the report is rebuilt by every run, and a lost streak only starts again)."""
    if not isinstance(value, dict):
        return {}
    found: dict[str, Streak] = {}
    for name, item in value.items():
        if not (isinstance(name, str) and name and isinstance(item, dict)):
            continue
        kind, runs, since, error = (item.get(k) for k in ("reason_class", "runs", "since", "last_error"))
        if (
            isinstance(kind, str)
            and isinstance(runs, int)
            and not isinstance(runs, bool)
            and runs > 0
            and isinstance(since, str)
            and isinstance(error, str)
        ):
            found[name] = Streak(name, kind, runs, since, error)
    return found
