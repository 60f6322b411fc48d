"""Signals: SIGTERM/SIGINT stop a run gracefully; a second one stops it now.

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

log = structlog.get_logger("audience_purge.signals")


@contextmanager
def signal_handlers(on_signal: Callable[[int], None]) -> Iterator[None]:
    """Route SIGINT and SIGTERM to ``on_signal`` for the body of the block."""
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        yield
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


class Interrupts:
    """First signal: ``stop()`` intake, cancel the watched task after ``grace``. Second:
    cancel it now."""

    def __init__(self, stop: Callable[[], None], grace: float) -> None:
        self._stop = stop
        self._grace = grace
        self._task: asyncio.Task[None] | None = None
        self.count = 0

    def watch(self, task: asyncio.Task[None]) -> None:
        self._task = task

    def __call__(self, signum: int) -> None:
        if self._task is not None and self._task.done():
            # The work has ended: the run finishes as it is; only its helpers remain.
            log.warning("signal received after the work ended", signal=signal.Signals(signum).name)
            return
        self.count += 1
        log.warning("signal received", signal=signal.Signals(signum).name, count=self.count)
        self._stop()
        if self._task is None:
            return
        if self.count == 1:
            asyncio.get_running_loop().call_later(self._grace, self._task.cancel)
        else:
            self._task.cancel()
