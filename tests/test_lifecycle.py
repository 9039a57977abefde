"""The file lifecycle in whole job runs against real servers (issue 12): REMOTE_AFTER
after the ledger commit, DECRYPT=gpg before publishing, with real OpenSSH and GnuPG."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import OLD, REPO, Runner, Server, file_sha256, run_job, sha256, start_job, wait_until
from hostile_sftp import NoPosixRenameServer, hostile_env
from relay import Relay
from test_decrypt import Keys, make_keys
from test_operations import Webhook
from test_resilience import kill_at_random, kill_campaign_seed

from app.config import load_settings
from app.lifecycle import still_needed
from app.storage.state import read_ledger

MiB = 1024 * 1024


def ledger_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def report_of(server: Server) -> dict[str, Any]:
    return json.loads((server.record.parent / "run_report.json").read_text())


def metric(textfile: Path, name: str) -> float:
    for line in textfile.read_text().splitlines():
        if line.startswith((f"{name} ", f"{name}{{")):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in {textfile}")


def remote_names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def _as_if_killed_before_the_remote_action(ledger: Path) -> None:
    """The ledger as a run killed -9 right after its commit leaves it: the delivery's
    line is durable and carries remote_after "pending", and no note follows it."""
    lines = ledger_lines(ledger)
    assert [line.get("remote_after") for line in lines] == [None], "expected one delivery recorded under keep"
    lines[0]["remote_after"] = "pending"
    ledger.write_text(json.dumps(lines[0], sort_keys=True) + "\n")


# -- REMOTE_AFTER -------------------------------------------------------------------------


def test_delete_after_delivery_removes_the_files_and_selection_goes_on_without_them(
    server: Server, run: Runner
) -> None:
    server.put("20250101.IPI", b"first", mtime=OLD)
    server.put("20250102.IPI", b"second", mtime=OLD + 100)

    result = run(REMOTE_AFTER="delete", SELECT_MODE="all")

    assert result.code == 0, result.output
    assert remote_names(server.remote) == []
    assert (server.served / "20250101.IPI").read_bytes() == b"first"
    assert (server.served / "20250102.IPI").read_bytes() == b"second"
    lines = ledger_lines(server.ledger)
    assert [(line["name"], line.get("remote_after")) for line in lines] == [
        ("20250101.IPI", "pending"),
        ("20250102.IPI", "pending"),
        ("20250101.IPI", "done"),
        ("20250102.IPI", "done"),
    ]
    assert {line.get("outcome") for line in lines[2:]} == {"deleted"}
    assert {e.remote_after for e in read_ledger(server.ledger).entries} == {"done"}

    # The delivered files are gone from the listing: the record and the ledger say what is done.
    server.put("20250103.IPI", b"third", mtime=OLD + 200)
    again = run(REMOTE_AFTER="delete", SELECT_MODE="all")

    assert again.code == 0, again.output
    assert (server.served / "20250103.IPI").read_bytes() == b"third"
    assert [f["name"] for f in report_of(server)["files"]] == ["20250103.IPI"]
    assert remote_names(server.remote) == []


def test_under_order_by_mtime_a_deleted_record_is_placed_by_the_ledger(server: Server, run: Runner) -> None:
    server.put("b.IPI", b"older", mtime=OLD)
    assert run(REMOTE_AFTER="delete", ORDER_BY="mtime").code == 0
    assert remote_names(server.remote) == []
    server.put("a.IPI", b"newer, and before b by name", mtime=OLD + 100)

    result = run(REMOTE_AFTER="delete", ORDER_BY="mtime")

    assert result.code == 0, result.output
    assert (server.served / "a.IPI").read_bytes() == b"newer, and before b by name"
    assert server.record.read_text() == "a.IPI\n"


def test_move_after_delivery_archives_file_and_checksum_and_a_taken_name_gets_a_suffix(
    server: Server, run: Runner
) -> None:
    data = os.urandom(2 * MiB + 5)
    server.put("20250101.IPI", data)
    server.put("20250101.IPI.sha256", f"{sha256(data)}  20250101.IPI\n".encode())
    archive = server.remote / "archive"
    archive.mkdir()
    (archive / "20250101.IPI").write_bytes(b"archived before")

    result = run(REMOTE_AFTER="move", REMOTE_ARCHIVE_DIR="archive")

    assert result.code == 0, result.output
    assert remote_names(server.remote) == ["archive"]
    assert (archive / "20250101.IPI").read_bytes() == b"archived before"
    assert (archive / "20250101.IPI.1").read_bytes() == data
    assert (archive / "20250101.IPI.sha256").exists()
    assert file_sha256(server.served / "20250101.IPI") == sha256(data)
    assert ledger_lines(server.ledger)[-1]["outcome"] == "moved"


def test_move_without_posix_rename_uses_plain_rename(tmp_path: Path, keys: dict[str, Path]) -> None:
    root = tmp_path / "root"
    (root / "remote" / "archive").mkdir(parents=True)
    srv = NoPosixRenameServer(tmp_path, Path(f"{keys['client']}.pub"), root).start()
    try:
        remote = root / "remote"
        (remote / "20250101.IPI").write_bytes(b"delivered")
        os.utime(remote / "20250101.IPI", (OLD, OLD))
        (remote / "archive" / "20250101.IPI").write_bytes(b"archived before")
        env = hostile_env(srv, tmp_path, keys["client"], REMOTE_AFTER="move", REMOTE_ARCHIVE_DIR="archive")

        result = run_job(env, tmp_path / "cwd")
    finally:
        srv.stop()

    assert result.code == 0, result.output
    assert remote_names(remote) == ["archive"]
    assert (remote / "archive" / "20250101.IPI.1").read_bytes() == b"delivered"
    assert (remote / "archive" / "20250101.IPI").read_bytes() == b"archived before"
    assert (tmp_path / "jail" / "server" / "20250101.IPI").read_bytes() == b"delivered"


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.close()


def test_permission_denied_on_delete_warns_counts_alerts_and_is_retried_without_a_second_download(
    unprivileged_server: Server, webhook: Webhook
) -> None:
    srv = unprivileged_server
    srv.put("20250101.IPI", b"data")
    textfile = srv.tmp / "metrics.prom"
    env = srv.env(REMOTE_AFTER="delete", METRICS_TEXTFILE=textfile, NOTIFY_WEBHOOK_URL=webhook.url)
    srv.remote.chmod(0o555)
    try:
        first = run_job(env, srv.tmp / "cwd")
        second = run_job(env, srv.tmp / "cwd")
    finally:
        srv.remote.chmod(0o755)

    assert first.code == 0, first.output
    assert "REMOTE_AFTER=delete failed for '20250101.IPI'" in first.output
    assert "Permission denied" in first.output
    assert (srv.served / "20250101.IPI").read_bytes() == b"data"
    assert (srv.remote / "20250101.IPI").exists()
    assert second.code == 0, second.output
    assert "downloading" not in second.output
    assert metric(textfile, "sftp_ipi_remote_after_failures_total") == 2
    denied = "delete remote file '20250101.IPI': Permission denied"
    assert report_of(srv)["remote_after_failed"] == {"20250101.IPI": denied}
    # The run succeeded, yet someone has to fix the server's permissions: each run alerts.
    assert [body["ok"] for body in webhook.bodies] == [True, True]
    assert f"REMOTE_AFTER failed (retried next run): 20250101.IPI: {denied}" in webhook.bodies[-1]["text"]

    third = run_job(env, srv.tmp / "cwd")

    assert third.code == 0, third.output
    assert remote_names(srv.remote) == []
    assert "downloading" not in third.output
    assert [e.remote_after for e in read_ledger(srv.ledger).entries] == ["done"]
    assert len([line for line in ledger_lines(srv.ledger) if "size" in line]) == 1
    assert metric(textfile, "sftp_ipi_remote_after_failures_total") == 2
    assert len(webhook.bodies) == 2, "a run without a failed action sends no alert"


def test_remote_after_required_makes_a_failed_action_fail_the_run(unprivileged_server: Server) -> None:
    srv = unprivileged_server
    srv.put("20250101.IPI", b"data")
    srv.remote.chmod(0o555)
    try:
        result = run_job(srv.env(REMOTE_AFTER="delete", REMOTE_AFTER_REQUIRED="true"), srv.tmp / "cwd")
    finally:
        srv.remote.chmod(0o755)

    assert result.code == 1, result.output
    assert "REMOTE_AFTER_REQUIRED=true" in result.output
    assert "Traceback" not in result.output
    # The delivery itself stands.
    assert (srv.served / "20250101.IPI").read_bytes() == b"data"
    assert [e.name for e in read_ledger(srv.ledger).entries] == ["20250101.IPI"]


def test_a_run_killed_between_ledger_commit_and_remote_action_completes_it_without_downloading(
    server: Server, run: Runner
) -> None:
    server.put("20250101.IPI", b"data")
    assert run().code == 0
    _as_if_killed_before_the_remote_action(server.ledger)

    result = run(REMOTE_AFTER="delete")

    assert result.code == 0, result.output
    assert remote_names(server.remote) == []
    assert "downloading" not in result.output
    assert report_of(server)["files"] == []
    assert [e.remote_after for e in read_ledger(server.ledger).entries] == ["done"]


def test_kill_9_right_after_the_ledger_commit_leaves_the_action_pending_and_the_next_run_does_it(
    server: Server, relay: Relay
) -> None:
    """A real kill -9: over a link with a 0.15 s delay each way, the delete comes at
    least two round trips (0.6 s) after the ledger line is durable; the ledger is
    polled every 10 ms and the job killed as soon as the line is there."""
    server.put("20250101.IPI", b"data")
    relay.delay = 0.15
    proc = start_job(server.env(port=relay.port, REMOTE_AFTER="delete"), server.tmp / "cwd")
    try:
        assert wait_until(lambda: server.ledger.exists() and b"pending" in server.ledger.read_bytes(), 60, 0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert (server.remote / "20250101.IPI").exists(), "killed too late: the delete had already been sent"
    assert [e.remote_after for e in read_ledger(server.ledger).entries] == ["pending"]

    relay.delay = 0.0
    result = run_job(server.env(port=relay.port, REMOTE_AFTER="delete"), server.tmp / "cwd")

    assert result.code == 0, result.output
    assert remote_names(server.remote) == []
    assert "downloading" not in result.output
    assert [e.remote_after for e in read_ledger(server.ledger).entries] == ["done"]
    assert (server.served / "20250101.IPI").read_bytes() == b"data"


def test_a_new_version_uploaded_after_the_delivery_is_not_deleted(server: Server, run: Runner) -> None:
    server.put("20250101.IPI", b"data")
    assert run().code == 0
    _as_if_killed_before_the_remote_action(server.ledger)
    server.put("20250101.IPI", b"a new version", mtime=OLD + 60)

    result = run(REMOTE_AFTER="delete")

    assert result.code == 0, result.output
    assert (server.remote / "20250101.IPI").read_bytes() == b"a new version"
    assert "left on the server" in result.output
    assert ledger_lines(server.ledger)[-1]["outcome"] == "changed"


SHARED = {"READY_MARKER": "{stem}.ok", "REMOTE_AFTER": "delete"}


def put_two_files_sharing_a_marker(server: Server) -> None:
    server.put("ABC_20250101.IPI.csv", b"csv", mtime=OLD)
    server.put("ABC_20250101.IPI.xml", b"xml", mtime=OLD)
    server.put("ABC_20250101.IPI.ok", b"", mtime=OLD)


def test_a_ready_marker_shared_by_two_files_stays_until_the_second_is_delivered(server: Server, run: Runner) -> None:
    put_two_files_sharing_a_marker(server)

    first = run(**SHARED)  # SELECT_MODE=next: the .csv only

    assert first.code == 0, first.output
    assert (server.served / "ABC_20250101.IPI.csv").read_bytes() == b"csv"
    assert remote_names(server.remote) == ["ABC_20250101.IPI.ok", "ABC_20250101.IPI.xml"]
    assert "'ABC_20250101.IPI.ok' left on the server: ABC_20250101.IPI.xml not delivered yet" in first.output

    second = run(**SHARED)

    assert second.code == 0, second.output
    assert (server.served / "ABC_20250101.IPI.xml").read_bytes() == b"xml", "its marker was still there"
    assert remote_names(server.remote) == [], "the marker goes with the last file that needs it"


def test_still_needed_maps_a_companion_to_the_undelivered_files_that_share_it() -> None:
    settings = load_settings({"SFTP_HOST": "h", "SFTP_USER": "u", "SFTP_PASS": "p", "READY_MARKER": "{stem}.ok"})
    listed = {"X.IPI.csv", "X.IPI.xml", "X.IPI.ok", "Y.IPI.csv", "Y.IPI.ok"}

    assert still_needed(listed, {"X.IPI.csv"}, settings) == {"X.IPI.ok": {"X.IPI.xml"}, "Y.IPI.ok": {"Y.IPI.csv"}}
    assert still_needed(listed, {"X.IPI.csv", "X.IPI.xml", "Y.IPI.csv"}, settings) == {}


def test_a_ready_marker_shared_by_two_files_delivered_in_one_run_is_deleted(server: Server, run: Runner) -> None:
    put_two_files_sharing_a_marker(server)

    result = run(SELECT_MODE="all", **SHARED)

    assert result.code == 0, result.output
    assert sorted(p.name for p in server.served.iterdir()) == ["ABC_20250101.IPI.csv", "ABC_20250101.IPI.xml"]
    assert remote_names(server.remote) == []


def test_no_remote_action_for_a_file_that_is_not_in_the_ledger(server: Server, run: Runner) -> None:
    server.put("20250101.IPI", b"delivered")
    server.put("20250102.IPI", b"not yet")

    result = run(REMOTE_AFTER="delete")  # SELECT_MODE=next: one file

    assert result.code == 0, result.output
    assert remote_names(server.remote) == ["20250102.IPI"]


# -- DECRYPT=gpg ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpg_keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keys]:
    yield from make_keys(tmp_path_factory)


def _key_file(directory: Path, *parts: Path) -> Path:
    path = directory / "job.key.asc"
    path.write_bytes(b"".join(p.read_bytes() for p in parts))
    return path


def _decrypting(server: Server, gpg_keys: Keys, **extra: object) -> dict[str, object]:
    key_file = _key_file(server.tmp, gpg_keys.recipient_secret, gpg_keys.signer_public, gpg_keys.stranger_public)
    return {"DECRYPT": "gpg", "GPG_PRIVATE_KEY_FILE": key_file, **extra}


def test_a_run_publishes_the_plaintext_of_an_encrypted_signed_file(server: Server, run: Runner, gpg_keys: Keys) -> None:
    plaintext = os.urandom(3 * MiB + 11)
    ciphertext = gpg_keys.encrypt(plaintext, gpg_keys.recipient, sign_with=gpg_keys.signer)
    server.put("20250101.IPI.gpg", ciphertext)

    result = run(**_decrypting(server, gpg_keys, GPG_REQUIRE_SIGNER=gpg_keys.signer))

    assert result.code == 0, result.output
    assert remote_names(server.served) == ["20250101.IPI"]
    assert file_sha256(server.served / "20250101.IPI") == sha256(plaintext)
    assert int((server.served / "20250101.IPI").stat().st_mtime) == int(OLD)
    assert (server.local / "20250101.IPI.gpg").read_bytes() == ciphertext
    (entry,) = read_ledger(server.ledger).entries
    assert (entry.name, entry.sha256, entry.size) == ("20250101.IPI.gpg", sha256(ciphertext), len(ciphertext))
    assert (entry.published_as, entry.plaintext_sha256, entry.plaintext_size) == (
        "20250101.IPI",
        sha256(plaintext),
        len(plaintext),
    )
    assert "Traceback" not in result.output
    # The audit checks SERVER_DIR's plaintext, and LOCAL_DIR's two copies, against the ledger.
    audit = run("audit", "--json")
    assert audit.code == 0, audit.output
    assert json.loads(audit.stdout)["checked_files"] == 3


def test_local_retention_lets_both_local_copies_of_a_decrypted_file_go(
    server: Server, run: Runner, gpg_keys: Keys
) -> None:
    server.put("20250101.IPI.gpg", gpg_keys.encrypt(b"rows\n", gpg_keys.recipient))

    result = run(**_decrypting(server, gpg_keys, LOCAL_RETENTION="delete-after-publish"))

    assert result.code == 0, result.output
    assert remote_names(server.local) == []
    assert (server.served / "20250101.IPI").read_bytes() == b"rows\n"


def test_a_plaintext_name_that_would_pass_for_a_partial_is_refused(server: Server, run: Runner, gpg_keys: Keys) -> None:
    server.put("20250101.IPI.part.gpg", gpg_keys.encrypt(b"rows\n", gpg_keys.recipient))

    result = run(**_decrypting(server, gpg_keys))

    assert result.code == 1, result.output
    assert "its plaintext name '20250101.IPI.part' is unsafe" in result.output
    assert remote_names(server.local) == ["20250101.IPI.part.gpg"]
    assert not server.served.exists() or remote_names(server.served) == []
    assert read_ledger(server.ledger).entries == ()


@pytest.mark.parametrize("damage", ["another signer", "corrupted"])
def test_a_file_that_fails_decryption_is_not_published_nor_recorded(
    server: Server, run: Runner, gpg_keys: Keys, damage: str
) -> None:
    plaintext = b"secret rows\n" * 1000
    if damage == "another signer":
        ciphertext = gpg_keys.encrypt(plaintext, gpg_keys.recipient, sign_with=gpg_keys.stranger)
        reason = "NO_GOOD_SIGNATURE"
    else:
        good = bytearray(gpg_keys.encrypt(plaintext, gpg_keys.recipient))
        good[len(good) // 2] ^= 0xFF
        ciphertext = bytes(good)
        reason = "cannot decrypt 20250101.IPI.gpg"
    server.put("20250101.IPI.gpg", ciphertext)
    textfile = server.tmp / "metrics.prom"

    result = run(**_decrypting(server, gpg_keys, GPG_REQUIRE_SIGNER=gpg_keys.signer, METRICS_TEXTFILE=textfile))

    assert result.code == 1, result.output
    assert reason in result.output
    assert "Traceback" not in result.output
    assert not server.served.exists() or remote_names(server.served) == []
    assert remote_names(server.local) == ["20250101.IPI.gpg"]
    assert read_ledger(server.ledger).entries == ()
    assert metric(textfile, "sftp_ipi_decrypt_failures_total") == 1
    assert list(report_of(server)["decrypt_failed"]) == ["20250101.IPI.gpg"]


def test_the_keyrings_gpg_agent_is_reaped_when_the_job_is_its_reaper(gpg_keys: Keys, tmp_path: Path) -> None:
    """As PID 1 in a container (here: a subreaper), the stopped agent is our child: no zombie is left."""
    ciphertext = tmp_path / "20250101.IPI.gpg"
    ciphertext.write_bytes(gpg_keys.encrypt(b"rows\n", gpg_keys.recipient))
    script = f"""
import ctypes, os, sys
from pathlib import Path
ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
from app.config import load_settings
from app.storage.decrypt import open_keyring
settings = load_settings({{"SFTP_HOST": "h", "SFTP_USER": "u", "SFTP_PASS": "p", "DECRYPT": "gpg",
    "LOCAL_DIR": "{tmp_path}/l", "SERVER_DIR": "{tmp_path}/s", "LOG_FILE": "{tmp_path}/j.log",
    "LAST_FILE_RECORD": "{tmp_path}/st/r", "GPG_PRIVATE_KEY_FILE": "{gpg_keys.recipient_secret}"}})
with open_keyring(settings) as keyring:  # under TMPDIR: the agent socket path stays short
    keyring.decrypt(Path("{ciphertext}"), Path("{tmp_path}/20250101.IPI")).temp.unlink()
children = []
for proc in Path("/proc").glob("[0-9]*"):
    try:
        line = (proc / "stat").read_text()
    except OSError:
        continue
    if int(line.rsplit(")", 1)[1].split()[1]) == os.getpid():
        children.append(line.split(")")[0] + ")")
print(children)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# -- one published name, two remote files ---------------------------------------------------


def test_two_remote_files_under_one_published_name_never_replace_each_other(
    server: Server, run: Runner, gpg_keys: Keys
) -> None:
    """``X`` and ``X.gpg`` both publish as ``X``: the second fails, named with both, and
    is neither published over the first nor deleted on the server, in this run or the next."""
    server.put("20250101.IPI", b"the plain delivery\n", mtime=OLD)
    server.put("20250101.IPI.gpg", gpg_keys.encrypt(b"the encrypted one\n", gpg_keys.recipient), mtime=OLD + 10)
    settings = _decrypting(server, gpg_keys, SELECT_MODE="all", REMOTE_AFTER="delete")

    result = run(**settings)

    assert result.code == 1, result.output
    conflict = [line for line in result.stderr.splitlines() if "would be published as '20250101.IPI'" in line]
    assert conflict and "20250101.IPI.gpg" in conflict[0] and "'20250101.IPI' due before it" in conflict[0]
    assert (server.served / "20250101.IPI").read_bytes() == b"the plain delivery\n"
    assert (server.local / "20250101.IPI").read_bytes() == b"the plain delivery\n"
    assert remote_names(server.remote) == ["20250101.IPI.gpg"]
    assert [e.name for e in read_ledger(server.ledger).entries] == ["20250101.IPI"]
    assert "20250101.IPI.gpg" in report_of(server)["failed"]

    # The next run finds the name taken in the ledger: the source still stays.
    again = run(**settings)

    assert again.code == 1, again.output
    assert "holds the delivery of '20250101.IPI' (in the ledger)" in again.stderr
    assert (server.served / "20250101.IPI").read_bytes() == b"the plain delivery\n"
    assert remote_names(server.remote) == ["20250101.IPI.gpg"]
    assert [e.name for e in read_ledger(server.ledger).entries] == ["20250101.IPI"]
    assert run("audit").code == 0


def test_audit_reports_two_ledger_entries_for_one_published_name(server: Server, run: Runner, gpg_keys: Keys) -> None:
    plaintext = b"rows\n"
    server.put("20250101.IPI.gpg", gpg_keys.encrypt(plaintext, gpg_keys.recipient))
    assert run(**_decrypting(server, gpg_keys)).code == 0
    # What a run before the published-name check recorded for a plain file of the same name.
    (encrypted,) = ledger_lines(server.ledger)
    plain = {k: v for k, v in encrypted.items() if k not in ("published_as", "plaintext_size", "plaintext_sha256")}
    plain.update(name="20250101.IPI", size=len(plaintext), sha256=sha256(plaintext))
    with server.ledger.open("a") as fh:
        fh.write(json.dumps(plain, sort_keys=True) + "\n")

    audit = run("audit", "--json")

    assert audit.code == 1, audit.output
    findings = json.loads(audit.stdout)["findings"]
    assert [(f["problem"], f["name"]) for f in findings] == [("conflict", "20250101.IPI")]
    assert "'20250101.IPI.gpg', '20250101.IPI'" in findings[0]["detail"]


# -- decompression bombs --------------------------------------------------------------------


def test_a_decompression_bomb_fails_alone_with_its_ratio_and_the_feed_goes_on(
    server: Server, run: Runner, gpg_keys: Keys
) -> None:
    bomb = gpg_keys.encrypt(bytes(64 * MiB), gpg_keys.recipient)  # gpg compresses the zeros ~1000:1
    server.put("20250101.IPI.gpg", bomb, mtime=OLD)
    server.put("20250102.IPI.gpg", gpg_keys.encrypt(b"next day\n", gpg_keys.recipient), mtime=OLD + 10)
    textfile = server.tmp / "metrics.prom"
    settings = _decrypting(server, gpg_keys, SELECT_MODE="all", REMOTE_AFTER="delete", METRICS_TEXTFILE=textfile)

    result = run(**settings)

    assert result.code == 1, result.output
    assert f"cannot decrypt 20250101.IPI.gpg: its plaintext passed {100 * len(bomb)} bytes" in result.stderr
    assert "a ratio over" in result.stderr and "DECRYPT_MAX_RATIO=100" in result.stderr
    assert "Traceback" not in result.output and "No space left" not in result.output
    assert remote_names(server.served) == ["20250102.IPI"]
    assert remote_names(server.local) == ["20250101.IPI.gpg", "20250102.IPI", "20250102.IPI.gpg"]
    assert remote_names(server.remote) == ["20250101.IPI.gpg"]  # never deleted: never delivered
    assert [e.name for e in read_ledger(server.ledger).entries] == ["20250102.IPI.gpg"]
    assert report_of(server)["decrypt_failed"] == {"20250101.IPI.gpg": "PLAINTEXT_TOO_LARGE"}
    assert metric(textfile, "sftp_ipi_decrypt_failures_total") == 1

    # Every later run fails the same file the same way, from the copy in LOCAL_DIR, and
    # leaves nothing behind; a larger limit lets a genuine file through.
    again = run(**settings)
    assert again.code == 1, again.output
    assert "20250101.IPI.gpg: already complete in LOCAL_DIR, not downloading it again" in again.stderr
    assert "its plaintext passed" in again.stderr
    assert remote_names(server.served) == ["20250102.IPI"]
    let_through = run(**{**settings, "DECRYPT_MAX_RATIO": 0})
    assert let_through.code == 0, let_through.output
    assert (server.served / "20250101.IPI").stat().st_size == 64 * MiB


# -- GnuPG homes after kill -9 --------------------------------------------------------------


@pytest.fixture
def short_tmpdir() -> Iterator[Path]:
    """A TMPDIR short enough for gpg-agent's sockets, for the job's GnuPG homes."""
    path = Path(tempfile.mkdtemp(prefix="g", dir="/tmp"))
    yield path
    for home in path.glob("sftp-ipi-gpg-*"):
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False)
    shutil.rmtree(path, ignore_errors=True)


def _agent_of(home: Path) -> list[str]:
    found = subprocess.run(["pgrep", "-f", f"gpg-agent --homedir {home}"], capture_output=True, text=True)
    return found.stdout.split()


def test_a_run_killed_while_its_keyring_is_open_leaves_no_home_or_agent_after_the_next_run(
    server: Server, relay: Relay, gpg_keys: Keys, short_tmpdir: Path
) -> None:
    server.put("20250101.IPI.gpg", gpg_keys.encrypt(b"first\n", gpg_keys.recipient), mtime=OLD)
    server.put("20250102.IPI.gpg", gpg_keys.encrypt(os.urandom(8 * MiB), gpg_keys.recipient), mtime=OLD + 10)
    settings = server.env(port=relay.port, SELECT_MODE="all", TMPDIR=short_tmpdir, **_decrypting(server, gpg_keys))
    relay.rate = 1 * MiB  # the second download keeps the run, and its keyring, alive

    proc = start_job(settings, server.tmp / "cwd")
    assert wait_until(lambda: (server.served / "20250101.IPI").exists(), 30), "the first file was not published"
    (home,) = short_tmpdir.glob("sftp-ipi-gpg-*")
    assert _agent_of(home), "gpg started no agent: the check below would prove nothing"
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert (home / "private-keys-v1.d").is_dir()  # the secret key, left by kill -9

    relay.rate = None
    result = run_job(settings, server.tmp / "cwd")

    assert result.code == 0, result.output
    assert f"removed the GnuPG home {home} left by an interrupted run, and stopped its gpg-agent" in result.stderr
    assert list(short_tmpdir.iterdir()) == []
    assert wait_until(lambda: _agent_of(home) == [], 10), "the killed run's gpg-agent still runs"
    assert (server.served / "20250102.IPI").stat().st_size == 8 * MiB


def test_kill_9_campaign_with_decryption_and_a_bomb_delivers_each_file_once_and_leaves_no_home(
    server: Server, relay: Relay, gpg_keys: Keys, short_tmpdir: Path
) -> None:
    """Runs killed at random while files download, decrypt and publish (one of them a
    decompression bomb stopped at DECRYPT_MAX_RATIO), then one clean run: every genuine
    file is published once as its plaintext, the bomb never, and no GnuPG home,
    agent or temp file is left."""
    seed, rng = kill_campaign_seed()
    plain = {f"202504{day:02d}.IPI": rng.randbytes(rng.randint(1 * MiB, 3 * MiB)) for day in range(1, 5)}
    for name, data in plain.items():
        server.put(f"{name}.gpg", gpg_keys.encrypt(data, gpg_keys.recipient))
    bomb = gpg_keys.encrypt(bytes(32 * MiB), gpg_keys.recipient)
    server.put("20250403.IPI.bomb.gpg", bomb)
    relay.rate = 2 * MiB
    settings = server.env(port=relay.port, SELECT_MODE="all", TMPDIR=short_tmpdir, **_decrypting(server, gpg_keys))
    kills = kill_at_random(settings, server.tmp / "cwd", rng, kills=8, runs=30)
    assert kills >= 5, f"seed {seed}: only {kills} runs were killed"

    relay.rate = None
    final = run_job(settings, server.tmp / "cwd")

    assert final.code == 1, f"seed {seed}: {final.output}"
    assert "cannot decrypt 20250403.IPI.bomb.gpg: its plaintext passed" in final.stderr, f"seed {seed}"
    for name, data in plain.items():
        assert file_sha256(server.served / name) == sha256(data), f"seed {seed}: {name} in SERVER_DIR"
    assert not (server.served / "20250403.IPI.bomb").exists(), f"seed {seed}"
    names = [entry.name for entry in read_ledger(server.ledger).entries]
    assert sorted(names) == sorted(f"{name}.gpg" for name in plain), f"seed {seed}: ledger {names}"
    stray = [p.name for d in (server.local, server.served) for p in d.iterdir() if p.name.startswith(".")]
    assert stray == [], f"seed {seed}: stray files {stray}"
    assert list(short_tmpdir.iterdir()) == [], f"seed {seed}: GnuPG homes left"
    assert subprocess.run(["pgrep", "-f", f"gpg-agent --homedir {short_tmpdir}"], check=False).returncode != 0
