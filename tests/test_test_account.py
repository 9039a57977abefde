"""The account the tests make for password logins (as root): random password, no shell, removed after the session."""

from __future__ import annotations

import base64
import os
import pwd
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import accounts
import paramiko
import pytest
from conftest import ACCOUNT, REPO, Server

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the test account is made only as root")

OLD_PUBLISHED_PASSWORD = "Corr3ct-h0rse-battery-staple"  # hard-coded in tests/conftest.py until it was replaced


def account_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@dataclass
class Session:
    pid: int
    code: int
    output: str


def pytest_session(*args: str) -> Session:
    """A separate pytest session, as `make test` starts one; its main process's PID names its account."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out, _ = proc.communicate(timeout=300)
    return Session(proc.pid, proc.returncode, out)


def login(server: Server) -> paramiko.Transport:
    """An SSH login with the account's password, checking the server's host key."""
    key_type, key_data = server.sshd.host_public_key.split()
    host_key = paramiko.PKey.from_type_string(key_type, base64.b64decode(key_data))
    transport = paramiko.Transport(("127.0.0.1", server.port))
    transport.connect(hostkey=host_key, username=server.sshd.user, password=server.password)
    return transport


def test_account_has_a_random_password_and_no_shell_yet_serves_sftp(unprivileged_server: Server) -> None:
    server = unprivileged_server
    entry = pwd.getpwnam(server.sshd.user)
    assert entry.pw_shell == "/usr/sbin/nologin"
    assert not Path(entry.pw_dir).exists(), "no home directory to leave behind"
    assert server.password != OLD_PUBLISHED_PASSWORD and len(server.password) >= 32
    server.put("20250428.IPI", b"sftp works")

    transport = login(server)
    try:
        sftp = paramiko.SFTPClient.from_transport(transport)
        assert sftp is not None
        with sftp.open(str(server.remote / "20250428.IPI")) as f:
            assert f.read() == b"sftp works"
        shell = transport.open_session()
        shell.exec_command("echo logged-in")
        output = shell.makefile("rb").read()
        assert shell.recv_exit_status() != 0
        assert b"logged-in" not in output
    finally:
        transport.close()


def test_account_is_removed_when_a_parallel_session_ends() -> None:
    test = "tests/test_test_account.py::test_account_has_a_random_password_and_no_shell_yet_serves_sftp"

    session = pytest_session("-n", "2", test)

    # A worker of that session logged in with the account, and its main process removed it.
    assert session.code == 0 and "1 passed" in session.output, session.output
    assert not account_exists(f"{accounts.PREFIX}{session.pid}")


def test_account_left_by_a_killed_session_is_removed_when_the_next_starts(pytestconfig: pytest.Config) -> None:
    killed = subprocess.Popen(["sleep", "60"])
    owner = f"{killed.pid} {accounts.process_start(killed.pid)}"
    killed.kill()
    killed.wait()
    leftover = accounts.TestAccount(f"{accounts.PREFIX}{killed.pid}", "x" * 32, owner)
    leftover.ensure()
    live = pytestconfig.stash[ACCOUNT]
    live.ensure()
    assert account_exists(leftover.name)

    session = pytest_session("--collect-only", "tests/test_test_account.py")

    assert session.code == 0, session.output
    assert not account_exists(leftover.name)
    assert account_exists(live.name), "a running session's account is kept"
