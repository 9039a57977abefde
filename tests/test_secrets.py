"""Passwords and passphrases never reach any output: console, log file, JSON logs."""

from __future__ import annotations

import os

import pytest
from conftest import TEST_PASSWORD, Server, run_job

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="password logins need a test account, made as root")


def outputs(server: Server, *texts: str) -> str:
    log = server.log.read_text() if server.log.exists() else ""
    return "\n".join(texts) + log


@needs_root
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_password_login_works_and_password_is_never_logged(unprivileged_server: Server, log_format: str) -> None:
    server = unprivileged_server
    server.put("20250428.IPI", b"p" * 4096)
    env = server.env(SFTP_KEY_FILE=None, SFTP_PASS=TEST_PASSWORD, LOG_LEVEL="DEBUG", LOG_FORMAT=log_format)

    result = run_job(env, server.tmp / "cwd")

    assert result.code == 0, result.output
    assert (server.served / "20250428.IPI").read_bytes() == b"p" * 4096
    assert TEST_PASSWORD not in outputs(server, result.stdout, result.stderr)


@needs_root
def test_password_file_login_works(unprivileged_server: Server) -> None:
    server = unprivileged_server
    server.put("20250428.IPI", b"f" * 100)
    secret = server.tmp / "secret"
    secret.write_text(TEST_PASSWORD + "\n")

    result = run_job(server.env(SFTP_KEY_FILE=None, SFTP_PASS_FILE=secret), server.tmp / "cwd")

    assert result.code == 0, result.output
    assert TEST_PASSWORD not in outputs(server, result.stdout, result.stderr)


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
