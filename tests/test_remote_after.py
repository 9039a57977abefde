"""REMOTE_AFTER against real servers: OpenSSH's sshd, and AsyncSSH's without posix-rename."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import OLD, Server, sha256
from hostile_sftp import NoPosixRenameServer, hostile_env

from app.config import Settings, load_settings
from app.errors import ConfigError, TransientError
from app.server.remote import Connection, HostKeyVerifier, connect, load_private_key
from app.server.remote_after import POSIX_RENAME, Outcome, act, offered_extensions

Connect = Callable[..., tuple[Connection, Settings]]


def _open(env: dict[str, str]) -> tuple[Connection, Settings]:
    settings = load_settings(env)
    return connect(settings, load_private_key(settings), HostKeyVerifier(settings)), settings


@pytest.fixture
def opened() -> Iterator[list[Connection]]:
    conns: list[Connection] = []
    yield conns
    for conn in conns:
        conn.close()


@pytest.fixture
def session(server: Server, opened: list[Connection]) -> Connect:
    """A real SFTP session to ``server`` with its settings plus ``overrides``."""

    def _session(**overrides: object) -> tuple[Connection, Settings]:
        conn, settings = _open(server.env(**overrides))
        opened.append(conn)
        return conn, settings

    return _session


def _delivered(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, int(st.st_mtime)


def test_keep_is_the_default_and_touches_nothing(server: Server, session: Connect) -> None:
    path = server.put("20250101.IPI", b"data")
    conn, settings = session()

    assert settings.remote_after == "keep"
    assert act(conn, settings, "20250101.IPI", *_delivered(path), []) == Outcome("kept")
    assert path.read_bytes() == b"data"


def test_delete_removes_the_file_and_its_companions(server: Server, session: Connect) -> None:
    path = server.put("20250101.IPI", b"data")
    server.put("20250101.IPI.sha256", b"digest")
    server.put("20250101.IPI.ready", b"")
    server.put("20250102.IPI", b"the next one")
    conn, settings = session(REMOTE_AFTER="delete")

    outcome = act(conn, settings, "20250101.IPI", *_delivered(path), ["20250101.IPI.sha256", "20250101.IPI.ready"])

    assert outcome == Outcome("deleted")
    assert sorted(p.name for p in server.remote.iterdir()) == ["20250102.IPI"]


def test_move_archives_file_and_companions_with_posix_rename(
    server: Server, session: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(100_000)
    path = server.put("20250101.IPI", data)
    server.put("20250101.IPI.sha256", b"digest")
    (server.remote / "archive").mkdir()
    conn, settings = session(REMOTE_AFTER="move", REMOTE_ARCHIVE_DIR="archive")
    used: list[str] = []
    for method in ("rename", "posix_rename"):
        real = getattr(conn.sftp, method)
        monkeypatch.setattr(conn.sftp, method, lambda a, b, m=method, f=real: (used.append(m), f(a, b))[1])

    outcome = act(conn, settings, "20250101.IPI", *_delivered(path), ["20250101.IPI.sha256", "absent.ready"])

    assert POSIX_RENAME in offered_extensions(conn)
    assert used == ["posix_rename", "posix_rename"]
    assert outcome == Outcome("moved", archived_as=f"{server.remote}/archive/20250101.IPI")
    archived = server.remote / "archive" / "20250101.IPI"
    assert sha256(archived.read_bytes()) == sha256(data)
    assert int(archived.stat().st_mtime) == int(OLD)
    assert (server.remote / "archive" / "20250101.IPI.sha256").read_bytes() == b"digest"
    assert sorted(p.name for p in server.remote.iterdir()) == ["archive"]


def test_a_name_taken_in_the_archive_gets_a_suffix_and_both_files_are_kept(server: Server, session: Connect) -> None:
    path = server.put("20250101.IPI", b"new delivery")
    archive = server.tmp / "elsewhere"
    archive.mkdir()
    (archive / "20250101.IPI").write_bytes(b"archived last year")
    (archive / "20250101.IPI.1").write_bytes(b"archived last month")
    conn, settings = session(REMOTE_AFTER="move", REMOTE_ARCHIVE_DIR=archive)

    outcome = act(conn, settings, "20250101.IPI", *_delivered(path), [])

    assert outcome.status == "moved" and outcome.archived_as == f"{archive}/20250101.IPI.2"
    assert (archive / "20250101.IPI").read_bytes() == b"archived last year"
    assert (archive / "20250101.IPI.1").read_bytes() == b"archived last month"
    assert (archive / "20250101.IPI.2").read_bytes() == b"new delivery"
    assert not path.exists()


def test_a_missing_archive_is_a_failure_with_the_reason_and_the_file_stays(server: Server, session: Connect) -> None:
    path = server.put("20250101.IPI", b"data")
    conn, settings = session(REMOTE_AFTER="move", REMOTE_ARCHIVE_DIR="archive")

    outcome = act(conn, settings, "20250101.IPI", *_delivered(path), [])

    assert outcome.status == "failed" and not outcome.done
    assert outcome.reason == f"REMOTE_ARCHIVE_DIR '{server.remote}/archive' does not exist on the server"
    assert path.read_bytes() == b"data"


@pytest.mark.parametrize("change", ["size", "mtime"])
def test_a_file_changed_since_delivery_is_not_deleted(server: Server, session: Connect, change: str) -> None:
    path = server.put("20250101.IPI", b"version one")
    delivered = _delivered(path)
    if change == "size":
        server.put("20250101.IPI", b"version two, longer")
    else:
        server.put("20250101.IPI", b"version 2!!", mtime=OLD + 60)
    conn, settings = session(REMOTE_AFTER="delete")

    outcome = act(conn, settings, "20250101.IPI", *delivered, ["20250101.IPI.sha256"])

    assert outcome.status == "changed" and outcome.done
    assert "a new version" in outcome.reason
    assert path.exists()


def test_a_file_already_gone_is_done_and_its_companions_still_follow(server: Server, session: Connect) -> None:
    """What a run interrupted between the file and its companions leaves, and the next run finishes."""
    server.put("20250101.IPI.ready", b"")
    conn, settings = session(REMOTE_AFTER="delete")

    outcome = act(conn, settings, "20250101.IPI", 4, int(OLD), ["20250101.IPI.ready"])

    assert outcome == Outcome("gone")
    assert list(server.remote.iterdir()) == []


def test_permission_denied_on_delete_is_a_failure_with_the_reason(
    unprivileged_server: Server, opened: list[Connection]
) -> None:
    path = unprivileged_server.put("20250101.IPI", b"data")
    unprivileged_server.remote.chmod(0o555)
    try:
        conn, settings = _open(unprivileged_server.env(REMOTE_AFTER="delete"))
        opened.append(conn)

        outcome = act(conn, settings, "20250101.IPI", *_delivered(path), [])
    finally:
        unprivileged_server.remote.chmod(0o755)

    assert outcome == Outcome("failed", "delete remote file '20250101.IPI': Permission denied")
    assert path.read_bytes() == b"data"


def test_a_dead_connection_raises_transient_error(server: Server, session: Connect) -> None:
    path = server.put("20250101.IPI", b"data")
    conn, settings = session(REMOTE_AFTER="delete")
    conn.transport.close()

    with pytest.raises(TransientError):
        act(conn, settings, "20250101.IPI", *_delivered(path), [])
    assert path.exists()


# -- a server without posix-rename -------------------------------------------


@pytest.fixture
def plain_rename_server(tmp_path: Path, keys: dict[str, Path]) -> Iterator[NoPosixRenameServer]:
    root = tmp_path / "root"
    (root / "remote" / "archive").mkdir(parents=True)
    srv = NoPosixRenameServer(tmp_path, Path(f"{keys['client']}.pub"), root).start()
    try:
        yield srv
    finally:
        srv.stop()


def test_move_uses_plain_rename_when_posix_rename_is_not_offered(
    plain_rename_server: NoPosixRenameServer, tmp_path: Path, keys: dict[str, Path], opened: list[Connection]
) -> None:
    remote = plain_rename_server.root / "remote"
    path = remote / "20250101.IPI"
    path.write_bytes(b"new delivery")
    (remote / "20250101.IPI.sha256").write_bytes(b"digest")
    (remote / "archive" / "20250101.IPI").write_bytes(b"archived before")
    env = hostile_env(plain_rename_server, tmp_path, keys["client"], REMOTE_AFTER="move", REMOTE_ARCHIVE_DIR="archive")
    conn, settings = _open(env)
    opened.append(conn)

    outcome = act(conn, settings, "20250101.IPI", *_delivered(path), ["20250101.IPI.sha256"])

    assert POSIX_RENAME not in offered_extensions(conn)
    assert outcome == Outcome("moved", archived_as="/remote/archive/20250101.IPI.1")
    assert (remote / "archive" / "20250101.IPI").read_bytes() == b"archived before"
    assert (remote / "archive" / "20250101.IPI.1").read_bytes() == b"new delivery"
    assert (remote / "archive" / "20250101.IPI.sha256").read_bytes() == b"digest"
    assert sorted(p.name for p in remote.iterdir()) == ["archive"]


# -- settings -----------------------------------------------------------------


def test_move_requires_an_archive_dir(server: Server) -> None:
    with pytest.raises(ConfigError, match="REMOTE_AFTER=move: set REMOTE_ARCHIVE_DIR"):
        load_settings(server.env(REMOTE_AFTER="move"))
    with pytest.raises(ConfigError, match="REMOTE_AFTER='archive' is not one of: keep, delete, move"):
        load_settings(server.env(REMOTE_AFTER="archive"))
    settings = load_settings(server.env(REMOTE_AFTER="Delete", REMOTE_AFTER_REQUIRED="true"))
    assert (settings.remote_after, settings.remote_after_required) == ("delete", True)


def test_plain_rename_refused_by_a_name_taken_since_the_check_tries_the_next(
    plain_rename_server: NoPosixRenameServer,
    tmp_path: Path,
    keys: dict[str, Path],
    opened: list[Connection],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    remote = plain_rename_server.root / "remote"
    path = remote / "20250101.IPI"
    path.write_bytes(b"new delivery")
    env = hostile_env(plain_rename_server, tmp_path, keys["client"], REMOTE_AFTER="move", REMOTE_ARCHIVE_DIR="archive")
    conn, settings = _open(env)
    opened.append(conn)
    real_lstat = conn.sftp.lstat

    def lstat_then_take(target: str) -> object:
        try:
            return real_lstat(target)
        except FileNotFoundError:
            # Another writer takes the name right after the job found it free.
            if target == "/remote/archive/20250101.IPI":
                (remote / "archive" / "20250101.IPI").write_bytes(b"the other writer's")
            raise

    monkeypatch.setattr(conn.sftp, "lstat", lstat_then_take)

    outcome = act(conn, settings, "20250101.IPI", *_delivered(path), [])

    assert outcome == Outcome("moved", archived_as="/remote/archive/20250101.IPI.1")
    assert (remote / "archive" / "20250101.IPI").read_bytes() == b"the other writer's"
    assert (remote / "archive" / "20250101.IPI.1").read_bytes() == b"new delivery"
