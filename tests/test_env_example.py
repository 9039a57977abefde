""".env.example documents every setting, with its default, and stays in step with the code."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from dotenv import dotenv_values

from app.config import load_settings, setting_docs

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))

from env_example import render  # noqa: E402


def test_env_example_matches_the_settings() -> None:
    assert (REPO / ".env.example").read_text() == render(), "run `make env-example` and commit the result"


def test_env_example_names_every_setting_with_its_default() -> None:
    text = (REPO / ".env.example").read_text()
    for doc in setting_docs():
        assert f"{doc.env}=" in text
        if doc.default and not doc.required:
            assert doc.default in text


def test_env_example_loads_as_valid_settings(tmp_path: Path) -> None:
    values = {k: v for k, v in dotenv_values(REPO / ".env.example").items() if v is not None}
    secret = tmp_path / "password"
    secret.write_text("pw\n")
    values["SFTP_PASS_FILE"] = str(secret)
    settings = load_settings(values)
    assert settings.sftp_host == "sftp"
    assert settings.sftp_pass == "pw"


def test_a_copy_of_env_example_asks_for_credentials_not_a_compose_secret(tmp_path: Path) -> None:
    shutil.copy(REPO / ".env.example", tmp_path / ".env")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "PYTHONPATH": str(REPO)}

    result = subprocess.run(
        [sys.executable, "-m", "app", "--dry-run"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    (error,) = [line for line in result.stderr.splitlines() if "| ERROR" in line]
    assert "no credentials" in error, error
    assert "/run/secrets" not in result.stderr
