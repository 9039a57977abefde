"""A checksum manifest (SHA256SUMS) covering many files is read once per run, not
once per file; one that changes during the run is read again. Counted by the
server itself: OpenSSH's sftp-server logs each open and the bytes read at close."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from conftest import Server, run_job
from relay import Relay

from app.config import load_settings
from app.server import proof
from app.server.remote import HostKeyVerifier, connect, load_private_key

KiB = 1024


SFTP_SERVER = "/usr/lib/openssh/sftp-server"


def sftp_log(server: Server) -> Path:
    return server.tmp / "sftp-server.log"


def count_server_logging(server: Server) -> None:
    """Restart sshd with its sftp-server logging each open and close (INFO) to a file
    (internal-sftp would log to syslog only; a subsystem command runs through the shell)."""
    server.sshd.stop()
    server.sshd.subsystem = f"{SFTP_SERVER} -e -l INFO 2>>{sftp_log(server)}"
    server.sshd.start()


def manifest_reads(server: Server, name: str) -> tuple[int, int]:
    """(opens, bytes read) of the remote file ``name``, as the server logged them."""
    log = sftp_log(server).read_text()
    path = re.escape(str(server.remote / name))
    opens = len(re.findall(rf'open "{path}" flags READ', log))
    read = sum(int(n) for n in re.findall(rf'close "{path}" bytes read (\d+)', log))
    return opens, read


def manifest(files: dict[str, bytes], padding: int) -> bytes:
    """A partner's SHA256SUMS: lines for ``files`` among ``padding`` lines for others."""
    lines = [f"{'ab' * 32}  other_{n:06d}.dat" for n in range(padding)]
    lines += [f"{hashlib.sha256(data).hexdigest()}  {name}" for name, data in files.items()]
    return ("\n".join(lines) + "\n").encode()


def test_a_manifest_covering_many_files_is_read_once_per_run(server: Server) -> None:
    count_server_logging(server)
    files = {f"202501{day:02d}.IPI": os.urandom(20 * KiB) for day in range(1, 13)}
    for name, data in files.items():
        server.put(name, data)
    sums = manifest(files, padding=4000)  # about 290 KB
    server.put("SHA256SUMS", sums)

    result = run_job(server.env(SELECT_MODE="all", VERIFY_SOURCE="required"), server.tmp / "cwd")

    assert result.code == 0, result.output
    assert sorted(p.name for p in server.served.iterdir()) == sorted(files)
    ledger = [json.loads(line) for line in server.ledger.read_text().splitlines()]
    assert {line["verified_by"] for line in ledger} == {"checksum-file:SHA256SUMS"}
    # Before: one open and the whole manifest per file (12 opens, 12 x 290 KB).
    assert manifest_reads(server, "SHA256SUMS") == (1, len(sums))


def test_a_manifest_is_not_read_again_after_a_reconnect_in_the_same_run(server: Server) -> None:
    count_server_logging(server)  # a new sshd, maybe on another port: the relay goes to it
    relay = Relay(server.port)
    try:
        _reconnect_mid_backlog(server, relay)
    finally:
        relay.close()


def _reconnect_mid_backlog(server: Server, relay: Relay) -> None:
    files = {f"202501{day:02d}.IPI": os.urandom(64 * KiB) for day in range(1, 13)}
    for name, data in files.items():
        server.put(name, data)
    sums = manifest(files, padding=4000)  # about 290 KB
    server.put("SHA256SUMS", sums)
    # Cut once the manifest and a few files have come: the run reconnects and goes on.
    relay.set_fault(cut_after=len(sums) + 4 * 64 * KiB)

    result = run_job(server.env(port=relay.port, SELECT_MODE="all", VERIFY_SOURCE="required"), server.tmp / "cwd")

    assert result.code == 0, result.output
    assert relay.connections >= 2, "the cut made the run reconnect"
    assert sorted(p.name for p in server.served.iterdir()) == sorted(files)
    # Before: read once per connection, so once more after the reconnect.
    assert manifest_reads(server, "SHA256SUMS") == (1, len(sums))


def test_a_manifest_that_changes_during_the_run_is_read_again(server: Server) -> None:
    count_server_logging(server)
    first, second = {"20250101.IPI": b"one"}, {"20250102.IPI": b"two"}
    server.put("SHA256SUMS", manifest(first, padding=10))
    settings = load_settings(server.env())
    conn = connect(settings, load_private_key(settings), HostKeyVerifier(settings))
    try:
        source = [proof.ChecksumSource("SHA256SUMS", per_file=False)]
        remote_dir = str(server.remote)
        assert proof.checksum_file_digest(conn, remote_dir, "20250101.IPI", source) is not None
        assert proof.checksum_file_digest(conn, remote_dir, "20250101.IPI", source) is not None
        assert manifest_reads(server, "SHA256SUMS")[0] == 1, "unchanged: not read again"
        assert proof.checksum_file_digest(conn, remote_dir, "20250102.IPI", source) is None

        # The partner adds the next file's line (size and mtime change).
        server.put(
            "SHA256SUMS",
            manifest(first | second, padding=10),
            mtime=os.path.getmtime(server.remote / "SHA256SUMS") + 60,
        )
        found = proof.checksum_file_digest(conn, remote_dir, "20250102.IPI", source)
    finally:
        conn.close()

    assert found is not None and found.hexdigest == hashlib.sha256(b"two").hexdigest()
    assert manifest_reads(server, "SHA256SUMS")[0] == 2
