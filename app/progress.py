"""Download progress: a log line every PROGRESS_INTERVAL seconds, and a live bar on a terminal.

When stderr is a terminal the bar replaces the periodic lines on the console;
LOG_FILE gets the lines either way. The bar owns the terminal's last line: a
console log line ends it first (``bar_aware``), so the two never share a line,
and a ticker redraws it while no data arrives, so a stall shows as one.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

from loguru import logger

PROGRESS_INTERVAL = 10.0
BAR_INTERVAL = 0.25
BAR_WIDTH = 30
# Redraws while no data arrives; once a second is enough for a seconds counter.
TICK = 1.0
# Reads arrive many times a second on any working link: a few seconds without one is news.
STALLED_AFTER = 3.0

# Serialises every write to the terminal: the download, the ticker and the log sink.
_lock = threading.Lock()
# The bar the cursor sits at the end of, if any: the next console line must start a new one.
_on_screen: Progress | None = None


def _rate_eta(done: int, start_done: int, total: int, elapsed: float) -> tuple[float, float | None]:
    rate = (done - start_done) / elapsed if elapsed > 0 else 0.0
    eta = (total - done) / rate if rate > 0 else None
    return rate, eta


def bar_text(name: str, done: int, start_done: int, total: int, elapsed: float, idle: float) -> str:
    """One state of the bar; after STALLED_AFTER seconds without data it says so instead of a rate."""
    fraction = done / total if total else 1.0
    filled = int(BAR_WIDTH * fraction)
    if idle >= STALLED_AFTER:
        speed = f"stalled {idle:.0f} s"
    else:
        rate, eta = _rate_eta(done, start_done, total, elapsed)
        speed = f"{rate / 1e6:.1f} MB/s ETA {'--' if eta is None else f'{eta:.0f}s'}"
    return (
        f"{name} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {100 * fraction:5.1f}%"
        f" {done / 1e6:.1f}/{total / 1e6:.1f} MB {speed}"
    )


class _BarAwareStream:
    """A console stream for the log sink that first ends a bar left on the current line."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, message: str) -> None:
        with _lock:
            _end_bar_line()
            self._stream.write(message)

    def flush(self) -> None:
        self._stream.flush()


def bar_aware(stream: TextIO) -> _BarAwareStream:
    """Wrap the console log stream so that no log line is glued to the progress bar."""
    return _BarAwareStream(stream)


def _end_bar_line() -> None:
    """Move the cursor past a bar on screen (the caller holds ``_lock``); its last state stays visible."""
    global _on_screen
    if _on_screen is not None and _on_screen.terminal is not None:
        _on_screen.terminal.write("\n")
        _on_screen.terminal.flush()
    _on_screen = None


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
        self.last_data = self.started
        self.last_bar = 0.0
        stream = sys.stderr if terminal is None else terminal
        self.terminal = stream if stream.isatty() else None
        self._shown = 0  # length of the text on screen, to blank what a shorter redraw leaves
        self._ticking = False
        self._finished = threading.Event()
        if self.terminal is not None:
            with _lock:
                self._draw(self.started)  # at once: a link that stalls before the first byte shows too

    def update(self, done: int) -> None:
        self.done = done
        now = self.clock()
        self.last_data = now
        if self.terminal is not None and now - self.last_bar >= BAR_INTERVAL:
            with _lock:
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
        """Redraw the bar in place (the caller holds ``_lock``) and keep a ticker running while it shows."""
        global _on_screen
        if self.terminal is None:
            return
        if _on_screen is not None and _on_screen is not self:
            _end_bar_line()  # a bar abandoned by a failed attempt stays as it was, above this one
        self.last_bar = now
        text = bar_text(self.name, self.done, self.start_done, self.total, now - self.started, now - self.last_data)
        self.terminal.write(f"\r{text.ljust(self._shown)} ")
        self.terminal.flush()
        self._shown = len(text)
        _on_screen = self
        if not self._ticking and not self._finished.is_set():
            self._ticking = True
            threading.Thread(target=self._tick, name="progress-bar", daemon=True).start()

    def _tick(self) -> None:
        # Stops once the bar is finished or no longer the terminal's last line (a log line
        # or another bar came after it): a bar left by a failed attempt must not come back.
        while not self._finished.wait(TICK):
            with _lock:
                if _on_screen is not self:
                    self._ticking = False
                    return
                now = self.clock()
                if now - self.last_bar >= TICK:
                    self._draw(now)
        with _lock:
            self._ticking = False

    def finish(self) -> None:
        if self.terminal is None:
            return
        with _lock:
            self._finished.set()
            self._draw(self.clock())
            _end_bar_line()
