"""REMOTE_AFTER: what happens to a delivered file on the server (keep, delete, move).

``act`` is called once the file is published and its ledger line is durable.
It proves first that the server still holds the version that was delivered
(same size and mtime); anything else is a new version and is left alone. Per-
file failures (permission denied, archive missing) are returned as an Outcome,
never raised: a remote clean-up must not fail a delivery that succeeded. A dead
connection still raises TransientError, so the caller reconnects.

``act`` is idempotent, so a pending action can simply be performed again after
a crash: a file already deleted or moved is "gone", and its companions (which
follow it, after it) are handled again.

Names in the archive are never overwritten: a taken name gets ``.1``, ``.2``,
... Plain SFTP rename refuses an existing target on OpenSSH (it links, then
unlinks), and a refusal there is retried with the next name. posix-rename
(rename(2)) would replace a target: its target is checked to be free first,
which leaves a window of one round trip in which another client writing into
the archive directory could lose a file; the job itself never races there (the
run lock).
"""

from __future__ import annotations

import contextlib
import posixpath
import struct
import weakref
from collections.abc import Iterator
from dataclasses import dataclass

import paramiko
from loguru import logger
from paramiko.sftp import CMD_INIT, CMD_VERSION

from app.config import Settings
from app.errors import RemoteFileError
from app.server.pipeline import announced
from app.server.remote import Connection, remote_errors, remote_path

POSIX_RENAME = "posix-rename@openssh.com"

# Archived names tried before giving up: NAME, NAME.1 ... NAME.999. More than
# that means something else fills the archive, which a person should look at.
_MAX_SUFFIX = 999
# Free archive names a refused rename is tried with: the first, then one more.
_RENAME_ATTEMPTS = 2


@dataclass(frozen=True)
class Outcome:
    """What ``act`` did.

    status: kept (REMOTE_AFTER=keep), deleted, moved, gone (the file was no
    longer there: done before, e.g. by an interrupted run), changed (the server
    holds another version: left alone), failed (``reason`` says why; retried by
    later runs), refused (the server refused to rename the file onto two free
    archive names: a failure, reported as one, but not retried by later runs,
    which would be refused the same way every time; the file stays on the server).
    """

    status: str
    reason: str = ""
    archived_as: str | None = None  # the remote path a moved file got

    @property
    def done(self) -> bool:
        """Nothing is left to do for this file (only "failed" is retried)."""
        return self.status != "failed"

    @property
    def failed(self) -> bool:
        """The action did not happen: warned, counted and alerted (retried only if not ``done``)."""
        return self.status in ("failed", "refused")


class RenameRefusedError(RemoteFileError):
    """The server refused to rename the file onto free archive names: asking again would be refused again."""


def archive_dir(settings: Settings) -> str:
    """REMOTE_ARCHIVE_DIR as a remote path: a relative one is relative to SFTP_DIR."""
    archive = settings.remote_archive_dir or ""
    if posixpath.isabs(archive) or not settings.sftp_dir:
        return archive
    return posixpath.join(settings.sftp_dir, archive)


def act(
    conn: Connection,
    settings: Settings,
    name: str,
    delivered_size: int,
    delivered_mtime: int,
    companions: list[str],
) -> Outcome:
    """Perform REMOTE_AFTER for the delivered file ``name`` and its ``companions``.

    ``companions`` are names in SFTP_DIR (checksum file, ready marker) that
    follow the file: deleted or archived with it, after it, and skipped when
    absent. Logs what it did; the caller counts failures and alerts.
    """
    if settings.remote_after == "keep":
        return Outcome("kept")
    log = logger.bind(file=name, remote_after=settings.remote_after)
    try:
        outcome = _act(conn, settings, name, delivered_size, delivered_mtime, companions)
    except RenameRefusedError as exc:
        outcome = Outcome("refused", f"{exc}; not retried by later runs, the file stays on the server")
    except RemoteFileError as exc:
        outcome = Outcome("failed", str(exc))
    if outcome.failed:
        log.warning("REMOTE_AFTER={} failed for {!r}: {}", settings.remote_after, name, outcome.reason)
    elif outcome.status == "changed":
        log.warning("{!r} left on the server: {}", name, outcome.reason)
    elif outcome.status == "moved":
        log.info("{!r} moved on the server to {!r}", name, outcome.archived_as)
    elif outcome.status == "deleted":
        log.info("{!r} deleted on the server", name)
    return outcome


def _act(
    conn: Connection,
    settings: Settings,
    name: str,
    delivered_size: int,
    delivered_mtime: int,
    companions: list[str],
) -> Outcome:
    path = remote_path(settings, name)
    archive = archive_dir(settings) if settings.remote_after == "move" else ""
    if archive:
        _check_archive(conn, archive)
    attr = _stat(conn, path, f"stat remote file {name!r}")
    if attr is None:
        outcome = Outcome("gone")
    elif attr.st_size is None or attr.st_mtime is None:
        return Outcome("changed", "the server reports no size or mtime, so it cannot be proven the delivered version")
    elif attr.st_size != delivered_size or attr.st_mtime != delivered_mtime:
        return Outcome(
            "changed",
            f"size {attr.st_size}, mtime {attr.st_mtime} differ from the delivered {delivered_size},"
            f" {delivered_mtime}: a new version",
        )
    elif archive:
        outcome = Outcome("moved", archived_as=_move(conn, name, path, archive))
    else:
        outcome = Outcome("deleted")
        with remote_errors(f"delete remote file {name!r}", conn=conn):
            try:
                conn.sftp.remove(path)
            except FileNotFoundError:
                outcome = Outcome("gone")
    for companion in companions:
        companion_path = remote_path(settings, companion)
        if _stat(conn, companion_path, f"stat remote file {companion!r}") is None:
            continue
        if archive:
            _move(conn, companion, companion_path, archive)
        else:
            with remote_errors(f"delete remote file {companion!r}", conn=conn), _absent_is_fine():
                conn.sftp.remove(companion_path)
    return outcome


def _check_archive(conn: Connection, archive: str) -> None:
    attr = _stat(conn, archive, f"stat REMOTE_ARCHIVE_DIR {archive!r}")
    if attr is None:
        raise RemoteFileError(f"REMOTE_ARCHIVE_DIR {archive!r} does not exist on the server")
    if attr.st_mode is not None and not _is_dir(attr.st_mode):
        raise RemoteFileError(f"REMOTE_ARCHIVE_DIR {archive!r} is not a directory on the server")


def _is_dir(mode: int) -> bool:
    return mode & 0o170000 == 0o040000


def _stat(conn: Connection, path: str, action: str) -> paramiko.SFTPAttributes | None:
    """lstat ``path``; None if there is nothing there."""
    with remote_errors(action, conn=conn):
        try:
            return conn.sftp.lstat(path)
        except FileNotFoundError:
            return None


@contextlib.contextmanager
def _absent_is_fine() -> Iterator[None]:
    with contextlib.suppress(FileNotFoundError):
        yield


def _move(conn: Connection, name: str, path: str, archive: str) -> str:
    """Rename ``path`` into ``archive`` under a free name; returns that name's path.

    A rename the server refuses although its target is free (Azure, ProFTPD and
    plain SFTPv3 servers refusing by their own rules) is tried once more with the
    next free name; a second refusal is RenameRefusedError, naming the targets and
    the server's words.
    """
    posix = POSIX_RENAME in offered_extensions(conn)
    refused: list[tuple[str, str]] = []
    for suffix in range(_MAX_SUFFIX + 1):
        target = posixpath.join(archive, name if suffix == 0 else f"{name}.{suffix}")
        if _stat(conn, target, f"stat {target!r} in REMOTE_ARCHIVE_DIR") is not None:
            continue
        with remote_errors(f"move remote file {name!r} to {target!r}", conn=conn):
            try:
                if posix:
                    conn.sftp.posix_rename(path, target)
                else:
                    conn.sftp.rename(path, target)
                return target
            except OSError as exc:
                # Plain rename refuses a target that appeared since the stat: try the next name.
                if not posix and _stat(conn, target, f"stat {target!r} in REMOTE_ARCHIVE_DIR") is not None:
                    continue
                if not conn.alive():
                    raise  # a dead connection, not a refusal: remote_errors makes it a reconnect
                words = (exc.strerror or str(exc) or "no reason given").strip()[:200]
                conn.rename_refusals[target] = words
                refused.append((target, words))
                if len(refused) == _RENAME_ATTEMPTS:
                    tried = "; ".join(f"to {t!r}: {w!r}" for t, w in refused)
                    raise RenameRefusedError(f"the server refused to move {name!r} ({tried})") from None
    raise RemoteFileError(f"no free name for {name!r} in REMOTE_ARCHIVE_DIR {archive!r} (tried up to .{_MAX_SUFFIX})")


# The extensions each connection's server offered; asked once per connection.
_offered: weakref.WeakKeyDictionary[paramiko.Transport, frozenset[str]] = weakref.WeakKeyDictionary()


def offered_extensions(conn: Connection) -> frozenset[str]:
    """The SFTP extensions the server announced in its VERSION reply.

    paramiko reads that reply and drops the list, so this asks again on a
    second, short-lived SFTP channel of the same connection. A server that
    refuses a second channel is treated as offering nothing (plain rename).
    """
    known = _offered.get(conn.transport)
    if known is None and announced(conn.sftp) is not None:
        # The session kept its VERSION reply (pipeline.SftpSession): no second channel,
        # which servers limiting channels per connection (AWS Transfer) may refuse.
        known = frozenset(announced(conn.sftp) or {})
    if known is None:
        with remote_errors("ask the server for its SFTP extensions"):
            try:
                channel = conn.transport.open_session(timeout=conn.sftp.get_channel().gettimeout())
            except paramiko.ChannelException:
                known = frozenset()
            else:
                try:
                    channel.settimeout(conn.sftp.get_channel().gettimeout())
                    channel.invoke_subsystem("sftp")
                    known = _VersionProbe(channel).extensions
                finally:
                    channel.close()
        _offered[conn.transport] = known
    return known


class _VersionProbe(paramiko.SFTPClient):  # type: ignore[misc]
    """An SFTP client that keeps the extension names of the server's VERSION reply."""

    extensions: frozenset[str] = frozenset()

    def _send_version(self) -> int:
        message = paramiko.Message()
        message.add_int(3)
        self._send_packet(CMD_INIT, message)
        kind, data = self._read_packet()
        if kind != CMD_VERSION:
            raise paramiko.SFTPError("Incompatible sftp protocol")
        self.extensions = frozenset(_extension_names(data[4:]))
        version: int = struct.unpack(">I", data[:4])[0]
        return version


def _extension_names(data: bytes) -> Iterator[str]:
    """The names of the (name, data) string pairs after the version number."""
    strings = []
    offset = 0
    while offset + 4 <= len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        strings.append(data[offset + 4 : offset + 4 + length])
        offset += 4 + length
    for name in strings[0::2]:
        yield name.decode("utf-8", "replace")
