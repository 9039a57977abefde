"""The file lifecycle around a delivery: DECRYPT before publishing, REMOTE_AFTER
after recording.

The order on disk makes every instant crash-safe:

1. the download is verified in LOCAL_DIR (app/transfer.py);
2. ``prepare``: with DECRYPT=gpg, the plaintext is decrypted into a hidden temp
   file in LOCAL_DIR and renamed to the name without the suffix; the encrypted
   file stays. A file that does not decrypt stops here: not published, not
   recorded (DecryptError, a per-file failure);
3. the job publishes to SERVER_DIR and appends the ledger line, which carries
   ``remote_after: "pending"`` when REMOTE_AFTER is delete or move;
4. ``after_commit``: once that line is durable, the pending (and earlier failed)
   actions are performed, and each result is appended as a RemoteAfterNote.

A run killed before 4 leaves the action pending in the ledger: the next run
performs it without downloading again (the file is in the ledger). A remote
action is only ever taken for a ledger entry.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from loguru import logger

from app import interrupt
from app.config import READY_MARKER_CHECKSUM, Settings
from app.errors import DecryptError, JobError, RemoteFileError
from app.names import invalid_name_reason
from app.results import TransferResult
from app.selection import RemoteEntry
from app.server.proof import find_checksum_sources, is_companion, render
from app.server.remote import Connection
from app.server.remote_after import Outcome, act
from app.storage.decrypt import Keyring, open_keyring, output_name, sweep_stale_homes
from app.storage.fsutil import storage_error
from app.storage.state import Ledger, LedgerEntry, RemoteAfterNote, append_ledger


@dataclass
class LifecycleTally:
    """This run's lifecycle failures, for the report, metrics and alerts: name -> reason."""

    decrypt_failed: dict[str, str] = field(default_factory=dict)
    remote_after_failed: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Publishable:
    """What to publish for one verified download, and what its ledger line adds."""

    path: Path  # in LOCAL_DIR: the download itself, or its plaintext
    size: int
    sha256: str
    ledger_fields: dict[str, Any]


def companions(name: str, listed: Collection[str], settings: Settings) -> list[str]:
    """The listed files that follow ``name`` on the server: its own checksum file(s)
    and ready marker. A manifest (SHA256SUMS) covers other files too and stays."""
    found = [s.file for s in find_checksum_sources(listed, name, settings.checksum_files) if s.per_file]
    marker = settings.ready_marker
    if marker is not None and marker != READY_MARKER_CHECKSUM:
        expected = render(marker, name)
        if expected != name and expected in listed and expected not in found:
            found.append(expected)
    return found


def still_needed(listed: Collection[str], delivered: Collection[str], settings: Settings) -> dict[str, set[str]]:
    """For each companion, the listed files not yet delivered that it follows too: a
    ready marker ``{stem}.ok`` serves both ``X.csv`` and ``X.xml``, and must outlive
    the first one's REMOTE_AFTER or the second waits forever for a marker the job
    itself removed."""
    needed: dict[str, set[str]] = {}
    for other in listed:
        if other in delivered or is_companion(other, settings):
            continue
        for companion in companions(other, listed, settings):
            needed.setdefault(companion, set()).add(other)
    return needed


def due_actions(ledger: Ledger) -> list[LedgerEntry]:
    """Each file's latest entry whose REMOTE_AFTER is still to do (pending, or failed before)."""
    latest = {entry.name: entry for entry in ledger.entries}
    return [entry for entry in latest.values() if entry.remote_after in ("pending", "failed")]


class Lifecycle:
    """One run's lifecycle steps; holds the run's GnuPG keyring, opened at the first
    encrypted file and closed (its gpg-agent stopped) when the run ends."""

    def __init__(self, settings: Settings, tally: LifecycleTally) -> None:
        self.s = settings
        self.tally = tally
        self._stack = contextlib.ExitStack()
        self._keyring: Keyring | None = None
        self._told_plain = False

    def __enter__(self) -> Lifecycle:
        # Whatever DECRYPT is now: a run killed while it decrypted left its GnuPG home
        # (with the imported secret key) and a running gpg-agent behind.
        for home in sweep_stale_homes():
            logger.info("removed the GnuPG home {} left by an interrupted run, and stopped its gpg-agent", home)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._keyring = None
        self._stack.close()

    # -- before publishing ----------------------------------------------------------

    def decrypts(self, name: str) -> bool:
        """Whether ``name`` is decrypted before publishing (DECRYPT=gpg and a DECRYPT_SUFFIXES ending)."""
        return self.s.decrypt == "gpg" and output_name(name, self.s.decrypt_suffixes) is not None

    def prepare(self, result: TransferResult) -> Publishable:
        """Turn a verified download into what SERVER_DIR gets; raises DecryptError
        (the file is then neither published nor recorded)."""
        source = self.s.local_dir / result.name
        fields: dict[str, Any] = {"remote_after": None if self.s.remote_after == "keep" else "pending"}
        plain = output_name(result.name, self.s.decrypt_suffixes) if self.s.decrypt == "gpg" else None
        if plain is None:
            if self.s.decrypt == "gpg" and not self._told_plain:
                self._told_plain = True
                logger.bind(file=result.name).info(
                    "{}: no DECRYPT_SUFFIXES ending, published as it is (not logged again this run)", result.name
                )
            return Publishable(source, result.size, result.sha256, fields)
        log = logger.bind(file=result.name)
        unsafe = invalid_name_reason(plain)
        if unsafe is not None:
            # e.g. "x.part.gpg": the plaintext's name would pass for a partial download.
            raise RemoteFileError(f"{result.name}: not decrypted, its plaintext name {plain!r} is unsafe: {unsafe}")
        try:
            decrypted = self._keyring_for_run().decrypt(source, self.s.local_dir / plain)
        except DecryptError as exc:
            self.tally.decrypt_failed[result.name] = exc.reason
            raise DecryptError(f"{exc}; not published, the encrypted file is kept in LOCAL_DIR", exc.reason) from None
        try:
            # The plaintext carries the remote mtime, as the download does.
            if result.mtime is not None:
                os.utime(decrypted.temp, (result.mtime, result.mtime))
            os.replace(decrypted.temp, decrypted.final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                decrypted.temp.unlink()
            raise storage_error("finish the plaintext of", decrypted.final, exc) from None
        signed = f", signed by {decrypted.signer}" if decrypted.signer else ""
        log.bind(plaintext_sha256=decrypted.sha256, signer=decrypted.signer).info(
            "{}: decrypted to {} ({} bytes, sha256 {}{})", result.name, plain, decrypted.size, decrypted.sha256, signed
        )
        fields.update(published_as=plain, plaintext_size=decrypted.size, plaintext_sha256=decrypted.sha256)
        return Publishable(decrypted.final, decrypted.size, decrypted.sha256, fields)

    def _keyring_for_run(self) -> Keyring:
        if self._keyring is None:
            self._keyring = self._stack.enter_context(open_keyring(self.s))
        return self._keyring

    # -- after the ledger commit ----------------------------------------------------

    def after_commit(self, conn: Connection, ledger: Ledger, listing: list[RemoteEntry]) -> None:
        """Perform the REMOTE_AFTER actions the (durable) ledger holds as pending or failed.

        Each result is appended to the ledger; a failure is a warning, counted for
        the metric and the alert, and retried by the next run. It fails the run
        (exit 1) only with REMOTE_AFTER_REQUIRED=true.
        """
        if self.s.remote_after == "keep":
            return
        listed = {e.name for e in listing}
        due = due_actions(ledger)
        # A skipped file (``sftp-ipi skip``) is never fetched, so it keeps no marker on the server.
        needed = still_needed(listed, ledger.passed, self.s) if due else {}
        notes: list[RemoteAfterNote] = []
        try:
            for entry in due:
                interrupt.check()
                outcome = self._act(conn, entry, listed, needed)
                notes.append(
                    RemoteAfterNote(
                        name=entry.name,
                        remote_after="done" if outcome.done else "failed",
                        outcome=outcome.status,
                        reason=outcome.reason,
                        at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    )
                )
                if outcome.failed:
                    self.tally.remote_after_failed[entry.name] = outcome.reason
        finally:
            # What was done is recorded even when the connection dies half-way;
            # an action done but not recorded is found done ("gone") next time.
            if notes:
                append_ledger(self.s.ledger_path, *notes)
        failed = [n.name for n in notes if n.remote_after == "failed" or n.outcome == "refused"]
        if failed and self.s.remote_after_required:
            raise JobError(
                f"REMOTE_AFTER={self.s.remote_after} failed for {len(failed)} file(s): {', '.join(failed)}"
                " (REMOTE_AFTER_REQUIRED=true); retried by the next run"
            )

    def _act(self, conn: Connection, entry: LedgerEntry, listed: set[str], needed: dict[str, set[str]]) -> Outcome:
        if entry.mtime is None:
            # Without the delivered mtime, a new version of the same size could not be told apart.
            outcome = Outcome(
                "changed", "recorded without an mtime, so the server's copy cannot be proven the delivered one"
            )
            logger.bind(file=entry.name).warning("{!r} left on the server: {}", entry.name, outcome.reason)
            return outcome
        follow = []
        for companion in companions(entry.name, listed, self.s):
            waiting = sorted(needed.get(companion, set()) - {entry.name})
            if waiting:
                logger.bind(file=entry.name).info(
                    "{!r} left on the server: {} not delivered yet also need(s) it", companion, ", ".join(waiting)
                )
            else:
                follow.append(companion)
        return act(conn, self.s, entry.name, entry.size, entry.mtime, follow)
