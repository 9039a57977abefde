"""Review of issue 10: state that must round-trip names the first fixes did not try."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import OLD, Runner, Server, run_job
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.names import invalid_name_reason
from app.storage.state import read_record, write_record


def test_a_name_starting_with_a_bom_is_refused_and_named_never_wedging_the_record(server: Server, run: Runner) -> None:
    """A leading U+FEFF is stripped from the record as an editor's BOM, and it is
    invisible in a log line: such a name is refused like other unsafe names (and
    named), so the record never holds it and ORDER_BY=mtime keeps placing it."""
    name = "\ufeff20250428.IPI"
    server.put(name, b"bom first", mtime=OLD)
    server.put("20250429.IPI", b"after it", mtime=OLD + 100)

    first = run(ORDER_BY="mtime", SELECT_MODE="all")

    assert first.code == 0, first.output
    assert not (server.served / name).exists()
    assert "'\\ufeff20250428.IPI': skipped, unsafe file name from the server" in first.stderr
    assert (server.served / "20250429.IPI").read_bytes() == b"after it"
    assert run(ORDER_BY="mtime").code == 0


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(min_size=1, max_size=60).filter(lambda n: invalid_name_reason(n) is None))
def test_every_name_the_job_would_fetch_round_trips_through_the_record(tmp_path: Path, name: str) -> None:
    path = tmp_path / "last_file.txt"
    write_record(path, name)
    assert read_record(path) == name


@pytest.mark.parametrize(
    ("meta", "shown_as"),
    [
        (b"[" * 100_000, "20250428.IPI"),  # nested beyond the JSON parser's recursion limit
        (b'{"name": "evil\\u001b[31mRED", "size": 5, "mtime": 1}', "20250428.IPI"),  # a terminal escape
        (b'{"name": "20250101.IPI", "size": 5, "mtime": 1}', "20250428.IPI"),  # another file's partial
    ],
    ids=["deep", "escape", "other-file"],
)
def test_status_names_a_partial_whose_metadata_is_damaged_by_its_own_name(
    tmp_path: Path, meta: bytes, shown_as: str
) -> None:
    local = tmp_path / "local"
    local.mkdir()
    (local / "20250428.IPI.part").write_bytes(b"x")
    (local / "20250428.IPI.part.json").write_bytes(meta)
    env = {"LOCAL_DIR": str(local), "LAST_FILE_RECORD": str(tmp_path / "state" / "last.txt")}

    result = run_job(env, tmp_path / "cwd", "status")

    assert result.code == 1, result.output  # no run recorded yet: not healthy, not damaged
    assert f"in progress: {shown_as}: 1 " in result.stdout
    assert "\x1b" not in result.output and "internal error" not in result.output
