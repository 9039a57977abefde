"""End-to-end downloads against a real OpenSSH sshd, with and without network faults."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from conftest import Runner, Server, file_sha256, run_job, sha256, size_of, start_job, wait_until
from relay import Relay

MiB = 1024 * 1024
# SSH handshake, listing and SFTP framing on top of the file's own bytes.
OVERHEAD = 256 * 1024
VERIFY_WINDOW = MiB  # RESUME_VERIFY_BYTES default


def ledger_entries(server: Server) -> list[dict[str, object]]:
    return [json.loads(line) for line in server.ledger.read_text().splitlines() if line.strip()]


def assert_published(server: Server, name: str, data: bytes) -> None:
    assert file_sha256(server.local / name) == sha256(data)
    assert file_sha256(server.served / name) == sha256(data)
    assert not list(server.local.glob("*.part*")), "no partial may remain after success"
    assert not [p for p in server.served.iterdir() if p.name.startswith(".")], "no temp file in SERVER_DIR"


def test_first_download_publishes_verified_file_and_records_it(server: Server, run: Runner) -> None:
    data = os.urandom(5 * MiB + 17)
    server.put("20250428.IPI", data)
    server.put("notes.txt", b"ignored")

    result = run()

    assert result.code == 0, result.output
    assert_published(server, "20250428.IPI", data)
    assert server.record.read_text() == "20250428.IPI\n"
    [entry] = ledger_entries(server)
    assert entry["name"] == "20250428.IPI"
    assert entry["size"] == len(data)
    assert entry["sha256"] == sha256(data)
    assert entry["bytes_transferred"] == len(data)
    assert sha256(data) in result.stderr, "the verified SHA-256 is logged"
    assert not (server.served / "notes.txt").exists()
    assert "Traceback" not in result.output


def test_continues_from_seed_last_file_record(server: Server, run: Runner) -> None:
    for day in ("20250427", "20250428", "20250429", "20250430"):
        server.put(f"{day}.IPI", day.encode() * 1000)
    server.record.parent.mkdir(parents=True)
    server.record.write_text("20250428.IPI")  # as the original script left it

    result = run()

    assert result.code == 0, result.output
    assert sorted(p.name for p in server.served.iterdir()) == ["20250429.IPI"]
    assert server.record.read_text().strip() == "20250429.IPI"
    assert run().code == 0
    assert sorted(p.name for p in server.served.iterdir()) == ["20250429.IPI", "20250430.IPI"]


def test_all_mode_fetches_every_due_file_oldest_first(server: Server, run: Runner) -> None:
    files = {f"202504{d:02d}.IPI": os.urandom(100_000 + d) for d in (3, 1, 2)}
    for name, data in files.items():
        server.put(name, data)

    result = run(SELECT_MODE="all")

    assert result.code == 0, result.output
    for name, data in files.items():
        assert_published(server, name, data)
    assert [e["name"] for e in ledger_entries(server)] == ["20250401.IPI", "20250402.IPI", "20250403.IPI"]
    assert server.record.read_text().strip() == "20250403.IPI"


def test_nothing_due_exits_zero_without_changes(server: Server, run: Runner) -> None:
    server.put("20250428.IPI", b"a" * 1000)
    assert run().code == 0
    before = server.ledger.read_bytes()

    result = run()

    assert result.code == 0, result.output
    assert server.ledger.read_bytes() == before


def test_young_file_is_left_for_a_later_run(server: Server, run: Runner) -> None:
    server.put("20250428.IPI", b"still being written", mtime=time.time())

    result = run(MIN_FILE_AGE=3600)

    assert result.code == 0, result.output
    assert not server.served.exists() or not any(server.served.iterdir())
    assert "MIN_FILE_AGE" in result.stderr


def test_resume_across_runs_fetches_only_the_remainder(server: Server, relay: Relay) -> None:
    data = os.urandom(12 * MiB)
    server.put("20250428.IPI", data)
    env = server.env(port=relay.port, RETRY_MAX_TRIES=1)
    relay.set_fault(cut_after=5 * MiB)

    first = run_job(env, server.tmp / "cwd")

    assert first.code == 1, first.output
    part = server.local / "20250428.IPI.part"
    kept = part.stat().st_size
    assert 3 * MiB < kept < 6 * MiB, first.output
    assert part.read_bytes() == data[:kept], "the partial is an exact prefix"
    assert not (server.local / "20250428.IPI").exists()
    assert not server.served.exists() or not any(server.served.iterdir())

    relay.reset_counters()
    second = run_job(env, server.tmp / "cwd")

    assert second.code == 0, second.output
    assert_published(server, "20250428.IPI", data)
    remainder = len(data) - kept
    assert remainder <= relay.bytes_down <= remainder + VERIFY_WINDOW + OVERHEAD
    assert f"resuming at byte {kept}" in second.stderr


def test_resume_within_one_run_after_a_cut(server: Server, relay: Relay) -> None:
    data = os.urandom(10 * MiB)
    server.put("20250428.IPI", data)
    relay.set_fault(cut_after=4 * MiB)

    result = run_job(server.env(port=relay.port), server.tmp / "cwd")

    assert result.code == 0, result.output
    assert_published(server, "20250428.IPI", data)
    assert relay.connections == 2
    assert relay.bytes_down <= len(data) + VERIFY_WINDOW + 2 * OVERHEAD
    assert "retrying in" in result.stderr
    assert "resuming at byte" in result.stderr


def test_partial_is_discarded_when_remote_changed(server: Server, relay: Relay) -> None:
    old = os.urandom(8 * MiB)
    server.put("20250428.IPI", old)
    env = server.env(port=relay.port, RETRY_MAX_TRIES=1)
    relay.set_fault(cut_after=3 * MiB)
    assert run_job(env, server.tmp / "cwd").code == 1
    assert (server.local / "20250428.IPI.part").stat().st_size > 0

    new = os.urandom(9 * MiB)
    server.put("20250428.IPI", new, mtime=time.time() - 3000)
    result = run_job(env, server.tmp / "cwd")

    assert result.code == 0, result.output
    assert_published(server, "20250428.IPI", new)
    assert "changed since the partial was taken" in result.stderr


def test_rewritten_prefix_with_same_size_and_mtime_restarts(server: Server, relay: Relay) -> None:
    data = bytearray(os.urandom(8 * MiB))
    path = server.put("20250428.IPI", bytes(data))
    env = server.env(port=relay.port, RETRY_MAX_TRIES=1)
    relay.set_fault(cut_after=4 * MiB)
    assert run_job(env, server.tmp / "cwd").code == 1
    kept = (server.local / "20250428.IPI.part").stat().st_size

    st = path.stat()
    data[kept - 100 : kept - 90] = bytes(10 * [0xAA])  # rewritten in place just before the resume point
    path.write_bytes(bytes(data))
    os.utime(path, (st.st_atime, st.st_mtime))
    result = run_job(env, server.tmp / "cwd")

    assert result.code == 0, result.output
    assert_published(server, "20250428.IPI", bytes(data))
    assert "differ from ours" in result.stderr


def test_crash_between_download_and_publish_is_repaired_without_download(server: Server, relay: Relay) -> None:
    data = os.urandom(6 * MiB)
    server.put("20250428.IPI", data)
    env = server.env(port=relay.port)
    assert run_job(env, server.tmp / "cwd").code == 0
    # As if killed right after the rename in LOCAL_DIR: nothing published or recorded.
    (server.served / "20250428.IPI").unlink()
    server.ledger.unlink()
    server.record.unlink()
    relay.reset_counters()

    result = run_job(env, server.tmp / "cwd")

    assert result.code == 0, result.output
    assert relay.bytes_down < OVERHEAD, "the complete local file is not downloaded again"
    assert_published(server, "20250428.IPI", data)
    assert server.record.read_text().strip() == "20250428.IPI"
    assert [e["name"] for e in ledger_entries(server)] == ["20250428.IPI"]


def test_crash_between_ledger_and_record_is_repaired(server: Server, run: Runner) -> None:
    server.put("20250427.IPI", b"one" * 1000)
    server.put("20250428.IPI", b"two" * 1000)
    assert run(SELECT_MODE="all").code == 0
    server.record.write_text("20250427.IPI\n")  # the record write was lost

    result = run()

    assert result.code == 0, result.output
    assert server.record.read_text().strip() == "20250428.IPI"
    assert len(ledger_entries(server)) == 2, "nothing fetched twice"


def test_unreadable_file_in_all_mode_fails_alone_and_holds_the_record(unprivileged_server: Server) -> None:
    server = unprivileged_server
    server.put("20250401.IPI", b"a" * 5000)
    bad = server.put("20250402.IPI", b"b" * 5000)
    server.put("20250403.IPI", b"c" * 5000)
    bad.chmod(0o000)
    env = server.env(SELECT_MODE="all")

    result = run_job(env, server.tmp / "cwd")

    assert result.code == 1, result.output
    assert "20250402.IPI" in result.stderr.splitlines()[-1] or "20250402.IPI" in result.stderr
    assert (server.served / "20250401.IPI").exists()
    assert (server.served / "20250403.IPI").exists(), "the job goes on with the other files"
    assert not (server.served / "20250402.IPI").exists()
    assert server.record.read_text().strip() == "20250401.IPI", "the record never passes an unfetched file"

    bad.chmod(0o644)
    again = run_job(env, server.tmp / "cwd")

    assert again.code == 0, again.output
    assert file_sha256(server.served / "20250402.IPI") == sha256(b"b" * 5000)
    assert server.record.read_text().strip() == "20250403.IPI"
    assert [e["name"] for e in ledger_entries(server)] == ["20250401.IPI", "20250403.IPI", "20250402.IPI"]


def test_sigterm_stops_quickly_and_next_run_resumes(server: Server, relay: Relay) -> None:
    data = os.urandom(24 * MiB)
    server.put("20250428.IPI", data)
    relay.delay = 0.002  # a slow link, so the signal lands mid-file
    env = server.env(port=relay.port)
    proc = start_job(env, server.tmp / "cwd")
    part = server.local / "20250428.IPI.part"
    wait_until(lambda: size_of(part) >= MiB, 60, interval=0.05)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)

    assert proc.returncode == 143, err
    assert time.monotonic() - sent < 5
    assert "Traceback" not in err
    kept = part.stat().st_size
    assert 0 < kept < len(data)
    assert part.read_bytes() == data[:kept]

    relay.delay = 0.0
    result = run_job(env, server.tmp / "cwd")
    assert result.code == 0, result.output
    assert_published(server, "20250428.IPI", data)


def test_sigint_exits_130(server: Server, relay: Relay) -> None:
    server.put("20250428.IPI", os.urandom(16 * MiB))
    relay.set_fault(stall_after=2 * MiB)
    proc = start_job(server.env(port=relay.port), server.tmp / "cwd")
    part = server.local / "20250428.IPI.part"
    wait_until(lambda: size_of(part) > 0, 60, interval=0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)

    assert proc.returncode == 130, err
    assert "Traceback" not in err


def test_json_log_format_writes_one_object_per_line(server: Server, run: Runner) -> None:
    server.put("20250428.IPI", b"x" * 1000)

    result = run(LOG_FORMAT="json")

    assert result.code == 0, result.output
    lines = [json.loads(line) for line in server.log.read_text().splitlines()]
    assert lines and all({"time", "level", "message"} <= set(line) for line in lines)
    assert any(line.get("sha256") for line in lines), "context fields are JSON fields"
    console = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    assert console[-1]["message"].startswith("run finished: exit 0")


def test_dry_run_lists_plan_and_changes_nothing(server: Server, run: Runner) -> None:
    server.put("20250428.IPI", b"x" * 1000)
    server.put("undated.IPI", b"y")

    result = run("--dry-run")

    assert result.code == 0, result.output
    assert "would download: 20250428.IPI (1000 bytes)" in result.stdout
    assert "skip: undated.IPI: no YYYYMMDD date in the name" in result.stdout
    for path in (server.local, server.served, server.record, server.ledger):
        assert not path.exists()


def test_pipelined_reader_handles_server_read_cap(server: Server, run: Runner) -> None:
    """OpenSSH serves at most 255 KiB per read; larger requests must still yield exact bytes."""
    data = os.urandom(3 * MiB + 12345)
    server.put("20250428.IPI", data)

    result = run(CHUNK_SIZE=4 * MiB, PIPELINE_DEPTH=3)

    assert result.code == 0, result.output
    assert_published(server, "20250428.IPI", data)


def test_large_file_in_small_requests(server: Server, run: Runner, tmp_path: Path) -> None:
    data = os.urandom(2 * MiB + 1)
    server.put("20250428.IPI", data)

    result = run(CHUNK_SIZE=4096, PIPELINE_DEPTH=1)

    assert result.code == 0, result.output
    assert_published(server, "20250428.IPI", data)


def test_many_skipped_names_are_counted_not_each_logged(server: Server, run: Runner) -> None:
    for i in range(35):
        server.put(f"IPI_undated_{i:03d}.dat", b"u")
    server.put("20250428.IPI", b"dated")

    result = run()

    assert result.code == 0, result.output
    assert result.stderr.count("no YYYYMMDD date in the name") == 21  # 20 named, then one count
    assert "15 more file(s) skipped: no YYYYMMDD date in the name" in result.stderr


def test_small_file_cut_mid_transfer_leaves_nothing_behind(server: Server, relay: Relay) -> None:
    data = os.urandom(900 * 1024)  # at most 1 MiB: fetched whole, without resume state
    server.put("20250428.IPI", data)
    env = server.env(port=relay.port, RETRY_MAX_TRIES=1)
    relay.set_fault(cut_after=300 * 1024)

    first = run_job(env, server.tmp / "cwd")

    assert first.code == 1, first.output
    assert list(server.local.iterdir()) == [], "no partial, no metadata, no temp file"
    second = run_job(env, server.tmp / "cwd")
    assert second.code == 0, second.output
    assert_published(server, "20250428.IPI", data)
