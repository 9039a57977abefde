"""Checksum files and REMOTE_HASH_COMMAND through prove_source, against a real OpenSSH sshd."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Server
from proftpd import Proftpd
from test_proof_e2e import NAME, checksum_text

from app.config import load_settings
from app.errors import RemoteFileError
from app.server.proof import (
    ChecksumFileError,
    NoProofError,
    ProofMismatchError,
    command_digest,
    prove_source,
)
from app.server.remote import Connection, HostKeyVerifier, connect, load_private_key

HOSTILE_NAMES = [
    "-n $(touch pwned) `touch pwned2` 'q' \"d\" ;ls & x.dat",
    "back\\slash *star?.dat",
    "new\nline.dat",
]


@pytest.fixture
def conn(server: Server) -> Iterator[Connection]:
    settings = load_settings(server.env())
    c = connect(settings, load_private_key(settings), HostKeyVerifier(settings))
    try:
        yield c
    finally:
        c.close()


def _prove(server: Server, conn: Connection, name: str, local_bytes: bytes, **env: object) -> str:
    settings = load_settings(server.env(**env))
    local = server.tmp / "local_copy"
    local.write_bytes(local_bytes)
    listing = set(os.listdir(server.remote))
    digests = {"sha256": hashlib.sha256(local_bytes).hexdigest()}
    return prove_source(conn, settings, name, str(server.remote / name), listing, digests, local)


# -- Checksum files ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("companion", "text"),
    [
        (f"{NAME}.sha256", "{sha256}\n"),
        (f"{NAME}.md5", "{md5} *{name}\n"),
        (f"{NAME}.SHA512", "SHA512 ({name}) = {sha512}\n"),
        ("SHA256SUMS", "# partner manifest\n{other}  other.dat\n{sha256}  ./{name}\n"),
        ("MD5SUMS", "{other_md5}  other.dat\n{md5}  {name}\n"),
        ("CHECKSUMS", "MD5 (other.dat) = {other_md5}\nSHA256 ({name}) = {sha256}\n"),
    ],
)
def test_a_right_checksum_file_proves_the_file(server: Server, conn: Connection, companion: str, text: str) -> None:
    data = os.urandom(300_000)
    server.put(NAME, data)
    server.put(companion, checksum_text(text, data))
    assert _prove(server, conn, NAME, data, VERIFY_SOURCE="required") == f"checksum-file:{companion}"


def test_a_wrong_checksum_file_is_a_mismatch(server: Server, conn: Connection) -> None:
    data = os.urandom(1000)
    server.put(NAME, data)
    server.put("SHA256SUMS", f"{hashlib.sha256(data + b'x').hexdigest()}  {NAME}\n".encode())
    with pytest.raises(ProofMismatchError, match="checksum-file:SHA256SUMS"):
        _prove(server, conn, NAME, data)


def test_a_download_that_differs_from_the_server_file_is_a_mismatch(server: Server, conn: Connection) -> None:
    data = os.urandom(1000)
    server.put(NAME, data)
    server.put(f"{NAME}.md5", hashlib.md5(data).hexdigest().encode())
    with pytest.raises(ProofMismatchError, match=r"checksum-file:IPI_20250428.dat.md5 says md5"):
        _prove(server, conn, NAME, data[:-1] + b"?")


def test_a_malformed_checksum_file_is_a_named_failure(server: Server, conn: Connection) -> None:
    server.put(NAME, b"data")
    server.put(f"{NAME}.sha256", b"<html>404 not found</html>\n")
    with pytest.raises(ChecksumFileError, match=r"IPI_20250428.dat.sha256 line 1 is not a checksum line"):
        _prove(server, conn, NAME, b"data")


def test_no_proof_with_required_is_a_named_failure_and_auto_falls_back(server: Server, conn: Connection) -> None:
    server.put(NAME, b"data")
    server.put("SHA256SUMS", f"{'ab' * 32}  other.dat\n".encode())  # listed, but silent about NAME
    with pytest.raises(NoProofError, match="VERIFY_SOURCE=required"):
        _prove(server, conn, NAME, b"data", VERIFY_SOURCE="required")
    assert _prove(server, conn, NAME, b"data") == "size+mtime"
    assert _prove(server, conn, NAME, b"data", VERIFY_SOURCE="off") == "size+mtime"


def test_checksum_files_off_ignores_them(server: Server, conn: Connection) -> None:
    server.put(NAME, b"data")
    server.put(f"{NAME}.sha256", b"not even a checksum")
    assert _prove(server, conn, NAME, b"data", CHECKSUM_FILES="off") == "size+mtime"


# -- REMOTE_HASH_COMMAND ----------------------------------------------------------------


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_the_hash_command_hashes_exactly_a_hostile_name(server: Server, conn: Connection, name: str) -> None:
    data = os.urandom(50_000)
    server.put(name, data)
    server.put("-n", b"a decoy the unquoted name would hash")
    expected = command_digest(conn, "sha256sum", str(server.remote / name), timeout=10)
    assert (expected.algorithm, expected.hexdigest) == ("sha256", hashlib.sha256(data).hexdigest())
    assert expected.verified_by == "command:sha256sum"
    # Nothing in the name ran as shell code, here or in the login directory.
    for where in (server.remote, Path.home(), Path("/")):
        assert not (where / "pwned").exists() and not (where / "pwned2").exists()


def test_the_hash_command_proves_a_download_when_nothing_stronger_exists(server: Server, conn: Connection) -> None:
    name = HOSTILE_NAMES[0]
    data = os.urandom(10_000)
    server.put(name, data)
    assert _prove(server, conn, name, data, REMOTE_HASH_COMMAND="md5sum", VERIFY_SOURCE="required") == "command:md5sum"
    with pytest.raises(ProofMismatchError, match="command:md5sum"):
        _prove(server, conn, name, data[::-1], REMOTE_HASH_COMMAND="md5sum")


def test_the_hash_command_understands_bsd_style_output(server: Server, conn: Connection) -> None:
    data = os.urandom(10_000)
    path = server.put("a (1).dat", data)
    expected = command_digest(conn, "openssl dgst -sha512", str(path), timeout=10)
    assert (expected.algorithm, expected.hexdigest) == ("sha512", hashlib.sha512(data).hexdigest())
    assert expected.verified_by == "command:openssl"


def test_a_failing_hash_command_names_its_exit_status(server: Server, conn: Connection) -> None:
    with pytest.raises(RemoteFileError, match=r"exited with status 1: .*No such file"):
        command_digest(conn, "sha256sum", str(server.remote / "missing.dat"), timeout=10)
    assert conn.alive(), "the SFTP session is unaffected"


def test_a_hash_command_that_hangs_times_out(server: Server, conn: Connection) -> None:
    path = server.put(NAME, b"x")
    started = time.monotonic()
    with pytest.raises(RemoteFileError, match="no answer within 1 s"):
        command_digest(conn, "sleep 30; sha256sum", str(path), timeout=1)
    assert time.monotonic() - started < 5
    assert conn.sftp.stat(str(path)).st_size == 1, "the SFTP session still works"


def test_an_sftp_only_server_refuses_the_hash_command(proftpd: Proftpd, tmp_path: Path) -> None:
    proftpd.put(NAME, b"x")
    settings = load_settings(proftpd.env(tmp_path))
    c = connect(settings, load_private_key(settings), HostKeyVerifier(settings))
    try:
        with pytest.raises(RemoteFileError, match="the server refused the exec request"):
            command_digest(c, "sha256sum", f"/{NAME}", timeout=10)
        assert c.sftp.stat(f"/{NAME}").st_size == 1
    finally:
        c.close()
