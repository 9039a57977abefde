"""A `.env` value is taken as written: `${VAR}` in a password is not expanded."""

from __future__ import annotations

from pathlib import Path

from conftest import run_job
from proftpd import Proftpd


def test_password_with_a_dollar_brace_in_the_env_file_logs_in_as_written(proftpd: Proftpd, tmp_path: Path) -> None:
    proftpd.stop()
    proftpd.password = "pa${HOME}ss"  # python-dotenv's interpolation made this pa/<home>ss
    proftpd.start()
    proftpd.put("20250428.IPI", b"delivered")
    settings = proftpd.env(tmp_path)
    del settings["SFTP_PASS"]
    dotenv = tmp_path / "job.env"
    dotenv.write_text("SFTP_PASS=pa${HOME}ss\n")

    result = run_job(settings, tmp_path / "cwd", "--env-file", str(dotenv))

    assert result.code == 0, result.output
    assert (tmp_path / "server" / "20250428.IPI").read_bytes() == b"delivered"
    assert "pa${HOME}ss" not in result.output
