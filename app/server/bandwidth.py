"""BANDWIDTH_LIMIT: a token bucket that paces SFTP read requests.

The read pipeline takes the bytes of each READ request from the bucket before
sending it, so the data the server is asked for, and therefore what crosses the
link, never exceeds ``rate`` on average. Pacing requests rather than received
data keeps the pipeline's own bound on bytes in flight unchanged.

Guarantee (tested with a fake clock): over any interval of length T, the bytes
granted are at most ``burst + rate * T``. The bucket starts empty, so a run
never opens with a burst; only after an idle pause can up to ``burst`` bytes go
at once.

Not thread-safe: one bucket per read pipeline, used from the thread that sends
the requests.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable

from app import interrupt
from app.config import Settings

# Half a second's worth: a link shared with production traffic sees at most
# 1.5x the limit in any one-second window, even right after an idle pause.
_BURST_SECONDS = 0.5
# Room for two read requests, so a full-size request never waits for a bucket
# that could not hold it, and the next one can be granted while one is in flight.
_BURST_REQUESTS = 2
# With a limit, one read request is at most this many seconds' worth: at a low
# limit a full-size request would otherwise wait longer than IO_TIMEOUT for its
# tokens and be taken for a stalled server.
_REQUEST_SECONDS = 0.25
# The smallest read request worth its round trip, whatever the limit.
_MIN_REQUEST = 256
# Shorter waits are not worth a wake-up, and a float deficit of a few bytes
# could otherwise ask for sleeps too short to move the clock at all.
_MIN_SLEEP = 0.001


def burst_for(rate: int, request_size: int) -> int:
    """The bucket size for ``rate`` bytes/s and read requests of up to ``request_size`` bytes."""
    return max(int(rate * _BURST_SECONDS), _BURST_REQUESTS * request_size)


class TokenBucket:
    """``take(n)`` returns once ``n`` more bytes fit within ``rate`` bytes/s and ``burst``."""

    def __init__(
        self,
        rate: float,
        burst: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = interrupt.sleep,
    ) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be positive")
        self.rate = float(rate)
        self.burst = float(burst)
        self._clock = clock
        self._sleep = sleep
        self._tokens = 0.0
        self._last = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now

    def take(self, nbytes: int) -> None:
        """Wait (interruptibly: a stop request raises Interrupted) until ``nbytes`` may be sent.

        A request larger than the bucket is granted once the bucket is full and
        leaves it in debt, so later requests wait for it: the average still holds.
        """
        if nbytes <= 0:
            return
        need = min(float(nbytes), self.burst)
        self._refill()
        while self._tokens < need:
            self._sleep(max((need - self._tokens) / self.rate, _MIN_SLEEP))
            self._refill()
        self._tokens -= nbytes


def limiter(rate: int | None, request_size: int) -> Callable[[int], None] | None:
    """The hook the read pipeline calls before each READ request: None when unlimited."""
    if rate is None:
        return None
    return TokenBucket(rate, burst_for(rate, request_size)).take


def request_cap(rate: int | None, request_size: int) -> int:
    """``request_size``, lowered under a limit to a quarter second's worth."""
    if rate is None:
        return request_size
    return max(min(request_size, int(rate * _REQUEST_SECONDS)), _MIN_REQUEST)


# One bucket per run's settings: every read of the run (downloads, resume
# checks, several files at once) shares the one limit. A lock makes the bucket
# safe to share between threads; a request waiting for tokens holds it, so
# waiters are served in turn.
_buckets: weakref.WeakKeyDictionary[Settings, Callable[[int], None] | None] = weakref.WeakKeyDictionary()
_buckets_lock = threading.Lock()


def throttle_for(settings: Settings) -> Callable[[int], None] | None:
    """The run's BANDWIDTH_LIMIT hook for the read pipeline (None when unlimited), built once."""
    with _buckets_lock:
        if settings not in _buckets:
            take = limiter(settings.bandwidth_limit, request_cap(settings.bandwidth_limit, settings.chunk_size))
            _buckets[settings] = None if take is None else _serialised(take)
        return _buckets[settings]


def _serialised(take: Callable[[int], None]) -> Callable[[int], None]:
    lock = threading.Lock()

    def throttle(nbytes: int) -> None:
        with lock:
            take(nbytes)

    return throttle
