"""PGP decryption of downloaded files with GnuPG itself (DECRYPT=gpg).

gpg runs as a child process in a private GNUPGHOME made for the run (mode 0700,
removed afterwards), never the user's keyring. Nothing secret is in its
arguments or environment: the passphrase goes through a pipe (--passphrase-fd),
and the verdict is read from gpg's machine-readable --status-fd lines, never
from its human text. The plaintext streams from gpg's stdout through a hash
into a hidden temp file beside its final name; the caller publishes it with a
rename. Memory stays bounded whatever the file size.

Names: ``20250101.IPI.gpg`` decrypts to ``20250101.IPI``. A name without one
of DECRYPT_SUFFIXES is not encrypted as far as the job knows: it is published
as it is (``output_name`` returns None), not refused, since a feed may mix both.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import stat
import subprocess  # nosec B404
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from app import interrupt
from app.config import Settings
from app.errors import ConfigError, DecryptError
from app.storage.fsutil import open_exclusive, storage_error, temp_path, write_all

# (subprocess above: gpg is run with an argument list, never through a shell.)

# Read size from gpg's stdout: large enough that the per-block Python cost is
# negligible, small enough that memory stays flat (measured by bench/decrypt_rss.py).
_BLOCK = 1024 * 1024

# Plaintext up to this size is never refused by DECRYPT_MAX_RATIO: a tiny encrypted
# file of repetitive text (a header, a few rows) can expand more than 100 times
# and is no threat to any disk.
RATIO_FLOOR = 1024 * 1024

# The umask gpg (and the gpg-agent it starts) runs with: the home is 0700, and the
# files in it are the owner's alone too, so a home copied or moved keeps them private.
_PRIVATE_UMASK = 0o077

# Seconds gpg may take to exit after its output has ended, or to import a key.
_GPG_TIMEOUT = 60

_STATUS_PREFIX = b"[GNUPG:] "

# The failure statuses worth naming, most telling first (gpg emits several).
_FAILURE_REASONS = (
    "NO_SECKEY",
    "NEED_PASSPHRASE",
    "BADSIG",
    "DECRYPTION_FAILED",
    "NODATA",
    "FAILURE",
)


@dataclass(frozen=True)
class Decrypted:
    """A decrypted file under its temp name; the caller renames ``temp`` to ``final``."""

    temp: Path
    final: Path
    sha256: str
    size: int
    signer: str | None  # the primary-key fingerprint of the accepted signature, if one was required


@dataclass(frozen=True)
class PlaintextLimit:
    """DECRYPT_MAX_RATIO and DECRYPT_MAX_SIZE: how much plaintext one file may make (0: no limit)."""

    max_ratio: int = 0
    max_size: int = 0

    def bytes_for(self, encrypted_size: int) -> int | None:
        """The most plaintext bytes allowed for a file of ``encrypted_size`` bytes; None: unbounded."""
        limits = []
        if self.max_ratio:
            limits.append(max(encrypted_size * self.max_ratio, RATIO_FLOOR))
        if self.max_size:
            limits.append(self.max_size)
        return min(limits) if limits else None

    def describe(self, encrypted_size: int, written: int) -> str:
        """Why ``written`` bytes of plaintext stopped the file: its ratio and the setting passed."""
        limit = self.bytes_for(encrypted_size)
        ratio = written / encrypted_size if encrypted_size else float("inf")
        by_size = bool(self.max_size) and limit == self.max_size
        setting = f"DECRYPT_MAX_SIZE={self.max_size}" if by_size else f"DECRYPT_MAX_RATIO={self.max_ratio}"
        return (
            f"its plaintext passed {limit} bytes ({setting}) from {encrypted_size} encrypted bytes,"
            f" a ratio over {ratio:.0f}:1 (a decompression bomb, or raise {setting.split('=')[0]})"
        )


def output_name(name: str, suffixes: tuple[str, ...]) -> str | None:
    """The name without its decryption suffix (case-insensitive), or None when it has none."""
    lower = name.lower()
    for suffix in suffixes:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


@dataclass(frozen=True)
class Status:
    """gpg's --status-fd lines, as (keyword, arguments)."""

    lines: tuple[tuple[str, tuple[str, ...]], ...]

    @classmethod
    def parse(cls, raw: bytes) -> Status:
        lines = []
        for line in raw.splitlines():
            if line.startswith(_STATUS_PREFIX):
                keyword, *args = line[len(_STATUS_PREFIX) :].decode("utf-8", "replace").split(" ")
                lines.append((keyword, tuple(args)))
        return cls(tuple(lines))

    def has(self, keyword: str) -> bool:
        return any(k == keyword for k, _ in self.lines)

    def good_signers(self) -> list[tuple[str, str]]:
        """(signing key, primary key) fingerprints of the signatures gpg found GOOD.

        gpg reports each signature as NEWSIG, a verdict (GOODSIG, BADSIG, EXPKEYSIG,
        REVKEYSIG, ERRSIG, ...), then VALIDSIG with the fingerprints for any signature
        it could check: only a VALIDSIG that follows a GOODSIG counts.
        """
        signers = []
        verdict = None
        for keyword, args in self.lines:
            if keyword == "NEWSIG":
                verdict = None
            elif keyword in ("GOODSIG", "EXPSIG", "EXPKEYSIG", "REVKEYSIG", "BADSIG", "ERRSIG"):
                verdict = keyword
            elif keyword == "VALIDSIG" and verdict == "GOODSIG" and args:
                primary = args[9] if len(args) > 9 else args[0]
                signers.append((args[0].upper(), primary.upper()))
        return signers

    def failure_reason(self) -> str | None:
        for keyword in _FAILURE_REASONS:
            if self.has(keyword):
                return keyword
        return None

    def error_detail(self) -> str | None:
        """The location of gpg's first ERROR status (e.g. pkdecrypt_failed), if any."""
        for keyword, args in self.lines:
            if keyword == "ERROR" and args:
                return args[0]
        return None


def judge(status: Status, returncode: int, require_signers: tuple[str, ...]) -> tuple[str | None, str | None]:
    """(failure reason or None, accepted signer or None), from what gpg reported.

    Pure, so every verdict is unit-tested. A signature whose key is not in the
    keyring makes gpg exit 2 although the decryption succeeded: that is only a
    failure when signers are required (they then need a GOOD one).
    """
    decrypted = status.has("DECRYPTION_OKAY") and not status.has("DECRYPTION_FAILED")
    if not decrypted or status.has("BADSIG") or (returncode != 0 and not status.has("ERRSIG")):
        reason = status.failure_reason() or "DECRYPTION_INCOMPLETE"
        detail = status.error_detail()
        return (f"{reason} ({detail})" if detail else reason), None
    if not require_signers:
        return None, None
    for signing_key, primary in status.good_signers():
        if signing_key in require_signers or primary in require_signers:
            return None, primary
    if status.has("NO_PUBKEY"):
        return "NO_PUBKEY", None
    return "NO_GOOD_SIGNATURE", None


_REASON_HINTS = {
    "NO_SECKEY": "encrypted to a key other than GPG_PRIVATE_KEY_FILE's",
    "BADSIG": "a signature does not match the content",
    "NO_PUBKEY": "signed by a key whose public key is not in GPG_PRIVATE_KEY_FILE",
    "NO_GOOD_SIGNATURE": "no good signature by a key in GPG_REQUIRE_SIGNER",
    "DECRYPTION_INCOMPLETE": "damaged or truncated data",
    "NODATA": "not OpenPGP data",
}

# DecryptError's reason when the plaintext limit stopped gpg.
TOO_LARGE = "PLAINTEXT_TOO_LARGE"


def _describe(reason: str) -> str:
    hint = _REASON_HINTS.get(reason.split(" ", 1)[0])
    if reason.startswith("DECRYPTION_FAILED (pkdecrypt_failed"):
        hint = "wrong passphrase or damaged key"
    elif reason == "NEED_PASSPHRASE":
        hint = "the key is protected: set GPG_PASSPHRASE_FILE"
    return f"{reason}: {hint}" if hint else reason


class _Drain:
    """Reads a pipe to its end in a thread, so gpg never blocks on a full pipe."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._parts: list[bytes] = []
        self._thread = threading.Thread(target=self._run, name="gpg-drain", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while chunk := os.read(self._fd, 65536):
                self._parts.append(chunk)
        finally:
            os.close(self._fd)

    def result(self) -> bytes:
        self._thread.join()
        return b"".join(self._parts)


class Keyring:
    """A private GNUPGHOME holding GPG_PRIVATE_KEY_FILE's keys, for one run."""

    def __init__(
        self,
        home: Path,
        passphrase: str | None,
        require_signers: tuple[str, ...],
        limit: PlaintextLimit | None = None,
    ) -> None:
        self.gpg = _program("gpg")
        self.home = home
        self._passphrase = passphrase
        self.require_signers = require_signers
        self.limit = limit or PlaintextLimit()

    def command(self, status_fd: int, passphrase_fd: int | None, *args: str) -> list[str]:
        """gpg's argv: file descriptors and paths only, never a secret."""
        argv = [
            self.gpg,
            "--homedir",
            str(self.home),
            "--batch",
            "--no-tty",
            "--no-auto-key-retrieve",
            "--trust-model",
            "always",
            "--pinentry-mode",
            "loopback",
            "--status-fd",
            str(status_fd),
        ]
        if passphrase_fd is not None:
            argv += ["--passphrase-fd", str(passphrase_fd)]
        return argv + list(args)

    def _environment(self) -> dict[str, str]:
        # Not the job's environment: it may hold SFTP_PASS and other secrets.
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GNUPGHOME": str(self.home), "LC_ALL": "C"}

    def _start(self, args: list[str], stdout: int) -> tuple[subprocess.Popen[bytes], _Drain, _Drain]:
        status_read, status_write = os.pipe()
        pass_fds = [status_write]
        passphrase_fd = None
        if self._passphrase is not None:
            passphrase_fd, pass_write = os.pipe()
            # A passphrase fits the pipe's buffer (64 KiB), so this never blocks.
            write_all(pass_write, self._passphrase.encode("utf-8") + b"\n")
            os.close(pass_write)
            pass_fds.append(passphrase_fd)
        try:
            # Our own argv: the gpg found on PATH, paths and file descriptors.
            proc = subprocess.Popen(  # nosec B603
                self.command(status_write, passphrase_fd, *args),
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=subprocess.PIPE,
                pass_fds=pass_fds,
                env=self._environment(),
                # Whatever the job's umask: nothing gpg or its agent writes is for others.
                umask=_PRIVATE_UMASK,
            )
        except OSError as exc:
            os.close(status_read)
            raise ConfigError(f"DECRYPT=gpg: cannot run {self.gpg} ({exc.strerror})") from None
        finally:
            for fd in pass_fds:
                os.close(fd)
        return proc, _Drain(status_read), _Drain(os.dup(_stream_fd(proc.stderr)))

    def import_keys(self, key_file: Path) -> None:
        proc, status_drain, stderr_drain = self._start(["--import", str(key_file)], subprocess.DEVNULL)
        try:
            proc.wait(_GPG_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise ConfigError(
                f"GPG_PRIVATE_KEY_FILE={key_file}: gpg did not import it within {_GPG_TIMEOUT} s"
            ) from None
        finally:
            _stop(proc)
        status = Status.parse(status_drain.result())
        stderr_drain.result()
        secret_keys = [args for keyword, args in status.lines if keyword == "IMPORT_RES"]
        # IMPORT_RES's 11th field counts the secret keys imported.
        if proc.returncode != 0 or not secret_keys or len(secret_keys[0]) < 11 or secret_keys[0][10] == "0":
            raise ConfigError(f"GPG_PRIVATE_KEY_FILE={key_file}: holds no usable armored secret key")

    def decrypt(self, source: Path, final: Path) -> Decrypted:
        """Decrypt ``source`` into a temp file beside ``final``; raises DecryptError on any doubt.

        The temp file is fsynced but not renamed; on any failure it is removed.
        """
        tmp = temp_path(final)
        with _translate_storage("write", tmp):
            fd = open_exclusive(tmp)
        try:
            digest, size, status, returncode = self._stream(source, fd, tmp)
            with _translate_storage("write", tmp):
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            _unlink(tmp)
            raise
        os.close(fd)
        reason, signer = judge(status, returncode, self.require_signers)
        if reason is not None:
            _unlink(tmp)
            raise DecryptError(f"cannot decrypt {source.name}: {_describe(reason)}", reason.split(" ", 1)[0])
        return Decrypted(temp=tmp, final=final, sha256=digest, size=size, signer=signer)

    def _stream(self, source: Path, fd: int, tmp: Path) -> tuple[str, int, Status, int]:
        encrypted = _size_of(source)
        limit = self.limit.bytes_for(encrypted)
        proc, status_drain, stderr_drain = self._start(["--output", "-", "--decrypt", str(source)], subprocess.PIPE)
        digest = hashlib.sha256()
        size = 0
        try:
            out = _stream_fd(proc.stdout)
            while block := os.read(out, _BLOCK):
                if limit is not None and size + len(block) > limit:
                    # Not one byte past the limit is written; gpg is killed on the way out (finally).
                    raise DecryptError(
                        f"cannot decrypt {source.name}: {self.limit.describe(encrypted, size + len(block))}",
                        TOO_LARGE,
                    )
                digest.update(block)
                with _translate_storage("write", tmp):
                    write_all(fd, block)
                size += len(block)
                interrupt.check()
            proc.wait(_GPG_TIMEOUT)
            # Ctrl-C reaches gpg too (one process group): its death is then no verdict on the file.
            interrupt.check()
        except subprocess.TimeoutExpired:
            raise DecryptError(
                f"cannot decrypt {source.name}: gpg did not exit within {_GPG_TIMEOUT} s", "TIMEOUT"
            ) from None
        finally:
            _stop(proc)
        status = Status.parse(status_drain.result())
        stderr_drain.result()
        return digest.hexdigest(), size, status, proc.returncode


def _size_of(path: Path) -> int:
    with _translate_storage("read", path):
        return path.stat().st_size


def _program(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ConfigError(f"DECRYPT=gpg: the {name} program is not installed (Debian package gnupg)")
    return path


def _stream_fd(stream: IO[bytes] | None) -> int:
    if stream is None:
        raise RuntimeError("gpg was started without the pipe it needs")
    return stream.fileno()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Kill gpg if it is still running (an error or a signal on our side) and reap it."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


@contextlib.contextmanager
def _translate_storage(action: str, path: Path) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise storage_error(action, path, exc) from None


# gpg-agent's sockets live in the GnuPG home; a Unix socket path holds at most
# sizeof(sun_path) - 1 = 107 bytes on Linux, and this is the longest socket name.
_SUN_PATH = 108
_LONGEST_SOCKET = "S.gpg-agent.browser"


# GnuPG homes are made as HOME_PREFIX + random under TMPDIR; each holds a lock file,
# locked (flock) by the run that uses it. The kernel drops the lock when that run
# dies, even by kill -9, while gpg-agent lives on: a home whose lock can be taken
# is abandoned, and the next run's sweep stops its agent and removes it.
HOME_PREFIX = "sftp-ipi-gpg-"
_LOCK_NAME = ".sftp-ipi.lock"

# A home without a lock file is one being made this instant, or one left by a version
# before the lock: only the latter is this old (no run keeps a home this long unlocked).
_UNLOCKED_HOME_SECONDS = 3600


@contextlib.contextmanager
def open_keyring(settings: Settings, parent: Path | None = None) -> Iterator[Keyring]:
    """A Keyring for this run, in a fresh 0700 directory under ``parent`` (default: TMPDIR).

    The directory, the keys in it and the gpg-agent gpg starts there are removed
    on exit; a run killed before that leaves them to ``sweep_stale_homes``. Its
    path must stay short: the agent's socket lives in it (108 bytes).
    """
    if settings.gpg_private_key_file is None:
        raise ConfigError("DECRYPT=gpg: set GPG_PRIVATE_KEY_FILE")
    try:
        # mkdtemp makes it 0700 at once: the secret key never sits in a directory others can read.
        home = Path(tempfile.mkdtemp(prefix=HOME_PREFIX, dir=parent))
    except OSError as exc:
        raise storage_error("create a GnuPG home in", parent or Path(tempfile.gettempdir()), exc) from None
    lock = -1
    try:
        with _translate_storage("lock", home / _LOCK_NAME):
            lock = os.open(home / _LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        longest = home / _LONGEST_SOCKET
        if len(os.fsencode(longest)) >= _SUN_PATH:
            # gpg would only say it cannot reach its agent, and the key import would seem to fail.
            raise ConfigError(
                f"DECRYPT=gpg: the GnuPG home {home} is too long for gpg-agent's socket {longest.name}"
                f" ({_SUN_PATH - 1} bytes at most): set TMPDIR to a shorter directory"
            )
        home.chmod(0o700)
        limit = PlaintextLimit(settings.decrypt_max_ratio, settings.decrypt_max_size)
        keyring = Keyring(home, settings.gpg_passphrase, settings.gpg_require_signer, limit)
        keyring.import_keys(settings.gpg_private_key_file)
        yield keyring
    finally:
        _remove_home(home)
        if lock >= 0:
            os.close(lock)


def sweep_stale_homes(parent: Path | None = None) -> list[Path]:
    """Stop the agents of, and remove, the GnuPG homes under ``parent`` (default: TMPDIR)
    that killed runs of this job left; returns them.

    Only directories named HOME_PREFIX..., owned by this user, whose lock no live run
    holds: a home in use by another run (another feed sharing TMPDIR) is left alone.
    """
    parent = parent or Path(tempfile.gettempdir())
    try:
        candidates = [p for p in parent.iterdir() if p.name.startswith(HOME_PREFIX)]
    except OSError:
        return []  # no TMPDIR to sweep: open_keyring names the problem if it matters
    removed = []
    for home in candidates:
        try:
            st = home.lstat()
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            continue
        with _abandoned(home, st) as stale:
            if stale:
                _remove_home(home)
                removed.append(home)
    return removed


@contextlib.contextmanager
def _abandoned(home: Path, st: os.stat_result) -> Iterator[bool]:
    """Whether no run holds ``home``; the lock is held while the caller removes it."""
    try:
        fd = os.open(home / _LOCK_NAME, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        yield time.time() - st.st_mtime > _UNLOCKED_HOME_SECONDS
        return
    except OSError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False  # a live run's home
        else:
            yield True
    finally:
        os.close(fd)


def _remove_home(home: Path) -> None:
    # gpg started an agent for the home; stop it before its keys are deleted under it.
    with contextlib.suppress(OSError, subprocess.SubprocessError, ConfigError):
        subprocess.run(  # nosec B603
            # all: gpg-agent, and keyboxd or dirmngr where this gpg starts them too.
            [_program("gpgconf"), "--homedir", str(home), "--kill", "all"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GNUPGHOME": str(home)},
            timeout=_GPG_TIMEOUT,
            check=False,
        )
    _reap_agents(home)
    shutil.rmtree(home, ignore_errors=True)


# How long a stopped gpg-agent may take to exit before it is killed outright.
_AGENT_EXIT_SECONDS = 5.0


def _reap_agents(home: Path) -> None:
    """Wait for the gpg-agent of ``home`` if it became our child.

    gpg starts the agent detached: it outlives gpg and is re-parented to the
    nearest subreaper, PID 1 by default. When this process is PID 1 (a container
    without an init) or a subreaper, the stopped agent would stay a zombie until
    the job exits; it is reaped here. Only our own children running gpg-agent
    for this home are touched, never another process.
    """
    for pid in _agent_children(home):
        deadline = time.monotonic() + _AGENT_EXIT_SECONDS
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(pid, os.WNOHANG) == (0, 0):
                if time.monotonic() >= deadline:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    break
                time.sleep(0.01)


def _agent_children(home: Path) -> list[int]:
    me = os.getpid()
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            stat_line = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        # /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces and parentheses.
        ppid = int(stat_line.rsplit(")", 1)[1].split()[1])
        agent = bool(cmdline) and os.path.basename(cmdline[0]) == b"gpg-agent"
        # A zombie has no command line left: its comm tells, and it is our child.
        zombie = not cmdline[0] and "(gpg-agent)" in stat_line
        if ppid == me and (zombie or (agent and str(home).encode() in b" ".join(cmdline))):
            found.append(int(proc.name))
    return found
