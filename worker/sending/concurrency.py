"""How many requests may be in flight: a fixed number, or one adapted to the server.

The rate is the contract; concurrency is only how it is met. A request that takes 250 ms
needs 25 others in flight beside it to start 100 per second (Little's law: in flight =
rate x latency), so a fixed 8 meets a third of the rate, and a fixed 64 pushes a server
that is struggling as hard as one that is idle. The rate gate alone decides *when* a
request starts; this module only bounds *how many* are in flight, and never lets more
start than the rate gate allows.

A sender takes a permit (:meth:`ConcurrencyLimit.acquire`) before it waits at the rate
gate and gives it back when its request ended, so requests in flight never exceed the
limit. A lower limit takes no permit away: requests in flight finish, and no new one
starts until fewer than the new limit are in flight.

:class:`AdaptiveLimit` (``concurrency_mode = "adaptive"``, the default) is Little's law
held back by AIMD, in the spirit of Vector's Adaptive Request Concurrency:

- **Little's law sets the target**: the rate times a high percentile of recent latencies,
  with headroom, so that the limit is not what holds the rate back; the rate gate is.
  Before the first answer the target is the maximum, which is safe: the gate paces the
  starts, so no more than rate x latency can be in flight until answers come back.
- **AIMD backs off**: answers are judged per round-trip window (one mean latency long).
  A window with back-pressure (429, 5xx, a timeout, a dropped connection) or whose mean
  latency rose beyond the moving mean + k standard deviations caps the limit at 0.9 of
  its value; each later window in which the limit was reached and latency did not rise
  raises the cap by one, and the cap is lifted once it is back at the target.

Every decision is taken when an answer comes, on the clock given: no timer, so the
controller runs the same in virtual time (tests/sending/test_concurrency.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import structlog

log = structlog.get_logger("audience_purge.concurrency")

ADAPTIVE, FIXED = "adaptive", "fixed"


@dataclass(frozen=True, slots=True)
class Tuning:
    """The adaptive limit's constants; the defaults are what runs use."""

    percentile: float = 0.9  # of recent latencies, for Little's law
    samples: int = 100  # recent latencies kept for the percentile
    headroom: float = 1.1  # on top of rate x latency: in-flight counts jitter too
    decrease: float = 0.9  # the limit's factor after a window with back-pressure
    deviations: float = 3.0  # k: latency rose when beyond mean + k standard deviations
    tolerance: float = 0.1  # ... and beyond mean x (1 + tolerance): noise is not a rise
    smoothing: float = 0.4  # weight of the newest window in the moving mean and variance
    min_window: float = 0.01  # seconds: a round-trip window is never shorter


class ConcurrencyLimit:
    """Permits for requests in flight, ``maximum`` of them (``concurrency_mode = "fixed"``).

    Waiters are served first come, first served, so that batches keep their order.
    """

    mode = FIXED

    def __init__(self, maximum: int) -> None:
        if maximum < 1:
            raise ValueError(f"the concurrency limit must be at least 1, got {maximum}")
        self.maximum = maximum
        self._limit = maximum
        self.held = 0  # permits taken: requests in flight or waiting at the rate gate
        self.sending = 0  # requests past the rate gate and not answered yet
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def limit(self) -> int:
        """Requests allowed in flight now."""
        return self._limit

    def try_acquire(self) -> bool:
        """Take a permit if one is free now and nobody is waiting for one."""
        if self.held < self._limit and not self._waiters:
            self.held += 1
            return True
        return False

    async def acquire(self) -> None:
        """Wait for a permit; a cancelled wait takes none (or gives back the one it got)."""
        if self.try_acquire():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # granted, then cancelled before it could be used
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        """Give a permit back, and hand it to the next waiter if the limit allows."""
        self.held -= 1
        self._wake()

    def started(self) -> None:
        """A request passed the rate gate and is going out."""
        self.sending += 1

    def ended(self, latency_s: float | None = None, *, pushed_back: bool = False) -> None:
        """A request ended: answered after ``latency_s`` (back-pressure if ``pushed_back``),
        or without an answer at all (None: cancelled), which teaches nothing."""
        self.sending -= 1

    def _set_limit(self, limit: int) -> None:
        self._limit = max(1, min(self.maximum, limit))
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.held < self._limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self.held += 1


class _Window:
    """What one round-trip window saw."""

    __slots__ = ("count", "pushed_back", "reached", "total")

    def __init__(self) -> None:
        self.total = 0.0
        self.count = 0
        self.pushed_back = False
        self.reached = False

    def add(self, latency_s: float) -> None:
        self.total += latency_s
        self.count += 1

    def mean(self) -> float | None:
        return self.total / self.count if self.count else None


class _Moving:
    """Exponentially weighted moving mean and variance (of the windows' mean latencies)."""

    __slots__ = ("mean", "variance", "weight")

    def __init__(self, weight: float) -> None:
        self.weight = weight
        self.mean: float | None = None
        self.variance = 0.0

    def add(self, value: float) -> None:
        if self.mean is None:
            self.mean = value
            return
        diff = value - self.mean
        step = self.weight * diff
        self.mean += step
        self.variance = (1 - self.weight) * (self.variance + diff * step)


class AdaptiveLimit(ConcurrencyLimit):
    """Little's law for the target, AIMD for back-off (see the module's docstring)."""

    mode = ADAPTIVE

    def __init__(
        self,
        maximum: int,
        *,
        rate_per_second: float,
        burst: int = 1,
        clock: Callable[[], float] = time.monotonic,
        tuning: Tuning | None = None,
    ) -> None:
        super().__init__(maximum)
        self._rate = rate_per_second
        self._burst = burst
        self._clock = clock
        self._tuning = tuning or Tuning()
        self._latencies: deque[float] = deque(maxlen=self._tuning.samples)
        self._baseline = _Moving(self._tuning.smoothing)
        self._window = _Window()
        self._window_end: float | None = None
        self._cap: int | None = None  # the back-off's bound; None when not backing off
        self.target = maximum

    def started(self) -> None:
        super().started()
        if self.sending >= self._limit:
            self._window.reached = True

    def ended(self, latency_s: float | None = None, *, pushed_back: bool = False) -> None:
        super().ended(latency_s, pushed_back=pushed_back)
        if latency_s is None:
            return
        if pushed_back:
            self._window.pushed_back = True
        else:
            self._window.add(latency_s)
            self._latencies.append(latency_s)
        now = self._clock()
        if self._window_end is None:
            self._window_end = now + max(self._tuning.min_window, latency_s)
        elif now >= self._window_end:
            self._close_window(now)

    def _close_window(self, now: float) -> None:
        """Judge the window that ended: back off, grow the cap, or hold; then re-target."""
        window, self._window = self._window, _Window()
        mean = window.mean()
        if window.pushed_back or self._rose(mean):
            self._back_off("back-pressure" if window.pushed_back else "latency rose", mean)
        elif window.reached and self._cap is not None:
            self._cap += 1
        if mean is not None:
            self._baseline.add(mean)
        self.target = self._little()
        self._apply()
        length = self._baseline.mean if self._baseline.mean is not None else mean
        self._window_end = now + max(self._tuning.min_window, length or 0.0)

    def _rose(self, mean: float | None) -> bool:
        """The window's mean latency is beyond the moving mean by more than noise."""
        base = self._baseline.mean
        if mean is None or base is None:
            return False
        tuning = self._tuning
        band = max(tuning.deviations * math.sqrt(self._baseline.variance), tuning.tolerance * base)
        return mean > base + band

    def _back_off(self, why: str, mean: float | None) -> None:
        self._cap = max(1, math.floor(self._limit * self._tuning.decrease))
        log.debug(
            "concurrency limit lowered",
            reason=why,
            limit=self._cap,
            window_latency_s=None if mean is None else round(mean, 4),
        )

    def _little(self) -> int:
        """In flight needed to meet the rate at a high percentile of recent latencies."""
        if not self._latencies:
            return self.maximum
        ordered = sorted(self._latencies)
        latency = ordered[min(len(ordered) - 1, int(self._tuning.percentile * len(ordered)))]
        needed = math.ceil(self._rate * latency * self._tuning.headroom) + self._burst - 1
        return max(1, min(self.maximum, needed))

    def _apply(self) -> None:
        if self._cap is not None and self._cap >= self.target:
            self._cap = None  # recovered: Little's law alone again
        self._set_limit(self.target if self._cap is None else self._cap)


def concurrency_limit(
    mode: str,
    maximum: int,
    *,
    rate_per_second: float,
    burst: int = 1,
    clock: Callable[[], float] = time.monotonic,
) -> ConcurrencyLimit:
    """The limit a run's settings ask for: ``adaptive`` up to ``maximum``, or ``fixed``."""
    if mode == FIXED:
        return ConcurrencyLimit(maximum)
    return AdaptiveLimit(maximum, rate_per_second=rate_per_second, burst=burst, clock=clock)
