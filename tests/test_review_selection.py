"""Review of issue 10 item 4: a file dated in the future must not stop delivery, in
any ordering."""

from __future__ import annotations

import time

from conftest import OLD, Runner, Server

from app.storage.state import Ledger, LedgerEntry

FUTURE_2100 = 4_102_444_800  # 2100-01-01T00:00:00Z


def test_a_file_dated_2100_does_not_make_every_later_file_late_under_order_by_mtime(
    server: Server, run: Runner
) -> None:
    server.put("a.IPI", b"a", mtime=OLD)
    server.put("b.IPI", b"dated 2100", mtime=FUTURE_2100)
    assert run(ORDER_BY="mtime", SELECT_MODE="all").code == 0
    assert (server.served / "b.IPI").read_bytes() == b"dated 2100"
    time.sleep(1.5)
    server.put("c.IPI", b"uploaded after it", mtime=time.time())  # an ordinary new file, after b's fetch

    result = run(ORDER_BY="mtime", SELECT_MODE="all")

    assert result.code == 0, result.output
    assert "arrived after" not in result.stderr
    assert (server.served / "c.IPI").read_bytes() == b"uploaded after it"


def test_the_watermark_mtime_of_a_completed_file_is_never_later_than_its_fetch() -> None:
    def entry(name: str, mtime: int, completed_at: str) -> LedgerEntry:
        return LedgerEntry(name, 1, mtime, "ab" * 32, 1, 0.1, completed_at)

    ledger = Ledger(
        entries=(
            entry("past.IPI", 1_700_000_000, "2025-04-29T00:00:00+00:00"),
            entry("future.IPI", FUTURE_2100, "2025-04-29T00:00:00+00:00"),
            entry("by-hand.IPI", FUTURE_2100, "2025-04-29T00:00:00"),  # no offset: UTC
        )
    )

    assert ledger.mtimes == {"past.IPI": 1_700_000_000, "future.IPI": 1_745_884_800, "by-hand.IPI": 1_745_884_800}
