"""Catching up on a backlog: several files at once over one connection, against real servers."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import syscall_order
from conftest import Server, file_sha256, job_env, run_job, sha256, start_job, temp_names, wait_until
from hostile_sftp import HostileSftpServer, Lies, hostile_env
from proftpd import Proftpd
from relay import Relay
from test_proof_e2e import MTIME, proftpd_env
from test_resilience import clean_state, kill_campaign, kill_campaign_seed

from app.storage.group_durability import PAUSE_ENV
from app.storage.state import read_ledger

MiB = 1024 * 1024
VERIFY_WINDOW = MiB
FALLBACK = "fetching one file at a time"


def put_all(server: Server, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        server.put(name, data)


def published(server: Server) -> list[str]:
    """Names in the order the job published them, from its log."""
    return [
        line.split(": published")[0].rsplit(" ", 1)[-1]
        for line in server.log.read_text().splitlines()
        if ": published to SERVER_DIR" in line
    ]


def assert_all_served_once(server: Server, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        assert file_sha256(server.served / name) == sha256(data), name
    names = [entry.name for entry in read_ledger(server.ledger).entries]
    assert sorted(names) == sorted(files), "every file recorded exactly once"


def test_small_files_are_in_flight_together_and_all_are_recorded_once(server: Server, relay: Relay) -> None:
    files = {"20250101.IPI": os.urandom(MiB)}
    files |= {f"202501{day:02d}.IPI": os.urandom(3000 + day) for day in range(2, 21)}
    put_all(server, files)
    relay.rate = 4 * MiB  # the first file takes a quarter of a second

    # VERIFY_SOURCE=off: on a fresh session the first file would go alone, to learn
    # whether the server computes digests (test_a_backlog_keeps_each_files_proof...).
    env = server.env(port=relay.port, SELECT_MODE="all", CONCURRENT_FILES=8, VERIFY_SOURCE="off")
    result = run_job(env, server.tmp / "cwd")

    assert result.code == 0, result.output
    lines = server.log.read_text().splitlines()
    first_done = next(n for n, line in enumerate(lines) if "20250101.IPI: published" in line)
    started_before = [line for line in lines[:first_done] if ": downloading" in line]
    assert len(started_before) >= 8, "at least eight files were under way before the first was done"
    assert sorted(published(server)) == sorted(files)
    assert_all_served_once(server, files)
    assert server.record.read_text().strip() == "20250120.IPI"
    assert FALLBACK not in result.stderr


def test_unreadable_file_fails_alone_while_the_others_complete_and_the_record_waits_for_it(
    unprivileged_server: Server,
) -> None:
    server = unprivileged_server
    files = {f"202504{day:02d}.IPI": os.urandom(20_000 + day) for day in range(1, 13)}
    put_all(server, files)
    (server.remote / "20250403.IPI").chmod(0o000)
    env = server.env(SELECT_MODE="all", CONCURRENT_FILES=8)

    result = run_job(env, server.tmp / "cwd")

    assert result.code == 1, result.output
    assert "20250403.IPI" in result.stderr and "Permission denied" in result.stderr
    assert "Traceback" not in result.stderr
    assert FALLBACK not in result.stderr, "a file's own error is not a limit on open files"
    others = {name: data for name, data in files.items() if name != "20250403.IPI"}
    assert_all_served_once(server, others)
    assert not (server.served / "20250403.IPI").exists()
    assert server.record.read_text().strip() == "20250402.IPI", "the record never passes an unfetched file"

    (server.remote / "20250403.IPI").chmod(0o644)
    again = run_job(env, server.tmp / "cwd")

    assert again.code == 0, again.output
    assert_all_served_once(server, files)
    assert server.record.read_text().strip() == "20250412.IPI"


@pytest.fixture
def one_open_file(tmp_path: Path, keys: dict[str, Path]) -> Iterator[HostileSftpServer]:
    server = HostileSftpServer(tmp_path, Path(f"{keys['client']}.pub"), Lies(max_open_files=1)).start()
    try:
        yield server
    finally:
        server.stop()


def test_server_allowing_one_open_file_gets_one_at_a_time_after_one_log_line(
    one_open_file: HostileSftpServer, tmp_path: Path, keys: dict[str, Path]
) -> None:
    files = {f"202505{day:02d}.IPI".encode(): os.urandom(1000 * day) for day in range(1, 11)}
    one_open_file.lies.files.update(files)

    result = run_job(hostile_env(one_open_file, tmp_path, keys["client"], CONCURRENT_FILES=8), tmp_path / "cwd")

    assert result.code == 0, result.output
    assert result.stderr.count(FALLBACK) == 1
    for name, data in files.items():
        assert (tmp_path / "jail" / "server" / name.decode()).read_bytes() == data


def test_empty_data_replies_fail_each_file_instead_of_asking_again_forever(
    tmp_path: Path, keys: dict[str, Path]
) -> None:
    # A READ inside the listed size answered with empty DATA, neither data nor end of
    # file. The scheduler used to ask again for the same bytes, forever: with requests
    # gathered for one write nothing ever blocked, and memory grew until the process
    # was killed. The job's address space is capped so that such a loop ends quickly.
    server = HostileSftpServer(tmp_path, Path(f"{keys['client']}.pub"), Lies(empty_data=True)).start()
    files = {f"202506{day:02d}.IPI": os.urandom(4096) for day in (1, 2, 3)}
    server.lies.files.update({name.encode(): data for name, data in files.items()})
    env = hostile_env(server, tmp_path, keys["client"], CONCURRENT_FILES=8, VERIFY_SOURCE="off")
    proc = start_job(
        env,
        tmp_path / "cwd",
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (2 * 1024 * MiB, 2 * 1024 * MiB)),
    )
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        server.stop()

    assert proc.returncode == 1, err
    assert "Traceback" not in err
    for name in files:
        assert f"{name}: file ended at byte 0, before its listed size of 4096" in err
    assert not list((tmp_path / "jail" / "server").glob("*.IPI"))


def test_sigterm_mid_batch_stops_within_2_s_and_the_next_run_completes(server: Server, relay: Relay) -> None:
    files = {f"2025{1 + i // 28:02d}{1 + i % 28:02d}.IPI": os.urandom(64 * 1024) for i in range(80)}
    files |= {f"202512{day:02d}.IPI": os.urandom(3 * MiB) for day in range(1, 4)}  # written to partials
    put_all(server, files)
    relay.rate = MiB  # about 5 s for the batch: the signal lands mid-batch
    env = server.env(port=relay.port, SELECT_MODE="all", CONCURRENT_FILES=8)
    proc = start_job(env, server.tmp / "cwd")
    assert wait_until(lambda: server.served.exists() and len(list(server.served.iterdir())) >= 10, 60)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)

    assert proc.returncode == 143, err
    assert time.monotonic() - sent < 2
    assert "Traceback" not in err
    assert temp_names(server.local) == [] and temp_names(server.served) == []
    for part in server.local.glob("*.part"):
        kept = part.read_bytes()
        assert kept == files[part.name.removesuffix(".part")][: len(kept)], "a partial is a valid prefix"
    done = {entry.name for entry in read_ledger(server.ledger).entries}
    assert done and len(done) < len(files), "what was published before the signal is recorded"
    for name in done:
        assert file_sha256(server.served / name) == sha256(files[name])

    relay.rate = None
    result = run_job(env, server.tmp / "cwd")
    assert result.code == 0, result.output
    assert_all_served_once(server, files)


def test_kill_9_campaign_with_concurrent_files_never_loses_or_duplicates_a_file(server: Server, relay: Relay) -> None:
    seed, rng = kill_campaign_seed()
    files = {f"202504{day:02d}.IPI": rng.randbytes(rng.randint(10_000, MiB)) for day in range(1, 25)}
    files |= {f"202505{day:02d}.IPI": rng.randbytes(rng.randint(2 * MiB, 3 * MiB)) for day in range(1, 3)}
    kill_campaign(server, relay, files, seed, rng, min_kills=8, CONCURRENT_FILES=8)


def test_cut_on_loopback_wastes_at_most_the_verification_window_and_a_mib(server: Server, relay: Relay) -> None:
    data = os.urandom(40 * MiB)
    server.put("20250428.IPI", data)
    wasted: list[int] = []
    # Rarely, on a loaded machine, one read's reply is still missing at the cut while
    # later ones have arrived: those cannot join the partial, which must stay one
    # prefix. So the bound must hold on one of a few fresh runs; a job that kept no
    # reply received before a cut (as before) wastes the window on every run.
    for attempt in range(3):
        relay.set_fault(cut_after=30 * MiB)
        relay.reset_counters()
        run = server.tmp / f"run{attempt}"
        env = server.env(
            port=relay.port,
            LOCAL_DIR=run / "local",
            SERVER_DIR=run / "server",
            LOG_FILE=run / "job.log",
            LAST_FILE_RECORD=run / "last_file.txt",
        )

        result = run_job(env, run / "cwd")

        assert result.code == 0, result.output
        assert file_sha256(run / "server" / "20250428.IPI") == sha256(data)
        # Every reply that arrived before the cut is kept, up to the SSH window of them.
        wasted.append(relay.bytes_down - len(data))
        if wasted[-1] <= VERIFY_WINDOW + MiB:
            return
    pytest.fail(f"bytes fetched beyond the file's size on each run: {wasted}")


def test_reconnecting_within_a_run_rechecks_a_small_window_of_its_own_partial(server: Server, relay: Relay) -> None:
    data = os.urandom(16 * MiB)
    server.put("20250428.IPI", data)
    relay.set_fault(cut_after=4 * MiB, connections=3)

    result = run_job(server.env(port=relay.port, RESUME_VERIFY_BYTES=2 * MiB), server.tmp / "cwd")

    assert result.code == 0, result.output
    assert result.stderr.count("resuming at byte") == 3
    assert file_sha256(server.served / "20250428.IPI") == sha256(data)
    # Per cut: the reply cut in half, a new login and listing, and the 16 KiB recheck;
    # not the 2 MiB window and the sample again (over 2 MiB per cut before).
    assert relay.bytes_down <= len(data) + 3 * 512 * 1024, relay.bytes_down - len(data)


def test_a_backlog_keeps_each_files_proof_and_remote_after_action(server: Server) -> None:
    """Fetched together or alone, every file is proven as VERIFY_SOURCE asks (a file
    with a checksum file by that file, the rest by size and mtime on a server
    without digests), and its REMOTE_AFTER action follows its ledger line."""
    files = {f"202502{day:02d}.IPI": os.urandom(5000 + day) for day in range(1, 13)}
    put_all(server, files)
    checked = "20250207.IPI"
    (server.remote / f"{checked}.sha256").write_text(f"{sha256(files[checked])}  {checked}\n")

    result = run_job(server.env(SELECT_MODE="all", REMOTE_AFTER="delete"), server.tmp / "cwd")

    assert result.code == 0, result.output
    assert_all_served_once(server, files)
    by = {entry.name: entry.verified_by for entry in read_ledger(server.ledger).entries}
    assert by.pop(checked) == f"checksum-file:{checked}.sha256"
    assert set(by.values()) == {"size+mtime"}
    assert not any((server.remote / name).exists() for name in files), "every delivered file was deleted"
    assert not (server.remote / f"{checked}.sha256").exists(), "its checksum file followed it"
    assert not (server.served / f"{checked}.sha256").exists(), "a checksum file is never data"


def test_a_backlog_on_a_server_with_digests_proves_every_file_by_them(proftpd: Proftpd, tmp_path: Path) -> None:
    """ProFTPD hashes files itself: no file of a backlog falls back to size and mtime."""
    files = {f"202503{day:02d}.IPI": os.urandom(7000 + day) for day in range(1, 9)}
    for name, data in files.items():
        proftpd.put(name, data, MTIME)

    result = run_job(proftpd_env(proftpd, tmp_path, SELECT_MODE="all"), tmp_path / "cwd")

    assert result.code == 0, result.output
    entries = read_ledger(tmp_path / "state" / "completed_files.jsonl").entries
    assert sorted(e.name for e in entries) == sorted(files)
    assert {e.verified_by.split(":")[0] for e in entries if e.verified_by} == {"check-file-handle"}
    assert all(e.verified_by for e in entries)


def test_no_final_name_is_renamed_into_place_before_a_sync_covers_its_bytes(server: Server, tmp_path: Path) -> None:
    """Traced with strace: every rename to a final name, in LOCAL_DIR and SERVER_DIR,
    comes after a syncfs or an fsync of that very file that began after its last
    write. Small files go in groups (one syncfs each), a 2 MiB one through its
    partial, a 5 MiB one alone (transfer.download and publish.publish)."""
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed (apt-get install strace)")
    files = {f"202506{day:02d}.IPI": os.urandom(1000 * day) for day in range(1, 29)}
    files["20250629.IPI"] = os.urandom(2 * MiB)
    files["20250630.IPI"] = os.urandom(5 * MiB)
    put_all(server, files)
    trace = tmp_path / "strace.txt"
    settings = server.env(SELECT_MODE="all", CONCURRENT_FILES=8, VERIFY_SOURCE="off")
    cwd = server.tmp / "cwd"
    cwd.mkdir(parents=True, exist_ok=True)
    command = ["strace", "-f", "-ttt", "-T", "-qq", "-o", str(trace), "-e", f"trace={syscall_order.TRACED}"]
    proc = subprocess.run(
        [*command, sys.executable, "-m", "app"], cwd=cwd, env=job_env(settings, cwd), capture_output=True, text=True
    )
    if proc.returncode != 0 and "ptrace" in proc.stderr:
        pytest.skip(f"strace cannot trace here: {proc.stderr.strip().splitlines()[-1]}")

    assert proc.returncode == 0, proc.stderr
    assert_all_served_once(server, files)
    renames = syscall_order.renames_and_cover(syscall_order.parse(trace.read_text()), set(files))
    assert sorted(r.final for r in renames) == sorted([*files, *files]), "one rename per file in each directory"
    uncovered = [(r.temp, r.final) for r in renames if not r.covered]
    assert uncovered == [], "renamed before a sync covered their bytes"


def test_kill_9_between_a_groups_sync_and_its_renames_never_publishes_wrong_bytes(server: Server, relay: Relay) -> None:
    """Kills land while a group is synced and not yet renamed (a test hook pauses
    there): after every kill each final name holds exactly its file's bytes, and the
    runs that follow deliver and record every file exactly once."""
    seed, rng = kill_campaign_seed()
    files = {f"202507{day:02d}.IPI": rng.randbytes(rng.randint(1000, 300_000)) for day in range(1, 31)}
    put_all(server, files)
    relay.rate = 4 * MiB
    settings = server.env(
        port=relay.port, SELECT_MODE="all", CONCURRENT_FILES=8, VERIFY_SOURCE="off", **{PAUSE_ENV: 0.4}
    )
    in_window = kills = 0
    for _ in range(30):
        if kills >= 10:
            break
        proc = start_job(settings, server.tmp / "cwd")
        # Kill once a group is synced and held before its renames: its temps are complete.
        held = wait_until(lambda: len(temp_names(server.served)) >= 2, rng.uniform(0.5, 3))
        time.sleep(rng.uniform(0, 0.3))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
            in_window += held and bool(temp_names(server.served))
        proc.communicate(timeout=60)
        for name in os.listdir(server.served):
            if name in files:
                assert file_sha256(server.served / name) == sha256(files[name]), f"seed {seed}: {name}"
        for name in os.listdir(server.local):
            if name in files:
                assert file_sha256(server.local / name) == sha256(files[name]), f"seed {seed}: {name} in LOCAL_DIR"
    assert kills >= 5, f"seed {seed}: only {kills} runs were killed"
    assert in_window >= 3, f"seed {seed}: only {in_window} kills left synced temps unrenamed"

    relay.rate = None
    final = run_job(settings, server.tmp / "cwd")

    assert final.code == 0, f"seed {seed}: {final.output}"
    assert_all_served_once(server, files)
    assert clean_state(server) == [], f"seed {seed}: stray files {clean_state(server)}"
