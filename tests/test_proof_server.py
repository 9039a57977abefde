"""Server-computed digests (check-file-handle) against a real ProFTPD mod_sftp, and OpenSSH's lack of them."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Server
from proftpd import Proftpd

from app.config import load_settings
from app.server.pipeline import check_file_handle, open_for_reading
from app.server.proof import (
    ProofMismatchError,
    file_digests,
    hashers_alongside,
    prove_prefix,
    prove_source,
    server_digest,
)
from app.server.remote import Connection, HostKeyVerifier, connect, load_private_key

MiB = 1024 * 1024


@pytest.fixture
def ftp_conn(proftpd: Proftpd, tmp_path: Path) -> Iterator[Connection]:
    settings = load_settings(proftpd.env(tmp_path))
    conn = connect(settings, load_private_key(settings), HostKeyVerifier(settings))
    try:
        yield conn
    finally:
        conn.close()


def test_proftpd_fixture_logs_in_chrooted_lists_and_reads(proftpd: Proftpd, ftp_conn: Connection) -> None:
    data = os.urandom(3 * MiB + 17)
    proftpd.put("IPI_20250428.dat", data)
    assert ftp_conn.sftp.normalize(".") == "/", "the virtual user is chrooted to its directory"
    assert ftp_conn.sftp.listdir("/") == ["IPI_20250428.dat"]
    with ftp_conn.sftp.open("/IPI_20250428.dat", "rb") as fh:
        assert fh.read() == data


def test_check_file_handle_whole_file_sha256_equals_hashlib(proftpd: Proftpd, ftp_conn: Connection) -> None:
    data = os.urandom(5 * MiB + 3)
    proftpd.put("IPI_20250428.dat", data)
    with open_for_reading(ftp_conn.sftp, "/IPI_20250428.dat") as handle:
        answer = check_file_handle(ftp_conn.sftp, handle, ["sha256"])
    assert answer.algorithm == "sha256"
    assert answer.hashes == [hashlib.sha256(data).digest()]


def test_check_file_handle_lets_the_server_pick_the_strongest_it_offers(proftpd: Proftpd, ftp_conn: Connection) -> None:
    data = os.urandom(MiB)
    proftpd.put("IPI_20250428.dat", data)
    with open_for_reading(ftp_conn.sftp, "/IPI_20250428.dat") as handle:
        answer = check_file_handle(ftp_conn.sftp, handle, ["sha512", "sha256", "md5"])
    assert answer == ("sha512", [hashlib.sha512(data).digest()])


def test_check_file_handle_per_block_hashes_from_zero_are_right(proftpd: Proftpd, ftp_conn: Connection) -> None:
    data = os.urandom(4 * MiB + 1000)
    proftpd.put("IPI_20250428.dat", data)
    with open_for_reading(ftp_conn.sftp, "/IPI_20250428.dat") as handle:
        answer = check_file_handle(ftp_conn.sftp, handle, ["sha256"], 0, 0, MiB)
    expected = [hashlib.sha256(data[i : i + MiB]).digest() for i in range(0, len(data), MiB)]
    assert answer.algorithm == "sha256"
    assert len(answer.hashes) == 5
    assert answer.hashes == expected


def test_check_file_handle_is_not_offered_by_openssh_and_says_so_quickly(server: Server) -> None:
    path = server.put("20250428.IPI", os.urandom(100_000))
    settings = load_settings(server.env())
    conn = connect(settings, load_private_key(settings), HostKeyVerifier(settings))
    try:
        started = time.monotonic()
        with open_for_reading(conn.sftp, str(path)) as handle:
            first = check_file_handle(conn.sftp, handle, ["sha256"])
            second = check_file_handle(conn.sftp, handle, ["sha256"])
        elapsed = time.monotonic() - started
        # The session still works after the refusal.
        assert conn.sftp.stat(str(path)).st_size == 100_000
    finally:
        conn.close()
    assert not first.offered and first.algorithm is None and first.hashes == []
    assert not second.offered
    assert elapsed < 2


def _download(conn: Connection, remote: str, local: Path) -> dict[str, str]:
    """The bytes as the job receives them, with sha256 and whatever hashers_alongside asks for."""
    hashers = {"sha256": hashlib.sha256(), **hashers_alongside(conn)}
    with conn.sftp.open(remote, "rb") as fh:
        data = fh.read()
    for h in hashers.values():
        h.update(data)
    local.write_bytes(data)
    return {name: h.hexdigest() for name, h in hashers.items()}


def test_a_download_is_proven_by_the_servers_strongest_digest(
    proftpd: Proftpd, ftp_conn: Connection, tmp_path: Path
) -> None:
    data = os.urandom(2 * MiB + 5)
    proftpd.put("IPI_20250428.dat", data)
    proftpd.put("IPI_20250429.dat", data[::-1])
    settings = load_settings(proftpd.env(tmp_path))
    local = tmp_path / "IPI_20250428.dat"
    digests = _download(ftp_conn, "/IPI_20250428.dat", local)
    assert set(digests) == {"sha256"}, "nothing known about this server yet"
    verified_by = prove_source(ftp_conn, settings, "IPI_20250428.dat", "/IPI_20250428.dat", set(), digests, local)
    assert verified_by == "check-file-handle:sha512"
    # The next download computes the server's algorithm on the way.
    second = tmp_path / "IPI_20250429.dat"
    digests = _download(ftp_conn, "/IPI_20250429.dat", second)
    assert digests["sha512"] == hashlib.sha512(data[::-1]).hexdigest()
    assert prove_source(ftp_conn, settings, "IPI_20250429.dat", "/IPI_20250429.dat", set(), digests, second) == (
        "check-file-handle:sha512"
    )


def test_bytes_changed_on_the_server_with_size_and_mtime_kept_are_a_mismatch(
    proftpd: Proftpd, ftp_conn: Connection, tmp_path: Path
) -> None:
    data = bytearray(os.urandom(3 * MiB))
    path = proftpd.put("IPI_20250428.dat", bytes(data), mtime=1_700_000_000)
    settings = load_settings(proftpd.env(tmp_path))
    local = tmp_path / "IPI_20250428.dat"
    digests = _download(ftp_conn, "/IPI_20250428.dat", local)
    data[2 * MiB] ^= 0xFF
    proftpd.put("IPI_20250428.dat", bytes(data), mtime=1_700_000_000)
    assert path.stat().st_size == 3 * MiB and path.stat().st_mtime == 1_700_000_000
    with pytest.raises(ProofMismatchError, match="check-file-handle:sha512"):
        prove_source(ftp_conn, settings, "IPI_20250428.dat", "/IPI_20250428.dat", set(), digests, local)


def test_an_empty_file_is_not_asked_about_and_does_not_spoil_the_session(
    proftpd: Proftpd, ftp_conn: Connection
) -> None:
    proftpd.put("IPI_20250427.dat", b"")
    data = os.urandom(1000)
    proftpd.put("IPI_20250428.dat", data)
    assert server_digest(ftp_conn, "/IPI_20250427.dat", 0) is None
    expected = server_digest(ftp_conn, "/IPI_20250428.dat", len(data))
    assert expected is not None and expected.hexdigest == hashlib.sha512(data).hexdigest()


def test_a_kept_prefix_is_proven_block_by_block(proftpd: Proftpd, ftp_conn: Connection, tmp_path: Path) -> None:
    data = os.urandom(6 * MiB)
    proftpd.put("IPI_20250428.dat", data)
    partial = tmp_path / "IPI_20250428.dat.part"
    partial.write_bytes(data[: 4 * MiB + 300])
    proof = prove_prefix(ftp_conn, "/IPI_20250428.dat", partial, 4 * MiB + 300)
    assert proof is not None
    assert proof.block_size == MiB and proof.matches == [True] * 4
    # The 300 bytes after the last whole block are not proven: they are fetched again.
    assert proof.proven_bytes == 4 * MiB


def test_a_prefix_that_differs_in_its_first_block_is_not_resumed(
    proftpd: Proftpd, ftp_conn: Connection, tmp_path: Path
) -> None:
    data = os.urandom(6 * MiB)
    proftpd.put("IPI_20250428.dat", data)
    kept = bytearray(data[: 3 * MiB])
    kept[1000] ^= 0x01
    partial = tmp_path / "IPI_20250428.dat.part"
    partial.write_bytes(bytes(kept))
    proof = prove_prefix(ftp_conn, "/IPI_20250428.dat", partial, len(kept))
    assert proof is not None
    assert proof.matches == [False, True, True]
    assert proof.proven_bytes == 0


def test_a_prefix_that_differs_later_is_resumed_up_to_the_differing_block(
    proftpd: Proftpd, ftp_conn: Connection, tmp_path: Path
) -> None:
    data = os.urandom(4 * MiB)
    proftpd.put("IPI_20250428.dat", data)
    kept = bytearray(data[: 3 * MiB])
    kept[2 * MiB + 5] ^= 0x80
    partial = tmp_path / "IPI_20250428.dat.part"
    partial.write_bytes(bytes(kept))
    proof = prove_prefix(ftp_conn, "/IPI_20250428.dat", partial, len(kept))
    assert proof is not None and proof.proven_bytes == 2 * MiB


def test_a_short_prefix_is_proven_as_one_block(proftpd: Proftpd, ftp_conn: Connection, tmp_path: Path) -> None:
    data = os.urandom(2 * MiB)
    proftpd.put("IPI_20250428.dat", data)
    partial = tmp_path / "IPI_20250428.dat.part"
    partial.write_bytes(data[:70_000])
    proof = prove_prefix(ftp_conn, "/IPI_20250428.dat", partial, 70_000)
    # The largest power-of-two block within it: ProFTPD 1.3.8 hashes other block sizes wrongly.
    assert proof is not None and proof.matches == [True] and proof.proven_bytes == 65_536
    assert file_digests(partial, ["md5"])["md5"] == hashlib.md5(data[:70_000]).hexdigest()


def test_prefix_proof_is_not_offered_by_openssh(server: Server, tmp_path: Path) -> None:
    data = os.urandom(3 * MiB)
    path = server.put("20250428.IPI", data)
    partial = tmp_path / "p.part"
    partial.write_bytes(data[: 2 * MiB])
    settings = load_settings(server.env())
    conn = connect(settings, load_private_key(settings), HostKeyVerifier(settings))
    try:
        assert prove_prefix(conn, str(path), partial, 2 * MiB) is None
        assert server_digest(conn, str(path), len(data)) is None
    finally:
        conn.close()


def test_a_refusal_after_earlier_answers_is_an_error_not_not_offered(proftpd: Proftpd, ftp_conn: Connection) -> None:
    """ProFTPD refuses an empty file with the status that also means "no such extension";
    once the session has answered, that must not switch server digests off for it."""
    from app.errors import RemoteFileError

    data = os.urandom(5000)
    proftpd.put("IPI_20250428.dat", data)
    proftpd.put("IPI_20250427.dat", b"")
    with open_for_reading(ftp_conn.sftp, "/IPI_20250428.dat") as handle:
        assert check_file_handle(ftp_conn.sftp, handle, ["sha256"]).offered
    with (
        open_for_reading(ftp_conn.sftp, "/IPI_20250427.dat") as handle,
        pytest.raises(RemoteFileError, match="refused"),
    ):
        check_file_handle(ftp_conn.sftp, handle, ["sha256"])
    expected = server_digest(ftp_conn, "/IPI_20250428.dat", len(data))
    assert expected is not None and expected.hexdigest == hashlib.sha512(data).hexdigest()


@pytest.mark.parametrize("silent", [True, False])
def test_a_server_that_ignores_or_refuses_check_file_is_not_offered_and_keeps_working(
    tmp_path: Path, keys: dict[str, Path], silent: bool
) -> None:
    """AsyncSSH refuses unknown extensions; some servers drop them unanswered. Neither
    may stall the job for more than the timeout, nor spoil the session."""
    from hostile_sftp import HostileSftpServer, Lies, hostile_env

    from app.server.pipeline import read_range

    data = os.urandom(5000)
    lies = Lies(files={b"20250501.IPI": data}, silent_extensions={b"check-file-handle"} if silent else set())
    hostile = HostileSftpServer(tmp_path, Path(f"{keys['client']}.pub"), lies).start()
    settings = load_settings(hostile_env(hostile, tmp_path, keys["client"]))
    conn = connect(settings, load_private_key(settings), HostKeyVerifier(settings))
    try:
        started = time.monotonic()
        assert server_digest(conn, "/remote/20250501.IPI", len(data), timeout=1) is None
        assert time.monotonic() - started < 3
        with open_for_reading(conn.sftp, "/remote/20250501.IPI") as handle:
            assert b"".join(read_range(conn.sftp, handle, 0, len(data), 32768, 4)) == data
        started = time.monotonic()
        assert server_digest(conn, "/remote/20250501.IPI", len(data), timeout=1) is None
        assert time.monotonic() - started < 0.5, "asked only once per session"
    finally:
        conn.close()
        hostile.stop()
