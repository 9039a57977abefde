"""``sftp-ipi audit``: re-hash what was delivered and compare it with the ledger.

Bit rot, a consumer that edited a published file, or a lost volume each show up
as a file that is *missing*, *changed* (size or SHA-256 differs from the ledger)
or *unknown* (in SERVER_DIR but not in the ledger; hidden names, ``.gitkeep``
say, are not reported); two remote files recorded
under one published name are a *conflict*. SERVER_DIR is checked in
full; LOCAL_DIR only for the delivered files it still keeps (partials and the
job's temp files are never looked at).

The audit changes nothing, but it holds the run lock while it works, waiting up
to LOCK_WAIT_SECONDS for a run in progress to end: without it, a file published
a moment before its ledger line is written would read as unknown, and a
refetched file being replaced as changed. A run that starts during an audit
exits 4 (another run in progress) and the next scheduled run catches up.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from app.config import StateSettings
from app.errors import EXIT_CONFIG, EXIT_OK
from app.hashing import hash_file
from app.progress import Progress
from app.storage.fsutil import is_temp_name, storage_error
from app.storage.state import (
    LOCK_WAIT_SECONDS,
    Ledger,
    LedgerEntry,
    SkipNote,
    as_published,
    read_ledger,
    run_lock_waiting,
)

# The exit code when any file does not match: the job's "did not do its job".
EXIT_MISMATCH = 1


@dataclass(frozen=True)
class Finding:
    problem: str  # missing, changed, unknown or conflict
    where: str  # SERVER_DIR or LOCAL_DIR
    name: str
    detail: str


@dataclass(frozen=True)
class AuditResult:
    ledger: str
    checked_files: int
    checked_bytes: int
    findings: tuple[Finding, ...]
    refetch_pending: tuple[str, ...]
    damaged_ledger_lines: int
    # Files passed by ``sftp-ipi skip``: never delivered, so neither missing nor expected.
    skipped: tuple[SkipNote, ...] = ()

    @property
    def exit_code(self) -> int:
        # A damaged ledger may have lost entries: then no verdict can be trusted.
        if self.damaged_ledger_lines:
            return EXIT_CONFIG
        return EXIT_MISMATCH if self.findings else EXIT_OK

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.exit_code == EXIT_OK
        data["exit_code"] = self.exit_code
        return data


@dataclass(frozen=True)
class _Check:
    """A file whose size matches the ledger, to be hashed."""

    path: Path
    where: str
    entry: LedgerEntry


# -- pure -------------------------------------------------------------------------------


def delivered(ledger: Ledger) -> dict[str, LedgerEntry]:
    """Each delivered file's latest entry: a file fetched again is recorded again, and the last entry wins."""
    return {entry.name: entry for entry in ledger.entries}


def _shared_names(ledger: Ledger) -> Iterator[Finding]:
    """One published name recorded for two remote files: the later delivery replaced the
    earlier one in SERVER_DIR, which the hash checks below, keyed by name, cannot see."""
    for name, holders in ledger.publishers.items():
        if len(holders) > 1:
            names = ", ".join(map(repr, holders))
            detail = f"published for {len(holders)} remote files: {names}; the last replaced the others"
            yield Finding("conflict", "SERVER_DIR", name, detail)


def size_problem(entry: LedgerEntry, mode: int, size: int) -> str | None:
    if not stat.S_ISREG(mode):
        return "not a regular file"
    if size != entry.size:
        return f"size {size}, the ledger says {entry.size}"
    return None


def hash_problem(entry: LedgerEntry, sha256: str) -> str | None:
    if sha256 != entry.sha256:
        return f"sha256 {sha256}, the ledger says {entry.sha256} (delivered {entry.completed_at})"
    return None


# -- I/O --------------------------------------------------------------------------------


def _listing(directory: Path) -> Iterator[tuple[str, os.stat_result]]:
    """Every entry of ``directory`` but the job's temp files, streamed; none if it is gone."""
    try:
        with os.scandir(directory) as entries:
            for item in entries:
                if not is_temp_name(item.name):
                    with contextlib.suppress(FileNotFoundError):  # removed while we looked
                        yield item.name, item.stat(follow_symlinks=False)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise storage_error("list", directory, exc) from None


def _local_copy(path: Path) -> os.stat_result | None:
    try:
        return path.lstat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise storage_error("inspect", path, exc) from None


def audit(settings: StateSettings) -> AuditResult:
    with run_lock_waiting(settings.lock_path, LOCK_WAIT_SECONDS):
        ledger = read_ledger(settings.ledger_path)
        downloaded = delivered(ledger)
        expected = {published.name: published for published in map(as_published, downloaded.values())}
        pending = {note.name for note in ledger.refetch_pending}
        # A copy of a skipped file put in SERVER_DIR by hand is the operator's own, not unknown.
        passed = set(ledger.skipped)
        findings: list[Finding] = list(_shared_names(ledger))
        checks: list[_Check] = []

        seen: dict[str, tuple[int, int]] = {}  # name -> (device, inode)
        for name, st in _listing(settings.server_dir):
            entry = expected.get(name)
            if entry is None:
                # A hidden name the ledger does not hold is a placeholder or a tool's own
                # file (volumes/server/.gitkeep, an editor's swap file), not a stray delivery.
                if name not in pending and name not in passed and not name.startswith("."):
                    findings.append(Finding("unknown", "SERVER_DIR", name, "not in the ledger"))
                continue
            seen[name] = (st.st_dev, st.st_ino)
            problem = size_problem(entry, st.st_mode, st.st_size)
            if problem:
                findings.append(Finding("changed", "SERVER_DIR", name, problem))
            else:
                checks.append(_Check(settings.server_dir / name, "SERVER_DIR", entry))
        findings.extend(
            Finding("missing", "SERVER_DIR", name, f"delivered {entry.completed_at}")
            for name, entry in expected.items()
            if name not in seen
        )

        # LOCAL_DIR keeps the download and, when decrypted, its plaintext too.
        local = {**downloaded, **expected}
        for name, entry in local.items():
            copy = _local_copy(settings.local_dir / name)
            if copy is None:
                continue  # LOCAL_DIR need not keep what was published
            if (copy.st_dev, copy.st_ino) == seen.get(name):
                continue  # PUBLISH_METHOD=hardlink: one file under two names, checked once
            problem = size_problem(entry, copy.st_mode, copy.st_size)
            if problem:
                findings.append(Finding("changed", "LOCAL_DIR", name, problem))
            else:
                checks.append(_Check(settings.local_dir / name, "LOCAL_DIR", entry))

        findings.extend(_hash_all(checks))
    findings.sort(key=lambda f: (f.name, f.where, f.problem))
    return AuditResult(
        ledger=str(settings.ledger_path),
        checked_files=len(checks),
        checked_bytes=sum(c.entry.size for c in checks),
        findings=tuple(findings),
        refetch_pending=tuple(sorted(pending)),
        damaged_ledger_lines=ledger.damaged_lines,
        skipped=ledger.skips,
    )


def _hash_all(checks: list[_Check]) -> list[Finding]:
    findings: list[Finding] = []
    progress = Progress("audit", sum(c.entry.size for c in checks), 0)
    done = 0

    def advance(count: int) -> None:
        nonlocal done
        done += count
        progress.update(done)

    for check in sorted(checks, key=lambda c: (c.entry.name, c.where)):
        try:
            problem = hash_problem(check.entry, hash_file(check.path, on_block=advance).hexdigest())
        except OSError as exc:
            # An unreadable file (EIO from a failing disk) is the damage an audit is for.
            problem = f"cannot read it: {os.strerror(exc.errno) if exc.errno else exc.__class__.__name__}"
        if problem:
            findings.append(Finding("changed", check.where, check.entry.name, problem))
    progress.finish()
    return findings


def render(result: AuditResult) -> str:
    lines = [f"checked {result.checked_files} file(s), {result.checked_bytes} bytes, against {result.ledger}"]
    if result.damaged_ledger_lines:
        lines.append(
            f"{result.ledger}: {result.damaged_ledger_lines} damaged line(s) skipped:"
            " files they recorded may show as unknown"
        )
    lines.extend(f"{f.problem}: {f.where}/{f.name}: {f.detail}" for f in result.findings)
    lines.extend(f"refetch pending: {name}: fetched again by the next run" for name in result.refetch_pending)
    lines.extend(
        f"skipped: {note.name}: {note.reason} (by {note.by} at {note.at}; never delivered, not expected)"
        for note in result.skipped
    )
    lines.append(f"{len(result.findings)} problem(s)" if result.findings else "all files match the ledger")
    return "\n".join(lines)
