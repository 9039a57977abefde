"""Download progress: a log line every PROGRESS_INTERVAL seconds, and a live bar on a terminal.

When stderr is a terminal the bar replaces the periodic lines on the console;
LOG_FILE gets the lines either way.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from loguru import logger

PROGRESS_INTERVAL = 10.0
BAR_INTERVAL = 0.25
BAR_WIDTH = 30


def _rate_eta(done: int, start_done: int, total: int, elapsed: float) -> tuple[float, float | None]:
    rate = (done - start_done) / elapsed if elapsed > 0 else 0.0
    eta = (total - done) / rate if rate > 0 else None
    return rate, eta


class Progress:
    def __init__(
        self,
        name: str,
        total: int,
        done: int,
        clock: Callable[[], float] = time.monotonic,
        terminal: TextIO | None = None,
    ) -> None:
        self.name = name
        self.total = total
        self.start_done = done
        self.done = done
        self.clock = clock
        self.started = clock()
        self.last_log = self.started
        self.last_bar = 0.0
        stream = sys.stderr if terminal is None else terminal
        self.terminal = stream if stream.isatty() else None

    def update(self, done: int) -> None:
        self.done = done
        now = self.clock()
        if self.terminal is not None and now - self.last_bar >= BAR_INTERVAL:
            self.last_bar = now
            self._draw(now)
        if now - self.last_log < PROGRESS_INTERVAL:
            return
        self.last_log = now
        rate, eta = _rate_eta(done, self.start_done, self.total, now - self.started)
        # On a terminal the bar says this already; keep the line for LOG_FILE only.
        log = logger.bind(file=self.name, bytes=done, total=self.total, _file_only=self.terminal is not None)
        log.info(
            "{}: {:.1f}% ({} of {} bytes) at {:.2f} MB/s, ETA {}",
            self.name,
            100.0 * done / self.total if self.total else 100.0,
            done,
            self.total,
            rate / 1e6,
            "unknown" if eta is None else f"{eta:.0f} s",
        )

    def _draw(self, now: float) -> None:
        if self.terminal is None:
            return
        fraction = self.done / self.total if self.total else 1.0
        filled = int(BAR_WIDTH * fraction)
        rate, eta = _rate_eta(self.done, self.start_done, self.total, now - self.started)
        eta_text = "--" if eta is None else f"{eta:.0f}s"
        self.terminal.write(
            f"\r{self.name} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {100 * fraction:5.1f}%"
            f" {self.done / 1e6:.1f}/{self.total / 1e6:.1f} MB {rate / 1e6:.1f} MB/s ETA {eta_text} "
        )
        self.terminal.flush()

    def finish(self) -> None:
        if self.terminal is not None:
            self._draw(self.clock())
            self.terminal.write("\n")
            self.terminal.flush()
