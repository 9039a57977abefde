"""``sftp-ipi config``: every effective setting, its source, secrets masked, and the
run's own exit 2 for an invalid value; STRICT_SETTINGS makes a misspelt name an error."""

from __future__ import annotations

import json

from conftest import Server, run_job


def test_config_names_each_settings_source_and_masks_secrets(server: Server) -> None:
    env = server.env()
    env_file = server.tmp / "feed.env"
    password = server.tmp / "password"
    password.write_text("hunter2-not-shown\n")
    env_file.write_text(f"# feed a\nSFTP_HOST=127.0.0.1\nSFTP_PASS_FILE={password}\nSELECT_MODE=next\n")
    env.pop("SFTP_HOST")
    env["SELECT_MODE"] = "latest"  # the environment wins over the file

    text = run_job(env, server.tmp / "cwd", "config", "--env-file", str(env_file))
    machine = run_job(env, server.tmp / "cwd", "config", "--json", "--env-file", str(env_file))

    assert text.code == 0 and machine.code == 0, text.output + machine.output
    rows = {row["name"]: row for row in json.loads(machine.stdout)}
    assert rows["SFTP_HOST"] == {"name": "SFTP_HOST", "value": "127.0.0.1", "source": f"{env_file}:2"}
    assert rows["SELECT_MODE"] == {"name": "SELECT_MODE", "value": "latest", "source": "environment"}
    assert rows["SFTP_PORT"]["source"] == "environment"
    assert rows["CONNECT_TIMEOUT"]["source"] == "environment"
    assert rows["ORDER_BY"]["source"] == "default"
    assert rows["SFTP_PASS_FILE"] == {"name": "SFTP_PASS_FILE", "value": str(password), "source": f"{env_file}:3"}
    assert rows["SFTP_PASS"]["value"] == f"******** (from SFTP_PASS_FILE={password})"
    assert "hunter2" not in text.output + machine.output
    assert "SELECT_MODE" in text.stdout and "= latest  # environment" in text.stdout


def test_config_exits_2_with_the_runs_own_message_for_an_invalid_value(server: Server) -> None:
    env = server.env(SFTP_PORT="99999")

    shown = run_job(env, server.tmp / "cwd", "config")
    ran = run_job(env, server.tmp / "cwd")

    assert shown.code == 2 == ran.code
    [error] = [line for line in shown.stderr.splitlines() if "| ERROR" in line]
    assert "SFTP_PORT" in error
    assert error.split("| ERROR", 1)[1] in ran.stderr, "the same message as a run"
    assert "Traceback" not in shown.output


def test_strict_settings_makes_a_misspelt_name_exit_2(server: Server) -> None:
    env_file = server.tmp / "feed.env"
    env_file.write_text("SELECT_MOED=next\n")

    lenient = run_job(server.env(), server.tmp / "cwd", "config", "--env-file", str(env_file))
    strict = run_job(server.env(STRICT_SETTINGS="1"), server.tmp / "cwd", "config", "--env-file", str(env_file))
    strict_run = run_job(server.env(STRICT_SETTINGS="1"), server.tmp / "cwd", "--env-file", str(env_file))

    assert lenient.code == 0, lenient.output
    assert "SELECT_MOED is not a setting and is ignored; did you mean SELECT_MODE?" in lenient.stderr
    assert strict.code == 2 and strict_run.code == 2, strict.output
    [error] = [line for line in strict.stderr.splitlines() if "| ERROR" in line]
    assert f"{env_file}:1: SELECT_MOED is not a setting" in error and "STRICT_SETTINGS" in error
    assert not (server.served).exists(), "a strict run stops before it fetches anything"


def test_a_unit_environment_overriding_the_env_file_is_warned_and_named_as_the_source(server: Server) -> None:
    """Under systemd (INVOCATION_ID set), a setting both in the env file and in the
    unit's Environment= is named: the file's value would otherwise be ignored unseen."""
    env_file = server.tmp / "feed.env"
    env_file.write_text(f"SELECT_MODE=next\nLOCAL_DIR={server.tmp / 'elsewhere'}\n")
    env = server.env(INVOCATION_ID="0123456789abcdef")

    result = run_job(env, server.tmp / "cwd", "config", "--env-file", str(env_file))

    assert result.code == 0, result.output
    [line] = [w for w in result.stderr.splitlines() if "| WARNING" in w]
    assert f"{env_file}:2: LOCAL_DIR is also set by the unit's Environment=" in line
    machine = run_job(env, server.tmp / "cwd", "config", "--json", "--env-file", str(env_file))
    rows = {row["name"]: row["source"] for row in json.loads(machine.stdout)}
    assert rows["LOCAL_DIR"] == "systemd unit (Environment=)"
    assert rows["SELECT_MODE"] == f"{env_file}:1"
    quiet = run_job(server.env(), server.tmp / "cwd", "config", "--env-file", str(env_file))
    assert "| WARNING" not in quiet.stderr, "outside systemd the environment winning is the documented rule"
