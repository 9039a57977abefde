"""Real proxies for the network-path tests: tinyproxy (HTTP CONNECT) and microsocks (SOCKS5).

Each runs in the foreground as a child of the test, on a free port, logging to a
file the test reads; stop() ends it by its PID.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from sshd import free_port, stop_process


def _wait_listening(process: subprocess.Popen[bytes], port: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
        time.sleep(0.05)
    return False


@dataclass
class Proxy:
    workdir: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.workdir / "proxy.log"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None

    def _launch(self, command: list[str], what: str) -> None:
        for _ in range(5):
            with open(self.log, "ab") as out:
                self.process = subprocess.Popen(command, stdout=out, stderr=out, stdin=subprocess.DEVNULL)
            if _wait_listening(self.process, self.port):
                return
            stop_process(self.process)
            self.port = free_port()
            command = self._command()
        raise RuntimeError(f"{what} did not start: {self.log_text()[-2000:]}")

    def _command(self) -> list[str]:
        raise NotImplementedError


@dataclass
class Tinyproxy(Proxy):
    """tinyproxy for HTTP CONNECT; ``connect_ports`` limits where it tunnels (empty: anywhere)."""

    user: str | None = None
    password: str | None = None
    connect_ports: tuple[int, ...] = ()

    def _command(self) -> list[str]:
        lines = [
            f"Port {self.port}",
            "Listen 127.0.0.1",
            "Timeout 600",
            # No LogFile: in the foreground (-d) it logs to stderr, which goes to self.log;
            # the user it drops to may not reach the test's directory.
            "LogLevel Info",
            "MaxClients 50",
            "Allow 127.0.0.1",
            *(f"ConnectPort {p}" for p in self.connect_ports),
        ]
        if os.geteuid() == 0:
            # tinyproxy refuses to keep root; the log must stay writable for the user it becomes.
            lines += ["User nobody", "Group nogroup"]
        if self.user is not None:
            lines.append(f"BasicAuth {self.user} {self.password}")
        config = self.workdir / "tinyproxy.conf"
        config.write_text("\n".join(lines) + "\n")
        return ["tinyproxy", "-d", "-c", str(config)]

    def start(self) -> Tinyproxy:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self._launch(self._command(), "tinyproxy")
        return self


@dataclass
class Microsocks(Proxy):
    """microsocks for SOCKS5, with username/password authentication when ``user`` is set."""

    user: str | None = None
    password: str | None = None

    def _command(self) -> list[str]:
        command = ["microsocks", "-i", "127.0.0.1", "-p", str(self.port)]
        if self.user is not None:
            command += ["-u", self.user, "-P", str(self.password)]
        return command

    def start(self) -> Microsocks:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self._launch(self._command(), "microsocks")
        return self


def have(tool: str) -> bool:
    return shutil.which(tool) is not None
