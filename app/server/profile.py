"""What the job learned about the server in a run, for the run report, the log and ``status``.

A pure record filled from a Connection's attributes at the end of each session (the
last one stands for the run), and its rendering; nothing here talks to the server.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.server.remote import Connection

POSIX_RENAME = "posix-rename@openssh.com"
POSIX = "posix-rename (overwrites)"
PLAIN = "plain rename (no overwrite)"


@dataclass(frozen=True)
class ServerProfile:
    read_limit: int | None  # the server's announced largest read (limits@openssh.com); None: not announced
    reads_in_flight: int  # READs kept in flight: PIPELINE_DEPTH, or lower where the server failed under it
    handles_allowed: str  # "one at a time" once the server refused a second open file, else "several"
    digests_offered: bool | None  # check-file answered (True), refused (False), not asked (None)
    exec_available: bool | None  # REMOTE_HASH_COMMAND ran (True), was refused (False), not tried (None)
    rename_semantics: str  # "posix-rename (overwrites)" or "plain rename (no overwrite)"
    removes_after_read: bool  # the server removes a file once it is read (read-once)
    learned: list[str] = field(default_factory=list)  # what lowered the reads in flight, in order
    rename_refusals: dict[str, str] = field(default_factory=dict)  # archive target -> the server's words

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def of(conn: Connection) -> ServerProfile:
    """The profile of ``conn``'s server as far as this session (and the run) learned it."""
    return ServerProfile(
        read_limit=conn.read_limit.get(),
        reads_in_flight=conn.reads.limit,
        handles_allowed="one at a time" if conn.one_open_file else "several",
        digests_offered=conn.digests_offered,
        exec_available=conn.exec_available,
        rename_semantics=POSIX if POSIX_RENAME in conn.extensions else PLAIN,
        removes_after_read=conn.removes_after_read,
        learned=list(conn.reads.lessons),
        rename_refusals=dict(conn.rename_refusals),
    )


def _known(value: bool | None, yes: str, no: str) -> str:
    return "not tried" if value is None else yes if value else no


def render(profile: dict[str, Any]) -> str:
    """One line, from a profile as the run report holds it (older reports may lack fields)."""
    limit = profile.get("read_limit")
    parts = [
        f"read limit {limit} bytes" if limit else "read limit not announced",
        f"{profile.get('reads_in_flight')} reads in flight",
        f"open files: {profile.get('handles_allowed')}",
        "digests " + _known(profile.get("digests_offered"), "offered", "not offered"),
        "exec " + _known(profile.get("exec_available"), "available", "refused"),
        f"rename: {profile.get('rename_semantics')}",
    ]
    if profile.get("removes_after_read"):
        parts.append("removes files after reading")
    line = "; ".join(parts)
    learned = profile.get("learned") or []
    if learned:
        line += " (learned: " + "; ".join(str(x) for x in learned) + ")"
    return line
