"""How many READ requests a server copes with in flight, learned over one run.

Some servers fail under pipelined reads: Serv-U never answers READs beyond some
number outstanding (paramiko PR 2058), others answer only the first two of a burst
(paramiko 1788), CrushFTP hangs up (paramiko 151), and AWS Transfer answers
end-of-file early (lftp 606). Each failure lowers the number of reads kept in
flight multiplicatively (halved, down to 1), and the lower number holds for the
rest of the run: a Connection is made anew for each reconnect, so the number is
kept here, one per server, for the life of the process (one run).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from loguru import logger

# What a failure under pipelining looked like, for the log and the report.
STALLED = "stopped answering"
HUNG_UP = "closed the connection"
ENDED_EARLY = "answered end-of-file early"


@dataclass
class ReadsInFlight:
    """The reads in flight allowed for one server: PIPELINE_DEPTH, lowered by what it showed."""

    limit: int
    lessons: list[str] = field(default_factory=list)

    def lower(self, what: str, window: int, unanswered: int) -> int:
        """The server ``what`` (STALLED, HUNG_UP, ENDED_EARLY) with ``window`` reads in
        flight, ``unanswered`` of them not (truly) answered: halve what it coped with,
        and return the new limit. One read at a time has nothing to do with pipelining."""
        if window <= 1:
            return self.limit
        answered = window - unanswered
        # With some of the window answered, that is what the server copes with; with
        # none (a hang-up before any reply), the window itself was too many.
        coped = answered if 0 < answered < window else window
        new = max(1, min(self.limit, coped // 2 if coped > 1 else 1))
        if new >= self.limit and self.limit > 1:
            new = max(1, self.limit // 2)
        if new >= self.limit:
            return self.limit
        if 0 < answered < window:
            lesson = (
                f"server answered at most {answered} reads in flight; pipelining reduced to {new}"
                f" (it {what} with {window} in flight; for the rest of this run)"
            )
        else:
            lesson = (
                f"server {what} with {window} reads in flight; pipelining reduced to {new} (for the rest of this run)"
            )
        self.limit = new
        self.lessons.append(lesson)
        logger.warning(lesson)
        return new


_BY_SERVER: dict[tuple[str, int], ReadsInFlight] = {}


def for_server(server: tuple[str, int], depth: int) -> ReadsInFlight:
    """The run's one ReadsInFlight for ``server`` (SFTP_HOST, SFTP_PORT), starting at ``depth``."""
    found = _BY_SERVER.get(server)
    if found is None:
        found = _BY_SERVER[server] = ReadsInFlight(depth)
    return found


def lessons_learned() -> int:
    """How many times this run lowered the reads in flight, for any server: a retry
    after a lesson is a different attempt, which the retry policy counts as progress."""
    return sum(len(r.lessons) for r in _BY_SERVER.values())
