"""Free space is checked before a download: a file that cannot fit fails at once with
exit 5, naming the bytes needed and free, and nothing of it is written."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import Server, file_sha256, run_job, sha256, small_filesystem
from relay import Relay

from app.errors import LocalStorageError
from app.storage.space import Need, Room, Volume, needs, shortage

MiB = 1024 * 1024
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small file system needs root")


@contextmanager
def disk(server: Server, size: int) -> Iterator[Path]:
    """A real tmpfs of ``size`` bytes under the test's directory."""
    with small_filesystem(server.tmp / "disk", size) as mounted:
        if not mounted:
            pytest.skip("cannot mount tmpfs here")
        yield server.tmp / "disk"


def fill(directory: Path, leave: int) -> Path:
    """Take all but ``leave`` bytes of the free space of ``directory``'s file system."""
    filler = directory / "filler"
    filler.write_bytes(b"\0" * max(shutil.disk_usage(directory).free - leave, 0))
    return filler


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@root_only
def test_a_file_too_large_for_local_dir_fails_at_once_with_exit_5_and_writes_no_partial(
    server: Server, relay: Relay
) -> None:
    data = os.urandom(8 * MiB)
    server.put("20250428.IPI", data)
    with disk(server, 3 * MiB) as volume:
        local = volume / "local"

        result = run_job(server.env(port=relay.port, LOCAL_DIR=local), server.tmp / "cwd")

        assert result.code == 5, result.output
        assert "Traceback" not in result.output
        line = next(line for line in result.stderr.splitlines() if "| ERROR" in line)
        free = line.split(" and ")[1].split(" bytes are free")[0]
        assert f"20250428.IPI: needs {len(data)} bytes in LOCAL_DIR {local}" in line, line
        assert int(free) <= 3 * MiB
        assert sorted(p.name for p in local.iterdir()) == [], "no partial, no metadata: nothing was written"
        assert relay.bytes_down < 256 * 1024, "nothing was downloaded"
        assert ": downloading " not in result.stderr


@root_only
def test_a_kept_partial_is_left_untouched_when_the_rest_cannot_fit_and_resumed_once_it_can(
    server: Server, relay: Relay
) -> None:
    data = os.urandom(8 * MiB)
    server.put("20250428.IPI", data)
    with disk(server, 16 * MiB) as volume:
        env = server.env(port=relay.port, LOCAL_DIR=volume / "local", RETRY_MAX_TRIES=1)
        relay.set_fault(cut_after=3 * MiB)
        first = run_job(env, server.tmp / "cwd")
        assert first.code == 1, first.output
        part, meta = volume / "local" / "20250428.IPI.part", volume / "local" / "20250428.IPI.part.json"
        kept, before = part.stat().st_size, (digest(part), meta.read_bytes(), part.stat().st_mtime_ns)
        assert 0 < kept < len(data)
        filler = fill(volume, leave=MiB)

        second = run_job(env, server.tmp / "cwd")

        assert second.code == 5, second.output
        assert f"20250428.IPI: needs {len(data) - kept} bytes in LOCAL_DIR" in second.stderr
        assert (digest(part), meta.read_bytes(), part.stat().st_mtime_ns) == before, "the partial is untouched"
        filler.unlink()
        third = run_job(env, server.tmp / "cwd")
        assert third.code == 0, third.output
        assert f"resuming at byte {kept}" in third.stderr
        assert file_sha256(server.served / "20250428.IPI") == sha256(data)


@root_only
def test_local_dir_and_server_dir_on_one_file_system_are_counted_once_for_both_copies(server: Server) -> None:
    data = os.urandom(8 * MiB)
    server.put("20250428.IPI", data)
    with disk(server, 12 * MiB) as volume:
        env = server.env(LOCAL_DIR=volume / "local", SERVER_DIR=volume / "server", PUBLISH_METHOD="copy")

        result = run_job(env, server.tmp / "cwd")

        assert result.code == 5, result.output
        assert f"needs {2 * len(data)} bytes ({len(data)} in LOCAL_DIR" in result.stderr
        assert "one file system" in result.stderr
        assert list((volume / "local").iterdir()) == [], "nothing downloaded that could never be published"
        assert list((volume / "server").iterdir()) == []

        hardlinked = run_job({**env, "PUBLISH_METHOD": "hardlink"}, server.tmp / "cwd")
        assert hardlinked.code == 0, "a hard link takes no second copy: it fits"
        assert file_sha256(volume / "server" / "20250428.IPI") == sha256(data)


@root_only
def test_in_a_catch_up_the_files_that_fit_are_delivered_and_the_first_that_cannot_fails_at_once(
    server: Server,
) -> None:
    names = [f"2025010{n}.IPI" for n in range(1, 6)]
    files = {name: os.urandom(512 * 1024) for name in names}
    for name, data in files.items():
        server.put(name, data)
    with disk(server, 1792 * 1024) as volume:  # room for three of them, not four
        local = volume / "local"

        result = run_job(server.env(LOCAL_DIR=local, SELECT_MODE="all"), server.tmp / "cwd")

        assert result.code == 5, result.output
        assert f"20250104.IPI: needs {512 * 1024} bytes in LOCAL_DIR {local}" in result.stderr
        assert sorted(p.name for p in server.served.iterdir()) == names[:3]
        for name in names[:3]:
            assert file_sha256(server.served / name) == sha256(files[name])
        assert server.record.read_text().strip() == "20250103.IPI"
        assert sorted(p.name for p in local.iterdir()) == names[:3], "nothing of the fourth was written"


@root_only
def test_a_clone_takes_no_second_copy_so_a_file_that_fits_once_is_delivered(server: Server) -> None:
    from test_publish import xfs_volume

    data = os.urandom(64 * MiB)
    server.put("20250428.IPI", data)
    with xfs_volume(server.tmp) as volume:
        env = server.env(LOCAL_DIR=volume / "local", SERVER_DIR=volume / "server", PUBLISH_METHOD="auto")
        fill(volume, leave=100 * MiB)  # room for the download and its clone, not for a copy

        result = run_job(env, server.tmp / "cwd")

        assert result.code == 0, result.output
        assert "(reflink)" in result.stderr
        assert file_sha256(volume / "server" / "20250428.IPI") == sha256(data)
        assert [p.name for p in (volume / "server").iterdir()] == ["20250428.IPI"], "no probe left behind"


# -- pure -------------------------------------------------------------------------------


def test_needs_counts_the_rest_of_a_partial_a_plaintext_and_a_copy_that_shares_no_blocks() -> None:
    assert needs(100, 30, decrypts=False, shares_blocks=False) == Need(local=70, server=100)
    assert needs(100, 30, decrypts=True, shares_blocks=False) == Need(local=170, server=100)
    assert needs(100, 100, decrypts=False, shares_blocks=True) == Need(local=0, server=0)


def test_shortage_counts_one_file_system_once_and_what_earlier_files_took() -> None:
    local, server = Volume("LOCAL_DIR /l", 1, 150), Volume("SERVER_DIR /s", 2, 150)
    same = Volume("SERVER_DIR /s", 1, 150)
    need = Need(local=100, server=100)

    assert shortage("a", need, local, server, {}) is None
    assert shortage("a", need, local, same, {}) == (
        "a: needs 200 bytes (100 in LOCAL_DIR /l, 100 in SERVER_DIR /s, one file system)"
        " and 150 bytes are free there; not downloading it"
    )
    assert shortage("a", need, local, server, {2: 60}) == (
        "a: needs 100 bytes in SERVER_DIR /s and 90 bytes are free there; not downloading it"
    )


def test_room_promises_space_to_the_files_of_a_batch_in_turn() -> None:
    room = Room(Volume("LOCAL_DIR /l", 1, 250), Volume("SERVER_DIR /s", 2, 1000))
    room.take("a", Need(100, 100))
    room.take("b", Need(100, 100))
    with pytest.raises(LocalStorageError, match="c: needs 100 bytes in LOCAL_DIR /l and 50 bytes are free"):
        room.take("c", Need(100, 100))
