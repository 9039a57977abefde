"""The job's own exception hierarchy and the exit code each class maps to.

Library exceptions (paramiko, socket, OSError) are translated into these at the
module boundary that calls the library, so that ``job.py`` decides retries and
exit codes from the class alone.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_TRANSFER = 1
EXIT_CONFIG = 2
EXIT_AUTH = 3
EXIT_LOCKED = 4
EXIT_STORAGE = 5
EXIT_SIGINT = 130
EXIT_SIGTERM = 143

EXIT_MEANINGS: dict[int, str] = {
    EXIT_OK: "done, or nothing due",
    EXIT_TRANSFER: "transfer failed after retries",
    EXIT_CONFIG: "configuration error",
    EXIT_AUTH: "authentication or host-key failure",
    EXIT_LOCKED: "another run is in progress",
    EXIT_STORAGE: "local storage error",
    EXIT_SIGINT: "interrupted by SIGINT",
    EXIT_SIGTERM: "interrupted by SIGTERM",
}


class JobError(Exception):
    """Base class: a failure the job reports in one line and maps to an exit code."""

    exit_code = EXIT_TRANSFER


class ConfigError(JobError):
    """A setting (or the state that depends on settings) is invalid."""

    exit_code = EXIT_CONFIG


class AuthError(JobError):
    """Authentication failed; retrying cannot help."""

    exit_code = EXIT_AUTH


class HostKeyError(AuthError):
    """The server's host key is unknown or does not match; never retried."""


class ServerSetupError(ConfigError):
    """The server's account is set up so that no SFTP session can work (a login script
    printing text before the SFTP stream); retrying cannot help, so exit 2 like a bad setting."""


class LockedError(JobError):
    """Another run holds the run lock."""

    exit_code = EXIT_LOCKED


class LocalStorageError(JobError):
    """LOCAL_DIR, SERVER_DIR or a state file cannot be written."""

    exit_code = EXIT_STORAGE


class TransientError(JobError):
    """The connection failed or stalled; reconnecting and resuming may succeed."""


class RemoteFileError(JobError):
    """One remote file cannot be fetched (vanished, unreadable, changed); others may be."""

    # The server's own words for the refusal (its SFTP status message), where it sent any.
    said: str | None = None


class RemoteMissingError(RemoteFileError):
    """The server says the remote file is not there (no such file): vanished, or
    removed by the server itself once it was read (read-once servers)."""


class DecryptError(RemoteFileError):
    """A downloaded file does not decrypt, or lacks a required good signature; it is not published.

    A failure of that one file: the run goes on with the others as for any RemoteFileError."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        # gpg's status keyword (DECRYPTION_FAILED, NO_SECKEY, BADSIG, ...), for reports and metrics.
        self.reason = reason


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived. A BaseException so that no ``except Exception`` swallows it."""

    def __init__(self, signum: int, exit_code: int) -> None:
        super().__init__(f"interrupted by signal {signum}")
        self.signum = signum
        self.exit_code = exit_code


def describe(exc: BaseException) -> str:
    """An unexpected exception in one line: its class and the first line of its message."""
    text = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {text[0][:200]}" if text else exc.__class__.__name__
