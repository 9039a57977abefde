"""Commercial and cloud servers' quirks, emulated by the lying AsyncSSH server: the job
runs unchanged against each and delivers, proving each file as far as the server allows."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Server, run_job
from hostile_sftp import OLD, HostileSftpServer, Lies, NoPosixRenameServer, hostile_env

from app.storage.state import read_ledger

NAMES = [f"202505{day:02d}.IPI" for day in range(1, 5)]


@pytest.fixture
def field_server(tmp_path: Path, keys: dict[str, Path]) -> Iterator[HostileSftpServer]:
    server = HostileSftpServer(tmp_path, Path(f"{keys['client']}.pub"), Lies()).start()
    try:
        yield server
    finally:
        server.stop()


def serve(server: HostileSftpServer, size: int = 3000, **lies: object) -> dict[str, bytes]:
    """Serve NAMES with random content under the given lies; returns name -> bytes."""
    for key, value in lies.items():
        setattr(server.lies, key, value)
    files = {name: os.urandom(size + i) for i, name in enumerate(NAMES)}
    server.lies.files.update({name.encode(): data for name, data in files.items()})
    return files


def run(server: HostileSftpServer, tmp_path: Path, keys: dict[str, Path], **settings: object) -> tuple[int, str]:
    result = run_job(hostile_env(server, tmp_path, keys["client"], **settings), tmp_path / "cwd")
    assert "Traceback" not in result.stderr, result.stderr
    return result.code, result.stderr


def delivered(tmp_path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (tmp_path / "jail" / "server").glob("*.IPI")}


def proofs(tmp_path: Path) -> dict[str, str | None]:
    ledger = read_ledger(tmp_path / "jail" / "state" / "completed_files.jsonl")
    return {entry.name: entry.verified_by for entry in ledger.entries}


def assert_all_delivered(tmp_path: Path, server: HostileSftpServer, files: dict[str, bytes]) -> None:
    assert delivered(tmp_path) == files
    # REMOTE_AFTER=keep: nothing was removed from the server.
    assert sorted(server.lies.files) == sorted(name.encode() for name in files)


# -- No exec channel (Azure Blob SFTP, AWS Transfer Family) ----------------------------


def test_a_refused_exec_channel_under_auto_delivers_by_size_and_mtime_and_says_so_once(
    field_server: HostileSftpServer, tmp_path: Path, keys: dict[str, Path]
) -> None:
    # Before: every file was downloaded and then failed, on every run.
    files = serve(field_server)

    code, log = run(field_server, tmp_path, keys, REMOTE_HASH_COMMAND="sha256sum")

    assert code == 0, log
    assert_all_delivered(tmp_path, field_server, files)
    assert set(proofs(tmp_path).values()) == {"size+mtime"}
    assert log.count("REMOTE_HASH_COMMAND is unavailable on this server") == 1
    assert "the server refused the exec request" in log
    assert "SFTP-only account" not in log


def test_a_refused_exec_channel_under_required_fails_each_file_naming_it_and_the_refusal(
    field_server: HostileSftpServer, tmp_path: Path, keys: dict[str, Path]
) -> None:
    serve(field_server)

    code, log = run(field_server, tmp_path, keys, REMOTE_HASH_COMMAND="sha256sum", VERIFY_SOURCE="required")

    assert code == 1, log
    assert delivered(tmp_path) == {}
    assert proofs(tmp_path) == {}
    assert f"'{NAMES[0]}': VERIFY_SOURCE=required but no proof is available" in log
    assert "REMOTE_HASH_COMMAND refused: the server refused the exec request" in log
    assert len(field_server.lies.files) == len(NAMES)


def test_a_channel_limit_is_reported_as_a_refused_channel_and_answered_by_reconnecting(
    tmp_path: Path, keys: dict[str, Path]
) -> None:
    # Two channels per connection: the SFTP session and one exec channel. The second
    # exec on a connection is refused; a new connection has a channel again.
    lies = Lies(exec_hash=True, channel_limit=2)  # exec is decided when the server starts
    field_server = HostileSftpServer(tmp_path, Path(f"{keys['client']}.pub"), lies).start()
    files = serve(field_server)

    code, log = run(
        field_server,
        tmp_path,
        keys,
        REMOTE_HASH_COMMAND="sha256sum",
        VERIFY_SOURCE="required",
        RETRY_MAX_TRIES=10,
        RETRY_BACKOFF_FACTOR=0.01,
    )

    assert code == 0, log
    assert_all_delivered(tmp_path, field_server, files)
    assert set(proofs(tmp_path).values()) == {"command:sha256sum"}
    # AsyncSSH words RESOURCE_SHORTAGE its own way; the server's words are what is shown.
    assert "the server refused to open a channel: 'Resource shortage' (reason code 4)" in log
    assert "reconnecting" in log
    assert "SFTP-only account" not in log
    field_server.stop()


def test_no_channel_beside_the_sftp_session_reconnects_once_then_delivers_without_the_command(
    tmp_path: Path, keys: dict[str, Path]
) -> None:
    field_server = HostileSftpServer(tmp_path, Path(f"{keys['client']}.pub"), Lies(channel_limit=1)).start()
    files = serve(field_server)

    code, log = run(
        field_server, tmp_path, keys, REMOTE_HASH_COMMAND="sha256sum", RETRY_MAX_TRIES=3, RETRY_BACKOFF_FACTOR=0.01
    )
    field_server.stop()

    assert code == 0, log
    assert_all_delivered(tmp_path, field_server, files)
    assert set(proofs(tmp_path).values()) == {"size+mtime"}
    assert "the server refused to open a channel: 'Resource shortage' (reason code 4)" in log
    assert log.count("; reconnecting") == 1
    assert log.count("REMOTE_HASH_COMMAND is unavailable on this server") == 1
    assert "on a new connection too" in log
    assert "SFTP-only account" not in log


# -- Hash extensions under other names (VShell, Bitvise < 6.21) ------------------------


@pytest.mark.parametrize("quirk", ["check_file_name_only", "hidden_check_file"])
def test_a_digest_under_another_name_or_unannounced_proves_every_file(
    field_server: HostileSftpServer, tmp_path: Path, keys: dict[str, Path], quirk: str
) -> None:
    # Before, on VShell: proven by size+mtime only, the log saying no digest was offered.
    files = serve(field_server, **{quirk: True})

    code, log = run(field_server, tmp_path, keys, VERIFY_SOURCE="required")

    assert code == 0, log
    assert_all_delivered(tmp_path, field_server, files)
    assert set(proofs(tmp_path).values()) == {"check-file-handle:sha512"}
    assert "no proof from the server side" not in log


# -- Apache MINA SSHD's length-prefixed digests ----------------------------------------


def test_mina_length_prefixed_digests_prove_every_file(
    field_server: HostileSftpServer, tmp_path: Path, keys: dict[str, Path]
) -> None:
    # Before: "server sent 68 bytes of sha512 digests, not a multiple of 64", every file failed.
    files = serve(field_server, mina_digests=True)

    code, log = run(field_server, tmp_path, keys)

    assert code == 0, log
    assert_all_delivered(tmp_path, field_server, files)
    assert set(proofs(tmp_path).values()) == {"check-file-handle:sha512"}
    assert "server digest unavailable" not in log


def test_mina_digests_that_do_not_match_still_fail_the_file(
    field_server: HostileSftpServer, tmp_path: Path, keys: dict[str, Path]
) -> None:
    serve(field_server, mina_digests=True, wrong_digests=True)

    code, log = run(field_server, tmp_path, keys)

    assert code == 1, log
    assert delivered(tmp_path) == {}
    assert f"'{NAMES[0]}' differs from the server's: check-file-handle:sha512" in log
    assert len(field_server.lies.files) == len(NAMES)


def test_an_unparseable_digest_reply_under_auto_is_a_warning_and_the_next_proof(
    field_server: HostileSftpServer, tmp_path: Path, keys: dict[str, Path]
) -> None:
    files = serve(field_server, garbled_digests=True)
    checksums = "".join(f"{hashlib.sha256(data).hexdigest()}  {name}\n" for name, data in files.items())
    field_server.lies.files[b"SHA256SUMS"] = checksums.encode()
    files_and_manifest = {**files}

    code, log = run(field_server, tmp_path, keys)

    assert code == 0, log
    assert delivered(tmp_path) == files_and_manifest
    assert set(proofs(tmp_path).values()) == {"checksum-file:SHA256SUMS"}
    assert log.count("server digest unavailable") == 1
    assert "neither layout fits" in log


def test_an_unparseable_digest_reply_under_required_fails_the_file_saying_why(
    field_server: HostileSftpServer, tmp_path: Path, keys: dict[str, Path]
) -> None:
    serve(field_server, garbled_digests=True)

    code, log = run(field_server, tmp_path, keys, VERIFY_SOURCE="required")

    assert code == 1, log
    assert delivered(tmp_path) == {}
    assert "no proof is available (tried check-file-handle (unavailable: server sent" in log
    assert f"'{NAMES[0]}': VERIFY_SOURCE=required" in log
    assert len(field_server.lies.files) == len(NAMES)


def test_a_kept_prefix_is_proven_by_mina_block_digests(
    field_server: HostileSftpServer, tmp_path: Path, keys: dict[str, Path]
) -> None:
    # 16 SHA-512 digests in MINA's layout are 1088 bytes, which also reads as 17 plain
    # ones. Before, on resume: "server sent 17 block digests ... not 16".
    from app.config import load_settings
    from app.server.proof import prove_prefix
    from app.server.remote import HostKeyVerifier, connect, load_private_key

    data = os.urandom(16 * 1024 * 1024 + 5)
    field_server.lies.mina_digests = True
    field_server.lies.files[b"20250501.IPI"] = data
    partial = tmp_path / "partial"
    partial.write_bytes(data[:-5] + b"xxxxx")
    settings = load_settings(hostile_env(field_server, tmp_path, keys["client"]))
    conn = connect(settings, load_private_key(settings), HostKeyVerifier(settings))
    try:
        proof = prove_prefix(conn, "/remote/20250501.IPI", partial, len(data) - 5)
        assert proof is not None and len(proof.matches) == 16 and all(proof.matches)
        assert proof.proven_bytes == 16 * 1024 * 1024
        (tmp_path / "damaged").write_bytes(data[: 1024 * 1024] + b"!" + data[1024 * 1024 + 1 :])
        damaged = prove_prefix(conn, "/remote/20250501.IPI", tmp_path / "damaged", len(data) - 5)
        assert damaged is not None and damaged.proven_bytes == 1024 * 1024
        assert conn.digests_offered is True
    finally:
        conn.close()


# -- Text before the SFTP stream (a login script printing on stdout) -------------------


def test_text_before_the_sftp_stream_is_one_line_naming_the_login_script_and_exit_2(
    field_server: HostileSftpServer, tmp_path: Path, keys: dict[str, Path]
) -> None:
    # Before: "internal error: SFTPError", with a traceback in LOG_FILE.
    serve(field_server, garbage_banner=b"Welcome to the partner gateway!\n")

    code, log = run(field_server, tmp_path, keys, RETRY_MAX_TRIES=3)

    assert code == 2, log
    assert (
        "the server printed text before the SFTP protocol started: a login script on the server writes to stdout" in log
    )
    assert "Welcome to the partner" in log
    assert log.count("printed text before the SFTP protocol") == 1
    assert "internal error" not in log
    assert "Traceback" not in (tmp_path / "jail" / "state" / "job.log").read_text()
    assert delivered(tmp_path) == {}
    assert len(field_server.lies.files) == len(NAMES)


# -- A refused rename for REMOTE_AFTER=move (Azure, ProFTPD, plain SFTPv3) -------------


def _move_run(tmp_path: Path, keys: dict[str, Path], refused: set[bytes]) -> tuple[Path, Iterator[tuple[int, str]]]:
    root = tmp_path / "root"
    remote = root / "remote"
    (remote / "archive").mkdir(parents=True)
    (remote / "20250101.IPI").write_bytes(b"delivered")
    os.utime(remote / "20250101.IPI", (OLD, OLD))
    srv = NoPosixRenameServer(tmp_path, Path(f"{keys['client']}.pub"), root, Lies(rename_refused=refused)).start()
    env = hostile_env(srv, tmp_path, keys["client"], REMOTE_AFTER="move", REMOTE_ARCHIVE_DIR="archive")

    def runs() -> Iterator[tuple[int, str]]:
        try:
            while True:
                result = run_job(env, tmp_path / "cwd")
                assert "Traceback" not in result.stderr, result.stderr
                yield result.code, result.stderr
        finally:
            srv.stop()

    return remote, runs()


def _remote_after_notes(tmp_path: Path) -> list[dict[str, object]]:
    lines = (tmp_path / "jail" / "state" / "completed_files.jsonl").read_text().splitlines()
    return [note for note in map(json.loads, lines) if note.get("event") == "remote_after"]


def test_a_rename_refused_onto_a_free_name_tries_the_next_free_name(tmp_path: Path, keys: dict[str, Path]) -> None:
    remote, runs = _move_run(tmp_path, keys, {b"20250101.IPI"})

    code, log = next(runs)
    runs.close()

    assert code == 0, log
    assert (remote / "archive" / "20250101.IPI.1").read_bytes() == b"delivered"
    assert sorted(p.name for p in remote.iterdir()) == ["archive"]
    assert delivered(tmp_path) == {"20250101.IPI": b"delivered"}
    assert [note["outcome"] for note in _remote_after_notes(tmp_path)] == ["moved"]


def test_a_rename_refused_twice_fails_naming_file_targets_and_words_and_is_not_retried_forever(
    tmp_path: Path, keys: dict[str, Path]
) -> None:
    # Before: the move failed with the same name on every later run, for ever.
    remote, runs = _move_run(tmp_path, keys, {b"*"})

    code, log = next(runs)
    second_code, second_log = next(runs)
    runs.close()

    assert code == 0, log
    assert "REMOTE_AFTER=move failed for '20250101.IPI': the server refused to move '20250101.IPI'" in log
    assert "to '/remote/archive/20250101.IPI': 'rename refused by the storage policy'" in log
    assert "to '/remote/archive/20250101.IPI.1': 'rename refused by the storage policy'" in log
    assert "not retried by later runs" in log
    assert "20250101.IPI.2" not in log
    # Nothing undelivered was removed, and the delivered file stays where it was.
    assert (remote / "20250101.IPI").read_bytes() == b"delivered"
    assert list((remote / "archive").iterdir()) == []
    assert delivered(tmp_path) == {"20250101.IPI": b"delivered"}
    assert proofs(tmp_path) == {"20250101.IPI": "size+mtime"}
    assert second_code == 0, second_log
    assert "refused to move" not in second_log
    assert [note["outcome"] for note in _remote_after_notes(tmp_path)] == ["refused"]


# -- Library exceptions that used to escape remote_errors ------------------------------


def _connect(server: HostileSftpServer, tmp_path: Path, keys: dict[str, Path]) -> tuple[object, object]:
    from app.config import load_settings
    from app.server.remote import HostKeyVerifier, connect, load_private_key

    settings = load_settings(hostile_env(server, tmp_path, keys["client"]))
    return connect(settings, load_private_key(settings), HostKeyVerifier(settings)), settings


def test_a_refusal_worded_in_another_encoding_is_a_file_error_quoting_it(
    field_server: HostileSftpServer, tmp_path: Path, keys: dict[str, Path]
) -> None:
    # paramiko decodes status messages as strict UTF-8: a cp1252 message escaped as a
    # UnicodeDecodeError, "internal error" with a traceback.
    from app.errors import RemoteFileError
    from app.server.remote import Connection, stat_entry

    field_server.lies.cp1252_errors = True
    conn, settings = _connect(field_server, tmp_path, keys)
    assert isinstance(conn, Connection)
    try:
        with pytest.raises(RemoteFileError, match="the server refused: 'Datei nicht gefunden: Gr"):
            stat_entry(conn, settings, "20250599.IPI")  # type: ignore[arg-type]
        assert conn.alive()
    finally:
        conn.close()


def test_a_refused_channel_is_reported_with_the_servers_reason(tmp_path: Path, keys: dict[str, Path]) -> None:
    from app.errors import TransientError
    from app.server.remote import Connection, remote_errors

    server = HostileSftpServer(tmp_path, Path(f"{keys['client']}.pub"), Lies(channel_limit=1)).start()
    conn, _ = _connect(server, tmp_path, keys)
    assert isinstance(conn, Connection)
    try:
        with (
            pytest.raises(TransientError, match=r"refused to open a channel: 'Resource shortage' \(reason code 4\)"),
            remote_errors("open a channel", conn=conn),
        ):
            conn.transport.open_session(timeout=5)
    finally:
        conn.close()
        server.stop()


def test_a_reply_paramiko_calls_malformed_is_a_reconnect_not_an_internal_error() -> None:
    # paramiko's SFTPError ("Expected handle", "Garbage packet received" mid-session) is
    # no SSHException: it escaped remote_errors as "internal error: SFTPError".
    import paramiko

    from app.errors import TransientError
    from app.server.remote import remote_errors

    with (
        pytest.raises(TransientError, match=r"remote file: the server broke the SFTP protocol \(Expected handle\)"),
        remote_errors("open remote file"),
    ):
        raise paramiko.SFTPError("Expected handle")


def test_a_real_sshd_whose_login_script_prints_gives_the_same_one_line_and_exit_2(server: Server) -> None:
    # OpenSSH running the SFTP subsystem through a script that greets first, as a
    # login script writing to stdout does (paramiko#395).
    script = server.tmp / "greeting-sftp-server"
    script.write_text("#!/bin/sh\necho 'Last login: yesterday. Welcome!'\nexec /usr/lib/openssh/sftp-server\n")
    script.chmod(0o755)
    server.sshd.stop()
    server.sshd.subsystem = str(script)
    server.sshd.start()
    server.put("20250501.IPI", b"data")

    result = run_job(server.env(RETRY_MAX_TRIES=3), server.tmp / "cwd")

    assert result.code == 2, result.output
    assert "Traceback" not in result.stderr
    assert "the server printed text before the SFTP protocol started" in result.stderr
    assert "'Last login: yesterday. Welcome!" in result.stderr
    assert not server.served.exists() or not any(server.served.iterdir())
    assert (server.remote / "20250501.IPI").read_bytes() == b"data"
