"""Passwords and passphrases never reach any output: console, log file, JSON logs."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from conftest import Server, run_job
from loguru import logger
from sshd import keygen

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="password logins need a test account, made as root")


def outputs(server: Server, *texts: str) -> str:
    log = server.log.read_text() if server.log.exists() else ""
    return "\n".join(texts) + log


@needs_root
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_password_login_works_and_password_is_never_logged(unprivileged_server: Server, log_format: str) -> None:
    server = unprivileged_server
    server.put("20250428.IPI", b"p" * 4096)
    env = server.env(SFTP_KEY_FILE=None, SFTP_PASS=server.password, LOG_LEVEL="DEBUG", LOG_FORMAT=log_format)

    result = run_job(env, server.tmp / "cwd")

    assert result.code == 0, result.output
    assert (server.served / "20250428.IPI").read_bytes() == b"p" * 4096
    assert server.password not in outputs(server, result.stdout, result.stderr)


@needs_root
def test_password_file_login_works(unprivileged_server: Server) -> None:
    server = unprivileged_server
    server.put("20250428.IPI", b"f" * 100)
    secret = server.tmp / "secret"
    secret.write_text(server.password + "\n")

    result = run_job(server.env(SFTP_KEY_FILE=None, SFTP_PASS_FILE=secret), server.tmp / "cwd")

    assert result.code == 0, result.output
    assert server.password not in outputs(server, result.stdout, result.stderr)


@needs_root
def test_wrong_password_exits_3_and_is_not_logged(unprivileged_server: Server) -> None:
    server = unprivileged_server
    wrong = "Wr0ng-but-still-secret-value"
    env = server.env(SFTP_KEY_FILE=None, SFTP_PASS=wrong, LOG_LEVEL="DEBUG")

    result = run_job(env, server.tmp / "cwd")

    assert result.code == 3, result.output
    assert "Traceback" not in result.output
    assert wrong not in outputs(server, result.stdout, result.stderr)


def test_password_not_in_dry_run_or_failures(server: Server) -> None:
    secret = "Sup3r-secret-pass-value"
    env = server.env(SFTP_PASS=secret, LOG_LEVEL="DEBUG")  # the key logs in; the password is never needed
    server.put("20250428.IPI", b"d" * 10)

    dry = run_job(env, server.tmp / "cwd", "--dry-run")
    bad_port = run_job({**env, "SFTP_PORT": "1", "RETRY_MAX_TRIES": "1"}, server.tmp / "cwd")
    bad_setting = run_job({**env, "SELECT_MODE": secret}, server.tmp / "cwd")

    assert dry.code == 0 and bad_port.code == 1 and bad_setting.code == 2
    for result in (dry, bad_port):
        assert secret not in outputs(server, result.stdout, result.stderr)
    # A secret typed into the wrong setting is a value we cannot know to hide; the others stay hidden.
    assert "SELECT_MODE" in bad_setting.stderr


def test_crash_inside_the_ssh_library_leaks_no_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """The last line of defence: an unexpected exception whose text carries the password."""
    import app.__main__ as cli
    import app.job as job

    secret = "Leaky-secret-in-an-exception"

    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError(f"paramiko blew up while sending password {secret}")

    monkeypatch.setattr(job, "connect", crash)
    monkeypatch.chdir(tmp_path)
    log = tmp_path / "logs" / "job.log"
    for key, value in {
        "SFTP_HOST": "127.0.0.1",
        "SFTP_USER": "u",
        "SFTP_PASS": secret,
        "LOCAL_DIR": str(tmp_path / "local"),
        "SERVER_DIR": str(tmp_path / "server"),
        "LAST_FILE_RECORD": str(tmp_path / "state" / "last_file.txt"),
        "LOG_FILE": str(log),
        "SFTP_KNOWN_HOSTS": str(tmp_path / "known_hosts"),
    }.items():
        monkeypatch.setenv(key, value)

    # main() sets process-wide state (umask, signal handlers, log sinks): put it back.
    umask = os.umask(0o022)
    os.umask(umask)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = cli.main([])
    finally:
        os.umask(umask)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        logger.remove()

    out, err = capfd.readouterr()
    assert code == 1
    assert "internal error: RuntimeError" in err
    assert "Traceback" not in err, "the console gets one line"
    written = log.read_text()
    assert "Traceback" in written, "the log file keeps the traceback for diagnosis"
    for sink in (out, err, written):
        assert secret not in sink


def test_key_passphrase_file_unlocks_an_encrypted_key_and_is_never_logged(server: Server) -> None:
    passphrase = "Key-passphrase-from-a-mounted-secret"
    key = keygen(server.tmp / "encrypted_key", passphrase=passphrase)
    with (server.tmp / "authorized_keys").open("a") as fh:
        fh.write(Path(f"{key}.pub").read_text())
    secret = server.tmp / "passphrase"
    secret.write_text(passphrase + "\n")
    server.put("20250428.IPI", b"k" * 100)

    result = run_job(
        server.env(SFTP_KEY_FILE=key, SFTP_KEY_PASSPHRASE_FILE=secret, LOG_LEVEL="DEBUG"), server.tmp / "cwd"
    )

    assert result.code == 0, result.output
    assert (server.served / "20250428.IPI").read_bytes() == b"k" * 100
    assert passphrase not in outputs(server, result.stdout, result.stderr)


def test_key_passphrase_and_its_file_together_are_refused(server: Server) -> None:
    secret = server.tmp / "passphrase"
    secret.write_text("pp\n")
    env = server.env(SFTP_KEY_PASSPHRASE="pp", SFTP_KEY_PASSPHRASE_FILE=secret)

    result = run_job(env, server.tmp / "cwd")

    assert result.code == 2, result.output
    assert "SFTP_KEY_PASSPHRASE_FILE" in result.stderr
