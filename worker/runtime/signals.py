"""Stopping a run: SIGTERM/SIGINT, or an unexpected error, stop it gracefully; a second
signal stops it now.

Kubernetes sends SIGTERM, waits ``terminationGracePeriodSeconds`` (30 by default), then
SIGKILL: the default grace of 20 s leaves time to save the audit and the checkpoint. The
handlers are explicit, so the worker behaves the same as PID 1 in a container, where the
kernel installs no default action for SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import structlog

from worker.runtime.early import held_signals

log = structlog.get_logger("audience_purge.signals")


@contextmanager
def signal_handlers(on_signal: Callable[[int], None]) -> Iterator[None]:
    """Route SIGINT and SIGTERM to ``on_signal`` for the body of the block; the handlers
    from before (the process's own, see ``worker.__main__``) are back after it."""
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.getsignal(sig) for sig in signals}
    for sig in signals:
        loop.add_signal_handler(sig, on_signal, sig)
    for held in held_signals():  # arrived while the run prepared: handled first thing
        loop.call_soon(on_signal, held)
    try:
        yield
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
            handler = previous[sig]
            if handler is not None:
                signal.signal(sig, handler)


class Stopper:
    """Ends the watched work gracefully, on a signal or on the first unexpected error.

    First signal (or an error): ``stop()`` (intake stops, no request starts, in-flight
    requests may finish), then the work is cancelled after ``grace`` seconds. A second
    signal cancels it at once. The first error is kept, for the run to end with it.
    """

    def __init__(self, stop: Callable[[], None], grace: float) -> None:
        self._stop = stop
        self._grace = grace
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.signals = 0
        self.deadline_passed = False
        self.error: Exception | None = None

    @property
    def stopping(self) -> bool:
        """Whether a signal or an error has begun to stop the work."""
        return self._stopping

    def watch(self, task: asyncio.Task[None]) -> None:
        self._task = task

    def __call__(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self._task is not None and self._task.done():
            # The work has ended: the run finishes as it is; only its helpers remain.
            log.warning("signal received after the work ended", signal=name)
            return
        self.signals += 1
        log.warning("signal received", signal=name, count=self.signals)
        if self.signals > 1 and self._task is not None:
            self._task.cancel()
        else:
            self._begin()

    def deadline(self) -> None:
        """The run's deadline passed: stop as for a first signal (exit 75, resumable)."""
        self.deadline_passed = True
        self._begin()

    def halt(self) -> None:
        """A guard tripped: stop gracefully; the run ends with its own exit code."""
        self._begin()

    def fail(self, error: Exception) -> None:
        """An unexpected error: stop as for a signal, and keep the first error."""
        if self.error is None:
            self.error = error
            log.error("stopping on an error", error=str(error) or type(error).__name__)
        self._begin()

    def _begin(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        self._stop()
        if self._task is not None and not self._task.done():
            asyncio.get_running_loop().call_later(self._grace, self._task.cancel)
