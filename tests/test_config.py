"""Settings: parsing and validating a mapping of environment variables (no process environment)."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from app.config import (
    MiB,
    MissingSettingError,
    Settings,
    StateSettings,
    load_settings,
    load_state_settings,
    read_environment,
)
from app.errors import EXIT_CONFIG, ConfigError

PASSWORD = "pw-Zq81-never-shown"
PASSPHRASE = "pp-Kx42-never-shown"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A minimal valid environment whose paths all live under tmp_path."""
    return {
        "SFTP_HOST": "sftp.example.com",
        "SFTP_USER": "ipi",
        "SFTP_PASS": PASSWORD,
        "LOCAL_DIR": str(tmp_path / "local"),
        "SERVER_DIR": str(tmp_path / "server"),
        "LOG_FILE": str(tmp_path / "logs" / "job.log"),
        "LAST_FILE_RECORD": str(tmp_path / "state" / "last_file.txt"),
    }


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "id_ed25519"
    path.write_text("not parsed by load_settings\n")
    return path


def config_error(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    return str(info.value)


# -- defaults ------------------------------------------------------------------


def test_defaults_match_the_documented_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = load_settings({"SFTP_HOST": "h", "SFTP_USER": "u", "SFTP_PASS": "p"})
    assert s.sftp_port == 22
    assert s.local_dir == Path("./local_downloads")
    assert s.server_dir == Path("./synced_server")
    assert s.log_file == Path("./logs/sftp_transfer.log")
    assert s.last_file_record == Path("./last_file.txt")
    assert s.file_pattern == "*IPI*"
    assert s.order_by == "name-date"
    assert s.select_mode == "next"
    assert s.min_file_age == 60
    assert s.chunk_size == 2 * MiB == 2_097_152
    assert s.connect_timeout == 30
    assert s.keepalive_interval == 15
    assert s.retry_max_tries == 7
    assert s.retry_max_time == 1800
    assert s.retry_backoff_factor == 5.0
    assert s.log_level == "INFO"
    assert s.log_format == "text"
    assert s.sftp_host_key_policy == "strict"
    assert s.sftp_dir == ""
    assert s.sftp_key_file is None
    assert s.sftp_key_passphrase is None
    assert s.ledger_path == Path("completed_files.jsonl")
    assert s.lock_path == Path("last_file.txt.lock")


def test_ledger_and_lock_sit_beside_last_file_record(env: dict[str, str], tmp_path: Path) -> None:
    s = load_settings(env)
    assert s.ledger_path == tmp_path / "state" / "completed_files.jsonl"
    assert s.lock_path == tmp_path / "state" / "last_file.txt.lock"


def test_ledger_file_setting_overrides_the_default_place(env: dict[str, str], tmp_path: Path) -> None:
    env["LEDGER_FILE"] = str(tmp_path / "elsewhere.jsonl")
    assert load_settings(env).ledger_path == tmp_path / "elsewhere.jsonl"


def test_values_are_parsed_and_normalised(env: dict[str, str]) -> None:
    env.update(
        {
            "SFTP_PORT": " 2222 ",
            "ORDER_BY": "MTIME",
            "SELECT_MODE": " All ",
            "LOG_LEVEL": "debug",
            "LOG_FORMAT": "JSON",
            "SFTP_HOST_KEY_POLICY": "Accept-New",
            "MIN_FILE_AGE": "0",
            "RETRY_BACKOFF_FACTOR": "0.25",
            "SFTP_HOST": "  10.0.0.5  ",
        }
    )
    s = load_settings(env)
    assert s.sftp_port == 2222
    assert s.order_by == "mtime"
    assert s.select_mode == "all"
    assert s.log_level == "DEBUG"
    assert s.log_format == "json"
    assert s.sftp_host_key_policy == "accept-new"
    assert s.min_file_age == 0
    assert s.retry_backoff_factor == 0.25
    assert s.sftp_host == "10.0.0.5"


@pytest.mark.parametrize("port", ["1", "65535"])
def test_port_bounds_are_accepted(env: dict[str, str], port: str) -> None:
    env["SFTP_PORT"] = port
    assert load_settings(env).sftp_port == int(port)


def test_paths_expand_the_home_directory(env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    env["LOCAL_DIR"] = "~/incoming"
    assert load_settings(env).local_dir == tmp_path / "home" / "incoming"


# -- empty values ----------------------------------------------------------------


def test_empty_strings_count_as_unset_and_take_defaults(env: dict[str, str]) -> None:
    for name in ("SFTP_PORT", "MIN_FILE_AGE", "ORDER_BY", "SELECT_MODE", "LOG_LEVEL", "FILE_PATTERN"):
        env[name] = ""
    env["SFTP_KEY_FILE"] = "   "
    env["SFTP_PASS_FILE"] = ""
    s = load_settings(env)
    assert (s.sftp_port, s.min_file_age, s.order_by, s.select_mode, s.log_level, s.file_pattern) == (
        22,
        60,
        "name-date",
        "next",
        "INFO",
        "*IPI*",
    )
    assert s.sftp_key_file is None
    assert s.sftp_pass_file is None
    assert s.sftp_pass == PASSWORD


@pytest.mark.parametrize("name", ["SFTP_HOST", "SFTP_USER"])
def test_empty_required_setting_is_reported_as_required(env: dict[str, str], name: str) -> None:
    env[name] = ""
    assert re.search(rf"\b{name}\b.*required", config_error(env))


def test_empty_password_counts_as_no_credentials(env: dict[str, str]) -> None:
    env["SFTP_PASS"] = ""
    assert "no credentials" in config_error(env)


# -- every bad setting names its variable ----------------------------------------


@pytest.mark.parametrize(
    ("overrides", "variable"),
    [
        pytest.param({"SFTP_HOST": None}, "SFTP_HOST", id="missing-host"),
        pytest.param({"SFTP_USER": None}, "SFTP_USER", id="missing-user"),
        pytest.param({"SFTP_HOST": "bad host"}, "SFTP_HOST", id="host-with-space"),
        pytest.param({"SFTP_PORT": "ssh"}, "SFTP_PORT", id="port-not-numeric"),
        pytest.param({"SFTP_PORT": "22.0"}, "SFTP_PORT", id="port-not-whole"),
        pytest.param({"SFTP_PORT": "0"}, "SFTP_PORT", id="port-0"),
        pytest.param({"SFTP_PORT": "70000"}, "SFTP_PORT", id="port-70000"),
        pytest.param({"SFTP_PORT": "65536"}, "SFTP_PORT", id="port-65536"),
        pytest.param({"SFTP_HOST_KEY_POLICY": "auto-add"}, "SFTP_HOST_KEY_POLICY", id="bad-host-key-policy"),
        pytest.param({"ORDER_BY": "size"}, "ORDER_BY", id="bad-order-by"),
        pytest.param({"SELECT_MODE": "first"}, "SELECT_MODE", id="bad-select-mode"),
        pytest.param({"LOG_FORMAT": "xml"}, "LOG_FORMAT", id="bad-log-format"),
        pytest.param({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL", id="bad-log-level"),
        pytest.param({"MIN_FILE_AGE": "-1"}, "MIN_FILE_AGE", id="negative-min-file-age"),
        pytest.param({"CHUNK_SIZE": "1024"}, "CHUNK_SIZE", id="chunk-size-too-small"),
        pytest.param({"CHUNK_SIZE": "4095"}, "CHUNK_SIZE", id="chunk-size-just-too-small"),
        pytest.param({"RETRY_MAX_TRIES": "0"}, "RETRY_MAX_TRIES", id="retry-max-tries-0"),
        pytest.param({"RETRY_BACKOFF_FACTOR": "nan"}, "RETRY_BACKOFF_FACTOR", id="backoff-nan"),
        pytest.param({"RETRY_BACKOFF_FACTOR": "-1"}, "RETRY_BACKOFF_FACTOR", id="backoff-negative"),
        pytest.param({"RETRY_BACKOFF_FACTOR": "fast"}, "RETRY_BACKOFF_FACTOR", id="backoff-not-numeric"),
        pytest.param({"SFTP_PASS": None}, "SFTP_PASS", id="no-credentials"),
        pytest.param({"SFTP_KEY_PASSPHRASE": "pp"}, "SFTP_KEY_PASSPHRASE", id="passphrase-without-key"),
        pytest.param({"FILE_PATTERN": "in/*IPI*"}, "FILE_PATTERN", id="pattern-with-slash"),
    ],
)
def test_bad_setting_is_a_config_error_naming_the_variable(
    env: dict[str, str], overrides: dict[str, str | None], variable: str
) -> None:
    for name, value in overrides.items():
        if value is None:
            del env[name]
        else:
            env[name] = value
    message = config_error(env)
    assert re.search(rf"\b{variable}\b", message), message


def test_config_error_maps_to_the_config_exit_code() -> None:
    assert ConfigError("x").exit_code == EXIT_CONFIG == 2


def test_no_credentials_message_lists_every_way_to_log_in(env: dict[str, str]) -> None:
    del env["SFTP_PASS"]
    message = config_error(env)
    for name in ("SFTP_PASS", "SFTP_PASS_FILE", "SFTP_KEY_FILE"):
        assert name in message


def test_both_password_and_password_file_is_an_error(env: dict[str, str], tmp_path: Path) -> None:
    secret = tmp_path / "pass"
    secret.write_text("other\n")
    env["SFTP_PASS_FILE"] = str(secret)
    message = config_error(env)
    assert re.search(r"\bSFTP_PASS\b", message)
    assert re.search(r"\bSFTP_PASS_FILE\b", message)


def test_missing_password_file_is_an_error(env: dict[str, str], tmp_path: Path) -> None:
    del env["SFTP_PASS"]
    env["SFTP_PASS_FILE"] = str(tmp_path / "absent")
    message = config_error(env)
    assert "SFTP_PASS_FILE" in message
    assert "no such file" in message


@pytest.mark.parametrize("content", ["", "\n", "\r\n"])
def test_empty_password_file_is_an_error(env: dict[str, str], tmp_path: Path, content: str) -> None:
    secret = tmp_path / "pass"
    secret.write_bytes(content.encode())
    del env["SFTP_PASS"]
    env["SFTP_PASS_FILE"] = str(secret)
    message = config_error(env)
    assert "SFTP_PASS_FILE" in message
    assert "empty" in message


def test_password_file_that_is_a_directory_is_an_error(env: dict[str, str], tmp_path: Path) -> None:
    del env["SFTP_PASS"]
    env["SFTP_PASS_FILE"] = str(tmp_path)
    assert "SFTP_PASS_FILE" in config_error(env)


def test_missing_key_file_is_an_error(env: dict[str, str], tmp_path: Path) -> None:
    env["SFTP_KEY_FILE"] = str(tmp_path / "no_such_key")
    message = config_error(env)
    assert "SFTP_KEY_FILE" in message
    assert "no such file" in message


def test_local_dir_equal_to_server_dir_is_an_error(env: dict[str, str], tmp_path: Path) -> None:
    env["SERVER_DIR"] = str(tmp_path / "x" / ".." / "local")  # the same directory once resolved
    message = config_error(env)
    assert "LOCAL_DIR" in message
    assert "SERVER_DIR" in message


@pytest.mark.parametrize("variable", ["LOCAL_DIR", "SERVER_DIR"])
def test_directory_setting_naming_a_regular_file_is_an_error(
    env: dict[str, str], tmp_path: Path, variable: str
) -> None:
    regular = tmp_path / "a_file"
    regular.write_text("x")
    env[variable] = str(regular)
    message = config_error(env)
    assert variable in message
    assert "not a directory" in message


@pytest.mark.parametrize("variable", ["LAST_FILE_RECORD", "LOG_FILE"])
def test_file_setting_naming_a_directory_is_an_error(env: dict[str, str], tmp_path: Path, variable: str) -> None:
    env[variable] = str(tmp_path)
    assert variable in config_error(env)


def test_existing_directories_are_accepted(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "local").mkdir()
    (tmp_path / "server").mkdir()
    s = load_settings(env)
    assert s.local_dir == tmp_path / "local"
    assert s.server_dir == tmp_path / "server"


# -- credentials ---------------------------------------------------------------


def test_key_file_alone_is_enough_credentials(env: dict[str, str], key_file: Path) -> None:
    del env["SFTP_PASS"]
    env["SFTP_KEY_FILE"] = str(key_file)
    s = load_settings(env)
    assert s.sftp_key_file == key_file
    assert s.sftp_pass is None


def test_passphrase_with_key_file_is_accepted(env: dict[str, str], key_file: Path) -> None:
    env["SFTP_KEY_FILE"] = str(key_file)
    env["SFTP_KEY_PASSPHRASE"] = PASSPHRASE
    assert load_settings(env).sftp_key_passphrase == PASSPHRASE


def test_password_keeps_surrounding_whitespace(env: dict[str, str]) -> None:
    env["SFTP_PASS"] = "  spaced pass  "
    assert load_settings(env).sftp_pass == "  spaced pass  "


@pytest.mark.parametrize(
    ("content", "password"),
    [
        ("hunter2", "hunter2"),
        ("hunter2\n", "hunter2"),
        ("hunter2\r\n", "hunter2"),
        ("hunter2\n\n", "hunter2\n"),  # exactly one newline is stripped
        (" hunter2 \n", " hunter2 "),  # nothing else is
        ("line1\nline2\n", "line1\nline2"),
    ],
)
def test_password_file_strips_exactly_one_trailing_newline(
    env: dict[str, str], tmp_path: Path, content: str, password: str
) -> None:
    secret = tmp_path / "pass"
    secret.write_bytes(content.encode())
    del env["SFTP_PASS"]
    env["SFTP_PASS_FILE"] = str(secret)
    s = load_settings(env)
    assert s.sftp_pass == password
    assert s.sftp_pass_file == secret


@pytest.mark.parametrize(
    ("content", "password"),
    [
        (b"pa\rss\n", "pa\rss"),
        (b"pw\r\r\n", "pw\r"),
    ],
)
def test_password_file_keeps_carriage_returns_that_are_not_the_trailing_newline(
    env: dict[str, str], tmp_path: Path, content: bytes, password: str
) -> None:
    secret = tmp_path / "pass"
    secret.write_bytes(content)
    del env["SFTP_PASS"]
    env["SFTP_PASS_FILE"] = str(secret)
    assert load_settings(env).sftp_pass == password


# -- secrets ---------------------------------------------------------------------


def test_repr_never_contains_password_or_passphrase(env: dict[str, str], key_file: Path) -> None:
    env["SFTP_KEY_FILE"] = str(key_file)
    env["SFTP_KEY_PASSPHRASE"] = PASSPHRASE
    s = load_settings(env)
    text = repr(s) + str(s)
    assert PASSWORD not in text
    assert PASSPHRASE not in text
    assert "sftp.example.com" in text  # repr does show the non-secret settings


def test_repr_never_contains_password_read_from_file(env: dict[str, str], tmp_path: Path) -> None:
    secret = tmp_path / "pass"
    secret.write_text(PASSWORD + "\n")
    del env["SFTP_PASS"]
    env["SFTP_PASS_FILE"] = str(secret)
    s = load_settings(env)
    assert s.sftp_pass == PASSWORD
    assert PASSWORD not in repr(s)


def test_secrets_hold_password_and_passphrase(env: dict[str, str], key_file: Path) -> None:
    env["SFTP_KEY_FILE"] = str(key_file)
    env["SFTP_KEY_PASSPHRASE"] = PASSPHRASE
    assert load_settings(env).secrets == (PASSWORD, PASSPHRASE)


def test_secrets_are_empty_with_an_unencrypted_key_only(env: dict[str, str], key_file: Path) -> None:
    del env["SFTP_PASS"]
    env["SFTP_KEY_FILE"] = str(key_file)
    assert load_settings(env).secrets == ()


def test_config_errors_do_not_echo_the_password(env: dict[str, str], tmp_path: Path) -> None:
    secret = tmp_path / "pass"
    secret.write_text("other")
    env["SFTP_PASS_FILE"] = str(secret)
    assert PASSWORD not in config_error(env)


# -- read_environment --------------------------------------------------------------


def test_env_file_is_read(tmp_path: Path) -> None:
    dotenv = tmp_path / "job.env"
    dotenv.write_text("SFTP_HOST=from-file\nSFTP_USER=file-user\n# a comment\nSFTP_PORT=2200\n")
    merged = read_environment(dotenv, {})
    assert merged["SFTP_HOST"] == "from-file"
    assert merged["SFTP_USER"] == "file-user"
    assert merged["SFTP_PORT"] == "2200"


def test_real_environment_wins_over_env_file(tmp_path: Path) -> None:
    dotenv = tmp_path / "job.env"
    dotenv.write_text("SFTP_HOST=from-file\nSFTP_USER=file-user\n")
    merged = read_environment(dotenv, {"SFTP_HOST": "from-env", "OTHER": "kept"})
    assert merged["SFTP_HOST"] == "from-env"
    assert merged["SFTP_USER"] == "file-user"
    assert merged["OTHER"] == "kept"


def test_missing_named_env_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--env-file"):
        read_environment(tmp_path / "absent.env", {"SFTP_HOST": "h"})


def test_dot_env_in_the_working_directory_is_read_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("SFTP_USER=dot-env-user\n")
    monkeypatch.chdir(tmp_path)
    assert read_environment(None, {"SFTP_HOST": "h"}) == {"SFTP_USER": "dot-env-user", "SFTP_HOST": "h"}


def test_without_dot_env_only_the_environment_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert read_environment(None, {"SFTP_HOST": "h"}) == {"SFTP_HOST": "h"}


def test_env_file_keys_without_value_are_dropped(tmp_path: Path) -> None:
    dotenv = tmp_path / "job.env"
    dotenv.write_text("SFTP_HOST\nSFTP_USER=u\n")
    assert read_environment(dotenv, {}) == {"SFTP_USER": "u"}


def test_env_file_feeds_load_settings(tmp_path: Path) -> None:
    dotenv = tmp_path / "job.env"
    dotenv.write_text(
        f"SFTP_HOST=sftp.example.com\nSFTP_USER=ipi\nSFTP_PASS={PASSWORD}\nSELECT_MODE=all\n"
        f"LOCAL_DIR={tmp_path / 'l'}\nSERVER_DIR={tmp_path / 's'}\n"
        f"LAST_FILE_RECORD={tmp_path / 'last_file.txt'}\nLOG_FILE={tmp_path / 'job.log'}\n"
    )
    s = load_settings(read_environment(dotenv, {"SELECT_MODE": "latest"}))
    assert isinstance(s, Settings)
    assert s.sftp_host == "sftp.example.com"
    assert s.select_mode == "latest"
    assert s.sftp_pass == PASSWORD


def test_default_known_hosts_is_expanded_for_the_running_user(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    settings = load_settings({"SFTP_HOST": "h", "SFTP_USER": "u", "SFTP_PASS": "p"})
    assert settings.sftp_known_hosts == tmp_path / ".ssh" / "known_hosts"


@pytest.mark.parametrize(
    ("line", "name"),
    [
        pytest.param("SELECT_MODE all", "SELECT_MODE", id="no-equals"),
        pytest.param("MIN_FILE_AGE: 600", "MIN_FILE_AGE", id="colon"),
        pytest.param('SFTP_USER="ipi', "SFTP_USER", id="unterminated-quote"),
    ],
)
def test_unparseable_env_file_line_is_a_config_error_naming_file_and_line(tmp_path: Path, line: str, name: str) -> None:
    dotenv = tmp_path / "job.env"
    dotenv.write_text(f"SFTP_HOST=h\n# a comment\n{line}\nSFTP_PORT=2200\n")
    with pytest.raises(ConfigError) as info:
        read_environment(dotenv, {})
    assert str(info.value).startswith(f"{dotenv}:3: ")
    assert name in str(info.value)


def test_unparseable_line_never_echoes_its_value(tmp_path: Path) -> None:
    dotenv = tmp_path / "job.env"
    dotenv.write_text(f"SFTP_PASS: {PASSWORD}\n")
    with pytest.raises(ConfigError) as info:
        read_environment(dotenv, {})
    assert "SFTP_PASS" in str(info.value)
    assert PASSWORD not in str(info.value)


@pytest.mark.parametrize(
    ("name", "guess"),
    [
        pytest.param("SELECT_MOD", "SELECT_MODE", id="misspelt"),
        pytest.param("select_mode", "SELECT_MODE", id="lower-case"),
        pytest.param("SFTP_PASSWORD", "SFTP_PASS", id="our-prefix"),
        pytest.param("NOTIFY_SLACK", None, id="our-prefix-nothing-close"),
    ],
)
def test_env_file_name_that_looks_like_a_setting_gets_a_warning_with_the_likely_name(
    tmp_path: Path, name: str, guess: str | None
) -> None:
    dotenv = tmp_path / "job.env"
    dotenv.write_text(f"SFTP_HOST=h\n{name}=all\n")
    (warning,) = read_environment(dotenv, {}).warnings
    assert warning.startswith(f"{dotenv}:2: {name} is not a setting")
    assert (f"did you mean {guess}?" in warning) if guess else ("did you mean" not in warning)


def test_environment_names_are_checked_only_with_our_prefixes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    environ = {
        "SFTP_USR": "x",  # ours, misspelt
        "LOGLEVEL": "debug",  # close to LOG_LEVEL, but the environment holds much else: only prefixes count
        "SFTP_HOST": "h",
        "HOME": "/root",
        "SSH_AUTH_SOCK": "/tmp/agent",  # OpenSSH's, not ours
        "SFTP_SERVICE_HOST": "10.0.0.1",  # a Kubernetes Service named "sftp"
        "SFTP_PORT_22_TCP_ADDR": "10.0.0.1",
    }
    monkeypatch.chdir(tmp_path)
    warnings = read_environment(None, environ).warnings
    assert warnings == ("environment: SFTP_USR is not a setting and is ignored; did you mean SFTP_USER?",)


def test_known_names_and_compose_variables_get_no_warning(tmp_path: Path) -> None:
    dotenv = tmp_path / "job.env"
    dotenv.write_text("SFTP_HOST=h\nSFTP_TEST_PORT=2222\nBASE_IMAGE=python:3.13-slim\nUNRELATED=1\n")
    assert read_environment(dotenv, {"SFTP_USER": "u", "PATH": "/bin"}).warnings == ()


# -- the state settings of status, audit and refetch ------------------------------------------


def test_state_settings_declare_the_types_of_the_settings_they_share() -> None:
    declared = {f.name: f.type for f in fields(Settings)}
    for f in fields(StateSettings):
        assert f.type == declared[f.name], f.name


def test_state_settings_need_no_connection_settings_or_credentials(tmp_path: Path) -> None:
    record = tmp_path / "state" / "last_file.txt"
    env = {"LAST_FILE_RECORD": str(record), "SFTP_PASS_FILE": str(tmp_path / "no-such-file"), "SFTP_PORT": "x"}
    s = load_state_settings(env)
    assert s.last_file_record == record
    assert s.ledger_path == record.parent / "completed_files.jsonl"
    assert s.lock_path == record.parent / "last_file.txt.lock"
    assert s.report_path == record.parent / "run_report.json"


def test_state_settings_take_the_same_defaults_and_parsers(env: dict[str, str]) -> None:
    env.update({"FILE_MODE": "0600", "ORDER_BY": "MTIME", "LOG_LEVEL": "debug", "REPORT_FILE": "~/r.json"})
    full, state = load_settings(env), load_state_settings(env)
    for f in fields(StateSettings):
        assert getattr(state, f.name) == getattr(full, f.name), f.name
    assert state.umask == full.umask == 0o077
    defaults, state_defaults = (
        load_settings({"SFTP_HOST": "h", "SFTP_USER": "u", "SFTP_PASS": "p"}),
        (load_state_settings({})),
    )
    for f in fields(StateSettings):
        assert getattr(state_defaults, f.name) == getattr(defaults, f.name), f.name


@pytest.mark.parametrize(
    ("overrides", "culprit"),
    [({"FILE_MODE": "rw"}, "FILE_MODE"), ({"LOG_LEVEL": "loud"}, "LOG_LEVEL"), ({"SERVER_DIR": "same"}, "SERVER_DIR")],
)
def test_state_settings_are_checked_like_all_settings(
    overrides: dict[str, str], culprit: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=culprit):
        load_state_settings({"LOCAL_DIR": "same", **overrides})


def test_missing_required_setting_is_a_missing_setting_error(env: dict[str, str]) -> None:
    del env["SFTP_HOST"]
    with pytest.raises(MissingSettingError, match="SFTP_HOST is required"):
        load_settings(env)


def test_env_file_values_are_not_interpolated(tmp_path: Path) -> None:
    dotenv = tmp_path / "job.env"
    dotenv.write_text('SFTP_PASS=pa${HOME}ss\nSFTP_USER="u${USER:-x}"\nSFTP_HOST=h\n')
    merged = read_environment(dotenv, {"HOME": "/root", "USER": "root"})
    assert merged["SFTP_PASS"] == "pa${HOME}ss"
    assert merged["SFTP_USER"] == "u${USER:-x}"
