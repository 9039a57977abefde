"""Errors that point the operator the right way: the missing remote directory, damaged
or unreadable state found before any login, a refused login naming what it tried and
what the server accepts, and the exit-code table kept in step with the code."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import REPO, Result, Server, run_job
from relay import Relay
from sshd import keygen
from test_network_paths import Jump, jump, jump_env  # noqa: F401 - jump: the jump-host fixture

from app import errors


def error_lines(result: Result) -> list[str]:
    return [line for line in result.stderr.splitlines() if "| ERROR" in line]


def assert_one_line(result: Result, code: int, *culprits: str) -> str:
    assert result.code == code, result.output
    assert "Traceback" not in result.output
    lines = error_lines(result)
    assert len(lines) == 1, lines
    for culprit in culprits:
        assert culprit in lines[0], f"{culprit!r} not named in: {lines[0]}"
    return lines[0]


# -- a missing SFTP_DIR -----------------------------------------------------------------


@pytest.mark.parametrize("what", ["missing", "a file"])
def test_a_missing_sftp_dir_is_a_configuration_error_naming_it_and_the_servers_words(server: Server, what: str) -> None:
    directory = server.remote / "no-such-dir"
    if what == "a file":
        directory = server.put("20250101.IPI", b"x")

    result = run_job(server.env(SFTP_DIR=directory, RETRY_MAX_TRIES=3), server.tmp / "cwd")

    line = assert_one_line(result, 2, f"SFTP_DIR={directory}", "the server said", "No such file")
    assert "retrying" not in result.stderr, "a directory that is not there is not there on the next attempt"
    assert "transfer failed" not in result.stderr
    assert "exit 2 (configuration error)" in result.stderr
    assert "giving up" not in line


# -- local state, checked before connecting -----------------------------------------


def _damage_ledger(server: Server) -> str:
    server.ledger.parent.mkdir(parents=True, exist_ok=True)
    server.ledger.write_text('{"name": "20250101.IPI"}\n')  # a whole line, not torn: missing fields
    return f"{server.ledger}:1"


def _damage_record(server: Server) -> str:
    server.record.parent.mkdir(parents=True, exist_ok=True)
    server.record.write_text("../etc/passwd\n")
    return f"LAST_FILE_RECORD={server.record}"


def _unreadable(path: Path) -> None:
    # A symbolic link to itself: unreadable for root too, whom no mode stops.
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(path.name)


def _unreadable_ledger(server: Server) -> str:
    _unreadable(server.ledger)
    return f"ledger {server.ledger}: cannot read it"


def _unreadable_record(server: Server) -> str:
    _unreadable(server.record)
    return f"LAST_FILE_RECORD={server.record}: cannot read it"


@pytest.mark.parametrize(
    "damage",
    [_damage_ledger, _damage_record, _unreadable_ledger, _unreadable_record],
    ids=["damaged-ledger", "damaged-record", "unreadable-ledger", "unreadable-record"],
)
@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
def test_damaged_or_unreadable_state_exits_2_before_any_connection(
    server: Server, relay: Relay, damage: Callable[[Server], str], dry_run: bool
) -> None:
    server.put("20250101.IPI", b"x" * 100)
    culprit = damage(server)
    args = ("--dry-run",) if dry_run else ()

    result = run_job(server.env(port=relay.port), server.tmp / "cwd", *args)

    assert_one_line(result, 2, culprit)
    assert relay.connections == 0, "partners lock accounts after repeated logins: no login for a run that cannot work"
    assert "connecting to" not in result.stderr


# -- a refused login ----------------------------------------------------------------


def test_a_refused_key_and_password_are_named_with_the_methods_the_server_accepts(server: Server) -> None:
    stranger = keygen(server.tmp / "stranger")
    secret = "not-the-password-0123456789"
    pass_file = server.tmp / "sftp_password"
    pass_file.write_text(secret + "\n")

    result = run_job(server.env(SFTP_KEY_FILE=stranger, SFTP_PASS_FILE=pass_file), server.tmp / "cwd")

    line = assert_one_line(
        result,
        3,
        "authentication failed",
        f"key SFTP_KEY_FILE={stranger} (ssh-ed25519 SHA256:",
        f"password from SFTP_PASS_FILE={pass_file}",
        "the server accepts: publickey",
    )
    assert secret not in result.output
    assert "retrying" not in result.stderr
    # As root the test sshd also takes passwords (tests/sshd.py), and says so.
    accepts = "publickey, password" if os.geteuid() == 0 else "publickey"
    assert line.rstrip().endswith(f"the server accepts: {accepts}"), line


def test_a_password_the_server_does_not_take_names_it_and_the_only_method_offered(server: Server) -> None:
    server.sshd.stop()
    server.sshd.extra_config.append("AuthenticationMethods publickey")
    server.sshd.start()
    secret = "wrong-password-9876543210"

    result = run_job(server.env(SFTP_KEY_FILE=None, SFTP_PASS=secret), server.tmp / "cwd")

    line = assert_one_line(
        result, 3, "authentication failed", "password from SFTP_PASS;", "the server accepts: publickey"
    )
    assert line.rstrip().endswith("the server accepts: publickey"), line
    assert secret not in result.output


def test_a_jump_host_refusing_its_own_key_names_that_key_and_the_jump_host(server: Server, jump: Jump) -> None:  # noqa: F811
    stranger = keygen(server.tmp / "jump_stranger")
    env = jump_env(server, jump, SFTP_JUMP_KEY_FILE=stranger)

    result = run_job(env, server.tmp / "cwd")

    assert_one_line(
        result,
        3,
        f"jump host 127.0.0.1:{jump.port}",
        "authentication failed",
        f"key SFTP_JUMP_KEY_FILE={stranger} (ssh-ed25519 SHA256:",
        "the server accepts: publickey",
    )


# -- the exit-code table --------------------------------------------------------------


def exit_code_table() -> tuple[Path, dict[int, str]]:
    """The operator's exit-code table: in docs/operations.md where that page exists, else README.md."""
    operations = REPO / "docs" / "operations.md"
    page = operations if operations.is_file() else REPO / "README.md"
    text = page.read_text(encoding="utf-8")
    heading = re.search(r"^#+ Exit codes\s*$", text, re.MULTILINE)
    assert heading, f"{page}: no 'Exit codes' heading"
    rows: dict[int, str] = {}
    for line in text[heading.end() :].lstrip("\n").splitlines():
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        codes = re.findall(r"\d+", cells[0])
        if not codes or set(cells[0]) <= set("-: "):
            continue  # the header and the rule under it
        for code in codes:
            rows[int(code)] = cells[1]
    return page, rows


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def test_the_exit_code_table_matches_the_codes_the_job_defines() -> None:
    page, table = exit_code_table()
    defined = {value for name, value in vars(errors).items() if name.startswith("EXIT_") and isinstance(value, int)}

    assert set(table) == defined == set(errors.EXIT_MEANINGS), f"{page}: {sorted(table)} != {sorted(defined)}"
    for code, meaning in errors.EXIT_MEANINGS.items():
        missing = _words(meaning) - _words(table[code])
        assert not missing, f"{page}: exit {code} should say {meaning!r}, says {table[code]!r}"
    # A state file that is damaged or cannot be read is exit 2 (the tests above); exit 5 is for writing.
    assert "cannot be read" in table[errors.EXIT_CONFIG] or "unreadable" in table[errors.EXIT_CONFIG]
    assert "not writable" in table[errors.EXIT_STORAGE]
