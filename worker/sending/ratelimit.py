"""Request pacing: GCRA on an absolute timeline, plus a fleet-wide "cool down" after a 429.

Burst semantics, deliberately: by default one request per interval, so requests are paced
evenly (``100/minute`` means one every 0.6 s) instead of 100 at once followed by a minute of
silence. Even pacing never trips a server that counts per fixed or sliding minute.
``burst`` lets that many requests go back to back after an idle spell, for servers known to
allow bursts.

Exactness: each request's slot is one interval after the previous slot (GCRA: a theoretical
arrival time advanced by exactly one interval per request), not one interval after the
previous wait *ended*. Sleep overshoot and event-loop latency are therefore recovered by
the next slot instead of being lost on every request (which cost about 4 % of the rate).
Two bounds keep that recovery from turning into a burst: a wakeup late by a whole interval
or more (a stalled loop) restarts the schedule from now, and a log of the last requests
holds the count in any sliding ``period`` of the rate (a second for ``N/s``) to
``floor(N) + burst``, N being the rate after ``rate_margin``. So with ``burst`` 1, any margin
above zero keeps every sliding period at or under a configured whole N, late wakeups or not;
the margin is left for the network's jitter.

A 429 pauses *every* sender: :meth:`LocalRateGate.pause` moves a shared "not before" time
forward, which every slot waits for.

Why not a library: aiolimiter (used before) is a leaky bucket whose level cannot go below
empty and is charged when the waiter runs, so each wakeup's lateness is lost for good, and
only a larger bucket (a burst after every idle spell) would absorb it. asynciolimiter's
``Limiter`` recovers lateness but releases up to ``max_burst`` waiters at once after a
stall, has no burst-after-idle or cool-down, and a waiter cancelled after its wakeup loses
the slot. ``limits`` and throttled-py answer "may I send now?", which leaves a waiter to
poll. The Redis gate (:mod:`worker.sending.shared_rate`) is the same GCRA.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from collections.abc import AsyncIterator
from typing import Protocol

from worker.settings import Settings
from worker.settings.rate import RateSpec

# Above this many requests per period the log is not kept: one extra request is < 0.01 %.
_MAX_LOGGED = 10_000


class RateGate(Protocol):
    """What the dispatcher needs from a rate limit, local or shared by a fleet."""

    def try_acquire(self) -> bool:
        """Take a slot now if one is free (no task, no wait: most requests of a run whose
        limit does not bind); False to say :meth:`acquire` must wait for one."""
        ...

    async def acquire(self) -> None: ...

    def pause(self, seconds: float) -> None: ...


class LocalRateGate:
    """A per-process gate: GCRA on an absolute timeline, plus a cool-down every sender obeys.

    Waiters queue in arrival order and only the first one sleeps, so a cancelled waiter
    never holds a slot: it leaves the queue and the next one takes the slot it would have
    had. The schedule moves only when a waiter takes its slot.
    """

    def __init__(self, rate: RateSpec, burst: int = 1) -> None:
        self._interval = 1 / rate.per_second
        self._tolerance = (burst - 1) * self._interval
        # The next free slot (GCRA's theoretical arrival time) is origin + taken * interval:
        # one product, not a running sum, so a long run keeps no rounding residue.
        self._origin = -math.inf
        self._taken = 0
        self._not_before = -math.inf
        self._period = rate.period
        cap = math.floor(rate.requests) + burst
        self._recent: deque[float] | None = deque(maxlen=cap) if cap <= _MAX_LOGGED else None
        self._queue: deque[asyncio.Future[None]] = deque()

    def try_acquire(self) -> bool:
        """Take a slot if one is free now and nobody waits for one."""
        now = asyncio.get_running_loop().time()
        if not self._queue and self._ready(now) <= now:
            self._take(now, now)
            return True
        return False

    async def acquire(self) -> None:
        """Wait for a request slot; never returns while a cool-down is in force."""
        if self.try_acquire():
            return
        loop = asyncio.get_running_loop()
        arrival = loop.time()
        turn: asyncio.Future[None] = loop.create_future()
        self._queue.append(turn)
        if len(self._queue) == 1:
            turn.set_result(None)
        try:
            await turn  # the waiters ahead have taken their slots or left
            while True:
                now = loop.time()
                ready = self._ready(arrival)  # later than it was if a 429 came meanwhile
                if ready <= now:
                    self._take(arrival, now)
                    return
                await asyncio.sleep(ready - now)
        finally:
            self._queue.remove(turn)
            if self._queue and not self._queue[0].done():
                self._queue[0].set_result(None)

    def pause(self, seconds: float) -> None:
        """Hold every sender back for ``seconds`` from now (extends, never shortens)."""
        if seconds > 0:
            until = asyncio.get_running_loop().time() + seconds
            self._not_before = max(self._not_before, until)

    def _next_free(self) -> float:
        return self._origin + self._taken * self._interval

    def _slot(self, arrival: float) -> float:
        """The slot of a request that arrived at ``arrival``: GCRA, then the cool-down."""
        return max(arrival, self._next_free() - self._tolerance, self._not_before)

    def _ready(self, arrival: float) -> float:
        """When that request may go: its slot, unless the period's log is full until later."""
        ready = self._slot(arrival)
        if self._recent is not None and len(self._recent) == self._recent.maxlen:
            ready = max(ready, self._recent[0] + self._period)
        return ready

    def _take(self, arrival: float, now: float) -> None:
        """Take the slot: the schedule advances one interval from the slot, not from now.

        A wakeup late by less than an interval keeps its slot, so the next request goes one
        interval after the slot and the overshoot is recovered; one later than that (a
        stalled loop) starts the schedule again from now rather than catch up in a burst.
        """
        slot = self._slot(arrival)
        if now - slot >= self._interval:
            slot = now
        if slot > self._next_free():
            self._origin, self._taken = slot, 1
        else:
            self._taken += 1
        if self._recent is not None:
            self._recent.append(now)


@contextlib.asynccontextmanager
async def rate_gate(settings: Settings) -> AsyncIterator[RateGate]:
    """The run's gate: local, or shared by the fleet (``rate_scope = "shared"``).

    Both pace ``rate_margin`` under the configured rate, so that network jitter never
    pushes a server's one-second window over the limit. Redis is imported only for a
    shared gate.
    """
    rate = settings.rate.scaled(1 - settings.rate_margin)
    if settings.rate_scope != "shared" or not settings.redis_url:
        yield LocalRateGate(rate, settings.burst)
        return
    from worker.sending.shared_rate import shared_gate

    async with shared_gate(settings, rate) as gate:
        yield gate
