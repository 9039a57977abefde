"""PUBLISH_METHOD: copy, reflink and hardlink, each atomic, each verified by real file states."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Server, file_sha256, run_job, sha256, small_filesystem

MiB = 1024 * 1024
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a file system needs root")


@contextlib.contextmanager
def xfs_volume(tmp: Path, size_mib: int = 320) -> Iterator[Path]:
    """A loop-mounted XFS with reflink, the kind of file system where clones are free."""
    if shutil.which("mkfs.xfs") is None:
        pytest.skip("mkfs.xfs is not installed (make test installs xfsprogs as root)")
    image, mount = tmp / "xfs.img", tmp / "xfs"
    mount.mkdir()
    with open(image, "wb") as fh:
        fh.truncate(size_mib * MiB)
    subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(image)], check=True)
    if subprocess.run(["mount", "-o", "loop", str(image), str(mount)]).returncode != 0:
        pytest.skip("loop devices are not available here")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_auto_copies_where_the_file_system_cannot_clone(server: Server) -> None:
    data = os.urandom(3 * MiB)
    server.put("20250428.IPI", data)

    result = run_job(server.env(PUBLISH_METHOD="auto"), server.tmp / "cwd")

    assert result.code == 0, result.output
    local, served = server.local / "20250428.IPI", server.served / "20250428.IPI"
    if "(copy)" not in result.stderr:
        pytest.skip("this file system clones; the XFS test covers that case")
    assert file_sha256(served) == sha256(data)
    assert local.stat().st_ino != served.stat().st_ino
    assert int(served.stat().st_mtime) == int(local.stat().st_mtime)


def test_hardlink_publishes_the_verified_inode(server: Server) -> None:
    data = os.urandom(2 * MiB)
    server.put("20250428.IPI", data)

    result = run_job(server.env(PUBLISH_METHOD="hardlink"), server.tmp / "cwd")

    assert result.code == 0, result.output
    assert "(hardlink)" in result.stderr
    local, served = server.local / "20250428.IPI", server.served / "20250428.IPI"
    assert local.stat().st_ino == served.stat().st_ino
    assert file_sha256(served) == sha256(data)
    # A crash after publishing: the next run recognises the link and does nothing more.
    server.ledger.unlink()
    server.record.unlink()
    again = run_job(server.env(PUBLISH_METHOD="hardlink"), server.tmp / "cwd")
    assert again.code == 0, again.output
    assert "already identical in SERVER_DIR" in again.stderr


@root_only
@pytest.mark.parametrize(
    ("method", "message"),
    [("reflink", "cannot clone"), ("hardlink", "different file systems")],
)
def test_method_that_cannot_work_here_exits_5_leaving_nothing(server: Server, method: str, message: str) -> None:
    """reflink on a file system that cannot clone; hardlink across file systems."""
    server.put("20250428.IPI", os.urandom(MiB))
    with small_filesystem(server.served, 8 * MiB) as mounted:
        if not mounted:
            pytest.skip("cannot mount tmpfs here")
        result = run_job(server.env(PUBLISH_METHOD=method), server.tmp / "cwd")
        assert result.code == 5, result.output
        assert message in result.stderr
        assert list(server.served.iterdir()) == [], "no temp file left behind"


@root_only
def test_auto_clones_on_a_copy_on_write_file_system_without_doubling_space(server: Server) -> None:
    data = os.urandom(64 * MiB)
    server.put("20250428.IPI", data)
    with xfs_volume(server.tmp) as volume:
        env = server.env(LOCAL_DIR=volume / "local", SERVER_DIR=volume / "server", PUBLISH_METHOD="auto")
        free_before = shutil.disk_usage(volume).free

        result = run_job(env, server.tmp / "cwd")

        assert result.code == 0, result.output
        assert "(reflink)" in result.stderr
        assert file_sha256(volume / "server" / "20250428.IPI") == sha256(data)
        used = free_before - shutil.disk_usage(volume).free
        assert used < 1.5 * len(data), f"publishing used {used} bytes for a {len(data)}-byte file"
