"""Deterministic virtual time for asyncio, and a simulated server to run against it.

:class:`VirtualLoop` is a real event loop whose clock stands still while callbacks are
ready and jumps to the next timer when none is: minutes of rate limits, latencies and
backoffs run in milliseconds, in the same order every time. Everything that reads
``loop.time()`` (aiolimiter, asyncio.sleep, the concurrency limit's clock) follows it.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


class VirtualLoop(asyncio.SelectorEventLoop):
    """An event loop on a virtual clock that starts at 0."""

    def __init__(self) -> None:
        super().__init__()
        self._now = 0.0

    def time(self) -> float:
        return self._now

    def _run_once(self) -> None:
        # Nothing to run now: move the clock to the next timer (the base class then finds
        # it due and polls the selector without blocking).
        ready: Any = self._ready  # type: ignore[attr-defined]
        scheduled: Any = self._scheduled  # type: ignore[attr-defined]
        if not ready and scheduled:
            self._now = max(self._now, scheduled[0].when())
        super()._run_once()  # type: ignore[misc]


def run_virtual(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to its end on a fresh :class:`VirtualLoop`."""
    loop = VirtualLoop()
    try:
        return loop.run_until_complete(main)
    finally:
        loop.close()


@dataclass
class Phase:
    """From ``start`` (virtual seconds) on, until the next phase: how the server answers."""

    start: float
    latency: float = 0.25  # seconds, mean
    jitter: float = 0.05  # seconds, +/- around the mean, uniform
    status: int = 200


@dataclass
class Server:
    """A simulated API: each request's answer and latency follow the phase it started in.

    It keeps what a test checks: start times, requests in flight (and their peak), and the
    time-weighted mean in flight.
    """

    phases: list[Phase]
    seed: int = 0
    starts: list[float] = field(default_factory=list)
    in_flight: int = 0
    peak: int = 0
    _rng: random.Random = field(init=False)
    _area: float = 0.0
    _since: float = 0.0

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def phase(self, now: float) -> Phase:
        return [p for p in self.phases if p.start <= now][-1]

    async def request(self, on_start: Callable[[int], None] = lambda _: None) -> tuple[int, float]:
        """One request: its status and latency; ``on_start`` sees the in-flight count."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        phase = self.phase(now)
        latency = phase.latency + self._rng.uniform(-phase.jitter, phase.jitter)
        self._account(now, +1)
        self.starts.append(now)
        self.peak = max(self.peak, self.in_flight)
        on_start(self.in_flight)
        try:
            await asyncio.sleep(latency)
        finally:
            self._account(loop.time(), -1)
        return phase.status, latency

    def _account(self, now: float, change: int) -> None:
        self._area += self.in_flight * (now - self._since)
        self._since = now
        self.in_flight += change

    def mean_in_flight(self, now: float) -> float:
        return (self._area + self.in_flight * (now - self._since)) / now if now else 0.0

    def rate(self, start: float, end: float) -> float:
        """Requests started per second in [start, end)."""
        return sum(start <= t < end for t in self.starts) / (end - start)
