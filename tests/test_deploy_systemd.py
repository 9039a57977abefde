"""deploy/systemd/ and deploy/cron/: what `make lint` checks, and how the units fit the job."""

from __future__ import annotations

import re
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from app.config import load_settings
from app.errors import EXIT_LOCKED

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))

import validate_k8s  # noqa: E402
import verify_schedules  # noqa: E402

SERVICE = REPO / "deploy" / "systemd" / "sftp-ipi.service"
TIMER = REPO / "deploy" / "systemd" / "sftp-ipi.timer"
needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed (make lint installs systemd)"
)


def value(path: Path, key: str) -> str:
    (found,) = verify_schedules.unit_values(path, key)
    return found


def seconds(text: str) -> int:
    """A systemd time span as our units write them: ``60``, ``120s``, ``3h``."""
    match = re.fullmatch(r"(\d+)(s|min|h)?", text)
    assert match, text
    return int(match.group(1)) * {"s": 1, "min": 60, "h": 3600}[match.group(2) or "s"]


def cronjob() -> dict[str, Any]:
    (job,) = [d for _, d in validate_k8s.manifests() if d["kind"] == "CronJob"]
    return job


def copy_units(tmp_path: Path, replace: tuple[str, str] | None = None) -> list[Path]:
    copies = []
    for unit in verify_schedules.unit_files():
        text = unit.read_text()
        if replace is not None:
            assert replace[0] in text or unit.suffix != ".service"
            text = text.replace(*replace)
        copy = tmp_path / unit.name
        copy.write_text(text)
        copies.append(copy)
    return copies


@needs_analyze
def test_units_and_cron_file_pass_the_lint_check() -> None:
    assert verify_schedules.verify_units(verify_schedules.unit_files()) == []
    assert verify_schedules.verify_cron() == []
    assert verify_schedules.main() == 0


@needs_analyze
@pytest.mark.parametrize(
    ("replace", "reported"),
    [
        (("ProtectSystem=strict", "ProtectSytem=strict"), "Unknown key"),  # misspelt: systemd ignores it, exit 0
        (("TimeoutStopSec=60", "TimeoutStopSec=a minute"), "Failed to parse"),  # bad value: the same
        (("ExecStart=/opt", "ExecStart=opt"), "absolute path"),  # not an absolute path
    ],
)
def test_lint_check_fails_on_what_systemd_would_silently_ignore(
    tmp_path: Path, replace: tuple[str, str], reported: str
) -> None:
    problems = verify_schedules.verify_units(copy_units(tmp_path, replace))
    assert any(reported in line for line in problems), problems


@needs_analyze
def test_lint_check_fails_when_the_sandbox_is_loosened(tmp_path: Path) -> None:
    units = copy_units(tmp_path)
    service = next(u for u in units if u.suffix == ".service")
    sandbox = service.read_text().split("# Sandbox:")[0]
    service.write_text(sandbox)

    problems = verify_schedules.verify_units(units)

    assert any("exposure above" in line for line in problems), problems


def test_service_is_a_hardened_oneshot_that_outlasts_the_jobs_sigterm_handling() -> None:
    assert value(SERVICE, "Type") == "oneshot"
    assert value(SERVICE, "User") == "sftp-ipi"
    assert verify_schedules.unit_values(SERVICE, "DynamicUser") == [], "a stable UID for SERVER_DIR's readers"
    for key, expected in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "CapabilityBoundingSet": "",
    }.items():
        assert value(SERVICE, key) == expected, key
    # As long as the Kubernetes pod's grace period: the job stops in seconds, then reports and alerts.
    pod = cronjob()["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert seconds(value(SERVICE, "TimeoutStopSec")) >= pod["terminationGracePeriodSeconds"]
    assert value(SERVICE, "SuccessExitStatus") == str(EXIT_LOCKED), "another run in progress is not a failure"
    assert value(SERVICE, "ExecStart").startswith("/opt/sftp-ipi/bin/sftp-ipi --env-file ")


def unit_environment(creds: Path) -> dict[str, str]:
    """The service's Environment= with its specifiers as systemd fills them in for a system service."""
    specifiers = {"%S": "/var/lib", "%L": "/var/log", "%d": str(creds)}
    env = {}
    for line in verify_schedules.unit_values(SERVICE, "Environment"):
        for assignment in shlex.split(line):
            for spec, path in specifiers.items():
                assignment = assignment.replace(spec, path)
            name, _, raw = assignment.partition("=")
            env[name] = raw
    return env


def test_everything_the_job_writes_is_inside_the_units_writable_paths(tmp_path: Path) -> None:
    (tmp_path / "sftp_credential").write_text("secret\n")
    env = {"SFTP_HOST": "sftp.example.com", "SFTP_USER": "ipi", **unit_environment(tmp_path)}

    settings = load_settings(env)

    state = Path("/var/lib") / value(SERVICE, "StateDirectory")
    logs = Path("/var/log") / value(SERVICE, "LogsDirectory")
    writable = [state, logs, *map(Path, value(SERVICE, "ReadWritePaths").split())]
    written = [settings.local_dir, settings.server_dir, settings.log_file, settings.last_file_record]
    written += [settings.ledger_path, settings.lock_path, settings.report_path]
    for path in written:
        assert any(path.is_relative_to(w) for w in writable), path
    assert settings.sftp_pass == "secret", "the password comes from the credential"


def test_timer_runs_every_15_minutes_like_the_cronjob_and_the_cron_file_catching_up_after_downtime() -> None:
    assert value(TIMER, "OnCalendar") == "*:0/15"
    assert value(TIMER, "Persistent") == "true"
    assert 0 < seconds(value(TIMER, "RandomizedDelaySec")) <= 5 * 60, "spread, but well inside the period"
    schedule = cronjob()["spec"]["schedule"]
    assert schedule == "*/15 * * * *"
    ((_, line),) = verify_schedules.cron_entries()
    assert line.startswith(schedule + " sftp-ipi ")


@pytest.mark.parametrize(
    ("line", "reported"),
    [
        ("*/15 * * * sftp-ipi /opt/sftp-ipi/bin/sftp-ipi --env-file x", "invalid day of week"),
        ("61 * * * * sftp-ipi /opt/sftp-ipi/bin/sftp-ipi --env-file /etc/sftp-ipi/sftp-ipi.env", "invalid minute"),
        ("*/15 * * * * sftp-ipi /usr/bin/sftp-ipi", "differs from sftp-ipi.service"),
    ],
)
def test_cron_check_catches_a_bad_line(tmp_path: Path, line: str, reported: str) -> None:
    cron = tmp_path / "sftp-ipi"
    cron.write_text(f"# comment\nPATH=/usr/bin:/bin\n{line}\n")
    problems = verify_schedules.verify_cron(cron)
    assert any(reported in p for p in problems), problems


def test_the_deployment_page_shows_the_cron_line_and_the_unit_files() -> None:
    page = (REPO / "docs" / "deployment.md").read_text()
    ((_, line),) = verify_schedules.cron_entries()
    assert line in page
    for unit in verify_schedules.unit_files():
        assert f"deploy/systemd/{unit.name}" in page


def test_the_per_feed_cron_recipe_passes_the_cron_check(tmp_path: Path) -> None:
    """docs/deployment.md's one-line-per-feed recipe is a valid cron.d file running the job per env file."""
    page = (REPO / "docs" / "deployment.md").read_text()
    section = page.split("### Many feeds with cron\n", 1)[1].split("\n### ", 1)[0]
    lines = [line for line in section.splitlines() if re.match(r"^[*0-9]", line) and "sftp-ipi --env-file" in line]
    assert len(lines) >= 2, "one line per feed"
    env_files = [re.search(r"--env-file (\S+)", line).group(1) for line in lines]  # type: ignore[union-attr]
    assert len(set(env_files)) == len(lines), "each feed has its own env file"
    assert "flock" not in "".join(lines), "the job holds its own lock"
    cron = tmp_path / "sftp-ipi"
    cron.write_text("SHELL=/bin/sh\nPATH=/usr/bin:/bin\n" + "\n".join(lines) + "\n")
    # Each line runs what the template unit runs for its feed, not the single unit's env file.
    problems = [p for p in verify_schedules.verify_cron(cron) if "differs from sftp-ipi.service" not in p]
    assert problems == []
    (exec_start,) = verify_schedules.unit_values(REPO / "deploy" / "systemd" / "sftp-ipi@.service", "ExecStart")
    for line, env_file in zip(lines, env_files, strict=True):
        feed = Path(env_file).stem
        assert line.split(None, 6)[6].startswith(exec_start.replace("%i", feed)), line

    # The feed's env file shown beside it holds valid settings, its own state and its feed name.
    env_block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    values = dict(
        line.split("#")[0].strip().split("=", 1) for line in env_block.splitlines() if re.match(r"^[A-Z_]+=", line)
    )
    secret = tmp_path / "password"
    secret.write_text("pw\n")
    settings = load_settings({**values, "SFTP_USER": "ipi", "SFTP_PASS_FILE": str(secret)})
    feed = values["METRICS_INSTANCE"]
    assert f"/etc/sftp-ipi/{feed}.env" in env_files
    for path in (settings.local_dir, settings.last_file_record, settings.log_file, settings.server_dir):
        assert feed in Path(path).parts, path


def test_the_template_unit_keeps_the_single_units_sandbox_and_bounds() -> None:
    """sftp-ipi@.service differs from sftp-ipi.service only in its per-feed paths."""
    single = (REPO / "deploy" / "systemd" / "sftp-ipi.service").read_text().splitlines()
    template = (REPO / "deploy" / "systemd" / "sftp-ipi@.service").read_text().splitlines()

    def settings(lines: list[str]) -> set[str]:
        return {line for line in lines if "=" in line and not line.startswith("#")}

    per_feed = {line for line in settings(template) - settings(single) if "%i" not in line}
    assert per_feed == set(), per_feed
    assert settings(single) - settings(template) == {
        line for line in settings(single) if "sftp-ipi" in line and ("/" in line or "Directory=" in line)
    } | {"Description=sftp-ipi: pull the next IPI files from the SFTP server"}
    assert "StateDirectory=sftp-ipi/%i" in template
    assert "ExecStart=/opt/sftp-ipi/bin/sftp-ipi --env-file /etc/sftp-ipi/%i.env" in template
    assert "SuccessExitStatus=4" in template
