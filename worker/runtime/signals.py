"""Signals: SIGTERM/SIGINT stop a run gracefully; a second one stops it now.

Kubernetes sends SIGTERM, waits ``terminationGracePeriodSeconds`` (30 by default), then
SIGKILL: the default grace of 20 s leaves time to save the audit and the checkpoint. The
handlers are explicit, so the worker behaves the same as PID 1 in a container, where the
kernel installs no default action for SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any

import structlog

log = structlog.get_logger("audience_purge.shutdown")


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
    """First signal: ``stop()`` intake, cancel ``task`` after ``grace``. Second: cancel now."""

    def __init__(self, stop: Callable[[], None], task: asyncio.Task[None], grace: float) -> None:
        self._stop = stop
        self._task = task
        self._grace = grace
        self.count = 0

    def __call__(self, signum: int) -> None:
        self.count += 1
        log.warning("signal received", signal=signal.Signals(signum).name, count=self.count)
        self._stop()
        if self.count == 1:
            asyncio.get_running_loop().call_later(self._grace, self._task.cancel)
        else:
            self._task.cancel()


async def run_interruptible(
    work: Coroutine[Any, Any, None], stop: Callable[[], None], grace: float
) -> bool:
    """Run ``work`` under the signal handlers; True if a signal interrupted it.

    Cancelling ``work`` after the grace (or on a second signal) is the normal end of an
    interrupted run, not an error; a cancellation of the caller itself still propagates.
    """
    task = asyncio.create_task(work)
    interrupts = Interrupts(stop, task, grace)
    with signal_handlers(interrupts):
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
    return interrupts.count > 0
