"""A private ProFTPD with mod_sftp for tests: its own config, host key, port and virtual user.

OpenSSH offers no server-side digests; ProFTPD's mod_sftp answers the
``check-file-handle`` SFTP extension, so this is the server the source-proof
tests run against. The login is a virtual user from an AuthUserFile (no system
account, no PAM) with a random password, chrooted (DefaultRoot) to the directory
it serves, as partner SFTP-only accounts usually are.

ProFTPD switches to the virtual user's uid after login, which only root can do:
the fixture needs root, as ``make test`` runs.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from sshd import keygen, launch_on_free_port, stop_process

PROFTPD_CANDIDATES = ("/usr/sbin/proftpd", "/usr/local/sbin/proftpd")
MODULE_DIRS = ("/usr/lib/proftpd", "/usr/local/libexec/proftpd", "/usr/libexec/proftpd")
# Debian: proftpd-core has the daemon, proftpd-mod-crypto has mod_sftp.
DEBIAN_PACKAGES = ("proftpd-core", "proftpd-mod-crypto")

# The virtual user's uid and gid: exists in no /etc/passwd, which is the point.
VIRTUAL_ID = 64_999
USER = "ipi"


def find_proftpd() -> tuple[str, str] | None:
    """The proftpd binary and the directory holding mod_sftp.so, if both are installed."""
    binary = next((c for c in PROFTPD_CANDIDATES if os.access(c, os.X_OK)), None) or shutil.which("proftpd")
    modules = next((d for d in MODULE_DIRS if Path(d, "mod_sftp.so").is_file()), None)
    return (binary, modules) if binary and modules else None


def ensure_installed() -> tuple[str, str] | None:
    """Install ProFTPD with apt-get when missing and possible (root, Debian); None if it still is not there."""
    found = find_proftpd()
    if found is not None or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return found
    # Parallel workers would race on dpkg's lock: one installs, the others wait and find it installed.
    with open("/tmp/sftp-ipi-proftpd-install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if find_proftpd() is None:
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, check=False)
            subprocess.run(
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *DEBIAN_PACKAGES],
                env=env,
                capture_output=True,
                check=False,
            )
    return find_proftpd()


def _password_hash(password: str) -> str:
    """A SHA-512 crypt(3) hash, the format AuthUserFile takes (Python's crypt module is deprecated)."""
    done = subprocess.run(
        ["openssl", "passwd", "-6", "-stdin"], input=password, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


@dataclass
class Proftpd:
    """A running ProFTPD serving ``root`` (the chroot) to USER with ``password``; stop() kills it by PID."""

    base: Path
    port: int = 0
    password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    process: subprocess.Popen[bytes] | None = None

    @property
    def root(self) -> Path:
        """The login directory; the client sees it as ``/``."""
        return self.base / "home"

    @property
    def host_key(self) -> Path:
        return self.base / "host_ed25519"

    @property
    def user(self) -> str:
        return USER

    @property
    def host_public_key(self) -> str:
        parts = Path(f"{self.host_key}.pub").read_text().split()
        return f"{parts[0]} {parts[1]}"

    def known_hosts_line(self) -> str:
        return f"[127.0.0.1]:{self.port} {self.host_public_key}\n"

    def put(self, name: str, data: bytes, mtime: float | None = None) -> Path:
        """Write a file the virtual user can read, as a partner's upload would leave it."""
        path = self.root / name
        path.write_bytes(data)
        os.chown(path, VIRTUAL_ID, VIRTUAL_ID)
        if mtime is not None:
            os.utime(path, (mtime, mtime))
        return path

    def _config(self, modules: str) -> Path:
        lines = [
            "ServerType standalone",
            'ServerName "sftp-ipi test"',
            f"Port {self.port}",
            "DefaultAddress 127.0.0.1",
            "SocketBindTight on",
            "UseIPv6 off",
            f"PidFile {self.base / 'proftpd.pid'}",
            f"ScoreboardFile {self.base / 'proftpd.scoreboard'}",
            "DelayTable none",
            "WtmpLog off",
            "UseReverseDNS off",
            "TransferLog none",
            f"SystemLog {self.base / 'proftpd.log'}",
            "MaxInstances 100",
            "User nobody",
            "Group nogroup",
            # Only the virtual users file: no system accounts, no PAM.
            "AuthOrder mod_auth_file.c",
            "AuthPAM off",
            f"AuthUserFile {self.base / 'passwd'}",
            f"AuthGroupFile {self.base / 'group'}",
            "RequireValidShell off",
            "DefaultRoot ~",
            f"ModulePath {modules}",
            "LoadModule mod_sftp.c",
            "SFTPEngine on",
            f"SFTPLog {self.base / 'sftp.log'}",
            # mod_sftp 1.3.8 reads OpenSSH-format ed25519 keys as ssh-keygen writes them by default.
            f"SFTPHostKey {self.host_key}",
            "SFTPAuthMethods password",
        ]
        path = self.base / "proftpd.conf"
        path.write_text("\n".join(lines) + "\n")
        return path

    def _write_users(self) -> None:
        home = self.root
        passwd = f"{USER}:{_password_hash(self.password)}:{VIRTUAL_ID}:{VIRTUAL_ID}::{home}:/bin/false\n"
        # mod_auth_file refuses user files that others can write; nobody else needs to read them.
        for name, text in (("passwd", passwd), ("group", f"{USER}:x:{VIRTUAL_ID}:\n")):
            path = self.base / name
            path.write_text(text)
            path.chmod(0o600)

    def start(self, attempts: int = 5) -> Proftpd:
        found = ensure_installed()
        if found is None:
            raise RuntimeError(f"proftpd with mod_sftp not found: install {' '.join(DEBIAN_PACKAGES)}")
        binary, modules = found
        self.root.mkdir(exist_ok=True)
        os.chown(self.root, VIRTUAL_ID, VIRTUAL_ID)
        if not self.host_key.exists():
            keygen(self.host_key)
        self._write_users()

        def command(port: int) -> list[str]:
            self.port = port  # the config names it
            # -n: stay in the foreground, so the PID we hold is the daemon's.
            return [binary, "-n", "-q", "-c", str(self._config(modules))]

        self.process, self.port = launch_on_free_port(
            command, self.base / "stdout.log", self.log_text, "proftpd", attempts
        )
        return self

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None

    def log_text(self) -> str:
        parts = [self.base / n for n in ("stdout.log", "proftpd.log", "sftp.log")]
        return "\n".join(p.read_text(errors="replace") for p in parts if p.exists())

    def env(self, tmp: Path, **overrides: object) -> dict[str, str]:
        """The job's settings for this server, with local paths under ``tmp``."""
        known_hosts = tmp / f"known_hosts_proftpd_{self.port}"
        known_hosts.write_text(self.known_hosts_line())
        base: dict[str, object] = {
            "SFTP_HOST": "127.0.0.1",
            "SFTP_PORT": self.port,
            "SFTP_USER": USER,
            "SFTP_PASS": self.password,
            "SFTP_KNOWN_HOSTS": known_hosts,
            "SFTP_DIR": "/",
            "LOCAL_DIR": tmp / "local",
            "SERVER_DIR": tmp / "server",
            "LOG_FILE": tmp / "logs" / "job.log",
            "LAST_FILE_RECORD": tmp / "state" / "last_file.txt",
            "MIN_FILE_AGE": 0,
            "RETRY_BACKOFF_FACTOR": 0.05,
            "CONNECT_TIMEOUT": 10,
            "IO_TIMEOUT": 20,
        }
        base.update(overrides)
        return {k: str(v) for k, v in base.items() if v is not None}


def new_base() -> Path:
    """A directory for one server outside pytest's 0700 tmp tree, so the dropped session can reach the chroot."""
    base = Path(tempfile.mkdtemp(prefix="sftp-ipi-proftpd-"))
    base.chmod(0o755)
    return base
