"""The durable-write helpers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.errors import LocalStorageError
from app.storage.fsutil import BackgroundFsync, atomic_write, is_temp_name


def test_background_fsync_error_is_raised_not_swallowed(tmp_path: Path) -> None:
    path = tmp_path / "f"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    syncing = BackgroundFsync(fd, path)
    os.close(fd)  # the helper's next fsync fails with EBADF
    syncing.request()
    with pytest.raises(LocalStorageError, match=str(path)):
        syncing.close()


def test_background_fsync_closes_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "f"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        syncing = BackgroundFsync(fd, path)
        os.write(fd, b"data")
        syncing.request()
        syncing.close()
    finally:
        os.close(fd)
    assert path.read_bytes() == b"data"


@pytest.mark.parametrize("durable", [True, False])
def test_atomic_write_leaves_only_the_final_file(tmp_path: Path, durable: bool) -> None:
    target = tmp_path / "state.txt"
    target.write_text("old")
    atomic_write(target, b"new", "state", durable=durable)
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["state.txt"]
    assert not any(is_temp_name(p.name) for p in tmp_path.iterdir())


def test_atomic_write_in_chunks_writes_them_all_in_order(tmp_path: Path) -> None:
    # More than one write block's worth, in uneven chunks: the run report's form.
    chunks = [bytes([i % 251]) * (i * 997) for i in range(1, 80)]
    target = tmp_path / "report.json"
    atomic_write(target, iter(chunks), "REPORT_FILE")
    assert target.read_bytes() == b"".join(chunks)
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_atomic_write_whose_chunks_fail_to_come_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    target.write_bytes(b"old")

    def chunks() -> Iterator[bytes]:
        yield b"x" * (3 << 20)  # past one write block: some bytes reached the temp
        raise ValueError("the report could not be built")

    with pytest.raises(ValueError, match="could not be built"):
        atomic_write(target, chunks(), "REPORT_FILE")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
