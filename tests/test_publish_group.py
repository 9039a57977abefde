"""Group durability's pure parts and its fallbacks, on real files (the order of a real
run is traced in tests/test_catchup.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.errors import LocalStorageError
from app.storage import group_durability as group


@pytest.mark.parametrize(
    ("release", "reports"),
    [("6.18.44-fc-v1045", True), ("5.8.0", True), ("5.7.19-generic", False), ("4.19.0-27-amd64", False), ("x", False)],
)
def test_syncfs_is_trusted_with_errors_from_linux_5_8(release: str, reports: bool) -> None:
    assert group._syncfs_reports_errors(release) is reports


def _written(tmp_path: Path, n: int) -> list[group.Written]:
    files = []
    for i in range(n):
        path = tmp_path / f"f{i}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, b"x" * 4096)
        files.append(group.Written(fd, path))
    return files


def test_a_group_is_made_durable_by_one_syncfs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    monkeypatch.setattr(os, "fdatasync", lambda fd: synced.append("fdatasync"))
    dirs = group.Directories()
    try:
        files = _written(tmp_path, 5)
        how = group.make_durable(files, dirs.filesystems([tmp_path, tmp_path]))
    finally:
        dirs.close()
    assert how == ("syncfs" if group.SYNCFS_REPORTS_ERRORS else "syncfs+fdatasync")
    assert synced == ([] if group.SYNCFS_REPORTS_ERRORS else ["fdatasync"] * 5)


def test_without_syncfs_every_file_is_fdatasynced_in_one_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(group, "syncfs", lambda fd: False)
    synced: list[int] = []
    monkeypatch.setattr(os, "fdatasync", synced.append)
    files = _written(tmp_path, 3)

    assert group.make_durable(files, [(files[0].fd, tmp_path)]) == "fdatasync"
    assert synced == [w.fd for w in files]


def test_a_failed_sync_fails_the_group_naming_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(fd: int) -> bool:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(group, "syncfs", fail)
    files = _written(tmp_path, 2)
    with pytest.raises(LocalStorageError, match=f"cannot write to {tmp_path}: Input/output error"):
        group.make_durable(files, [(files[0].fd, tmp_path)])


def test_the_kernels_syncfs_returns_for_a_real_file_system(tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert group.syncfs(fd) in (True, False)  # False only where libc has no syncfs
    finally:
        os.close(fd)
