"""The terminal bar's pure parts: what it says, and that a log line never continues its line."""

from __future__ import annotations

import io

from app.progress import STALLED_AFTER, Progress, bar_aware, bar_text


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_shows_rate_and_eta_while_data_arrives() -> None:
    text = bar_text("f.IPI", 2_000_000, 0, 4_000_000, elapsed=2.0, idle=0.1)
    assert "50.0%" in text and "1.0 MB/s ETA 2s" in text and "stalled" not in text


def test_bar_shows_stalled_seconds_and_no_rate_when_nothing_arrives() -> None:
    text = bar_text("f.IPI", 2_000_000, 0, 4_000_000, elapsed=20.0, idle=STALLED_AFTER + 9.4)
    assert text.endswith(f"stalled {STALLED_AFTER + 9:.0f} s")
    assert "MB/s" not in text and "ETA" not in text


def test_a_log_line_starts_below_the_bar_and_the_bar_then_continues_on_a_new_line() -> None:
    now = [100.0]
    terminal = Terminal()
    console = bar_aware(terminal)
    bar = Progress("f.IPI", 1000, 0, clock=lambda: now[0], terminal=terminal)
    now[0] += 1
    bar.update(500)
    console.write("a log line\n")
    now[0] += 1
    bar.update(1000)
    bar.finish()
    console.write("summary\n")
    lines = terminal.getvalue().split("\n")
    assert lines[1] == "a log line" and lines[-2] == "summary"
    assert "50.0%" in lines[0] and "100.0%" in lines[2]
    assert all("log line" not in line and "summary" not in line for line in (lines[0], lines[2]))
