"""When to retry after a transient failure, and how long to wait. Pure: no sleeping.

Counting is by attempts *without progress*: a long download over a flaky link
that moves forward on every connection is never given up on, while a server
that stays unreachable is, after RETRY_MAX_TRIES attempts or RETRY_MAX_TIME.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import backoff

# No single wait longer than this: a CronJob's next run should not be delayed
# by a sleeping pod (and a human watching wants a sign of life).
MAX_DELAY = 300.0


class RetryPolicy:
    def __init__(
        self,
        max_tries: int,
        max_time: float,
        factor: float,
        clock: Callable[[], float],
        jitter: Callable[[float], float] = backoff.full_jitter,
    ) -> None:
        self.max_tries = max_tries
        self.max_time = max_time
        self.factor = factor
        self.clock = clock
        self.jitter = jitter
        self.failures = 0  # consecutive attempts without progress
        self.total_retries = 0
        self._since = clock()
        self._waits = self._fresh_waits()

    def _fresh_waits(self) -> Iterator[float]:
        waits = backoff.expo(factor=self.factor, max_value=MAX_DELAY)
        next(waits)  # backoff's generators are primed with one empty step
        return waits

    def progressed(self) -> None:
        """The last attempt moved data forward: start counting afresh."""
        self.failures = 0
        self._since = self.clock()
        self._waits = self._fresh_waits()

    def next_delay(self) -> float | None:
        """Seconds to wait before the next attempt, or None to give up."""
        self.failures += 1
        if self.failures >= self.max_tries:
            return None
        delay = self.jitter(next(self._waits))
        if self.clock() + delay - self._since > self.max_time:
            return None
        self.total_retries += 1
        return delay
