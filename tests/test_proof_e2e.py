"""Source proof through whole job runs (issue 11): the job as a process against a real
ProFTPD mod_sftp (server digests) and a real OpenSSH sshd (checksum files, the hash
command, ready markers); ledger, run report, JSON log, metrics and status read back."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from conftest import Result, Runner, Server, run_job, size_of, start_job, wait_until
from proftpd import Proftpd
from relay import Relay

MiB = 1024 * 1024
MTIME = 1_745_800_000  # a whole second, old enough for MIN_FILE_AGE
NAME = "IPI_20250428.dat"


def ledger(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def report(state: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((state / "run_report.json").read_text())
    return data


def json_log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def no_traceback(result: Result) -> None:
    assert "Traceback" not in result.output, result.output


# -- ProFTPD: server digests ------------------------------------------------------------


def proftpd_env(proftpd: Proftpd, tmp: Path, port: int | None = None, **overrides: object) -> dict[str, str]:
    """The job's settings for the ProFTPD fixture, reached directly or through a relay on ``port``."""
    env = proftpd.env(tmp, LOG_FORMAT="json", METRICS_TEXTFILE=tmp / "metrics.prom", **overrides)
    if port is not None:
        known_hosts = tmp / f"known_hosts_relay_{port}"
        known_hosts.write_text(f"[127.0.0.1]:{port} {proftpd.host_public_key}\n")
        env.update(SFTP_PORT=str(port), SFTP_KNOWN_HOSTS=str(known_hosts))
    return env


def test_a_proftpd_run_records_the_server_digest_everywhere(proftpd: Proftpd, tmp_path: Path) -> None:
    """ProFTPD offers sha512 as its strongest: that is what is asked for and recorded."""
    large, small = os.urandom(3 * MiB + 5), os.urandom(200_000)
    proftpd.put("IPI_20250427.dat", large, MTIME)
    proftpd.put(NAME, small, MTIME)
    env = proftpd_env(proftpd, tmp_path, SELECT_MODE="all")
    result = run_job(env, tmp_path / "cwd")
    assert result.code == 0, result.output
    assert (tmp_path / "server" / "IPI_20250427.dat").read_bytes() == large
    assert (tmp_path / "server" / NAME).read_bytes() == small
    lines = ledger(tmp_path / "state" / "completed_files.jsonl")
    assert [(e["name"], e["verified_by"]) for e in lines] == [
        ("IPI_20250427.dat", "check-file-handle:sha512"),
        (NAME, "check-file-handle:sha512"),
    ]
    assert [f["verified_by"] for f in report(tmp_path / "state")["files"]] == ["check-file-handle:sha512"] * 2
    verified = [r for r in json_log(tmp_path / "logs" / "job.log") if "verified_by" in r]
    assert [(r["file"], r["verified_by"]) for r in verified] == [
        ("IPI_20250427.dat", "check-file-handle:sha512"),
        (NAME, "check-file-handle:sha512"),
    ]
    assert verified[0]["sha256"] == hashlib.sha256(large).hexdigest()
    metrics = (tmp_path / "metrics.prom").read_text()
    assert 'sftp_ipi_files_verified{feed="127.0.0.1",method="check-file-handle"} 2.0' in metrics
    assert 'sftp_ipi_files_verified{feed="127.0.0.1",method="size+mtime"} 0.0' in metrics
    assert 'sftp_ipi_verification_mismatches_total{feed="127.0.0.1"} 0.0' in metrics
    status = run_job(env, tmp_path / "cwd", "status")
    assert status.code == 0, status.output
    assert f"last completed file: {NAME} at " in status.stdout
    assert "verified by check-file-handle:sha512" in status.stdout


def test_a_resume_on_proftpd_is_proven_by_the_servers_block_digests(proftpd: Proftpd, tmp_path: Path) -> None:
    data = os.urandom(6 * MiB)
    proftpd.put(NAME, data, MTIME)
    relay = Relay(proftpd.port)
    try:
        relay.set_fault(cut_after=3 * MiB + 500_000)
        first = run_job(proftpd_env(proftpd, tmp_path, relay.port, RETRY_MAX_TRIES=1), tmp_path / "cwd")
    finally:
        relay.close()
    assert first.code == 1, first.output
    kept = size_of(tmp_path / "local" / f"{NAME}.part")
    assert MiB < kept < len(data)
    second = run_job(proftpd_env(proftpd, tmp_path), tmp_path / "cwd")
    assert second.code == 0, second.output
    resumed = report(tmp_path / "state")["files"][0]["resume_offsets"]
    # Proven whole blocks from byte 0 (1 MiB each here): the unproven tail is fetched again.
    assert resumed == [kept // MiB * MiB]
    assert any("block digests prove" in r["message"] for r in json_log(tmp_path / "logs" / "job.log"))
    assert (tmp_path / "server" / NAME).read_bytes() == data
    assert ledger(tmp_path / "state" / "completed_files.jsonl")[-1]["verified_by"] == "check-file-handle:sha512"


def _leave_partial(local: Path, name: str, kept: bytes, size: int) -> None:
    """What an interrupted run leaves: the prefix and its metadata."""
    local.mkdir(parents=True, exist_ok=True)
    (local / f"{name}.part").write_bytes(kept)
    (local / f"{name}.part.json").write_text(json.dumps({"name": name, "size": size, "mtime": MTIME}))


def test_a_prefix_that_differs_in_its_first_block_is_not_resumed(proftpd: Proftpd, tmp_path: Path) -> None:
    data = os.urandom(4 * MiB)
    proftpd.put(NAME, data, MTIME)
    kept = bytearray(data[: 3 * MiB])
    kept[20_000] ^= 0x01  # past the sampled first 16 KiB: only a digest of the whole block sees it
    _leave_partial(tmp_path / "local", NAME, bytes(kept), len(data))
    result = run_job(proftpd_env(proftpd, tmp_path), tmp_path / "cwd")
    assert result.code == 0, result.output
    assert report(tmp_path / "state")["files"][0]["resume_offsets"] == [0]
    assert (tmp_path / "server" / NAME).read_bytes() == data


def test_a_prefix_that_differs_in_a_later_block_is_resumed_before_it(proftpd: Proftpd, tmp_path: Path) -> None:
    data = os.urandom(4 * MiB)
    proftpd.put(NAME, data, MTIME)
    kept = bytearray(data[: 3 * MiB])
    kept[2 * MiB + 20_000] ^= 0x01
    _leave_partial(tmp_path / "local", NAME, bytes(kept), len(data))
    result = run_job(proftpd_env(proftpd, tmp_path), tmp_path / "cwd")
    assert result.code == 0, result.output
    assert report(tmp_path / "state")["files"][0]["resume_offsets"] == [2 * MiB]
    assert (tmp_path / "server" / NAME).read_bytes() == data


def test_bytes_changed_on_the_server_after_the_download_are_caught_and_fetched_again(
    proftpd: Proftpd, tmp_path: Path
) -> None:
    """Same size, same mtime, other bytes: only the server's digest tells. The relay
    delays every request once the file is nearly in, so the file is rewritten after the
    job has read all of it and before its re-check and proof reach the server.

    On a loaded machine the test may see the file complete only after the proof has
    been answered, and then the old bytes were rightly published: the race is run
    again, up to three times. A job that does not compare the server's digest
    publishes the old bytes every time."""
    for attempt in range(3):
        tmp = tmp_path / f"try{attempt}"
        tmp.mkdir()
        old, new = os.urandom(3 * MiB), os.urandom(3 * MiB)
        path = proftpd.put(NAME, old, MTIME)
        relay = Relay(proftpd.port)
        relay.rate = 1_000_000  # about 3 s for the file: time to see it arrive
        try:
            proc = start_job(proftpd_env(proftpd, tmp, relay.port), tmp / "cwd")
            part = tmp / "local" / f"{NAME}.part"
            assert wait_until(lambda part=part: size_of(part) >= 3 * MiB - 200_000, timeout=60)
            relay.delay = 1.5  # the re-check and the proof now take 1.5 s to reach the server
            assert wait_until(lambda part=part: size_of(part) == 3 * MiB, timeout=60), proc.poll()
            proftpd.put(NAME, new, MTIME)
            relay.delay, relay.rate = 0.0, None
            out, err = proc.communicate(timeout=120)
        finally:
            relay.close()
        assert path.stat().st_size == len(old) and int(path.stat().st_mtime) == MTIME
        assert proc.returncode == 0, out + err
        if (tmp / "server" / NAME).read_bytes() == old:
            continue  # proven before the rewrite reached the server: the race was lost
        assert (tmp / "server" / NAME).read_bytes() == new
        entry = ledger(tmp / "state" / "completed_files.jsonl")[-1]
        assert entry["sha256"] == hashlib.sha256(new).hexdigest()
        assert entry["verified_by"] == "check-file-handle:sha512"
        assert any("fetching it once more" in r["message"] for r in json_log(tmp / "logs" / "job.log"))
        assert report(tmp / "state")["files"][0]["resume_offsets"] == [0, 0]
        assert report(tmp / "state")["verification_mismatches"] == 0, "recovered: no alert"
        return
    pytest.fail("the old bytes were published on every try: the server's digest was not compared")


# -- OpenSSH: checksum files, the hash command --------------------------------------------


CHECKSUM_FORMATS = [
    (f"{NAME}.sha256", "{sha256}\n"),
    (f"{NAME}.md5", "{md5} *{name}\n"),
    (f"{NAME}.SHA512", "SHA512 ({name}) = {sha512}\n"),
    ("SHA256SUMS", "# partner manifest\n{other}  other_IPI.dat\n{sha256}  ./{name}\n"),
    ("MD5SUMS", "{other_md5}  other_IPI.dat\n{md5}  {name}\n"),
    ("CHECKSUMS", "MD5 (other_IPI.dat) = {other_md5}\nSHA256 ({name}) = {sha256}\n"),
]


def checksum_text(text: str, data: bytes) -> bytes:
    """``text`` with ``{name}`` and each ``{algorithm}`` digest of ``data`` filled in."""
    return text.format(
        name=NAME,
        sha256=hashlib.sha256(data).hexdigest(),
        md5=hashlib.md5(data).hexdigest(),
        sha512=hashlib.sha512(data).hexdigest(),
        other="ab" * 32,
        other_md5="cd" * 16,
    ).encode()


@pytest.mark.parametrize(("companion", "text"), CHECKSUM_FORMATS)
def test_a_right_checksum_file_proves_the_file_and_is_never_data(
    server: Server, run: Runner, companion: str, text: str
) -> None:
    data = os.urandom(2 * MiB + 3)
    server.put(NAME, data)
    server.put(companion, checksum_text(text, data))
    # FILE_PATTERN=* matches the checksum file too: it must still not count as a data file.
    result = run(VERIFY_SOURCE="required", FILE_PATTERN="*", SELECT_MODE="all")
    assert result.code == 0, result.output
    assert sorted(os.listdir(server.served)) == [NAME]
    assert sorted(os.listdir(server.local)) == [NAME]
    assert [(e["name"], e["verified_by"]) for e in ledger(server.ledger)] == [(NAME, f"checksum-file:{companion}")]
    assert ", 0 not matching *" in server.log.read_text()


def test_a_wrong_checksum_file_fails_the_file_after_one_more_fetch_and_counts_a_mismatch(
    server: Server, run: Runner
) -> None:
    data = os.urandom(2 * MiB)
    server.put(NAME, data)
    server.put("SHA256SUMS", f"{hashlib.sha256(data + b'x').hexdigest()}  {NAME}\n".encode())
    metrics = server.tmp / "metrics.prom"
    result = run(METRICS_TEXTFILE=metrics)
    assert result.code == 1, result.output
    no_traceback(result)
    assert "fetching it once more" in result.output
    failed = report(server.record.parent)["failed"]
    assert list(failed) == [NAME] and "checksum-file:SHA256SUMS" in failed[NAME]
    assert report(server.record.parent)["files"][0]["resume_offsets"] == [0, 0]
    assert not (server.served / NAME).exists() and ledger(server.ledger) == []
    assert os.listdir(server.local) == [], "the mismatching download is discarded"
    assert 'sftp_ipi_verification_mismatches_total{feed="127.0.0.1"} 1.0' in metrics.read_text()
    # A counter across runs: the next run's mismatch adds to it.
    again = run(METRICS_TEXTFILE=metrics)
    assert again.code == 1
    assert report(server.record.parent)["verification_mismatches_total"] == 2
    assert 'sftp_ipi_verification_mismatches_total{feed="127.0.0.1"} 2.0' in metrics.read_text()


def test_a_malformed_checksum_file_is_a_named_failure(server: Server, run: Runner) -> None:
    server.put(NAME, b"data" * 1000)
    server.put(f"{NAME}.sha256", b"<html>404 not found</html>\n")
    result = run()
    assert result.code == 1, result.output
    no_traceback(result)
    assert f"{NAME}.sha256 line 1 is not a checksum line" in report(server.record.parent)["failed"][NAME]
    assert not (server.served / NAME).exists() and ledger(server.ledger) == []


def test_no_proof_under_required_fails_the_file_and_auto_falls_back_saying_so_once(server: Server, run: Runner) -> None:
    server.put(NAME, b"a" * 5000)
    server.put("IPI_20250429.dat", b"b" * 5000)
    required = run(VERIFY_SOURCE="required", SELECT_MODE="all")
    assert required.code == 1, required.output
    no_traceback(required)
    assert "VERIFY_SOURCE=required but no proof" in report(server.record.parent)["failed"][NAME]
    assert ledger(server.ledger) == [] and not server.served.joinpath(NAME).exists()
    auto = run(SELECT_MODE="all")
    assert auto.code == 0, auto.output
    assert [e["verified_by"] for e in ledger(server.ledger)] == ["size+mtime", "size+mtime"]
    assert auto.output.count("checked by size and mtime only") == 1


HOSTILE = "-n $(touch pwned) `touch pwned2` 'q' \"d\" ;ls & IPI_20250428.dat"


def test_the_hash_command_proves_a_hostile_name_through_a_whole_run(server: Server, run: Runner) -> None:
    data = os.urandom(300_000)
    server.put(HOSTILE, data)
    server.put("-n", b"a decoy the unquoted name would hash")
    result = run(REMOTE_HASH_COMMAND="sha256sum", VERIFY_SOURCE="required", CHECKSUM_FILES="off")
    assert result.code == 0, result.output
    assert (server.served / HOSTILE).read_bytes() == data
    assert ledger(server.ledger)[-1]["verified_by"] == "command:sha256sum"
    for where in (server.remote, server.tmp / "cwd", Path.home()):
        assert not (where / "pwned").exists() and not (where / "pwned2").exists()


# -- Ready markers ------------------------------------------------------------------------


def test_a_file_waits_for_its_ready_marker_and_the_marker_is_never_data(server: Server, run: Runner) -> None:
    first, waiting, later = "IPI_20250427.dat", NAME, "IPI_20250429.dat"
    for name in (first, waiting, later):
        server.put(name, name.encode() * 1000)
    server.put(f"{first}.done", b"")
    server.put(f"{later}.done", b"")
    env = {"READY_MARKER": "{name}.done", "SELECT_MODE": "all"}
    result = run(**env)
    assert result.code == 0, result.output
    assert sorted(os.listdir(server.served)) == [first]
    held = {h["name"]: h["reason"] for h in report(server.record.parent)["held_back"]}
    assert held == {
        waiting: "waiting for its ready marker (READY_MARKER)",
        later: "held back behind a file still too young or waiting for its ready marker",
    }
    assert f"{waiting}: skipped, waiting for its ready marker (READY_MARKER): {waiting}.done is not listed" in (
        result.output
    )
    status = run("status", **env)
    assert f"held back: {waiting!r}: waiting for its ready marker" in status.stdout
    server.put(f"{waiting}.done", b"")
    result = run(**env)
    assert result.code == 0, result.output
    assert sorted(os.listdir(server.served)) == [first, waiting, later]
    assert [e["name"] for e in ledger(server.ledger)] == [first, waiting, later]
    assert not any(name.endswith(".done") for name in os.listdir(server.local))
    assert server.record.read_text() == f"{later}\n"


def test_ready_marker_checksum_waits_for_the_checksum_file_and_then_proves_with_it(server: Server, run: Runner) -> None:
    data = os.urandom(100_000)
    server.put(NAME, data)
    env = {"READY_MARKER": "checksum", "VERIFY_SOURCE": "required"}
    waiting = run(**env)
    assert waiting.code == 0, waiting.output
    assert not (server.served / NAME).exists()
    assert [h["name"] for h in report(server.record.parent)["held_back"]] == [NAME]
    server.put(f"{NAME}.sha256", f"{hashlib.sha256(data).hexdigest()}  {NAME}\n".encode())
    done = run(**env)
    assert done.code == 0, done.output
    assert os.listdir(server.served) == [NAME]
    assert ledger(server.ledger)[-1]["verified_by"] == f"checksum-file:{NAME}.sha256"
