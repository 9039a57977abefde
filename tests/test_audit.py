"""``sftp-ipi audit``: files delivered by a real run, then damaged on purpose, are each found."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from conftest import Runner, Server, job_env
from test_operations import on_terminal

from app.storage.state import RunLock

NAMES = ("20250101.IPI", "20250102.IPI", "20250103.IPI")


def deliver(server: Server, run: Runner) -> dict[str, bytes]:
    files = {name: os.urandom(3000 + i) for i, name in enumerate(NAMES)}
    for name, data in files.items():
        server.put(name, data)
    result = run(SELECT_MODE="all")
    assert result.code == 0, result.output
    assert sorted(p.name for p in server.served.iterdir()) == list(NAMES)
    return files


def flip_byte(path: Path, offset: int = 100) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0x01]))


def findings(result_stdout: str) -> set[tuple[str, str, str]]:
    data = json.loads(result_stdout)
    return {(f["problem"], f["where"], f["name"]) for f in data["findings"]}


def test_audit_of_an_intact_delivery_exits_0(server: Server, run: Runner) -> None:
    deliver(server, run)

    text = run("audit")
    machine = run("audit", "--json")

    assert text.code == 0, text.output
    assert "all files match the ledger" in text.stdout
    assert machine.code == 0, machine.output
    data = json.loads(machine.stdout)
    assert data["ok"] is True and data["findings"] == []
    assert data["checked_files"] == 6, "three in SERVER_DIR and their three copies in LOCAL_DIR"


def test_audit_reports_a_flipped_byte_a_missing_file_and_an_unknown_file(server: Server, run: Runner) -> None:
    deliver(server, run)
    flip_byte(server.served / "20250101.IPI")
    (server.served / "20250102.IPI").unlink()
    (server.served / "stray.dat").write_bytes(b"not ours")
    flip_byte(server.local / "20250103.IPI", offset=0)
    # The job's own temp files and partial downloads are not findings.
    (server.served / ".20250104.IPI.0a1b2c3d.sftp-ipi-tmp").write_bytes(b"publish in progress")
    (server.local / "20250104.IPI.part").write_bytes(b"partial")

    text = run("audit")
    machine = run("audit", "--json")

    assert text.code == 1, text.output
    assert "changed: SERVER_DIR/20250101.IPI: sha256" in text.stdout
    assert "missing: SERVER_DIR/20250102.IPI" in text.stdout
    assert "unknown: SERVER_DIR/stray.dat" in text.stdout
    assert "changed: LOCAL_DIR/20250103.IPI: sha256" in text.stdout
    assert "sftp-ipi-tmp" not in text.stdout and ".part" not in text.stdout
    assert machine.code == 1
    assert findings(machine.stdout) == {
        ("changed", "SERVER_DIR", "20250101.IPI"),
        ("missing", "SERVER_DIR", "20250102.IPI"),
        ("unknown", "SERVER_DIR", "stray.dat"),
        ("changed", "LOCAL_DIR", "20250103.IPI"),
    }
    assert json.loads(machine.stdout)["ok"] is False


def test_audit_reports_a_truncated_file_without_hashing_it(server: Server, run: Runner) -> None:
    deliver(server, run)
    os.truncate(server.served / "20250102.IPI", 10)

    result = run("audit")

    assert result.code == 1, result.output
    assert "changed: SERVER_DIR/20250102.IPI: size 10, the ledger says 3001" in result.stdout


def test_audit_without_local_copies_checks_server_dir_only(server: Server, run: Runner) -> None:
    deliver(server, run)
    for name in NAMES:
        (server.local / name).unlink()

    result = run("audit", "--json")

    assert result.code == 0, result.output
    assert json.loads(result.stdout)["checked_files"] == 3


def test_audit_of_a_damaged_ledger_exits_2(server: Server, run: Runner) -> None:
    deliver(server, run)
    with open(server.ledger, "ab") as fh:
        fh.write(b'{"name": "20250104.IPI", "size": \n')

    result = run("audit")

    assert result.code == 2, result.output
    assert f"{server.ledger}: 1 damaged line(s)" in result.stdout
    assert "Traceback" not in result.output


def test_audit_waits_for_a_run_in_progress(server: Server, run: Runner) -> None:
    deliver(server, run)
    lock = RunLock(server.record.with_name("last_file.txt.lock"))
    lock.acquire()
    released = threading.Timer(1.5, lock.release)
    released.start()
    try:
        started = time.monotonic()
        result = run("audit")
        waited = time.monotonic() - started
    finally:
        released.cancel()
        lock.release()

    assert result.code == 0, result.output
    assert waited >= 1.5, "the audit waited for the lock instead of reading state a run is changing"


def test_audit_draws_a_progress_bar_on_a_terminal(server: Server, run: Runner) -> None:
    deliver(server, run)

    code, text = on_terminal(job_env(server.env(), server.tmp), args=("audit",))

    assert code == 0, text
    assert "\raudit [" in text and "100.0%" in text
    assert "all files match the ledger" in text


def test_audit_hashes_a_hard_linked_local_copy_once(server: Server, run: Runner) -> None:
    for i, name in enumerate(NAMES):
        server.put(name, os.urandom(2000 + i))
    assert run(SELECT_MODE="all", PUBLISH_METHOD="hardlink").code == 0
    flip_byte(server.served / NAMES[0])

    result = run("audit", "--json")

    assert result.code == 1, result.output
    assert json.loads(result.stdout)["checked_files"] == 3
    assert findings(result.stdout) == {("changed", "SERVER_DIR", NAMES[0])}
