"""Issue 10, transfer half: server claims are checked, resumes never splice, derived
names always fit, optional extensions are never waited for, retries end, and an
interrupted run reports what it did."""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import time
from pathlib import Path

import pytest
from conftest import Server, file_sha256, run_job, sha256, size_of, start_job, wait_until
from hostile_sftp import HostileSftpServer, hostile_env
from relay import Relay
from sshd import free_port

from app import transfer
from app.config import load_settings
from app.selection import RemoteEntry
from app.server.remote import HostKeyVerifier, connect, load_private_key
from app.storage.partial import Paths
from app.tally import FileTally
from app.transfer import SAMPLE_BLOCK, SAMPLE_STRATA, sample_ranges

MiB = 1024 * 1024


def jail(tmp_path: Path) -> tuple[Path, Path, Path]:
    base = tmp_path / "jail"
    return base / "local", base / "server", base / "state" / "completed_files.jsonl"


def ledger(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def report(server: Server) -> dict[str, object]:
    data: dict[str, object] = json.loads((server.record.parent / "run_report.json").read_text())
    return data


# -- item 1: a size of 0, or no size at all, is a claim to check --------------------


def test_file_listed_as_empty_but_longer_is_never_published_empty(
    hostile: HostileSftpServer, tmp_path: Path, keys: dict[str, Path]
) -> None:
    hostile.lies.files[b"20250501.IPI"] = os.urandom(5000)
    hostile.lies.claimed_size[b"20250501.IPI"] = 0

    result = run_job(hostile_env(hostile, tmp_path, keys["client"]), tmp_path / "cwd")

    local, served, ledger_path = jail(tmp_path)
    assert result.code == 1, result.output
    assert "longer than its listed size of 0 bytes" in result.stderr
    assert not (served / "20250501.IPI").exists()
    assert not (local / "20250501.IPI").exists()
    assert not ledger_path.exists()


def test_really_empty_file_is_published_and_recorded(server: Server) -> None:
    server.put("20250428.IPI", b"")

    result = run_job(server.env(), server.tmp / "cwd")

    assert result.code == 0, result.output
    assert (server.served / "20250428.IPI").read_bytes() == b""
    [entry] = ledger(server.ledger)
    assert entry["size"] == 0 and entry["sha256"] == sha256(b"")


@pytest.mark.parametrize("length", [0, 70_000, 3 * MiB + 11], ids=["empty", "small", "large"])
def test_file_without_size_is_read_to_its_end_and_recorded_with_what_was_received(
    hostile: HostileSftpServer, tmp_path: Path, keys: dict[str, Path], length: int
) -> None:
    data = os.urandom(length)
    hostile.lies.files[b"20250501.IPI"] = data
    hostile.lies.attrs[b"20250501.IPI"] = {"size": None}  # in the listing and in every stat

    result = run_job(hostile_env(hostile, tmp_path, keys["client"]), tmp_path / "cwd")

    local, served, ledger_path = jail(tmp_path)
    assert result.code == 0, result.output
    assert file_sha256(served / "20250501.IPI") == sha256(data)
    [entry] = ledger(ledger_path)
    assert entry["size"] == length and entry["sha256"] == sha256(data)
    assert not [p.name for p in local.iterdir() if p.name != "20250501.IPI"]


def test_file_without_mtime_keeps_its_download_time_and_is_recorded_without_one(
    hostile: HostileSftpServer, tmp_path: Path, keys: dict[str, Path]
) -> None:
    """Driven below the planner (which decides elsewhere what a missing mtime means)."""
    data = os.urandom(2 * MiB)
    hostile.lies.files[b"20250501.IPI"] = data
    hostile.lies.attrs[b"20250501.IPI"] = {"mtime": None}
    settings = load_settings(hostile_env(hostile, tmp_path, keys["client"]))
    settings.local_dir.mkdir(parents=True)
    # A stale local file of the same size: without an mtime it must not be trusted.
    (settings.local_dir / "20250501.IPI").write_bytes(b"\0" * len(data))
    conn = connect(settings, load_private_key(settings), HostKeyVerifier(settings))
    before = time.time()
    try:
        result = transfer.download(conn, settings, RemoteEntry("20250501.IPI", len(data), None), FileTally("x"))
    finally:
        conn.close()

    final = settings.local_dir / "20250501.IPI"
    assert result.mtime is None and result.size == len(data) and result.sha256 == sha256(data)
    assert file_sha256(final) == sha256(data)
    assert final.stat().st_mtime >= before - 1, "no made-up mtime (1970) on the local file"


# -- item 2: resume compares a sample spread over the whole kept prefix --------------


def test_sample_covers_first_block_every_slice_and_the_last_window() -> None:
    have, window = 64 * MiB + 5, MiB
    ranges = sample_ranges(have, window, random.Random(7))

    assert ranges[0][0] == 0 and ranges[-1] == (have - window, have)
    assert all(a[1] < b[0] for a, b in itertools.pairwise(ranges)), "sorted and disjoint"
    slice_size = have // SAMPLE_STRATA
    for n in range(SAMPLE_STRATA):
        assert any(start < (n + 1) * slice_size and end > n * slice_size for start, end in ranges), n
    assert sum(end - start for start, end in ranges) <= window + (SAMPLE_STRATA + 1) * SAMPLE_BLOCK
    assert sample_ranges(have, window, random.Random(8)) != ranges, "the places depend on the randomness"
    assert sample_ranges(10, window, random.Random(7)) == [(0, 10)]


def cut_once(server: Server, relay: Relay, data: bytes) -> tuple[dict[str, str], Path, int]:
    """Leave a partial of ``data`` behind, as a run cut mid-file does."""
    server.put("20250428.IPI", data)
    env = server.env(port=relay.port, RETRY_MAX_TRIES=1)
    relay.set_fault(cut_after=5 * MiB)
    assert run_job(env, server.tmp / "cwd").code == 1
    part = server.local / "20250428.IPI.part"
    kept = part.stat().st_size
    assert kept > 3 * MiB
    return env, part, kept


def test_same_size_same_mtime_rewrite_far_from_the_resume_point_is_not_spliced(server: Server, relay: Relay) -> None:
    data = bytearray(os.urandom(8 * MiB))
    env, _, kept = cut_once(server, relay, bytes(data))
    path = server.remote / "20250428.IPI"
    st = path.stat()
    # A rewritten region spanning two sample slices is always sampled, whatever the
    # random places; one far from the resume point was never compared before.
    data[MiB : 2 * MiB] = os.urandom(MiB)
    path.write_bytes(bytes(data))
    os.utime(path, (st.st_atime, st.st_mtime))
    assert 2 * MiB < kept - MiB, "the region is outside the last window"

    result = run_job(env, server.tmp / "cwd")

    assert result.code == 0, result.output
    assert "differ from ours" in result.stderr
    assert file_sha256(server.served / "20250428.IPI") == sha256(bytes(data))


def test_damaged_partial_is_detected_and_not_published(server: Server, relay: Relay) -> None:
    data = os.urandom(8 * MiB)
    env, part, _ = cut_once(server, relay, data)
    with open(part, "r+b") as fh:  # a lost write: a region of zeros, size unchanged
        fh.seek(MiB)
        fh.write(b"\0" * MiB)

    result = run_job(env, server.tmp / "cwd")

    assert result.code == 0, result.output
    assert f"the partial's bytes at {MiB} no longer match" in result.stderr, "found by its block digests"
    assert file_sha256(server.served / "20250428.IPI") == sha256(data)


@pytest.mark.parametrize("where", ["partial", "server"])
def test_one_changed_byte_in_a_sampled_block_is_found(server: Server, where: str) -> None:
    """A single byte is found where the sample looks; the places are drawn from the
    operating system's randomness in the job, from a fixed seed here."""
    data = os.urandom(8 * MiB)
    have = 6 * MiB
    path = server.put("20250428.IPI", data)
    settings = load_settings(server.env(RESUME_VERIFY_BYTES=MiB))
    paths = Paths.for_name(settings.local_dir, "20250428.IPI")
    settings.local_dir.mkdir(parents=True)
    paths.part.write_bytes(data[:have])
    middle = sample_ranges(have, MiB, random.Random(3))[SAMPLE_STRATA // 2]
    flip = (middle[0] + middle[1]) // 2
    assert middle[1] < have - MiB, "a sampled block far from the resume point"
    changed = bytearray(data)
    changed[flip] ^= 0xFF
    (paths.part if where == "partial" else path).write_bytes(bytes(changed[:have] if where == "partial" else changed))
    entry = RemoteEntry("20250428.IPI", len(data), int(path.stat().st_mtime))
    conn = connect(settings, load_private_key(settings), HostKeyVerifier(settings))
    try:
        found = not transfer._prefix_matches(conn, settings, entry, paths, have, random.Random(3))
    finally:
        conn.close()
    assert found


# -- item 8: names of 233-255 bytes --------------------------------------------------


def long_name(length: int) -> str:
    name = "20250428_" + "x" * (length - 13) + ".IPI"
    assert len(name.encode()) == length
    return name


def test_255_byte_name_is_fetched_and_published(server: Server) -> None:
    name = long_name(255)
    server.put(name, b"long name" * 1000)
    server.put("20250429.IPI", b"after it")

    result = run_job(server.env(SELECT_MODE="all"), server.tmp / "cwd")

    assert result.code == 0, result.output
    assert (server.served / name).read_bytes() == b"long name" * 1000
    assert (server.served / "20250429.IPI").read_bytes() == b"after it", "nothing after it is held up"
    assert [e["name"] for e in ledger(server.ledger)] == [name, "20250429.IPI"]


@pytest.mark.parametrize("length", [240, 250])
def test_long_name_resumes_from_its_partial(server: Server, relay: Relay, length: int) -> None:
    name = long_name(length)
    data = os.urandom(8 * MiB)
    server.put(name, data)
    env = server.env(port=relay.port, RETRY_MAX_TRIES=1)
    relay.set_fault(cut_after=4 * MiB)

    first = run_job(env, server.tmp / "cwd")

    assert first.code == 1, first.output
    parts = list(server.local.glob("*.part"))
    assert len(parts) == 1 and parts[0].stat().st_size > 0
    status = run_job(env, server.tmp / "cwd", "status")
    assert f"in progress: {name}:" in status.stdout, "status shows the real name"

    second = run_job(env, server.tmp / "cwd")

    assert second.code == 0, second.output
    assert "resuming at byte" in second.stderr
    assert file_sha256(server.served / name) == sha256(data)
    assert not list(server.local.glob("*.part*"))


# -- item 11: an optional extension is never waited for ------------------------------


def test_server_ignoring_limits_extension_does_not_delay_downloads(
    hostile: HostileSftpServer, tmp_path: Path, keys: dict[str, Path]
) -> None:
    data = os.urandom(3 * MiB)
    hostile.lies.files[b"20250501.IPI"] = data
    hostile.lies.silent_extensions.add(b"limits@openssh.com")  # the server class holds this very set
    hostile.lies.short_reads = 100_000
    started = time.monotonic()

    result = run_job(hostile_env(hostile, tmp_path, keys["client"], IO_TIMEOUT=30), tmp_path / "cwd")

    assert result.code == 0, result.output
    assert time.monotonic() - started < 10, "well under IO_TIMEOUT"
    assert file_sha256(jail(tmp_path)[1] / "20250501.IPI") == sha256(data)


# -- items 12 and 23: retries end, and are counted as made ---------------------------


def test_small_file_on_a_link_that_always_drops_gives_up_after_retry_max_tries(server: Server, relay: Relay) -> None:
    server.put("20250428.IPI", os.urandom(900 * 1024))  # fetched whole: nothing is kept on a cut
    relay.set_fault(cut_after=300 * 1024, connections=50)

    result = run_job(server.env(port=relay.port, RETRY_MAX_TRIES=3), server.tmp / "cwd", timeout=60)

    assert result.code == 1, result.output
    assert relay.connections == 3, "bytes received and thrown away are not progress"
    assert "giving up after 3 attempt(s) without progress" in result.stderr
    assert not (server.served / "20250428.IPI").exists()


def test_given_up_attempt_is_not_counted_as_a_retry(server: Server) -> None:
    result = run_job(server.env(port=free_port(), RETRY_MAX_TRIES=1), server.tmp / "cwd")

    assert result.code == 1, result.output
    assert "; 0 retries;" in result.stderr.splitlines()[-1]
    assert report(server)["retries"] == []


# -- a resume within one run does not read the kept prefix again ---------------------


def test_resume_within_a_run_reuses_the_digest_of_the_kept_prefix(
    server: Server, relay: Relay, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.job import Job

    data = os.urandom(10 * MiB)
    server.put("20250428.IPI", data)
    relay.set_fault(cut_after=4 * MiB)
    hashed: list[int | None] = []
    real_hash = transfer.hash_file

    def counting(path: Path, limit: int | None = None) -> object:
        hashed.append(limit)
        return real_hash(path, limit)

    monkeypatch.setattr(transfer, "hash_file", counting)
    settings = load_settings(server.env(port=relay.port))

    code = Job(settings, sleep=lambda _: None).run()

    assert code == 0
    assert relay.connections == 2
    assert file_sha256(server.served / "20250428.IPI") == sha256(data)
    assert not [limit for limit in hashed if limit], "the kept prefix was hashed again"


# -- issue 14 item 8: an interrupted run reports what it did --------------------------


def test_interrupted_run_reports_bytes_received_and_kept(server: Server, relay: Relay) -> None:
    data = os.urandom(24 * MiB)
    server.put("20250428.IPI", data)
    relay.rate = 4 * MiB
    proc = start_job(server.env(port=relay.port), server.tmp / "cwd")
    part = server.local / "20250428.IPI.part"
    assert wait_until(lambda: size_of(part) >= 2 * MiB, 60, interval=0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)

    assert proc.returncode == 130, err
    kept = part.stat().st_size
    [file] = report(server)["files"]  # type: ignore[misc]
    assert file["name"] == "20250428.IPI" and file["completed"] is False
    assert file["bytes_transferred"] >= kept > 0
    assert file["bytes_kept"] == kept
    assert file["resume_offsets"] == [0] and file["sha256"] is None
    summary = [line for line in err.splitlines() if "run finished" in line][-1]
    assert "bytes kept of 1 unfinished file(s)" in summary
    assert " 0 bytes transferred" not in summary


# -- LOCAL_RETENTION ---------------------------------------------------------------


def test_delete_after_publish_removes_only_published_and_recorded_local_copies(server: Server) -> None:
    server.put("20250401.IPI", b"one" * 1000)
    server.put("20250402.IPI", os.urandom(2 * MiB))
    server.local.mkdir(parents=True)
    # Not this run's business: a partial of another file and a download not yet recorded.
    (server.local / "20250301.IPI.part").write_bytes(b"partial")
    (server.local / "20250302.IPI").write_bytes(b"downloaded, not yet published")

    result = run_job(server.env(SELECT_MODE="all", LOCAL_RETENTION="delete-after-publish"), server.tmp / "cwd")

    assert result.code == 0, result.output
    assert sorted(p.name for p in server.local.iterdir()) == ["20250301.IPI.part", "20250302.IPI"]
    assert (server.served / "20250401.IPI").read_bytes() == b"one" * 1000
    assert [e["name"] for e in ledger(server.ledger)] == ["20250401.IPI", "20250402.IPI"]
    assert "LOCAL_RETENTION: deleted 2 published file(s)" in result.stderr


def test_retention_in_days_keeps_recent_copies_and_those_missing_from_server_dir(server: Server) -> None:
    for day in (1, 2, 3):
        server.put(f"2025040{day}.IPI", f"file {day}".encode())
    assert run_job(server.env(SELECT_MODE="all"), server.tmp / "cwd").code == 0
    entries = ledger(server.ledger)
    for entry in entries[:2]:
        entry["completed_at"] = "2025-01-01T00:00:00+00:00"  # long ago
    server.ledger.write_text("".join(json.dumps(e) + "\n" for e in entries))
    (server.served / "20250402.IPI").unlink()  # a consumer took it: LOCAL_DIR's is the only copy

    result = run_job(server.env(LOCAL_RETENTION=7), server.tmp / "cwd")

    assert result.code == 0, result.output
    assert sorted(p.name for p in server.local.iterdir()) == ["20250402.IPI", "20250403.IPI"]


def test_bad_local_retention_is_a_configuration_error(server: Server) -> None:
    result = run_job(server.env(LOCAL_RETENTION="forever"), server.tmp / "cwd")

    assert result.code == 2, result.output
    assert "LOCAL_RETENTION='forever'" in result.stderr and "Traceback" not in result.output


def test_progress_is_bytes_kept_beyond_where_the_run_found_each_file() -> None:
    from app.tally import total_kept

    resumed = FileTally("a", received=3 * MiB, kept=5 * MiB, resume_offsets=[5 * MiB, 5 * MiB])
    restarted = FileTally("b", received=900 * 1024, kept=0, resume_offsets=[0, 0, 0])
    assert total_kept({"a": resumed, "b": restarted}) == 0, "received, not kept: no progress"
    resumed.kept += 1
    assert total_kept({"a": resumed, "b": restarted}) == 1
    restarted.kept, restarted.completed = 900 * 1024, True
    assert total_kept({"b": restarted}) == 900 * 1024 + 1
