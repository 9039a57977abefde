"""Fixtures: a real OpenSSH sshd per test, a fault relay, and a runner for the job process."""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import accounts
from accounts import TestAccount
from hostile_sftp import HostileSftpServer, Lies
from relay import Relay
from sshd import Sshd, find_sshd, keygen

REPO = Path(__file__).resolve().parent.parent
OLD = time.time() - 7200  # an mtime comfortably older than any MIN_FILE_AGE in the tests


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("keys")
    return {"host": keygen(d / "host_ed25519"), "client": keygen(d / "client_ed25519")}


@dataclass
class Server:
    """A running sshd and the directory it serves, plus the job's settings for it."""

    sshd: Sshd
    remote: Path
    tmp: Path
    client_key: Path
    password: str = ""  # the login user's password, where it has one (the root-only test account)

    @property
    def port(self) -> int:
        return self.sshd.port

    def put(self, name: str, data: bytes, mtime: float = OLD) -> Path:
        path = self.remote / name
        path.write_bytes(data)
        os.utime(path, (mtime, mtime))
        return path

    def known_hosts(self, port: int | None = None) -> Path:
        path = self.tmp / f"known_hosts_{port or self.port}"
        path.write_text(self.sshd.known_hosts_line(port))
        return path

    def env(self, port: int | None = None, **overrides: object) -> dict[str, str]:
        port = port or self.port
        base: dict[str, object] = {
            "SFTP_HOST": "127.0.0.1",
            "SFTP_PORT": port,
            "SFTP_USER": self.sshd.user,
            "SFTP_KEY_FILE": self.client_key,
            "SFTP_KNOWN_HOSTS": self.known_hosts(port),
            "SFTP_DIR": self.remote,
            "LOCAL_DIR": self.tmp / "local",
            "SERVER_DIR": self.tmp / "server",
            "LOG_FILE": self.tmp / "logs" / "job.log",
            "LAST_FILE_RECORD": self.tmp / "state" / "last_file.txt",
            "MIN_FILE_AGE": 0,
            "RETRY_BACKOFF_FACTOR": 0.05,
            "CONNECT_TIMEOUT": 10,
            "IO_TIMEOUT": 20,
        }
        base.update(overrides)
        return {k: str(v) for k, v in base.items() if v is not None}

    @property
    def local(self) -> Path:
        return self.tmp / "local"

    @property
    def served(self) -> Path:
        return self.tmp / "server"

    @property
    def record(self) -> Path:
        return self.tmp / "state" / "last_file.txt"

    @property
    def ledger(self) -> Path:
        return self.tmp / "state" / "completed_files.jsonl"

    @property
    def log(self) -> Path:
        return self.tmp / "logs" / "job.log"


def _start_server(tmp: Path, keys: dict[str, Path], user: str, base: Path) -> Server:
    if find_sshd() is None:
        pytest.fail("OpenSSH sshd is not installed; `make test` installs openssh-server")
    work = tmp / "sshd"
    work.mkdir()
    # sshd reads authorized_keys as the login user, so it lives in ``base``, which that user can read.
    authorized = base / "authorized_keys"
    authorized.write_text(Path(str(keys["client"]) + ".pub").read_text())
    authorized.chmod(0o644)
    remote = base / "remote"
    remote.mkdir()
    sshd = Sshd(workdir=work, host_key=keys["host"], authorized_keys=authorized, user=user).start()
    return Server(sshd=sshd, remote=remote, tmp=tmp, client_key=keys["client"])


@pytest.fixture
def server(tmp_path: Path, keys: dict[str, Path]) -> Iterator[Server]:
    """sshd serving a directory to the user running the tests."""
    srv = _start_server(tmp_path, keys, getpass.getuser(), tmp_path)
    try:
        yield srv
    finally:
        srv.sshd.stop()


ACCOUNT = pytest.StashKey[TestAccount]()
_WORKER_ACCOUNT = "sftp_ipi_test_account"


def pytest_configure(config: pytest.Config) -> None:
    # The main process picks the session's account; its xdist workers receive it.
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        config.stash[ACCOUNT] = TestAccount(**workerinput[_WORKER_ACCOUNT])
        return
    config.stash[ACCOUNT] = TestAccount.for_this_session()
    if os.geteuid() == 0:
        accounts.remove_leftovers()


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """pytest-xdist: hand the session's account to each worker it starts."""
    node.workerinput[_WORKER_ACCOUNT] = dataclasses.asdict(node.config.stash[ACCOUNT])


def pytest_unconfigure(config: pytest.Config) -> None:
    # Only the main process removes the account: it ends after all its workers.
    if not hasattr(config, "workerinput") and os.geteuid() == 0 and ACCOUNT in config.stash:
        config.stash[ACCOUNT].remove()


@pytest.fixture
def unprivileged_server(tmp_path: Path, keys: dict[str, Path], pytestconfig: pytest.Config) -> Iterator[Server]:
    """sshd whose SFTP sessions run without root, so file permissions apply on the server.

    As root: the session's test account (password in ``Server.password``) and a directory it owns.
    As an ordinary user: that user, as in ``server``, with key logins only.
    """
    if os.geteuid() != 0:
        srv = _start_server(tmp_path, keys, getpass.getuser(), tmp_path)
    else:
        account = pytestconfig.stash[ACCOUNT]
        account.ensure()
        base = Path(tempfile.mkdtemp(prefix="sftp-ipi-test-"))
        base.chmod(0o755)
        srv = _start_server(tmp_path, keys, account.name, base)
        srv.password = account.password
        shutil.chown(srv.remote, account.name, account.name)
    try:
        yield srv
    finally:
        srv.sshd.stop()
        if os.geteuid() == 0:
            shutil.rmtree(srv.remote.parent, ignore_errors=True)


@pytest.fixture
def hostile(tmp_path: Path, keys: dict[str, Path]) -> Iterator[HostileSftpServer]:
    """The lying AsyncSSH server (hostile_sftp.py), telling no lies until a test sets some."""
    server = HostileSftpServer(tmp_path, Path(f"{keys['client']}.pub"), Lies()).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def relay(server: Server) -> Iterator[Relay]:
    r = Relay(server.port)
    try:
        yield r
    finally:
        r.close()


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def job_env(settings: dict[str, str], home: Path) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(REPO),
    }
    env.update(settings)
    return env


def start_job(
    settings: dict[str, str], cwd: Path, *args: str, preexec_fn: Callable[[], None] | None = None
) -> subprocess.Popen[str]:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", "app", *args],
        cwd=cwd,
        env=job_env(settings, cwd),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=preexec_fn,
    )


def run_job(settings: dict[str, str], cwd: Path, *args: str, timeout: float = 120) -> Result:
    """Run ``python -m app`` as a real process, as an operator would."""
    proc = start_job(settings, cwd, *args)
    out, err = proc.communicate(timeout=timeout)
    return Result(proc.returncode, out, err)


class Runner(Protocol):
    def __call__(self, *args: str, timeout: float = 120, **overrides: object) -> Result: ...


@pytest.fixture
def run(server: Server) -> Runner:
    """Run the job against ``server`` with its default settings plus ``overrides``."""

    def _run(*args: str, timeout: float = 120, **overrides: object) -> Result:
        return run_job(server.env(**overrides), server.tmp / "cwd", *args, timeout=timeout)

    return _run


@contextlib.contextmanager
def small_filesystem(path: Path, size: int, *, read_only: bool = False) -> Iterator[bool]:
    """A real tmpfs of ``size`` bytes at ``path`` as root; yields False where mounting is impossible."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        yield False
        return
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)]).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], check=False)


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass; returns whether it held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


def size_of(path: Path) -> int:
    """The size of ``path``, 0 if it does not exist (yet)."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def temp_names(directory: Path) -> list[str]:
    """The job's temporary files in ``directory``."""
    from app.storage.fsutil import is_temp_name

    return [name for name in os.listdir(directory) if is_temp_name(name)] if directory.exists() else []


def stop_mid_publish(proc: subprocess.Popen[str], directory: Path, timeout: float = 60) -> list[str]:
    """SIGSTOP the job as soon as it has a temp file in ``directory``; returns the temps it holds.

    Busy-polls: a publication lasts a fraction of a second. Send SIGCONT when done.
    """
    deadline = time.monotonic() + timeout
    while not temp_names(directory) and proc.poll() is None and time.monotonic() < deadline:
        pass
    proc.send_signal(signal.SIGSTOP)
    return temp_names(directory)


# The ProFTPD mod_sftp fixture lives in its own module; importing it here makes pytest find it.
from conftest_proftpd import proftpd  # noqa: E402, F401
