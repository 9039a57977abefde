"""Jobs of different feeds share directories: start-up cleans only temps whose writer is gone."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from conftest import Server, file_sha256, run_job, sha256, start_job, stop_mid_publish, temp_names

from app.storage.fsutil import atomic_write, create_temp, hold, remove_stale_temps, temp_path

MiB = 1024 * 1024


def test_second_feed_starting_mid_publish_leaves_the_first_feeds_temp_alone(server: Server) -> None:
    data = os.urandom(64 * MiB)
    server.put("20250428.IPI", data)
    (server.remote / "feed2").mkdir()
    first = start_job(server.env(PUBLISH_METHOD="copy"), server.tmp / "cwd1")
    try:
        held = stop_mid_publish(first, server.served)
        assert held, "the first feed was never caught mid-publish"

        second = run_job(
            server.env(
                SFTP_DIR=server.remote / "feed2",
                LOCAL_DIR=server.tmp / "local2",
                LAST_FILE_RECORD=server.tmp / "state2" / "last_file.txt",
            ),
            server.tmp / "cwd2",
        )
        assert second.code == 0, second.output
        assert temp_names(server.served) == held, "the second feed's start-up removed the first's temp"
    finally:
        first.send_signal(signal.SIGCONT)
    out, err = first.communicate(timeout=120)

    assert first.returncode == 0, out + err
    assert file_sha256(server.served / "20250428.IPI") == sha256(data)
    assert temp_names(server.served) == []


def test_cleanup_removes_a_temp_once_its_writer_lets_go(tmp_path: Path) -> None:
    tmp, fd = create_temp(tmp_path / "report.json")
    os.write(fd, b"half")

    assert remove_stale_temps(tmp_path) == []
    assert tmp.read_bytes() == b"half"
    os.close(fd)  # as a killed writer's descriptors are closed by the kernel
    assert remove_stale_temps(tmp_path) == [tmp]
    assert list(tmp_path.iterdir()) == []


def test_a_hard_linked_temp_is_held_through_its_inode(tmp_path: Path) -> None:
    local, served = tmp_path / "local", tmp_path / "server"
    local.mkdir()
    served.mkdir()
    source = local / "20250428.IPI"
    source.write_bytes(b"verified")
    fd = hold(source)
    tmp = temp_path(served / source.name)
    os.link(source, tmp)

    assert remove_stale_temps(served) == []
    os.close(fd)
    assert remove_stale_temps(served) == [tmp]
    assert source.read_bytes() == b"verified", "only the temp name goes"


def test_state_files_of_two_feeds_in_one_directory_do_not_clean_each_other(tmp_path: Path) -> None:
    tmp, fd = create_temp(tmp_path / "feed1.txt")
    atomic_write(tmp_path / "feed2.txt", b"20250428.IPI\n", "LAST_FILE_RECORD")

    assert remove_stale_temps(tmp_path) == []
    os.replace(tmp, tmp_path / "feed1.txt")
    os.close(fd)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feed1.txt", "feed2.txt"]


def test_cleanup_skips_what_is_no_plain_file_and_removes_a_stray_link(tmp_path: Path) -> None:
    directory = tmp_path / ".x.0000.sftp-ipi-tmp"
    directory.mkdir()
    link = tmp_path / ".y.0000.sftp-ipi-tmp"
    link.symlink_to("/nonexistent")

    assert remove_stale_temps(tmp_path) == [link]
    assert directory.is_dir()
