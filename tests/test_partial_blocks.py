"""A partial's bytes changed on the local disk between runs are found by the block
digests recorded beside it, wherever the change is, and fetched again from the
damaged block on; a partial recorded without them is proven as before."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import tempfile
from pathlib import Path
from unittest import mock

import pytest
from conftest import Server, file_sha256, run_job, sha256
from hypothesis import given, settings
from hypothesis import strategies as st
from relay import Relay

from app import transfer
from app.config import load_settings
from app.selection import RemoteEntry
from app.server.remote import HostKeyVerifier, connect, load_private_key
from app.storage import blocks as blocks_module
from app.storage.blocks import BLOCK_SIZE, BlockDigests, Recorded, check_prefix
from app.storage.partial import Paths
from app.tally import FileTally

MiB = 1024 * 1024
NAME = "20250428.IPI"
SAMPLE_WINDOW = MiB  # RESUME_VERIFY_BYTES's default: the bytes before the resume point compared with the server


def cut_once(server: Server, relay: Relay, data: bytes) -> tuple[dict[str, str], Path, int]:
    """Leave a partial of ``data`` behind, as a run whose connection is cut mid-file does."""
    server.put(NAME, data)
    env = server.env(port=relay.port, RETRY_MAX_TRIES=1)
    # Cut late enough that what is kept holds blocks beyond the window compared with the
    # server, also on a loaded machine, where more of what was in flight is lost.
    relay.set_fault(cut_after=12 * MiB)
    assert run_job(env, server.tmp / "cwd").code == 1
    part = server.local / f"{NAME}.part"
    kept = part.stat().st_size
    assert 5 * MiB < kept < 12 * MiB
    return env, part, kept


def flip(path: Path, at: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(at)
        byte = fh.read(1)
        fh.seek(at)
        fh.write(bytes([byte[0] ^ 0x01]))


@pytest.mark.parametrize("where", ["first block", "middle", "last block before the resume point"])
def test_byte_flipped_in_a_partial_is_found_and_fetched_again_from_its_block(
    server: Server, relay: Relay, where: str
) -> None:
    data = os.urandom(16 * MiB)
    env, part, kept = cut_once(server, relay, data)
    meta = json.loads((server.local / f"{NAME}.part.json").read_text())
    assert meta["covered"] == kept, "the stopped attempt recorded all it kept"
    at = {"first block": 100, "middle": kept // 2, "last block before the resume point": kept - 10}[where]
    assert where != "middle" or kept - at > 2 * SAMPLE_WINDOW, "outside the window compared with the server"
    flip(part, at)
    st = part.stat()
    os.utime(part, ns=(st.st_atime_ns, st.st_mtime_ns))
    relay.reset_counters()

    result = run_job(env, server.tmp / "cwd")

    assert result.code == 0, result.output
    block = at // BLOCK_SIZE * BLOCK_SIZE
    assert f"the partial's bytes at {block} no longer match the block digest" in result.stderr
    assert f"discarding the {kept - block} bytes from there on" in result.stderr
    if block:
        assert f"resuming at byte {block} of" in result.stderr
    assert "differ from ours" not in result.stderr, "found locally, before the server is asked"
    assert file_sha256(server.served / NAME) == sha256(data)
    assert file_sha256(server.local / NAME) == sha256(data)
    # Only the damaged block on is fetched again (plus the resume proof's reads).
    assert relay.bytes_down < len(data) - block + 2 * MiB


def test_partial_recorded_without_block_digests_is_proven_as_before(server: Server, relay: Relay) -> None:
    data = os.urandom(16 * MiB)
    env, part, kept = cut_once(server, relay, data)
    meta_path = server.local / f"{NAME}.part.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({k: meta[k] for k in ("name", "size", "mtime")}))  # as older versions wrote it
    flip(part, kept - 10)  # in the last window, which the server comparison reads

    result = run_job(env, server.tmp / "cwd")

    assert result.code == 0, result.output
    assert "no longer match the block digest" not in result.stderr
    assert "differ from ours" in result.stderr
    assert file_sha256(server.served / NAME) == sha256(data)


def test_block_digests_are_recorded_after_each_checkpoint(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(7 * MiB + 5)
    path = server.put(NAME, data)
    settings = load_settings(server.env())
    settings.local_dir.mkdir(parents=True)
    monkeypatch.setattr(transfer, "CHECKPOINT_BYTES", 2 * MiB)
    recorded: list[Recorded] = []
    real = transfer.record_blocks

    def spy(paths: Paths, entry: RemoteEntry, snapshot: Recorded) -> None:
        recorded.append(snapshot)
        real(paths, entry, snapshot)

    monkeypatch.setattr(transfer, "record_blocks", spy)
    entry = RemoteEntry(NAME, len(data), int(path.stat().st_mtime))
    conn = connect(settings, load_private_key(settings), HostKeyVerifier(settings))
    try:
        result = transfer.download(conn, settings, entry, FileTally(NAME))
    finally:
        conn.close()

    assert result.sha256 == sha256(data)
    covered = [r.covered for r in recorded]
    # One record per checkpoint (2, 4 and 6 MiB on), but a checkpoint reached while the
    # previous fsync still runs shares its record with it: the last one always comes.
    assert covered == sorted(set(covered)) and covered[0] >= 2 * MiB and covered[-1] >= 6 * MiB, covered
    for snapshot in recorded:
        good, _, _ = check_prefix_of(data, snapshot.covered, snapshot)
        assert good == snapshot.covered, "each record matches the bytes it covers"


def check_prefix_of(data: bytes, have: int, recorded: Recorded | None) -> tuple[int, str, BlockDigests]:
    with tempfile.TemporaryFile() as fh:
        fh.write(data)
        fh.flush()
        good, whole, blocks = check_prefix(fh.fileno(), have, recorded)
    return good, whole.hexdigest(), blocks


def test_check_prefix_keeps_what_matches_and_stops_at_the_first_damaged_block() -> None:
    data = os.urandom(3 * BLOCK_SIZE + 123)
    digests = BlockDigests()
    digests.update(data[:1000])
    digests.update(data[1000:])
    record = digests.snapshot()
    assert record.covered == len(data) and len(record.blocks) == 4

    assert check_prefix_of(data, len(data), record)[:2] == (len(data), sha256(data))
    damaged = bytearray(data)
    damaged[2 * BLOCK_SIZE + 7] ^= 1
    good, whole, blocks = check_prefix_of(bytes(damaged), len(data), record)
    assert (good, whole) == (2 * BLOCK_SIZE, sha256(data[: 2 * BLOCK_SIZE]))
    assert blocks.snapshot() == Recorded(2 * BLOCK_SIZE, record.blocks[:2])
    # Bytes recorded and no longer there: their block goes too.
    assert check_prefix_of(data[: 3 * BLOCK_SIZE], 3 * BLOCK_SIZE, record)[0] == 3 * BLOCK_SIZE
    assert check_prefix_of(data[: 2 * BLOCK_SIZE + 5], 2 * BLOCK_SIZE + 5, record)[0] == 2 * BLOCK_SIZE
    # Bytes beyond the record are kept unchecked, for the server comparison.
    short = Recorded(BLOCK_SIZE, record.blocks[:1])
    assert check_prefix_of(bytes(damaged), len(data), short)[0] == len(data)
    assert Recorded.from_json(json.loads(json.dumps(record.as_json()))) == record
    assert Recorded.from_json({"block_size": BLOCK_SIZE, "covered": 5, "blocks": []}) is None
    assert Recorded.from_json({"name": NAME, "size": 1, "mtime": 2}) is None


@settings(max_examples=50, deadline=None)
@given(size=st.integers(0, 3 * 4096 + 7), cuts=st.lists(st.integers(0, 3 * 4096 + 7), max_size=8))
def test_block_digests_do_not_depend_on_how_the_bytes_arrive(size: int, cuts: list[int]) -> None:
    data = (bytes(range(256)) * (size // 256 + 1))[:size]
    with mock.patch.object(blocks_module, "BLOCK_SIZE", 4096):  # small blocks, many boundaries
        whole = BlockDigests()
        whole.update(data)
        pieces = BlockDigests()
        points = sorted({0, size, *(c for c in cuts if c <= size)})
        for start, end in itertools.pairwise(points):
            pieces.update(data[start:end])
    assert pieces.snapshot() == whole.snapshot()
    assert list(whole.snapshot().blocks) == [
        hashlib.sha256(data[i : i + 4096]).hexdigest() for i in range(0, size, 4096)
    ]
