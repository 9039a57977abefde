"""Local state: LAST_FILE_RECORD, the JSON-lines ledger and the run lock."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.errors import ConfigError, LockedError
from app.names import invalid_name_reason
from app.reporting.report import FileReport, HeldFile, RetryRecord, RunReport, last_success, read_report, write_report
from app.selection import Observation
from app.storage.partial import Paths, read_partial_meta
from app.storage.state import (
    LEDGER_CHECKS,
    LEDGER_OPTIONAL,
    Ledger,
    LedgerEntry,
    RefetchNote,
    RemoteAfterNote,
    RunLock,
    SkipNote,
    append_ledger,
    read_ledger,
    read_ledger_tail,
    read_observations,
    read_record,
    run_lock_waiting,
    write_observations,
    write_record,
)


def ledger_entry(name: str, mtime: int = 1_745_800_000) -> LedgerEntry:
    return LedgerEntry(
        name=name,
        size=1234,
        mtime=mtime,
        sha256="ab" * 32,
        bytes_transferred=1234,
        seconds=0.5,
        completed_at="2025-04-29T00:00:00+00:00",
    )


# -- LAST_FILE_RECORD ------------------------------------------------------------


def test_missing_record_reads_as_none(tmp_path: Path) -> None:
    assert read_record(tmp_path / "last_file.txt") is None


@pytest.mark.parametrize("content", ["", "\n", "\r\n", "\ufeff", "\ufeff\n"])
def test_blank_record_reads_as_none(tmp_path: Path, content: str) -> None:
    path = tmp_path / "last_file.txt"
    path.write_bytes(content.encode("utf-8"))
    assert read_record(path) is None


@pytest.mark.parametrize("content", ["20250428.IPI\n", "20250428.IPI", "20250428.IPI\r\n", "\ufeff20250428.IPI\r\n"])
def test_record_reads_the_bare_name(tmp_path: Path, content: str) -> None:
    path = tmp_path / "last_file.txt"
    path.write_bytes(content.encode("utf-8"))
    assert read_record(path) == "20250428.IPI"


@pytest.mark.parametrize("name", ["20250428.IPI ", " 20250428.IPI", "a  b.IPI", "\u00e9t\u00e9 20250428.IPI  "])
def test_record_round_trips_names_with_spaces_exactly(tmp_path: Path, name: str) -> None:
    path = tmp_path / "last_file.txt"
    write_record(path, name)
    assert read_record(path) == name


@pytest.mark.parametrize(
    "content",
    [
        "a/b\n",
        "../20250428.IPI\n",
        "..\n",
        "20250428.IPI\n20250429.IPI\n",
        "  \n\n",
        "\t",
        "   \n",
        "20250428.IPI\n\n",
        "20250428.IPI\r",
    ],
)
def test_record_that_is_not_a_file_name_is_a_config_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "last_file.txt"
    path.write_text(content)
    with pytest.raises(ConfigError, match="LAST_FILE_RECORD"):
        read_record(path)


def test_unreadable_record_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "last_file.txt"
    path.write_bytes(b"\xff\xfe2025\n")
    with pytest.raises(ConfigError, match="LAST_FILE_RECORD"):
        read_record(path)


def test_write_record_round_trips_in_the_original_format(tmp_path: Path) -> None:
    path = tmp_path / "last_file.txt"
    write_record(path, "20250428.IPI")
    assert path.read_bytes() == b"20250428.IPI\n"
    assert read_record(path) == "20250428.IPI"


def test_write_record_replaces_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "last_file.txt"
    write_record(path, "20250428.IPI")
    write_record(path, "20250429.IPI")
    assert read_record(path) == "20250429.IPI"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_file.txt"]


# -- ledger ----------------------------------------------------------------------


def test_missing_ledger_reads_as_empty(tmp_path: Path) -> None:
    ledger = read_ledger(tmp_path / "completed_files.jsonl")
    assert ledger.entries == ()
    assert ledger.damaged_lines == 0
    assert ledger.names == frozenset()


def test_ledger_round_trips_entries_in_order(tmp_path: Path) -> None:
    path = tmp_path / "completed_files.jsonl"
    first, second = ledger_entry("20250428.IPI", 100), ledger_entry("20250429.IPI", 200)
    append_ledger(path, first)
    append_ledger(path, second)
    ledger = read_ledger(path)
    assert ledger.entries == (first, second)
    assert ledger.damaged_lines == 0
    assert ledger.names == frozenset({"20250428.IPI", "20250429.IPI"})
    assert ledger.mtimes == {"20250428.IPI": 100, "20250429.IPI": 200}


def test_ledger_is_one_json_object_per_line(tmp_path: Path) -> None:
    path = tmp_path / "completed_files.jsonl"
    append_ledger(path, ledger_entry("20250428.IPI"))
    append_ledger(path, ledger_entry("20250429.IPI"))
    raw = path.read_bytes()
    assert raw.endswith(b"\n")
    lines = raw.splitlines()
    assert [json.loads(line)["name"] for line in lines] == ["20250428.IPI", "20250429.IPI"]


def test_torn_last_line_is_counted_as_damaged(tmp_path: Path) -> None:
    path = tmp_path / "completed_files.jsonl"
    first = ledger_entry("20250428.IPI")
    append_ledger(path, first)
    with path.open("ab") as f:
        f.write(b'{"name": "20250429.IPI", "size": 12')  # a crash mid-append: no newline
    ledger = read_ledger(path)
    assert ledger.entries == (first,)
    assert ledger.damaged_lines == 1


def test_append_after_a_torn_line_is_not_fused_with_it(tmp_path: Path) -> None:
    path = tmp_path / "completed_files.jsonl"
    first, third = ledger_entry("20250428.IPI"), ledger_entry("20250430.IPI")
    append_ledger(path, first)
    with path.open("ab") as f:
        f.write(b'{"name": "20250429.IPI", "size": 12')
    append_ledger(path, third)
    ledger = read_ledger(path)
    assert ledger.entries == (first, third)
    assert ledger.damaged_lines == 1
    assert path.read_bytes().endswith(b"\n")


def test_append_to_a_ledger_torn_as_its_only_content(tmp_path: Path) -> None:
    path = tmp_path / "completed_files.jsonl"
    path.write_bytes(b'{"na')
    entry = ledger_entry("20250428.IPI")
    append_ledger(path, entry)
    ledger = read_ledger(path)
    assert ledger.entries == (entry,)
    assert ledger.damaged_lines == 1


def valid_line(**changes: object) -> bytes:
    data = {**asdict(ledger_entry("20250429.IPI")), **changes}
    return json.dumps(data).encode()


@pytest.mark.parametrize(
    "line",
    [
        b"not json",
        b"[1, 2]",
        b"42",
        b'{"name": "x"}',  # missing fields
        b"\xff\xfe",
        valid_line(mtime="1745800000"),  # a string mtime
        valid_line(mtime=1e400),  # infinity
        valid_line(size=True),  # bool is not a size
        valid_line(size=-1),
        valid_line(mtime=12.5),
        valid_line(sha256="ab" * 31),
        valid_line(sha256="AB" * 32),
        valid_line(name="../20250429.IPI"),
        valid_line(name=None),
        valid_line(seconds=float("nan")),
        valid_line(completed_at="yesterday"),
        valid_line(verified_by=""),
        valid_line(verified_by=7),
    ],
)
def test_a_damaged_ledger_line_is_a_config_error_naming_file_and_line(tmp_path: Path, line: bytes) -> None:
    path = tmp_path / "completed_files.jsonl"
    append_ledger(path, ledger_entry("20250427.IPI"))
    with path.open("ab") as f:
        f.write(line + b"\n")
    append_ledger(path, ledger_entry("20250428.IPI"))
    before = path.read_bytes()
    with pytest.raises(ConfigError, match=rf"{re.escape(str(path))}:2: "):
        read_ledger(path)
    assert path.read_bytes() == before, "reading never rewrites the ledger"


def test_ledger_lines_from_before_source_proof_read_without_verified_by(tmp_path: Path) -> None:
    path = tmp_path / "completed_files.jsonl"
    old = {k: v for k, v in asdict(ledger_entry("20250427.IPI")).items() if k != "verified_by"}
    path.write_text(json.dumps(old) + "\n")
    append_ledger(path, replace(ledger_entry("20250428.IPI"), verified_by="checksum-file:SHA256SUMS"))
    entries = read_ledger(path).entries
    assert [(e.name, e.verified_by) for e in entries] == [
        ("20250427.IPI", None),
        ("20250428.IPI", "checksum-file:SHA256SUMS"),
    ]


def test_every_ledger_field_is_validated() -> None:
    assert set(LEDGER_CHECKS) == {f.name for f in fields(LedgerEntry)}


def test_ledger_fields_added_by_a_newer_version_are_ignored(tmp_path: Path) -> None:
    path = tmp_path / "completed_files.jsonl"
    path.write_bytes(valid_line(origin="v2") + b"\n")
    assert read_ledger(path).entries == (ledger_entry("20250429.IPI"),)


def test_a_ledger_line_from_before_the_lifecycle_fields_reads_with_them_unset(tmp_path: Path) -> None:
    path = tmp_path / "completed_files.jsonl"
    old = {k: v for k, v in json.loads(valid_line()).items() if k not in LEDGER_OPTIONAL}
    path.write_text(json.dumps(old) + "\n")

    (entry,) = read_ledger(path).entries

    assert (entry.remote_after, entry.published_as, entry.plaintext_sha256) == (None, None, None)


def _note(name: str, state: str, outcome: str = "deleted") -> RemoteAfterNote:
    return RemoteAfterNote(name, state, outcome, "", "2025-04-29T00:01:00+00:00")


def test_the_latest_remote_after_note_after_an_entry_gives_its_state(tmp_path: Path) -> None:
    path = tmp_path / "completed_files.jsonl"
    pending = replace(ledger_entry("20250429.IPI"), remote_after="pending")
    append_ledger(path, _note("20250429.IPI", "done"), pending, _note("20250429.IPI", "failed", "failed"))
    assert [e.remote_after for e in read_ledger(path).entries] == ["failed"]

    append_ledger(path, _note("20250429.IPI", "done"))
    assert [e.remote_after for e in read_ledger(path).entries] == ["done"]

    # A new delivery of the file (after a refetch, say) has its own, pending action.
    append_ledger(path, pending)
    assert [e.remote_after for e in read_ledger(path).entries] == ["done", "pending"]


def test_a_remote_after_note_for_a_file_not_in_the_ledger_is_no_delivery(tmp_path: Path) -> None:
    path = tmp_path / "completed_files.jsonl"
    append_ledger(path, _note("20250429.IPI", "done"))
    assert read_ledger(path).entries == ()


def test_a_refetch_still_cancels_an_entry_with_a_remote_after_note(tmp_path: Path) -> None:
    path = tmp_path / "completed_files.jsonl"
    pending = replace(ledger_entry("20250429.IPI"), remote_after="pending")
    append_ledger(
        path, pending, _note("20250429.IPI", "done"), RefetchNote("20250429.IPI", "2025-04-30T00:00:00+00:00", "me")
    )

    ledger = read_ledger(path)

    assert ledger.entries == ()
    assert [n.name for n in ledger.refetch_pending] == ["20250429.IPI"]


@pytest.mark.parametrize(
    "line",
    [
        {
            "event": "remote_after",
            "name": "20250429.IPI",
            "remote_after": "pending",
            "outcome": "x",
            "reason": "",
            "at": "2025-04-29T00:00:00+00:00",
        },
        {"event": "remote_after", "name": "20250429.IPI", "remote_after": "done", "outcome": "deleted", "reason": ""},
        {**json.loads(valid_line()), "remote_after": "maybe"},
        {**json.loads(valid_line()), "plaintext_sha256": "AB" * 32},
    ],
)
def test_a_damaged_lifecycle_field_is_a_config_error(tmp_path: Path, line: dict[str, object]) -> None:
    path = tmp_path / "completed_files.jsonl"
    path.write_text(json.dumps(line) + "\n")
    with pytest.raises(ConfigError, match=":1: "):
        read_ledger(path)


def test_blank_lines_in_the_ledger_are_not_damage(tmp_path: Path) -> None:
    path = tmp_path / "completed_files.jsonl"
    path.write_bytes(b"\n\n   \n")
    entry = ledger_entry("20250428.IPI")
    append_ledger(path, entry)
    assert read_ledger(path) == Ledger(entries=(entry,), damaged_lines=0)


# -- run lock --------------------------------------------------------------------

_TRY_LOCK = textwrap.dedent(
    """
    import fcntl, os, sys
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.exit(1)
    sys.exit(0)
    """
)

_HOLD_LOCK = textwrap.dedent(
    """
    import fcntl, os, sys
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    print("locked", flush=True)
    sys.stdin.read()
    """
)


def other_process_can_lock(path: Path) -> bool:
    result = subprocess.run([sys.executable, "-c", _TRY_LOCK, str(path)], timeout=30, check=False)
    assert result.returncode in (0, 1)
    return result.returncode == 0


def test_held_lock_blocks_another_process_until_released(tmp_path: Path) -> None:
    path = tmp_path / "last_file.txt.lock"
    lock = RunLock(path)
    lock.acquire()
    try:
        assert not other_process_can_lock(path)
    finally:
        lock.release()
    assert other_process_can_lock(path)


def test_lock_held_by_another_process_raises_locked_error(tmp_path: Path) -> None:
    path = tmp_path / "last_file.txt.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(LockedError, match="another run is in progress"):
            RunLock(path).acquire()
    finally:
        holder.communicate("", timeout=30)  # closes stdin: the holder exits and the kernel drops its lock
    with RunLock(path):
        pass


def test_second_lock_in_the_same_process_raises_locked_error(tmp_path: Path) -> None:
    path = tmp_path / "last_file.txt.lock"
    with RunLock(path), pytest.raises(LockedError):
        RunLock(path).acquire()
    # Released on exit: the path can be locked again.
    with RunLock(path) as again:
        assert again.path == path


def test_failed_acquire_does_not_disturb_the_holder(tmp_path: Path) -> None:
    path = tmp_path / "last_file.txt.lock"
    with RunLock(path):
        with pytest.raises(LockedError):
            RunLock(path).acquire()
        assert path.read_text() == f"{os.getpid()}\n"
        assert not other_process_can_lock(path)


def test_lock_file_records_the_holder_pid_and_survives_release(tmp_path: Path) -> None:
    path = tmp_path / "last_file.txt.lock"
    path.write_text("99999999\nstale content from a crashed run\n")
    with RunLock(path):
        assert path.read_text() == f"{os.getpid()}\n"
    assert path.exists()


def test_release_without_acquire_is_harmless(tmp_path: Path) -> None:
    lock = RunLock(tmp_path / "x.lock")
    lock.release()
    lock.acquire()
    lock.release()
    lock.release()
    assert other_process_can_lock(tmp_path / "x.lock")


def test_waiting_for_the_lock_gives_up_after_the_wait(tmp_path: Path) -> None:
    path = tmp_path / "last_file.txt.lock"
    naps: list[float] = []
    with RunLock(path), pytest.raises(LockedError), run_lock_waiting(path, 0.2, sleep=naps.append):
        pass
    assert naps, "it tried again before giving up"


def test_waiting_for_the_lock_takes_it_once_free(tmp_path: Path) -> None:
    path = tmp_path / "last_file.txt.lock"
    holder = RunLock(path)
    holder.acquire()
    with run_lock_waiting(path, 10, sleep=lambda _: holder.release()):
        assert not other_process_can_lock(path)
    assert other_process_can_lock(path)


def test_without_a_lock_file_no_run_ever_started_and_none_is_created(tmp_path: Path) -> None:
    path = tmp_path / "absent" / "last_file.txt.lock"
    with run_lock_waiting(path, 0):
        pass
    assert not path.parent.exists()


# -- every state reader, fed arbitrary bytes (issue 10, principle 3) ------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=12,
)
LEDGER_LIKE = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["20250428.IPI", "a b ", "../x", "", ".h"]) | JSON_VALUES,
        "size": st.integers(-2, 2**70) | JSON_VALUES,
        "mtime": st.integers(-2, 2**70) | st.sampled_from([1e400, "1745800000", True]) | JSON_VALUES,
        "sha256": st.sampled_from(["ab" * 32, "AB" * 32, "ab"]) | JSON_VALUES,
        "bytes_transferred": st.integers(-1, 10) | JSON_VALUES,
        "seconds": st.floats() | JSON_VALUES,
        "completed_at": st.sampled_from(["2025-04-29T00:00:00+00:00", "now"]) | JSON_VALUES,
    },
)
STATE_BYTES = st.one_of(
    st.binary(max_size=400),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
    st.lists(LEDGER_LIKE.map(lambda v: json.dumps(v).encode()), max_size=4).map(b"\n".join),
    st.dictionaries(st.text(max_size=8), LEDGER_LIKE, max_size=3).map(
        lambda files: json.dumps({"version": 1, "files": files}).encode()
    ),
)
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def one_line_naming(exc: ConfigError, path: Path) -> None:
    message = str(exc)
    assert "\n" not in message and str(path) in message


@FUZZ
@given(raw=STATE_BYTES)
def test_record_reader_returns_a_valid_name_or_a_config_error(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "last_file.txt"
    path.write_bytes(raw)
    try:
        name = read_record(path)
    except ConfigError as exc:
        one_line_naming(exc, path)
        return
    assert name is None or invalid_name_reason(name) is None


@FUZZ
@given(raw=STATE_BYTES)
def test_ledger_reader_returns_valid_entries_or_a_config_error(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "completed_files.jsonl"
    path.write_bytes(raw)
    try:
        ledger = read_ledger(path)
    except ConfigError as exc:
        one_line_naming(exc, path)
        # The report's reading of the same file (read_ledger_tail) refuses it alike.
        with pytest.raises(ConfigError) as refused:
            read_ledger_tail(path)
        assert str(refused.value) == str(exc)
        return
    assert read_ledger_tail(path).newest == (ledger.entries[-1] if ledger.entries else None)
    for e in ledger.entries:
        assert invalid_name_reason(e.name) is None
        assert all(type(v) is int and v >= 0 for v in (e.size, e.mtime, e.bytes_transferred))
        assert re.fullmatch(r"[0-9a-f]{64}", e.sha256) and math.isfinite(e.seconds)


@FUZZ
@given(raw=STATE_BYTES)
def test_observations_reader_returns_observations_or_a_config_error(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "seen_files.json"
    path.write_bytes(raw)
    try:
        seen = read_observations(path)
    except ConfigError as exc:
        one_line_naming(exc, path)
        return
    for name, obs in (seen or {}).items():
        assert name and math.isfinite(obs.first_seen) and math.isfinite(obs.stable_since)
        assert obs.size is None or type(obs.size) is int
        assert obs.mtime is None or type(obs.mtime) is int
        assert type(obs.late) is bool


@FUZZ
@given(raw=STATE_BYTES)
def test_partial_metadata_reader_returns_two_sizes_or_unknown(tmp_path: Path, raw: bytes) -> None:
    paths = Paths.for_name(tmp_path, "20250428.IPI")
    paths.meta.write_bytes(raw)
    meta = read_partial_meta(paths)
    assert meta is None or (len(meta) == 2 and all(type(v) is int and v >= 0 for v in meta))


@FUZZ
@given(raw=STATE_BYTES)
def test_report_reader_returns_a_report_or_nothing(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "run_report.json"
    path.write_bytes(raw)
    report = read_report(path)
    if report is not None:
        assert type(report["exit_code"]) is int and type(report["ok"]) is bool
        assert isinstance(report.get("held_back") or [], list)
        assert last_success(1, "now", report) is None or isinstance(last_success(1, "now", report), str)


def test_report_json_is_asdict_with_every_field_and_no_shared_lists(tmp_path: Path) -> None:
    report = RunReport(
        started_at="2025-04-28T00:00:00+00:00",
        finished_at="2025-04-28T00:00:05+00:00",
        duration_seconds=5.0,
        exit_code=1,
        outcome="transfer failed",
        ok=False,
        sftp_host="h",
        files=[FileReport("a.IPI", 3, 0.1, 0.0, 0, None, 3, 1, [0, 2], completed=False)],
        failed={"b.IPI": "gone"},
        retries=[RetryRecord(1, "cut", 0.5)],
        held_back=[HeldFile(f"{n}.IPI", "no date", None) for n in range(3)],
        late=[HeldFile("c.IPI", "late", "2025-04-27T00:00:00+00:00")],
        decrypt_failed={"d.IPI": "bad key"},
    )

    data = report.to_json()

    assert data == asdict(report)
    assert data["files"][0]["resume_offsets"] is not report.files[0].resume_offsets
    assert data["failed"] is not report.failed
    write_report(tmp_path / "run_report.json", report)
    assert read_report(tmp_path / "run_report.json") == data


def test_observations_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "seen_files.json"
    seen = {
        "20250428.IPI ": Observation(1.5, 2.0, None, None, late=True),
        "\u00e9.IPI": Observation(3.0, 3.0, 10, 1_745_800_000),
    }
    write_observations(path, seen)
    assert read_observations(path) == seen
    assert read_observations(tmp_path / "absent.json") is None


@given(
    st.lists(
        st.tuples(st.sampled_from(["a", "b", "c"]), st.one_of(st.none(), st.integers(0, 2_000_000_000))), max_size=8
    ),
    st.sampled_from(["a", "b", "c", "d"]),
)
def test_one_files_ledger_mtime_is_what_the_map_of_every_file_says(
    items: list[tuple[str, int | None]], name: str
) -> None:
    ledger = Ledger(tuple(replace(ledger_entry(n), mtime=m) for n, m in items))
    whole = ledger.mtimes
    assert ledger.mtimes_of(name) == ({name: whole[name]} if name in whole else {})


def test_report_written_in_chunks_is_byte_for_byte_the_whole_document(tmp_path: Path) -> None:
    # Written a field and a list item at a time (the run's peak memory for a big backlog);
    # the bytes are the ones the whole plain document gave, non-ASCII, empty lists and nesting included.
    files = [
        FileReport(f"2025010{i}_\u00e9.IPI", 10 + i, 0.5, 1.25, 0, "ab" * 32, 10 + i, resume_offsets=[0, 4])
        for i in range(3)
    ]
    report = RunReport(
        started_at="2025-01-01T00:00:00+00:00",
        finished_at="2025-01-01T00:00:01+00:00",
        duration_seconds=1.0,
        exit_code=1,
        outcome="failed",
        ok=False,
        sftp_host="h",
        files=files,
        failed={"x.IPI": "gone \u2014 really"},
        retries=[RetryRecord(1, "timeout", 2.0)],
        error=None,
        held_back=[HeldFile("y.IPI", "too young", None)],
        server_profile={"nested": {"a": [1, 2]}},
    )
    path = tmp_path / "run_report.json"
    write_report(path, report)
    whole = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in report.to_json().items())
    assert path.read_bytes() == ("{\n" + whole + "\n}\n").encode("utf-8")
    assert read_report(path) == report.to_json()


def _ledger_item_strategy() -> st.SearchStrategy[object]:
    names = st.sampled_from(["a.IPI", "b.IPI", "c.IPI"])
    at = "2025-04-29T00:00:00+00:00"
    return st.one_of(
        st.builds(lambda n, m: replace(ledger_entry(n), mtime=m), names, st.one_of(st.none(), st.integers(0, 10**10))),
        st.builds(lambda n: RefetchNote(n, at, "ops"), names),
        st.builds(lambda n: RemoteAfterNote(n, "done", "deleted", "", at), names),
        st.builds(lambda n: SkipNote(n, "unreadable", at, "ops", "host", 5, 7), names),
    )


@given(items=st.lists(_ledger_item_strategy(), max_size=12), torn=st.booleans())
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_the_reports_ledger_tail_is_what_the_whole_ledger_says(tmp_path: Path, items: list[Any], torn: bool) -> None:
    # The report reads the ledger in memory that does not grow with it (50,000 lines after
    # a backlog); its newest entry, newest mtime and skips are the whole read's.
    path = tmp_path / "completed_files.jsonl"
    path.unlink(missing_ok=True)
    if items:
        append_ledger(path, *items)
    if torn:
        with path.open("ab") as fh:
            fh.write(b'{"name": "torn')
    whole = read_ledger(path)
    tail = read_ledger_tail(path)
    assert tail.newest == (whole.entries[-1] if whole.entries else None)
    assert tail.newest_mtime == max((e.mtime for e in whole.entries if e.mtime is not None), default=None)
    assert tail.skips == whole.skips


def test_an_unreadable_ledger_is_a_config_error_for_the_report_too(tmp_path: Path) -> None:
    path = tmp_path / "completed_files.jsonl"
    path.mkdir()
    with pytest.raises(ConfigError, match=r"ledger .*completed_files.jsonl: cannot read it"):
        read_ledger_tail(path)
