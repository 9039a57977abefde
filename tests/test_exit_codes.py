"""Every documented exit code, each with one clear line and no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Result, Server, job_env, run_job, small_filesystem
from sshd import free_port, keygen


def last_line(result: Result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "| ERROR" in line]
    return errors[-1] if errors else (lines[-1] if lines else "")


def assert_clean_failure(result: Result, code: int, *culprits: str) -> None:
    assert result.code == code, result.output
    assert "Traceback" not in result.output
    line = last_line(result)
    for culprit in culprits:
        assert culprit in line, f"{culprit!r} not named in: {line}"


@pytest.mark.parametrize(
    ("overrides", "culprit"),
    [
        ({"SFTP_HOST": None}, "SFTP_HOST"),
        ({"SFTP_USER": None}, "SFTP_USER"),
        ({"SFTP_PORT": "twenty-two"}, "SFTP_PORT"),
        ({"SFTP_PORT": "0"}, "SFTP_PORT"),
        ({"SELECT_MODE": "everything"}, "SELECT_MODE"),
        ({"ORDER_BY": "size"}, "ORDER_BY"),
        ({"SFTP_HOST_KEY_POLICY": "yes"}, "SFTP_HOST_KEY_POLICY"),
        ({"MIN_FILE_AGE": "-1"}, "MIN_FILE_AGE"),
        ({"CHUNK_SIZE": "12"}, "CHUNK_SIZE"),
        ({"RETRY_MAX_TRIES": "0"}, "RETRY_MAX_TRIES"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
        ({"SFTP_KEY_FILE": "/nonexistent/key"}, "SFTP_KEY_FILE"),
        ({"SFTP_KEY_FILE": None}, "SFTP_PASS"),
    ],
)
def test_bad_setting_exits_2_naming_it(server: Server, overrides: dict[str, str | None], culprit: str) -> None:
    env = server.env()
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value

    result = run_job(env, server.tmp / "cwd")

    assert_clean_failure(result, 2, culprit)
    assert not server.local.exists(), "nothing touches the disk before the settings are valid"


def test_unset_port_defaults_to_22_instead_of_crashing(tmp_path: Path) -> None:
    env = {"SFTP_HOST": "127.0.0.1", "SFTP_USER": "x", "SFTP_PASS": "y", "RETRY_MAX_TRIES": "1"}

    result = run_job(env, tmp_path)

    # Nothing of ours listens on port 22 here; whatever answers, the job names it and exits cleanly.
    assert result.code in (1, 3), result.output
    assert "Traceback" not in result.output
    assert "127.0.0.1:22" in last_line(result) or "127.0.0.1" in last_line(result)


@pytest.mark.parametrize("closed", [">&-", "2>&-", ">&- 2>&-", "<&- >&- 2>&-"])
def test_closed_standard_descriptors_keep_the_exit_code(tmp_path: Path, closed: str) -> None:
    # A cron line or supervisor that closes a descriptor leaves sys.stdout or sys.stderr
    # None: flushing or logging to it turned exit 2 into exit 1 (with a traceback, or
    # with nothing at all when stderr was the closed one).
    proc = subprocess.run(
        ["sh", "-c", f'exec "{sys.executable}" -m app {closed}'],
        cwd=tmp_path,
        env=job_env({}, tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert proc.returncode == 2, proc.stderr  # SFTP_HOST is required: a configuration error
    assert "Traceback" not in proc.stderr + proc.stdout


def test_env_file_is_read_and_environment_wins(server: Server) -> None:
    env = server.env()
    env_file = server.tmp / "job.env"
    env_file.write_text(f"SFTP_HOST=127.0.0.1\nSFTP_PORT={env.pop('SFTP_PORT')}\nSELECT_MODE=bogus\n")
    env.pop("SFTP_HOST")
    env["SELECT_MODE"] = "next"
    server.put("20250428.IPI", b"z" * 100)

    result = run_job(env, server.tmp / "cwd", "--env-file", str(env_file))

    assert result.code == 0, result.output
    assert (server.served / "20250428.IPI").read_bytes() == b"z" * 100


def test_dotenv_in_working_directory_is_read(server: Server) -> None:
    env = server.env()
    cwd = server.tmp / "cwd"
    cwd.mkdir()
    (cwd / ".env").write_text(f"SFTP_PORT={env.pop('SFTP_PORT')}\n")
    server.put("20250428.IPI", b"q" * 100)

    result = run_job(env, cwd)

    assert result.code == 0, result.output


def test_missing_env_file_exits_2(server: Server) -> None:
    result = run_job(server.env(), server.tmp / "cwd", "--env-file", str(server.tmp / "nope.env"))
    assert_clean_failure(result, 2, "nope.env")


def test_unreachable_server_exits_1_after_retries_naming_host(server: Server) -> None:
    port = free_port()  # nothing listens here
    result = run_job(server.env(port=port, RETRY_MAX_TRIES=3), server.tmp / "cwd")

    assert_clean_failure(result, 1, f"127.0.0.1:{port}", "giving up after 3 attempt")
    assert result.stderr.count("retrying in") == 2


def test_unknown_host_key_exits_3_showing_fingerprint(server: Server) -> None:
    empty = server.tmp / "empty_known_hosts"
    empty.write_text("")
    server.put("20250428.IPI", b"x")
    expected = subprocess.run(
        ["ssh-keygen", "-lf", f"{server.sshd.host_key}.pub"], capture_output=True, text=True, check=True
    ).stdout.split()[1]

    result = run_job(server.env(SFTP_KNOWN_HOSTS=empty), server.tmp / "cwd")

    assert_clean_failure(result, 3, "not in", expected, "ssh-ed25519")
    assert "retrying" not in result.stderr, "host-key failures are never retried"
    assert not (server.local / "20250428.IPI").exists()


def test_changed_host_key_exits_3_even_with_accept_new(server: Server) -> None:
    other = keygen(server.tmp / "other_host_key")
    parts = Path(f"{other}.pub").read_text().split()
    known = server.tmp / "stale_known_hosts"
    known.write_text(f"[127.0.0.1]:{server.port} {parts[0]} {parts[1]}\n")

    result = run_job(server.env(SFTP_KNOWN_HOSTS=known, SFTP_HOST_KEY_POLICY="accept-new"), server.tmp / "cwd")

    assert_clean_failure(result, 3, "does not match")


def test_accept_new_records_key_then_checks_it(server: Server) -> None:
    known = server.tmp / "ssh" / "known_hosts"
    server.put("20250428.IPI", b"x" * 10)

    first = run_job(server.env(SFTP_KNOWN_HOSTS=known, SFTP_HOST_KEY_POLICY="accept-new"), server.tmp / "cwd")

    assert first.code == 0, first.output
    assert known.read_text() == server.sshd.known_hosts_line()
    second = run_job(server.env(SFTP_KNOWN_HOSTS=known), server.tmp / "cwd")  # strict from now on
    assert second.code == 0, second.output


def test_hashed_known_hosts_entry_is_honoured(server: Server) -> None:
    known = server.known_hosts()
    subprocess.run(["ssh-keygen", "-H", "-f", str(known)], check=True, capture_output=True)
    assert "|1|" in known.read_text()
    server.put("20250428.IPI", b"h" * 10)

    result = run_job(server.env(SFTP_KNOWN_HOSTS=known), server.tmp / "cwd")

    assert result.code == 0, result.output


def test_wrong_key_exits_3_without_retrying(server: Server) -> None:
    stranger = keygen(server.tmp / "stranger")
    result = run_job(server.env(SFTP_KEY_FILE=stranger), server.tmp / "cwd")

    assert_clean_failure(result, 3, "authentication failed")
    assert "retrying" not in result.stderr


def test_encrypted_key_without_passphrase_exits_2(server: Server) -> None:
    locked = keygen(server.tmp / "locked", passphrase="s3cret-phrase")
    result = run_job(server.env(SFTP_KEY_FILE=locked), server.tmp / "cwd")
    assert_clean_failure(result, 2, "SFTP_KEY_PASSPHRASE")


def test_encrypted_key_with_passphrase_logs_in(server: Server) -> None:
    locked = keygen(server.tmp / "locked", passphrase="s3cret-phrase")
    server.sshd.authorized_keys.write_text(Path(f"{locked}.pub").read_text())
    server.put("20250428.IPI", b"k" * 10)

    result = run_job(server.env(SFTP_KEY_FILE=locked, SFTP_KEY_PASSPHRASE="s3cret-phrase"), server.tmp / "cwd")

    assert result.code == 0, result.output
    assert "s3cret-phrase" not in result.output + server.log.read_text()


def test_second_run_exits_4_while_first_holds_lock(server: Server) -> None:
    server.record.parent.mkdir(parents=True)
    lock = server.record.with_name("last_file.txt.lock")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            f"fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('locked', flush=True)\ntime.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        result = run_job(server.env(), server.tmp / "cwd")
        assert result.code == 4, result.output
        assert "Traceback" not in result.output and "| ERROR" not in result.stderr, "exit 4 is not a failure"
        [line] = [w for w in result.stderr.splitlines() if "| WARNING" in w]
        assert "another run is in progress" in line and str(lock) in line and "not a failure" in line
        assert time.monotonic() - started < 10
    finally:
        holder.kill()
        holder.wait()
    assert run_job(server.env(), server.tmp / "cwd").code == 0, "the lock dies with its holder"


def test_unwritable_server_dir_exits_5_naming_it(server: Server) -> None:
    blocker = server.tmp / "not-a-dir"
    blocker.write_text("a file where a directory is needed")
    server.put("20250428.IPI", b"s" * 10)

    result = run_job(server.env(SERVER_DIR=blocker / "server"), server.tmp / "cwd")

    assert_clean_failure(result, 5, "SERVER_DIR", str(blocker / "server"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only directories")
def test_read_only_local_dir_exits_5(server: Server) -> None:
    server.local.mkdir()
    server.local.chmod(0o500)
    try:
        result = run_job(server.env(), server.tmp / "cwd")
    finally:
        server.local.chmod(0o700)
    assert_clean_failure(result, 5, "LOCAL_DIR", "permission denied")


@pytest.mark.parametrize("below", ["", "to-create"], ids=["existing", "to-create"])
def test_local_dir_on_a_read_only_file_system_exits_5_saying_so(server: Server, below: str) -> None:
    server.put("20250428.IPI", b"r" * 10)
    mount = server.tmp / "ro"
    with small_filesystem(mount, 1024 * 1024, read_only=True) as mounted:
        if not mounted:
            pytest.skip("needs root to mount a read-only tmpfs")
        result = run_job(server.env(LOCAL_DIR=mount / below), server.tmp / "cwd")

    assert_clean_failure(result, 5, "LOCAL_DIR", str(mount / below).rstrip("/"))
    assert "read-only file system" in last_line(result).lower()
    assert "permission denied" not in result.output


def test_version_and_help(tmp_path: Path) -> None:
    version = run_job({}, tmp_path, "--version")
    assert version.code == 0
    assert version.stdout.startswith("sftp-ipi ")
    shown = run_job({"SFTP_PASS": "do-not-show-me"}, tmp_path, "--help")
    assert shown.code == 0
    for name in ("SFTP_HOST", "SFTP_PASS_FILE", "SELECT_MODE", "MIN_FILE_AGE", "LOG_FORMAT"):
        assert name in shown.stdout
    assert "do-not-show-me" not in shown.stdout


def test_unparseable_dotenv_line_exits_2_naming_file_and_line(server: Server) -> None:
    env = server.env()
    cwd = server.tmp / "cwd"
    cwd.mkdir()
    (cwd / ".env").write_text(f"SFTP_PORT={env.pop('SFTP_PORT')}\nSELECT_MODE all\n")
    server.put("20250428.IPI", b"q" * 100)

    result = run_job(env, cwd)

    assert_clean_failure(result, 2, ".env:2:", "SELECT_MODE")
    assert "python-dotenv could not parse" not in result.output
    assert not server.local.exists(), "nothing runs on defaults the operator meant to change"


def test_misspelt_dotenv_name_is_warned_about_with_the_likely_name(server: Server) -> None:
    env = server.env()
    cwd = server.tmp / "cwd"
    cwd.mkdir()
    (cwd / ".env").write_text("SELECT_MOD=all\n")
    server.put("20250428.IPI", b"q" * 100)

    result = run_job(env, cwd)

    assert result.code == 0, result.output
    assert ".env:1: SELECT_MOD is not a setting and is ignored; did you mean SELECT_MODE?" in result.stderr


def test_missing_required_setting_without_dot_env_says_there_is_none(tmp_path: Path) -> None:
    result = run_job({}, tmp_path)
    assert_clean_failure(result, 2, "SFTP_HOST is required", "no ./.env", "--env-file")


def test_missing_required_setting_with_a_dot_env_gives_no_such_hint(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("SFTP_USER=ipi\n")
    result = run_job({}, tmp_path)
    assert_clean_failure(result, 2, "SFTP_HOST is required")
    assert "no ./.env" not in result.output


@pytest.mark.parametrize("command", ["status", "audit", "refetch", "skip"])
def test_each_state_command_has_its_own_short_help(tmp_path: Path, command: str) -> None:
    result = run_job({}, tmp_path, command, "--help")
    assert result.code == 0, result.output
    assert result.stdout.startswith(f"usage: sftp-ipi {command}")
    assert len(result.stdout.splitlines()) < 25
    assert "LAST_FILE_RECORD" in result.stdout and "SFTP_HOST" not in result.stdout


def test_run_help_lists_every_setting(tmp_path: Path) -> None:
    result = run_job({}, tmp_path, "run", "--help")
    assert result.code == 0
    for name in ("SFTP_HOST", "SFTP_PASS_FILE", "SELECT_MODE", "LEDGER_FILE"):
        assert name in result.stdout


@pytest.mark.parametrize(
    ("args", "culprit"),
    [
        (("--json",), "--json"),
        (("status", "--dry-run"), "--dry-run"),
        (("refetch",), "NAME"),
        (("skip", "20250101.IPI"), "--reason"),
        (("skip", "--dry-run", "20250101.IPI", "--reason", "x"), "--dry-run"),
    ],
)
def test_options_out_of_place_exit_2_naming_them(tmp_path: Path, args: tuple[str, ...], culprit: str) -> None:
    result = run_job({}, tmp_path, *args)
    assert result.code == 2
    assert culprit in result.stderr and "Traceback" not in result.output


def test_lock_message_and_status_name_the_pid_of_the_run_in_progress(server: Server) -> None:
    server.record.parent.mkdir(parents=True)
    lock = server.record.with_name("last_file.txt.lock")
    # Holds the lock and writes its PID as a run does.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            f"fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\nos.write(fd, f'{os.getpid()}\\n'.encode())\n"
            "print('locked', flush=True)\ntime.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        result = run_job(server.env(), server.tmp / "cwd")
        status = run_job(server.env(), server.tmp / "cwd", "status")
        assert result.code == 4, result.output
        # Exit 4 is not a failure: the one WARNING says so, and names the holder.
        [line] = [w for w in result.stderr.splitlines() if "| WARNING" in w]
        assert "another run is in progress" in line and f"by PID {holder.pid}" in line, line
        assert f"run in progress: PID {holder.pid}" in status.stdout, status.output
    finally:
        holder.kill()
        holder.wait()
    after = run_job(server.env(), server.tmp / "cwd", "status")
    assert "run in progress" not in after.stdout
