"""SIGTERM/SIGINT handling that stops the job quickly without corrupting anything.

The signal handler never raises: an exception raised at an arbitrary bytecode
can land inside paramiko's packet reader (or in a ``__del__``, where Python
swallows it) and desynchronise the SFTP stream. Instead it records the signal,
wakes any retry sleep, and shuts down the connection's socket so that a read
blocked on the network returns at once. The job raises ``Interrupted`` at its
own checkpoints (between chunks, blocks and attempts), where every file on disk
is consistent.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import TypeVar

from app.errors import EXIT_SIGINT, EXIT_SIGTERM, Interrupted

T = TypeVar("T")

# How often a wait on something a signal cannot wake (a helper thread, a
# non-blocking connect) looks for a stop request: well inside the 2 s a stop may take.
POLL_SECONDS = 0.1

_state: dict[str, int | None] = {"signum": None}
_wakeup = threading.Event()
_aborts: list[Callable[[], None]] = []


def _handle(signum: int, frame: FrameType | None) -> None:
    if _state["signum"] is not None:
        return
    _state["signum"] = signum
    _wakeup.set()
    for abort in list(_aborts):
        with contextlib.suppress(Exception):
            abort()


def install() -> None:
    """Handle SIGTERM (Python as PID 1 has no handler for it) and SIGINT."""
    signal.signal(signal.SIGTERM, _handle)
    signal.signal(signal.SIGINT, _handle)


def requested() -> int | None:
    return _state["signum"]


def check() -> None:
    """Raise Interrupted if a stop was requested; call only where state is consistent."""
    signum = _state["signum"]
    if signum is not None:
        raise Interrupted(signum, EXIT_SIGTERM if signum == signal.SIGTERM else EXIT_SIGINT)


def sleep(seconds: float) -> None:
    """Sleep, but wake at once when a stop is requested."""
    _wakeup.wait(seconds)
    check()


@contextlib.contextmanager
def on_interrupt(abort: Callable[[], None]) -> Iterator[None]:
    """Run ``abort`` (which must be safe to call from a signal handler) on a stop request."""
    _aborts.append(abort)
    try:
        if _state["signum"] is not None:
            abort()
        yield
    finally:
        _aborts.remove(abort)


def call(blocking: Callable[[], T]) -> T:
    """Run a call that no signal can wake (getaddrinfo retries through EINTR) in a
    helper thread, and stop waiting for it as soon as a stop is requested. The
    helper is a daemon: one that hangs is abandoned, never joined."""
    done = threading.Event()
    value: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            value.append(blocking())
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            error.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, name="interruptible-call", daemon=True).start()
    while not done.wait(POLL_SECONDS):
        check()
    check()
    if error:
        raise error[0]
    return value[0]
