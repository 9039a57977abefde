"""``make demo``: a real run of the job against a private local sshd.

Starts OpenSSH sshd on a free 127.0.0.1 port with its own host key, serves a
few sample ``YYYYMMDD.IPI`` files from ``demo/remote``, runs ``python -m app``
with SELECT_MODE=all and strict host-key checking into ``demo/local`` and
``demo/server``, runs it again (nothing due), checks every published file's
SHA-256 against the source, and stops sshd.

Everything it writes is under ``demo/`` (ignored by git; ``--dir`` names another
place), never under ``volumes/``: that is docker-compose.yml's, whose container
runs as UID 10001, and state left there by a demo run as root (a root-owned
``state/logs``) made the next ``docker compose run`` exit 5.
"""

from __future__ import annotations

import argparse
import getpass
import hashlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from sshd import Sshd, keygen  # noqa: E402

DEMO = REPO / "demo"
SAMPLES = {"20250426.IPI": 3_000_000, "20250427.IPI": 5_000_000, "20250428.IPI": 8_000_000}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_samples(remote: Path) -> None:
    remote.mkdir(parents=True, exist_ok=True)
    rng = random.Random(20250428)  # the same sample bytes on every machine
    old = time.time() - 3600
    for name, size in SAMPLES.items():
        path = remote / name
        if not path.exists() or path.stat().st_size != size:
            path.write_bytes(rng.randbytes(size))
        os.utime(path, (old, old))
    (remote / "README.txt").write_text("not an IPI file: the job ignores it\n")


def reset(directory: Path) -> None:
    """Empty a demo directory but keep it."""
    directory.mkdir(parents=True, exist_ok=True)
    for child in directory.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="make demo: the job against a private local sshd")
    parser.add_argument("--dir", type=Path, default=DEMO, help=f"where the demo writes everything (default: {DEMO})")
    base = parser.parse_args(argv).dir.resolve()
    remote = base / "remote"
    make_samples(remote)
    for name in ("local", "server", "state"):
        reset(base / name)

    with tempfile.TemporaryDirectory(prefix="sftp-ipi-demo-") as tmp_name:
        tmp = Path(tmp_name)
        host_key = keygen(tmp / "host_ed25519")
        client_key = keygen(tmp / "client_ed25519")
        authorized = tmp / "authorized_keys"
        authorized.write_text(Path(f"{client_key}.pub").read_text())
        sshd = Sshd(workdir=tmp, host_key=host_key, authorized_keys=authorized, user=getpass.getuser()).start()
        try:
            known_hosts = tmp / "known_hosts"
            known_hosts.write_text(sshd.known_hosts_line())
            env_file = tmp / "demo.env"
            env_file.write_text(
                "\n".join(
                    [
                        "SFTP_HOST=127.0.0.1",
                        f"SFTP_PORT={sshd.port}",
                        f"SFTP_USER={getpass.getuser()}",
                        f"SFTP_KEY_FILE={client_key}",
                        f"SFTP_KNOWN_HOSTS={known_hosts}",
                        "SFTP_HOST_KEY_POLICY=strict",
                        f"SFTP_DIR={remote}",
                        f"LOCAL_DIR={base / 'local'}",
                        f"SERVER_DIR={base / 'server'}",
                        f"LAST_FILE_RECORD={base / 'state' / 'last_file.txt'}",
                        f"LOG_FILE={base / 'state' / 'logs' / 'sftp_transfer.log'}",
                        "SELECT_MODE=all",
                    ]
                )
                + "\n"
            )
            # Settings come from the demo's env file only, whatever the caller exports.
            env = {k: v for k, v in os.environ.items() if not k.startswith(("SFTP_", "LOCAL_", "SERVER_"))}
            for label in ("first run: pulls every sample", "second run: nothing due"):
                print(f"\n=== {label}", flush=True)
                code = subprocess.call([sys.executable, "-m", "app", "--env-file", str(env_file)], cwd=REPO, env=env)
                if code != 0:
                    print(f"demo: the job exited {code}", file=sys.stderr)
                    print(sshd.log_text()[-2000:], file=sys.stderr)
                    return code
        finally:
            sshd.stop()

    print(f"\n=== result in {base / 'server'}")
    ok = True
    for name in SAMPLES:
        served = base / "server" / name
        good = served.is_file() and sha256(served) == sha256(remote / name)
        ok &= good
        print(f"{'OK ' if good else 'BAD'} {name} {served.stat().st_size if served.exists() else 0:>10} bytes")
    print(f"LAST_FILE_RECORD: {(base / 'state' / 'last_file.txt').read_text().strip()}")
    if not ok:
        print("demo: the published files do not match the samples", file=sys.stderr)
        return 1
    print("demo: all samples downloaded, verified and published")
    return 0


if __name__ == "__main__":
    sys.exit(main())
