"""``python -m app status``: what the local state says, without connecting anywhere."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from app.config import StateSettings
from app.names import invalid_name_reason
from app.reporting.report import SKIPS_NAMED, read_report
from app.server import profile
from app.storage.partial import Paths, partial_name, read_partial_meta
from app.storage.state import RefetchNote, SkipNote, read_ledger, read_record, run_in_progress


@dataclass(frozen=True)
class Partial:
    name: str
    bytes: int
    size: int | None

    @property
    def percent(self) -> float | None:
        return None if not self.size else round(100.0 * self.bytes / self.size, 1)


@dataclass(frozen=True)
class Status:
    last_completed_file: str | None
    last_completed_at: str | None
    last_verified_by: str | None  # how the last completed file was proven (None: before source proof)
    last_file_record: str | None
    last_run: dict[str, Any] | None
    partials: list[Partial]
    refetch_pending: list[RefetchNote]
    run_in_progress: int | None = None  # the PID holding the run lock (0: not written yet); None: no run
    skipped: list[SkipNote] = field(default_factory=list)  # passed by ``sftp-ipi skip``, never delivered

    @property
    def held_back(self) -> list[dict[str, Any]]:
        """Files the last run did not deliver, with the reason and since when."""
        return list((self.last_run or {}).get("held_back") or [])

    @property
    def late(self) -> list[dict[str, Any]]:
        return list((self.last_run or {}).get("late") or [])

    @property
    def due_remaining(self) -> int:
        """Files the last run left for a later run (SELECT_MODE=next)."""
        value = (self.last_run or {}).get("due_remaining")
        return value if isinstance(value, int) else 0

    @property
    def due_names(self) -> list[str]:
        return list((self.last_run or {}).get("due_names") or [])

    @property
    def stuck(self) -> list[dict[str, Any]]:
        """Files the last run found stuck (failed the same way STUCK_AFTER_RUNS runs in a row)."""
        return list((self.last_run or {}).get("stuck") or [])

    @property
    def healthy(self) -> bool:
        return bool(self.last_run and self.last_run.get("ok"))

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["partials"] = [{**asdict(p), "percent": p.percent} for p in self.partials]
        data["healthy"] = self.healthy
        data["held_back"] = self.held_back
        data["late"] = self.late
        data["due_remaining"] = self.due_remaining
        data["due_names"] = self.due_names
        data["stuck"] = self.stuck
        return data


def _partials(local_dir: Path) -> list[Partial]:
    found: list[Partial] = []
    try:
        parts = sorted(local_dir.glob(f"*{Paths.PART_SUFFIX}"))
    except OSError:
        return found
    for part in parts:
        name = part.name.removesuffix(Paths.PART_SUFFIX)
        if invalid_name_reason(name) is not None:
            continue
        paths = Paths.for_name(local_dir, name)
        meta = read_partial_meta(paths)
        try:
            have = paths.part.lstat().st_size
        except OSError:
            continue
        found.append(Partial(name=partial_name(paths), bytes=have, size=meta[0] if meta else None))
    return found


def gather(settings: StateSettings) -> Status:
    ledger = read_ledger(settings.ledger_path)
    last = ledger.entries[-1] if ledger.entries else None
    return Status(
        last_completed_file=last.name if last else None,
        last_completed_at=last.completed_at if last else None,
        last_verified_by=last.verified_by if last else None,
        last_file_record=read_record(settings.last_file_record),
        last_run=read_report(settings.report_path),
        partials=_partials(settings.local_dir),
        refetch_pending=list(ledger.refetch_pending),
        run_in_progress=run_in_progress(settings.lock_path),
        skipped=list(ledger.skips),
    )


def render(status: Status) -> str:
    lines = []
    if status.run_in_progress is not None:
        lines.append(f"run in progress: PID {status.run_in_progress or 'unknown'}")
    if status.last_completed_file:
        proven = f", verified by {status.last_verified_by}" if status.last_verified_by else ""
        lines.append(f"last completed file: {status.last_completed_file} at {status.last_completed_at}{proven}")
    else:
        lines.append("last completed file: none yet")
    lines.append(f"LAST_FILE_RECORD: {status.last_file_record or 'none'}")
    run = status.last_run
    if run is None:
        lines.append("last run: none recorded")
    else:
        line = f"last run: exit {run.get('exit_code')} ({run.get('outcome')}), finished {run.get('finished_at')}"
        if run.get("error"):
            line += f": {run['error']}"
        lines.append(line)
        lines.append(f"last success: {run.get('last_success_at') or 'never'}")
        ssh = run.get("ssh")
        if ssh:
            lines.append("last SSH session: " + ", ".join(f"{k} {v}" for k, v in ssh.items()))
        if status.due_remaining:
            # A success with files still waiting on the server is not "all caught up".
            first = ", ".join(status.due_names[:SKIPS_NAMED])
            more = ", ..." if status.due_remaining > min(len(status.due_names), SKIPS_NAMED) else ""
            lines.append(f"{status.due_remaining} more due (left for later runs: {first}{more})")
        server = run.get("server_profile")
        if server:
            lines.append("server profile: " + profile.render(server))
    for label, files in (("held back", status.held_back), ("late", status.late)):
        for held in files[:SKIPS_NAMED]:
            lines.append(f"{label}: {held['name']!r}: {held['reason']} (since {held.get('since') or 'unknown'})")
        if len(files) > SKIPS_NAMED:
            lines.append(f"{label}: {len(files) - SKIPS_NAMED} more (status --json lists them all)")
    for part in status.partials:
        of = f" of {part.size} bytes ({part.percent}%)" if part.size else " bytes"
        lines.append(f"in progress: {part.name}: {part.bytes}{of}")
    for note in status.refetch_pending:
        lines.append(f"due again: {note.name} (refetch asked {note.requested_at} by {note.requested_by})")
    for stuck in status.stuck:
        lines.append(
            f"stuck: {stuck.get('name')!r}: failed the same way on {stuck.get('runs')} runs in a row"
            f" (since {stuck.get('since')}): {stuck.get('error')}; to pass it: {stuck.get('command')}"
        )
    for skip in status.skipped:
        lines.append(f"skipped: {skip.name!r}: {skip.reason} (by {skip.by} at {skip.at}; never delivered)")
    return "\n".join(lines)
