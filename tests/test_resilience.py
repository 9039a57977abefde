"""Faults injected for real: dead links, repeated cuts, rekeys, full disks, growing files, kill -9."""

from __future__ import annotations

import os
import random
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from conftest import Server, file_sha256, job_env, run_job, sha256, size_of, small_filesystem, start_job, wait_until
from relay import Relay

from app.storage.state import read_ledger

MiB = 1024 * 1024
VERIFY_WINDOW = MiB
OVERHEAD = 256 * 1024


def clean_state(server: Server) -> list[str]:
    """Names of stray temp or partial files anywhere the job writes."""
    stray: list[str] = []
    for directory in (server.local, server.served, server.record.parent):
        if directory.exists():
            stray += [p.name for p in directory.iterdir() if p.name.startswith(".") or ".part" in p.name]
    return stray


def test_dead_link_without_reset_is_dropped_after_io_timeout(server: Server, relay: Relay) -> None:
    data = os.urandom(8 * MiB)
    server.put("20250428.IPI", data)
    relay.set_fault(stall_after=3 * MiB)  # forwards nothing more, but never closes
    started = time.monotonic()

    result = run_job(server.env(port=relay.port, IO_TIMEOUT=5, KEEPALIVE_INTERVAL=2), server.tmp / "cwd")

    assert result.code == 0, result.output
    assert time.monotonic() - started < 60
    assert file_sha256(server.served / "20250428.IPI") == sha256(data)
    assert "timed out" in result.stderr
    assert relay.connections == 2


def test_repeated_cuts_in_one_run_still_complete_with_little_waste(server: Server, relay: Relay) -> None:
    data = os.urandom(12 * MiB)
    server.put("20250428.IPI", data)
    relay.set_fault(cut_after=3 * MiB, connections=3)

    result = run_job(server.env(port=relay.port), server.tmp / "cwd")

    assert result.code == 0, result.output
    assert relay.connections == 4
    assert file_sha256(server.served / "20250428.IPI") == sha256(data)
    assert relay.bytes_down <= len(data) + 3 * (VERIFY_WINDOW + 2 * OVERHEAD) + OVERHEAD
    assert result.stderr.count("resuming at byte") == 3


def test_download_survives_many_rekeys(server: Server) -> None:
    server.sshd.stop()
    server.sshd.extra_config.append("LogLevel DEBUG1")
    server.sshd.start()
    data = os.urandom(12 * MiB)
    server.put("20250428.IPI", data)

    result = run_job(server.env(SSH_REKEY_BYTES=MiB), server.tmp / "cwd")

    assert result.code == 0, result.output
    assert file_sha256(server.served / "20250428.IPI") == sha256(data)
    kex = server.sshd.log_text().count("SSH2_MSG_KEXINIT received")
    assert kex >= 4, f"expected the first key exchange and at least 3 rekeys, sshd saw {kex}"


def run_with_file_limit(env: dict[str, str], cwd: Path, limit: int) -> tuple[int, str]:
    """Stand-in for a full disk without root: writes past ``limit`` bytes fail with EFBIG."""

    def limit_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    cwd.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [sys.executable, "-m", "app"],
        cwd=cwd,
        env=job_env(env, cwd),
        capture_output=True,
        text=True,
        preexec_fn=limit_files,
        timeout=120,
    )
    return proc.returncode, proc.stderr


def fill_up(directory: Path) -> Path:
    """Write into ``directory`` until its file system is full (ENOSPC); the filler written."""
    filler = directory / "filler"
    with open(filler, "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * MiB)
                fh.flush()
        except OSError:
            pass
    return filler


def fill_when(path: Path, size: int, directory: Path) -> threading.Thread:
    """Fill ``directory``'s file system once ``path`` holds ``size`` bytes: a disk that
    fills during a download (another writer), after the free-space check let it start."""

    def later() -> None:
        if wait_until(lambda: size_of(path) >= size, 60):
            fill_up(directory)

    thread = threading.Thread(target=later, daemon=True)
    thread.start()
    return thread


def test_full_local_dir_exits_5_and_keeps_a_valid_partial(server: Server, relay: Relay) -> None:
    data = os.urandom(8 * MiB)
    server.put("20250428.IPI", data)
    # Slow enough that the disk fills while the download is under way.
    relay.rate = 2 * MiB
    disk = server.tmp / "disk"
    env = server.env(port=relay.port, LOCAL_DIR=disk / "local")
    local = disk / "local"
    part = local / "20250428.IPI.part"
    with small_filesystem(disk, 16 * MiB) as mounted:
        if mounted:
            # The file fits when the run starts (the free-space check passes); another
            # writer then fills the disk under it.
            filler = fill_when(part, 2 * MiB, disk)
            result = run_job(env, server.tmp / "cwd")
            filler.join()
            code, err = result.code, result.stderr
        else:
            env["LOCAL_DIR"] = str(server.local)
            local, part = server.local, server.local / "20250428.IPI.part"
            code, err = run_with_file_limit(env, server.tmp / "cwd", 3 * MiB)

        assert code == 5, err
        assert "Traceback" not in err
        assert str(local) in err
        assert "no space left" in err or "File too large" in err
        kept = part.stat().st_size
        assert 0 < kept < len(data)
        assert part.read_bytes() == data[:kept]
        assert not (server.served / "20250428.IPI").exists()

        if mounted:
            (disk / "filler").unlink()
        relay.rate = None
        result = run_job(env, server.tmp / "cwd")
        assert result.code == 0, result.output
        assert f"resuming at byte {kept}" in result.stderr
        assert file_sha256(server.served / "20250428.IPI") == sha256(data)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs a small mounted file system for SERVER_DIR")
def test_full_server_dir_exits_5_and_never_shows_a_truncated_file(server: Server, relay: Relay) -> None:
    data = os.urandom(6 * MiB)
    server.put("20250428.IPI", data)
    relay.rate = 2 * MiB
    disk = server.tmp / "disk"
    served = disk / "server"
    env = server.env(port=relay.port, SERVER_DIR=served)
    with small_filesystem(disk, 8 * MiB) as mounted:
        assert mounted
        # The file fits in SERVER_DIR when its download starts; the disk is full when it is published.
        filler = fill_when(server.local / "20250428.IPI.part", MiB, disk)
        result = run_job(env, server.tmp / "cwd")
        filler.join()

        assert result.code == 5, result.output
        assert "SERVER_DIR" in result.stderr or str(served) in result.stderr
        assert list(served.iterdir()) == [], "no final file and no temp file left behind"
        assert file_sha256(server.local / "20250428.IPI") == sha256(data)
        assert not server.record.exists()

        (disk / "filler").unlink()
        relay.rate = None
        relay.reset_counters()
        result = run_job(env, server.tmp / "cwd")

        assert result.code == 0, result.output
        assert relay.bytes_down < OVERHEAD, "the verified local file is published, not fetched again"
        assert file_sha256(served / "20250428.IPI") == sha256(data)


def test_file_growing_during_download_is_not_recorded(server: Server, relay: Relay) -> None:
    path = server.put("20250428.IPI", os.urandom(8 * MiB))
    relay.delay = 0.002
    env = server.env(port=relay.port)
    part = server.local / "20250428.IPI.part"

    def append_when_started() -> None:
        wait_until(lambda: size_of(part) >= MiB, 30)
        with open(path, "ab") as fh:
            fh.write(b"more data arriving")

    writer = threading.Thread(target=append_when_started)
    writer.start()
    result = run_job(env, server.tmp / "cwd")
    writer.join()

    assert result.code == 1, result.output
    # Caught by the read past the listed end, or by the stat after the download.
    assert "longer than its listed size" in result.stderr or "changed during the download" in result.stderr
    assert not (server.local / "20250428.IPI").exists()
    assert not (server.served / "20250428.IPI").exists()
    assert not server.record.exists()

    relay.delay = 0.0
    again = run_job(env, server.tmp / "cwd")
    assert again.code == 0, again.output
    assert file_sha256(server.served / "20250428.IPI") == file_sha256(path)


def test_remote_file_vanishing_before_download_fails_alone_in_all_mode(server: Server, relay: Relay) -> None:
    server.put("20250401.IPI", os.urandom(4 * MiB))
    doomed = server.put("20250402.IPI", b"gone soon")
    server.put("20250403.IPI", b"third")
    relay.delay = 0.003
    env = server.env(port=relay.port, SELECT_MODE="all")
    first_part = server.local / "20250401.IPI.part"

    def remove_when_started() -> None:
        wait_until(first_part.exists, 30, interval=0.01)
        doomed.unlink()

    remover = threading.Thread(target=remove_when_started)
    remover.start()
    result = run_job(env, server.tmp / "cwd")
    remover.join()

    assert result.code == 1, result.output
    assert "20250402.IPI" in result.stderr and "No such file" in result.stderr
    assert (server.served / "20250401.IPI").exists()
    assert (server.served / "20250403.IPI").read_bytes() == b"third"
    assert server.record.read_text().strip() == "20250401.IPI"


def kill_at_random(
    settings: dict[str, str],
    cwd: Path,
    rng: random.Random,
    *,
    kills: int,
    runs: int,
    args: Sequence[str] = (),
    within: tuple[float, float] = (0.1, 1.5),
    after: Callable[[bool], None] | None = None,
) -> int:
    """Start the job (``sftp-ipi ARGS``) up to ``runs`` times, SIGKILL each run still
    going after a random moment ``within`` seconds, until ``kills`` were killed; how
    many were. ``after(killed)`` checks (and may reset) the state after each run."""
    killed = started = 0
    while killed < kills and started < runs:
        started += 1
        proc = start_job(settings, cwd, *args)
        time.sleep(rng.uniform(*within))
        was_killed = proc.poll() is None
        if was_killed:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.communicate(timeout=60)
        if after is not None:
            after(was_killed)
    return killed


def kill_campaign_seed() -> tuple[int, random.Random]:
    """The campaign's seed (KILL_SEED reproduces a run) and its random source."""
    seed = int(os.environ.get("KILL_SEED", random.randrange(1 << 30)))
    print(f"kill campaign seed: KILL_SEED={seed}")
    return seed, random.Random(seed)


def kill_campaign(
    server: Server, relay: Relay, files: dict[str, bytes], seed: int, rng: random.Random, min_kills: int, **env: object
) -> None:
    """Runs killed with SIGKILL at random moments, then one clean run: every file is
    delivered and recorded exactly once, with little re-fetched and nothing stray."""
    for name, data in files.items():
        server.put(name, data)
    relay.rate = 2 * MiB  # slow enough that kills land mid-file, mid-publish and mid-record
    settings = server.env(port=relay.port, SELECT_MODE="all", **env)
    kills = kill_at_random(settings, server.tmp / "cwd", rng, kills=12, runs=40)
    assert kills >= min_kills, f"seed {seed}: only {kills} runs were killed"

    relay.rate = None
    final = run_job(settings, server.tmp / "cwd")

    assert final.code == 0, f"seed {seed}: {final.output}"
    for name, data in files.items():
        assert file_sha256(server.local / name) == sha256(data), f"seed {seed}: {name} in LOCAL_DIR"
        assert file_sha256(server.served / name) == sha256(data), f"seed {seed}: {name} in SERVER_DIR"
    names = [entry.name for entry in read_ledger(server.ledger).entries]
    assert sorted(names) == sorted(files), f"seed {seed}: ledger {names}"
    assert server.record.read_text().strip() == max(files)
    assert clean_state(server) == [], f"seed {seed}: stray files {clean_state(server)}"
    total = sum(len(d) for d in files.values())
    assert relay.bytes_down <= total + kills * (VERIFY_WINDOW + 4 * MiB), f"seed {seed}: too much re-fetched"


def test_kill_9_campaign_never_loses_or_duplicates_a_file(server: Server, relay: Relay) -> None:
    seed, rng = kill_campaign_seed()
    files = {f"202504{day:02d}.IPI": rng.randbytes(rng.randint(2 * MiB, 5 * MiB)) for day in range(1, 7)}
    kill_campaign(server, relay, files, seed, rng, min_kills=10)


def test_server_that_never_starts_sftp_cannot_hang_the_run(server: Server) -> None:
    server.sshd.stop()
    server.sshd.subsystem = "/bin/sleep 600"  # accepts the subsystem request, then never speaks SFTP
    server.sshd.start()
    started = time.monotonic()

    result = run_job(server.env(CONNECT_TIMEOUT=1, RETRY_MAX_TRIES=2), server.tmp / "cwd")

    assert result.code == 1, result.output
    assert time.monotonic() - started < 30
    assert "no SFTP session within 3 s" in result.stderr
