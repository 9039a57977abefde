"""The paramiko-internals reader, driven directly against real servers."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest
from conftest import Server, file_sha256, run_job, sha256, wait_until
from hostile_sftp import HostileSftpServer, Lies, hostile_env

from app.config import load_settings
from app.server.pipeline import Outbox, Replies, open_for_reading, read_range, receive, reply_attrs, request_stat
from app.server.remote import Connection, HostKeyVerifier, connect, load_private_key

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


# -- Outbox: requests held and sent together --------------------------------------------


@pytest.fixture
def conn(server: Server) -> Iterator[Connection]:
    settings = load_settings(server.env())
    conn = connect(settings, load_private_key(settings), HostKeyVerifier(settings))
    # The session's own early request (ReadLimit) is answered and routed first,
    # so that nothing else is on its way back when a test starts.
    assert wait_until(lambda: conn.read_limit.get() is not None, 5)
    try:
        yield conn
    finally:
        conn.close()


def _stat_sizes(sink: Replies, nums: dict[int, int]) -> dict[int, int | None]:
    """The size each routed STAT reply names, by request number."""
    return {num: _attrs(sink, num).st_size for num in nums}


def _attrs(sink: Replies, num: int) -> paramiko.SFTPAttributes:
    attrs = reply_attrs(*sink.got[num])
    assert attrs is not None, f"request {num} got no attributes"
    return attrs


def _receive_all(conn: Connection, sink: Replies, count: int) -> None:
    """Route replies until ``count`` are in ``sink``; fails rather than blocks if one never comes."""
    channel = conn.sftp.get_channel()
    while len(sink.got) < count:
        assert wait_until(channel.recv_ready, 5), f"{count - len(sink.got)} replies never came"
        receive(conn.sftp)


def _paramikos_own_writes_are_back(sftp: paramiko.SFTPClient) -> bool:
    return "_write_all" not in vars(sftp) and sftp._write_all.__func__ is paramiko.sftp.BaseSFTP._write_all


def test_outbox_holds_requests_until_flush_then_sends_them_in_one_write(
    server: Server, conn: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes = {f"2025010{n}.IPI": 1000 * n + 7 for n in range(1, 6)}
    for name, size in sizes.items():
        server.put(name, os.urandom(size))
    sftp, channel = conn.sftp, conn.sftp.get_channel()
    writes: list[int] = []
    send_all = channel.sendall

    def counted(data: bytes) -> None:
        writes.append(len(data))
        send_all(data)

    monkeypatch.setattr(channel, "sendall", counted)
    sink = Replies()

    with Outbox(sftp) as box:
        nums = {request_stat(sftp, sink, str(server.remote / name)): size for name, size in sizes.items()}
        time.sleep(0.3)
        assert not channel.recv_ready(), "a held request was answered: it went out before flush"
        assert writes == []
        box.flush()
        _receive_all(conn, sink, len(nums))

    assert len(writes) == 1, writes
    assert _stat_sizes(sink, nums) == nums, "every reply routed to its own request"
    assert _paramikos_own_writes_are_back(sftp)
    assert sftp.stat(str(server.remote / "20250103.IPI")).st_size == sizes["20250103.IPI"]


def test_outbox_sends_what_it_holds_when_the_block_ends(server: Server, conn: Connection) -> None:
    sizes = {f"2025020{n}.IPI": 2000 * n + 1 for n in range(1, 4)}
    for name, size in sizes.items():
        server.put(name, os.urandom(size))
    sftp = conn.sftp
    sink = Replies()

    with Outbox(sftp):
        nums = {request_stat(sftp, sink, str(server.remote / name)): size for name, size in sizes.items()}
    _receive_all(conn, sink, len(nums))

    assert _stat_sizes(sink, nums) == nums
    assert _paramikos_own_writes_are_back(sftp)
    assert sftp.stat(str(server.remote / "20250201.IPI")).st_size == sizes["20250201.IPI"]


def test_outbox_leaves_an_error_inside_the_block_to_propagate_on_a_dead_connection(
    server: Server, conn: Connection
) -> None:
    path = str(server.put("20250301.IPI", b"x" * 100))
    sftp = conn.sftp
    conn.abort()
    assert wait_until(lambda: not conn.alive(), 5, interval=0.01)

    with pytest.raises(RuntimeError, match="given up"), Outbox(sftp):
        request_stat(sftp, Replies(), path)
        raise RuntimeError("given up")

    assert _paramikos_own_writes_are_back(sftp)
    # What the block's exit kept quiet: held requests cannot go out on this connection.
    with pytest.raises(OSError), Outbox(sftp):
        request_stat(sftp, Replies(), path)
