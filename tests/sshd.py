"""A private OpenSSH sshd for tests and the demo: its own config, host key and port.

Runs as whoever starts it. As root it also allows password logins (for a
dedicated test user); as an ordinary user only key logins for that user work,
which is all sshd can offer without root.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/bin/sshd", "/usr/local/sbin/sshd")


def find_sshd() -> str | None:
    for candidate in SSHD_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("sshd")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def keygen(path: Path, key_type: str = "ed25519", passphrase: str = "", bits: int | None = None) -> Path:
    """Create an OpenSSH key pair at ``path`` / ``path.pub``."""
    cmd = ["ssh-keygen", "-q", "-t", key_type, "-N", passphrase, "-f", str(path), "-C", "sftp-ipi-test"]
    if bits:
        cmd += ["-b", str(bits)]
    subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL)
    return path


def wait_for_banner(process: subprocess.Popen[bytes] | None, port: int, timeout: float = 10.0) -> bool:
    """Whether an SSH server started as ``process`` answers with its banner on ``port`` in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return False
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            if s.recv(4).startswith(b"SSH-"):
                return True
        time.sleep(0.05)
    return False


def stop_process(process: subprocess.Popen[bytes] | None) -> None:
    """Stop a server this module's caller started, by its PID: SIGTERM, then SIGKILL."""
    if process is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


def launch_on_free_port(
    command: Callable[[int], list[str]], log: Path, log_text: Callable[[], str], what: str, attempts: int
) -> tuple[subprocess.Popen[bytes], int]:
    """Start an SSH server with ``command(port)`` on a free port, until one answers with
    its banner: another process may bind a port between ``free_port`` and the server's
    own bind, so each attempt takes a new one. The server's output goes to ``log``."""
    last_error = ""
    for _ in range(attempts):
        port = free_port()
        args = command(port)
        with open(log, "ab") as out:
            process = subprocess.Popen(args, stdout=out, stderr=out, stdin=subprocess.DEVNULL)
        if wait_for_banner(process, port):
            return process, port
        stop_process(process)
        last_error = log_text()[-2000:]
    raise RuntimeError(f"{what} did not start: {last_error}")


@dataclass
class Sshd:
    """A running sshd; stop() kills it by PID."""

    workdir: Path
    host_key: Path
    authorized_keys: Path
    user: str
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    extra_config: list[str] = field(default_factory=list)
    subsystem: str = "internal-sftp"

    @property
    def host_public_key(self) -> str:
        """``type base64`` of the host key."""
        parts = Path(str(self.host_key) + ".pub").read_text().split()
        return f"{parts[0]} {parts[1]}"

    def known_hosts_line(self, port: int | None = None) -> str:
        p = self.port if port is None else port
        name = "127.0.0.1" if p == 22 else f"[127.0.0.1]:{p}"
        return f"{name} {self.host_public_key}\n"

    def _config(self) -> Path:
        # sshd keeps the first value it reads for a keyword, so extra lines go first.
        lines = [
            *self.extra_config,
            f"Port {self.port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {self.host_key}",
            f"PidFile {self.workdir / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.authorized_keys}",
            "StrictModes no",
            "UsePAM no",
            "PubkeyAuthentication yes",
            f"PasswordAuthentication {'yes' if os.geteuid() == 0 else 'no'}",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin yes",
            f"Subsystem sftp {self.subsystem}",
            "LogLevel VERBOSE",
            "MaxStartups 100",
        ]
        path = self.workdir / "sshd_config"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self, attempts: int = 5) -> Sshd:
        sshd = find_sshd()
        if sshd is None:
            raise RuntimeError("sshd not found: install openssh-server (make test does)")
        if os.geteuid() == 0:
            # Privilege separation needs this directory when sshd runs as root.
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)

        def command(port: int) -> list[str]:
            self.port = port  # the config names it
            return [sshd, "-D", "-e", "-f", str(self._config())]

        self.process, self.port = launch_on_free_port(
            command, self.workdir / "sshd.log", self.log_text, "sshd", attempts
        )
        return self

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None

    def log_text(self) -> str:
        return (self.workdir / "sshd.log").read_text(errors="replace")
