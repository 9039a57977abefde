"""``make bench``: the job against OpenSSH ``sftp``, rclone, lftp and the naive paramiko loop, side by side.

Every client downloads the same files from the same private sshd, interleaved,
several times; the table shows the median MB/s (bytes over the whole client
process's wall time, start-up and connect included), CPU seconds and peak RSS
per client and scenario, and the ratios the targets are stated in. Latency
comes from bench/delay_relay.py (this kernel has no netem). The catch-up
scenarios (a backlog of many files) add ``rclone copy`` (its SFTP hash check
off: it runs ``md5sum`` over a shell session per file, which a locked-down
server does not allow) and ``lftp mirror``; ``make bench`` installs both.

    python bench/run.py [--quick] [--reps N] [--only SCENARIO ...] [--profile DIR]

The profile behind a figure: ``python bench/run.py --only scale --reps 1 --profile
/tmp/prof`` then ``python bench/profile_top.py /tmp/prof/*.txt`` counts the stacks.
"""

from __future__ import annotations

import argparse
import getpass
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from sshd import Sshd, free_port, keygen  # noqa: E402

MiB = 1024 * 1024
# --profile DIR: every job run is recorded by py-spy into DIR (see bench/profile_top.py).
PROFILE_DIR: Path | None = None
# --baseline DIR: the catch-up scenarios also run the job from another checkout (the
# base commit, say), interleaved with this one's runs, so machine drift hits both alike.
BASELINE: Path | None = None


@dataclass
class Sample:
    seconds: float
    cpu: float
    rss_mib: float


@dataclass
class Env:
    """The benchmark's sshd, keys and scratch space."""

    tmp: Path
    sshd: Sshd
    client_key: Path
    remote: Path

    def known_hosts(self, port: int) -> Path:
        path = self.tmp / f"known_hosts_{port}"
        path.write_text(self.sshd.known_hosts_line(port))
        return path


def measure(cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> Sample:
    """Wall time, CPU (user+sys, children included) and peak RSS of one process."""
    # stderr goes to a file: a pipe read only after the process ends would fill
    # up and stall a chatty client, and the stall would be measured as its speed.
    with tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        if status != 0:
            err.seek(0)
            raise RuntimeError(f"{cmd[0]} failed ({status}): {err.read().decode(errors='replace')[-1500:]}")
    return Sample(seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)


class DelayLine:
    """bench/delay_relay.py in its own process, adding ``rtt_ms`` of round trip."""

    def __init__(self, target_port: int, rtt_ms: float) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "bench" / "delay_relay.py"), str(self.port), str(target_port), str(rtt_ms / 2)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


# -- clients ------------------------------------------------------------------


def job_client(
    env: Env,
    port: int,
    names: list[str],
    out: Path,
    *,
    mode: str = "next",
    extra: dict[str, str] | None = None,
    repo: Path = REPO,
) -> Sample:
    settings = {
        "PATH": os.environ["PATH"],
        "HOME": str(env.tmp),
        "PYTHONPATH": str(repo),
        "SFTP_HOST": "127.0.0.1",
        "SFTP_PORT": str(port),
        "SFTP_USER": getpass.getuser(),
        "SFTP_KEY_FILE": str(env.client_key),
        "SFTP_KNOWN_HOSTS": str(env.known_hosts(port)),
        "SFTP_DIR": str(env.remote),
        "FILE_PATTERN": names[0] if len(names) == 1 else "*.IPI",
        "SELECT_MODE": mode,
        "MIN_FILE_AGE": "0",
        "LOCAL_DIR": str(out / "local"),
        "SERVER_DIR": str(out / "server"),
        "LAST_FILE_RECORD": str(out / "state" / "last_file.txt"),
        "LOG_FILE": str(out / "state" / "job.log"),
        "LOG_LEVEL": "WARNING",
        **(extra or {}),
    }
    command = [sys.executable, "-m", "app"]
    if PROFILE_DIR is not None:
        # py-spy's raw stacks (one line a stack, with its sample count) are what the
        # figures in RESULTS.md count; the job's own threads included.
        PROFILE_DIR.mkdir(parents=True, exist_ok=True)
        raw = PROFILE_DIR / f"job-{len(list(PROFILE_DIR.iterdir())):03d}.txt"
        command = ["py-spy", "record", "-f", "raw", "-r", "250", "--threads", "-o", str(raw), "--", *command]
    return measure(command, env=settings, cwd=out)


def sftp_client(env: Env, port: int, names: list[str], out: Path, *, fsync: bool = False) -> Sample:
    out.mkdir(parents=True, exist_ok=True)
    flag = "-f " if fsync else ""
    batch = out / "batch"
    if len(names) == 1:
        batch.write_text(f"get {flag}{env.remote / names[0]} {out / names[0]}\n")
    else:
        batch.write_text(f"get {flag}{env.remote}/*.IPI {out}/\n")
    cmd = [
        "sftp",
        "-q",
        "-b",
        str(batch),
        "-P",
        str(port),
        "-i",
        str(env.client_key),
        "-o",
        f"UserKnownHostsFile={env.known_hosts(port)}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "BatchMode=yes",
        f"{getpass.getuser()}@127.0.0.1",
    ]
    return measure(cmd, cwd=out)


def rclone_client(env: Env, port: int, names: list[str], out: Path, *, transfers: int = 4) -> Sample:
    """``rclone copy`` of the whole directory (every file is due), with its defaults otherwise."""
    out.mkdir(parents=True, exist_ok=True)
    remote = (
        f":sftp,host=127.0.0.1,port={port},user={getpass.getuser()},key_file={env.client_key},"
        f"known_hosts_file={env.known_hosts(port)},disable_hashcheck=true:{env.remote}"
    )
    cmd = ["rclone", "copy", "--transfers", str(transfers), "--include", "*.IPI", remote, str(out / "copy")]
    return measure(cmd, env={**os.environ, "RCLONE_CONFIG": str(out / "rclone.conf")}, cwd=out)


def lftp_client(env: Env, port: int, names: list[str], out: Path, *, parallel: int = 4) -> Sample:
    """``lftp mirror -P N`` of the whole directory over OpenSSH's ssh, key login."""
    out.mkdir(parents=True, exist_ok=True)
    ssh = (
        f"ssh -a -x -i {env.client_key} -o UserKnownHostsFile={env.known_hosts(port)}"
        " -o StrictHostKeyChecking=yes -o BatchMode=yes"
    )
    script = (
        f'set sftp:connect-program "{ssh}"; set net:max-retries 1;'
        f" mirror -P {parallel} --include-glob *.IPI {env.remote} {out / 'copy'}; quit"
    )
    cmd = ["lftp", "-e", script, f"sftp://{getpass.getuser()}:@127.0.0.1:{port}"]
    return measure(cmd, env={**os.environ, "HOME": str(out)}, cwd=out)


def naive_client(env: Env, port: int, names: list[str], out: Path) -> Sample:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        str(REPO / "bench" / "naive.py"),
        "127.0.0.1",
        str(port),
        getpass.getuser(),
        str(env.client_key),
        str(env.known_hosts(port)),
        str(env.remote / names[0]),
        str(out / names[0]),
    ]
    return measure(cmd)


Client = Callable[[Env, int, list[str], Path], Sample]


def run_interleaved(
    env: Env, port: int, clients: dict[str, tuple[Client, list[str], int]], reps: int
) -> dict[str, tuple[list[Sample], int]]:
    """Each client ``reps`` times, in rotating order; returns samples and bytes per run."""
    results: dict[str, list[Sample]] = {name: [] for name in clients}
    order = list(clients)
    for rep in range(reps):
        for name in order[rep % len(order) :] + order[: rep % len(order)]:
            client, names, _ = clients[name]
            out = Path(tempfile.mkdtemp(dir=env.tmp, prefix="out-"))
            try:
                results[name].append(client(env, port, names, out))
            finally:
                shutil.rmtree(out, ignore_errors=True)
    return {name: (samples, clients[name][2]) for name, samples in results.items()}


# -- reporting ----------------------------------------------------------------

ROWS: list[str] = []
# Peak RSS per client in the last catch-up scenario.
PEAK_RSS: dict[str, float] = {}


def report(scenario: str, results: dict[str, tuple[list[Sample], int]]) -> dict[str, float]:
    rates: dict[str, float] = {}
    for name, (samples, size) in results.items():
        mbps = statistics.median(size / s.seconds / 1e6 for s in samples)
        cpu = statistics.median(s.cpu for s in samples)
        rss = max(s.rss_mib for s in samples)
        rates[name] = mbps
        ROWS.append(f"| {scenario} | {name} | {mbps:8.1f} | {cpu:6.2f} | {rss:7.1f} | {len(samples)} |")
        print(ROWS[-1], flush=True)
    return rates


def make_file(path: Path, size: int) -> None:
    rng = random.Random(size)
    with open(path, "wb") as fh:
        left = size
        while left:
            block = min(left, 8 * MiB)
            fh.write(rng.randbytes(block))
            left -= block
    old = time.time() - 3600
    os.utime(path, (old, old))


# -- scenarios ----------------------------------------------------------------


def scenario_transfer(env: Env, label: str, rtt_ms: float, size: int, naive_size: int, reps: int) -> dict[str, float]:
    name, naive_name = f"2025010{len(label)}.IPI", f"2025020{len(label)}.IPI"
    make_file(env.remote / name, size)
    make_file(env.remote / naive_name, naive_size)
    line = DelayLine(env.sshd.port, rtt_ms) if rtt_ms else None
    port = line.port if line else env.sshd.port
    clients: dict[str, tuple[Client, list[str], int]] = {
        "job": (job_client, [name], size),
        "sftp": (sftp_client, [name], size),
        # Like the job, it fsyncs what it downloads: the fair peer for the large-file targets.
        "sftp -f": (lambda e, p, n, o: sftp_client(e, p, n, o, fsync=True), [name], size),
        "naive": (naive_client, [naive_name], naive_size),
    }
    try:
        rates = report(label, run_interleaved(env, port, clients, reps))
    finally:
        if line:
            line.close()
        (env.remote / name).unlink()
        (env.remote / naive_name).unlink()
    return rates


def scenario_relay_cost(env: Env, size: int, reps: int) -> dict[str, float]:
    name = "20250301.IPI"
    make_file(env.remote / name, size)
    line = DelayLine(env.sshd.port, 0)
    try:
        direct = run_interleaved(env, env.sshd.port, {"job direct": (job_client, [name], size)}, reps)
        relayed = run_interleaved(env, line.port, {"job via 0 ms relay": (job_client, [name], size)}, reps)
        return report("relay cost", {**direct, **relayed})
    finally:
        line.close()
        (env.remote / name).unlink()


def scenario_jump(env: Env, rtt_ms: float, size: int, reps: int) -> dict[str, float]:
    """The job direct against the job through a jump host (a second sshd on loopback),
    with ``rtt_ms`` of round trip in front of the first hop either way: the difference
    is the jump host's second encryption layer and its forwarding."""
    name = "20250501.IPI"
    make_file(env.remote / name, size)
    work = env.tmp / "jump"
    work.mkdir(exist_ok=True)
    jump = Sshd(
        workdir=work,
        host_key=keygen(work / "jump_host") if not (work / "jump_host").exists() else work / "jump_host",
        authorized_keys=env.sshd.authorized_keys,
        user=env.sshd.user,
        extra_config=["AllowTcpForwarding yes"],
    ).start()
    to_server = DelayLine(env.sshd.port, rtt_ms)
    to_jump = DelayLine(jump.port, rtt_ms)
    known = env.tmp / "known_hosts_jump"
    known.write_text(env.sshd.known_hosts_line(env.sshd.port) + jump.known_hosts_line(to_jump.port))

    def through_jump(e: Env, port: int, names: list[str], out: Path) -> Sample:
        extra = {"SFTP_JUMP_HOST": f"127.0.0.1:{to_jump.port}", "SFTP_KNOWN_HOSTS": str(known)}
        return job_client(e, env.sshd.port, names, out, extra=extra)

    try:
        direct = run_interleaved(env, to_server.port, {"job direct": (job_client, [name], size)}, reps)
        jumped = run_interleaved(env, env.sshd.port, {"job via jump host": (through_jump, [name], size)}, reps)
        return report(f"{rtt_ms:.0f} ms RTT, jump host", {**direct, **jumped})
    finally:
        to_server.close()
        to_jump.close()
        jump.stop()
        (env.remote / name).unlink()


def scenario_memory(env: Env, size: int) -> float:
    name = "20250401.IPI"
    make_file(env.remote / name, size)
    try:
        results = run_interleaved(env, env.sshd.port, {f"job {size // MiB} MiB": (job_client, [name], size)}, 1)
        report("memory", results)
        return max(s.rss_mib for s in results[f"job {size // MiB} MiB"][0])
    finally:
        (env.remote / name).unlink()


def scenario_catch_up(
    env: Env, count: int, size: int, reps: int, rtt_ms: float = 0, peers: bool = True, concurrent: str | None = None
) -> dict[str, float]:
    """A backlog of ``count`` files of ``size`` bytes, every client fetching all of them
    (without ``peers``, the job alone); median seconds per client. ``concurrent``
    sets the job's CONCURRENT_FILES."""
    catch = env.remote / "catch-up"
    catch.mkdir()
    for i in range(count):
        make_file(catch / f"2024{1 + i // 28 % 12:02d}{1 + i % 28:02d}_{i:04d}.IPI", size)
    saved = env.remote
    env.remote = catch
    names = sorted(p.name for p in catch.iterdir())
    extra = {"CONCURRENT_FILES": concurrent} if concurrent else None
    job = job_name(concurrent)
    line = DelayLine(env.sshd.port, rtt_ms) if rtt_ms else None
    port = line.port if line else env.sshd.port
    total = count * size
    try:
        clients: dict[str, tuple[Client, list[str], int]] = {
            job: (lambda e, p, n, o: job_client(e, p, n, o, mode="all", extra=extra), names, total),
        }
        if BASELINE is not None:
            clients["job baseline"] = (
                lambda e, p, n, o: job_client(e, p, n, o, mode="all", extra=extra, repo=BASELINE),
                names,
                total,
            )
        if peers:
            clients["sftp mget"] = (sftp_client, names, total)
            if shutil.which("rclone"):
                clients["rclone -t4"] = (lambda e, p, n, o: rclone_client(e, p, n, o, transfers=4), names, total)
                clients["rclone -t16"] = (lambda e, p, n, o: rclone_client(e, p, n, o, transfers=16), names, total)
            if shutil.which("lftp"):
                clients["lftp -P4"] = (lambda e, p, n, o: lftp_client(e, p, n, o, parallel=4), names, total)
        results = run_interleaved(env, port, clients, reps)
        label = f"catch-up {count}x{size // 1024}K" + (f" {rtt_ms:g} ms" if rtt_ms else " loopback")
        report(label, results)
        for name, (samples, _) in results.items():
            print(f"    {name}: median {statistics.median(s.seconds for s in samples):.2f} s", flush=True)
            PEAK_RSS[name] = max(s.rss_mib for s in samples)
        return {name: statistics.median(s.seconds for s in samples) for name, (samples, _) in results.items()}
    finally:
        if line:
            line.close()
        env.remote = saved
        shutil.rmtree(catch)


def job_name(concurrent: str | None) -> str:
    """The job's client name in a catch-up scenario: the sweep's rows name their CONCURRENT_FILES."""
    return "job all" if concurrent is None else f"job all, CONCURRENT_FILES={concurrent}"


def catch_up_verdicts(label: str, t: dict[str, float], need: float, against: tuple[str, ...]) -> list[str]:
    """The job's time against each peer's: a MET needs job / peer <= ``need``."""
    return [
        target(
            f"{label}: job <= {need}x {peer}", need / (t["job all"] / t[peer]), 1.0, f"{t['job all'] / t[peer]:.2f}x"
        )
        for peer in against
        if peer in t
    ]


def scenario_backlog_memory(env: Env, count: int, size: int) -> float:
    """Peak RSS of the job fetching a backlog of ``count`` small files."""
    scenario_catch_up(env, count, size, 1, peers=False)
    return PEAK_RSS["job all"]


def scenario_listing(env: Env, count: int) -> float:
    listing = env.remote / "listing"
    listing.mkdir()
    for i in range(count):
        (listing / f"IPI_{i:06d}_x.dat").touch()
    make_file(listing / "20250501.IPI", 1024)
    saved = env.remote
    env.remote = listing
    try:
        out = Path(tempfile.mkdtemp(dir=env.tmp))
        sample = job_client(env, env.sshd.port, ["*IPI*"], out)
        shutil.rmtree(out)
        print(f"| listing {count} | job (list, select, fetch) | {sample.seconds:.2f} s |", flush=True)
        ROWS.append(f"| listing {count} entries | job, whole run | {sample.seconds:.2f} s | | | 1 |")
        return sample.seconds
    finally:
        env.remote = saved
        shutil.rmtree(listing)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller files, fewer repetitions")
    parser.add_argument("--reps", type=int, default=0)
    parser.add_argument("--only", nargs="*", default=[])
    parser.add_argument("--profile", type=Path, help="record each job run with py-spy (raw stacks) into this folder")
    parser.add_argument("--baseline", type=Path, help="catch-up scenarios: also run the job from this checkout")
    args = parser.parse_args()
    global PROFILE_DIR, BASELINE
    PROFILE_DIR = args.profile
    BASELINE = args.baseline
    if PROFILE_DIR is not None and not shutil.which("py-spy"):
        parser.error("--profile needs py-spy on PATH (pip install py-spy)")
    quick = args.quick
    reps = args.reps or (2 if quick else 5)
    want = set(args.only)

    def on(name: str) -> bool:
        return not want or name in want

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip())
    print("| scenario | client | MB/s | CPU s | peak RSS MiB | runs |")
    print("|---|---|---|---|---|---|", flush=True)
    with tempfile.TemporaryDirectory(prefix="sftp-ipi-bench-") as tmp_name:
        tmp = Path(tmp_name)
        host_key, client_key = keygen(tmp / "host"), keygen(tmp / "client")
        (tmp / "authorized_keys").write_text(Path(f"{client_key}.pub").read_text())
        remote = tmp / "remote"
        remote.mkdir()
        sshd = Sshd(workdir=tmp, host_key=host_key, authorized_keys=tmp / "authorized_keys", user=getpass.getuser())
        sshd.start()
        env = Env(tmp=tmp, sshd=sshd, client_key=client_key, remote=remote)
        verdicts: list[str] = []
        try:
            if on("loopback"):
                r = scenario_transfer(
                    env, "loopback", 0, (64 if quick else 256) * MiB, (32 if quick else 128) * MiB, reps
                )
                verdicts.append(target("loopback: job >= 0.7x sftp -f", r["job"] / r["sftp -f"], 0.7))
            if on("rtt20"):
                # 256 MiB: at 64 MiB the ~0.8 s of start-up and connect decides the ratio.
                r = scenario_transfer(env, "20 ms RTT", 20, (32 if quick else 256) * MiB, 4 * MiB, reps)
                verdicts.append(target("20 ms: job >= 2x sftp -f", r["job"] / r["sftp -f"], 2.0))
                verdicts.append(target("20 ms: job >= 40x naive", r["job"] / r["naive"], 40))
            if on("rtt100"):
                r = scenario_transfer(env, "100 ms RTT", 100, (32 if quick else 64) * MiB, 2 * MiB, reps)
                verdicts.append(target("100 ms: job >= 2x sftp", r["job"] / r["sftp"], 2.0))
            if on("relay"):
                scenario_relay_cost(env, (64 if quick else 256) * MiB, reps)
            if on("jump"):
                r = scenario_jump(env, 20, (32 if quick else 64) * MiB, reps)
                verdicts.append(
                    target("20 ms: jump host >= 0.7x direct", r["job via jump host"] / r["job direct"], 0.7)
                )
            if on("memory"):
                for size in (256 * MiB, 1024 * MiB):
                    rss = scenario_memory(env, size)
                    verdicts.append(
                        target(f"peak RSS {size // MiB} MiB file <= 100 MiB", 100 / rss, 1.0, f"{rss:.0f} MiB")
                    )
            peers = ("sftp mget", "rclone -t4", "rclone -t16", "lftp -P4")
            if on("catchup"):
                t = scenario_catch_up(env, 200, 64 * 1024, min(reps, 3), rtt_ms=20)
                verdicts += catch_up_verdicts("200x64K at 20 ms", t, 0.6, peers[2:])
                verdicts += catch_up_verdicts("200x64K at 20 ms", t, 1.0, peers[:2])
                t = scenario_catch_up(env, 200, 64 * 1024, min(reps, 3))
                verdicts += catch_up_verdicts("200x64K loopback", t, 1.0, peers[:1])
                t = scenario_catch_up(env, 40, 4 * MiB, min(reps, 3), rtt_ms=20)
                verdicts += catch_up_verdicts("40x4M at 20 ms", t, 1.0, peers)
            if on("scale"):
                # Cost per file as the backlog grows: linear means 8,000 files cost no more
                # per file than 2,000 (within 10%), and the job keeps up with sftp mget.
                t2 = scenario_catch_up(env, 2000, 16 * 1024, min(reps, 3))
                verdicts += catch_up_verdicts("2,000x16K loopback", t2, 1.0, peers)
                t8 = scenario_catch_up(env, 8000, 4 * 1024, min(reps, 3))
                verdicts += catch_up_verdicts("8,000x4K loopback", t8, 1.0, peers)
                per2, per8 = t2["job all"] / 2000 * 1000, t8["job all"] / 8000 * 1000
                verdicts.append(
                    target(
                        "cost per file at 8,000 <= 1.1x at 2,000",
                        1.1 / (per8 / per2),
                        1.0,
                        f"{per8:.2f} ms vs {per2:.2f} ms ({per8 / per2:.2f}x)",
                    )
                )
            if on("backlog50k"):
                started = time.perf_counter()
                rss = scenario_backlog_memory(env, 50_000, 1024)
                print(f"    50,000x1K: {time.perf_counter() - started:.1f} s with set-up", flush=True)
                verdicts.append(
                    target("peak RSS, backlog of 50,000 files <= 150 MiB", 150 / rss, 1.0, f"{rss:.0f} MiB")
                )
            if on("concurrency"):
                # The sweep behind CONCURRENT_FILES' default.
                for n in ("1", "4", "8", "16", "32", "64"):
                    t = scenario_catch_up(env, 200, 64 * 1024, min(reps, 3), rtt_ms=20, peers=False, concurrent=n)
                    print(f"    CONCURRENT_FILES={n}: {t[job_name(n)]:.2f} s", flush=True)
            if on("backlog"):
                rss = scenario_backlog_memory(env, 2000, 16 * 1024)
                verdicts.append(target("peak RSS, backlog of 2,000 files <= 100 MiB", 100 / rss, 1.0, f"{rss:.0f} MiB"))
            if on("listing"):
                seconds = scenario_listing(env, 50_000)
                verdicts.append(target("listing 50,000 entries < 3 s", 3 / seconds, 1.0, f"{seconds:.2f} s"))
        finally:
            sshd.stop()
    print("\ntargets:")
    for line in verdicts:
        print(line)
    return 0


def target(label: str, ratio: float, need: float, shown: str | None = None) -> str:
    mark = "MET " if ratio >= need else "MISS"
    return f"  {mark} {label}: {shown or f'{ratio:.2f}x'}"


if __name__ == "__main__":
    sys.exit(main())
