"""SIGTERM from the first moment of the process, before anything else is imported.

Kubernetes may stop a pod at any time, also while the tool starts or prepares. Until a run
installs its own handlers (:mod:`worker.runtime.signals`), SIGTERM ends a process that has
not begun a run with exit 75 and one line (nothing was written or sent), never the
kernel's 143; once a run records, the signal is held for the run's handlers, which take it
first thing. Signals are process-wide, and so is this record of them: the one piece of
module state besides the logging setup. Only the standard library is imported here.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager


class _Early:
    """SIGTERM before a run installs its own handlers."""

    deferring = False  # a run is recording: a signal waits for the run's handlers
    pending: list[int] = []  # noqa: RUF012 - one process, one list


def take_sigterm_early() -> None:
    """The process's first act (``worker.__main__``)."""
    signal.signal(signal.SIGTERM, _early_signal)


def _early_signal(signum: int, frame: object) -> None:
    if _Early.deferring:
        _Early.pending.append(signum)
        return
    os.write(2, b"audience-purge: error: interrupted\n")
    os._exit(75)


@contextmanager
def deferring_signals() -> Iterator[None]:
    """While a run records, an early SIGTERM is held for the run instead of ending the
    process (which would leave the audit log without its last record)."""
    _Early.deferring = True
    try:
        yield
    finally:
        _Early.deferring = False


def held_signals() -> list[int]:
    """The signals held for the run (once: they are handed over)."""
    held = list(_Early.pending)
    _Early.pending.clear()
    return held
