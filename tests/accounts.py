"""The throwaway account the tests log in to with a password, as root.

One account per test session, shared by its pytest-xdist workers: named after
the session's main process, with a random password, no home directory and a
shell that refuses logins (sshd's internal-sftp runs inside sshd and never
starts the shell, so SFTP still works). The main process removes it when the
session ends, also after failures and Ctrl-C; an account left by a killed
session is removed by the next session that starts as root.
"""

from __future__ import annotations

import fcntl
import os
import pwd
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

PREFIX = "sftpipitest"
SHELL = "/usr/sbin/nologin"
# The GECOS field marks the account as ours and names the session that owns it,
# so a leftover can be told from a live session's account and from a real user.
MARK = "sftp-ipi test account, session "
# useradd and userdel refuse to run while another holds /etc/passwd's lock
# instead of waiting for it: parallel workers and sessions take turns here.
LOCK = Path("/tmp/sftp-ipi-test-user.lock")


def process_start(pid: int) -> str | None:
    """The start time of ``pid`` in clock ticks since boot, None if it is gone (tells a reused PID apart)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22; the command name (field 2) may hold spaces, so count from its closing parenthesis.
    return stat.rsplit(")", 1)[1].split()[19]


@contextmanager
def _passwd_lock() -> Iterator[None]:
    with LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _entry(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


@dataclass(frozen=True)
class TestAccount:
    """The session's account: ``owner`` is ``"PID START"`` of the process that removes it."""

    name: str
    password: str
    owner: str

    __test__ = False  # not a test class, despite its name

    @classmethod
    def for_this_session(cls) -> TestAccount:
        pid = os.getpid()
        return cls(f"{PREFIX}{pid}", secrets.token_urlsafe(24), f"{pid} {process_start(pid)}")

    def ensure(self) -> None:
        """Create the account unless it exists (the first worker that needs it creates it)."""
        with _passwd_lock():
            if _entry(self.name) is not None:
                return
            useradd = ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent"]
            subprocess.run([*useradd, "--shell", SHELL, "--comment", MARK + self.owner, self.name], check=True)
            subprocess.run(["chpasswd"], input=f"{self.name}:{self.password}\n", text=True, check=True)

    def remove(self) -> None:
        """Delete the account (and its group) if it exists and is this session's."""
        with _passwd_lock():
            entry = _entry(self.name)
            if entry is not None and entry.pw_gecos == MARK + self.owner:
                _userdel(self.name)


def _userdel(name: str) -> None:
    # --force: a login left running by a killed test must not keep the account alive.
    subprocess.run(["userdel", "--force", name], check=False, capture_output=True)


def remove_leftovers() -> list[str]:
    """Delete the accounts of sessions that are gone (killed before they could clean up); returns their names."""
    removed = []
    with _passwd_lock():
        for entry in pwd.getpwall():
            if not (entry.pw_name.startswith(PREFIX) and entry.pw_gecos.startswith(MARK)):
                continue
            pid, _, start = entry.pw_gecos[len(MARK) :].partition(" ")
            if pid.isdigit() and process_start(int(pid)) == start:
                continue  # a session still running
            _userdel(entry.pw_name)
            removed.append(entry.pw_name)
    return removed
