"""The paramiko-internals reader, driven directly against real servers."""

from __future__ import annotations

import os
from pathlib import Path

from conftest import Server, file_sha256, run_job, sha256, wait_until
from hostile_sftp import HostileSftpServer, Lies, hostile_env

from app.config import load_settings
from app.server.pipeline import open_for_reading, read_range
from app.server.remote import HostKeyVerifier, connect, load_private_key

MiB = 1024 * 1024


def test_probe_learns_openssh_read_cap_and_reads_exact_bytes(server: Server) -> None:
    data = os.urandom(5 * MiB + 777)
    path = server.put("20250428.IPI", data)
    settings = load_settings(server.env())
    conn = connect(settings, load_private_key(settings), HostKeyVerifier(settings))
    try:
        # Never waited for: the answer is used once it has arrived.
        assert wait_until(lambda: conn.read_limit.get() is not None, 5)
        assert conn.read_limit.get() == 255 * 1024, "OpenSSH announces its 255 KiB read limit"
        with open_for_reading(conn.sftp, str(path)) as handle:
            got = b"".join(read_range(conn.sftp, handle, 0, len(data), 2 * MiB, 8, check_end=True, probe=True))
        with open_for_reading(conn.sftp, str(path)) as handle:
            middle = b"".join(read_range(conn.sftp, handle, MiB + 3, 3 * MiB, 2 * MiB, 4, probe=True))
    finally:
        conn.close()
    assert got == data
    assert middle == data[MiB + 3 : 3 * MiB]


def test_short_reads_below_the_announced_limit_are_filled_in(tmp_path: Path, keys: dict[str, Path]) -> None:
    data = os.urandom(3 * MiB + 5)
    lies = Lies(files={b"20250501.IPI": data}, short_reads=100_000)
    hostile = HostileSftpServer(tmp_path, Path(f"{keys['client']}.pub"), lies).start()
    try:
        result = run_job(hostile_env(hostile, tmp_path, keys["client"]), tmp_path / "cwd")
    finally:
        hostile.stop()
    assert result.code == 0, result.output
    assert file_sha256(tmp_path / "jail" / "server" / "20250501.IPI") == sha256(data)


def test_a_dead_connection_is_transient_not_a_file_failure(server: Server) -> None:
    """paramiko reports a closed channel as an errno-less OSError, like an SFTP
    failure status; the boundary must still call for a reconnect."""
    import pytest

    from app.errors import RemoteFileError, TransientError
    from app.server.remote import remote_errors

    path = server.put("20250428.IPI", b"x" * 100)
    settings = load_settings(server.env())
    conn = connect(settings, load_private_key(settings), HostKeyVerifier(settings))
    try:
        with pytest.raises(RemoteFileError), remote_errors("stat", conn=conn):
            conn.sftp.stat(str(path) + ".missing")  # alive: a file-level failure
        conn.abort()
        wait_until(lambda: not conn.alive(), 5, interval=0.01)
        with pytest.raises(TransientError), remote_errors("stat", conn=conn):
            conn.sftp.stat(str(path))
    finally:
        conn.close()


def test_several_ranges_in_one_batch_and_reads_to_the_end_without_a_size(server: Server) -> None:
    from app.server.pipeline import read_ranges

    data = os.urandom(3 * MiB + 999)
    path = server.put("20250428.IPI", data)
    settings = load_settings(server.env())
    conn = connect(settings, load_private_key(settings), HostKeyVerifier(settings))
    ranges = [(2 * MiB, 2 * MiB + 300_000), (0, 5), (MiB - 7, MiB + 7), (len(data) - 10, len(data))]
    try:
        with open_for_reading(conn.sftp, str(path)) as handle:
            got = read_ranges(conn.sftp, handle, ranges, 2 * MiB, 8, probe=True)
        with open_for_reading(conn.sftp, str(path)) as handle:
            tail = b"".join(read_range(conn.sftp, handle, MiB + 1, None, 64 * 1024, 8, probe=False))
    finally:
        conn.close()
    assert got == {start: data[start:end] for start, end in ranges}
    assert tail == data[MiB + 1 :]
