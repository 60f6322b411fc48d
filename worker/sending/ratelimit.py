"""Request pacing: a leaky bucket (aiolimiter) plus a fleet-wide "cool down" after a 429.

Burst semantics, deliberately: by default the bucket holds a single request, so requests
are paced evenly (``100/minute`` means one every 0.6 s) instead of 100 at once followed by
a minute of silence. Even pacing never trips a server that counts per fixed or sliding
minute window. ``burst`` raises the bucket's capacity for servers known to allow bursts.

A 429 pauses *every* sender: :meth:`RateGate.pause` moves a shared "not before" time
forward, and :meth:`RateGate.acquire` waits for it before and after taking a slot.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Protocol

from aiolimiter import AsyncLimiter

_UNITS = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
}
_SPEC = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*/\s*([a-z]+)\s*$")


@dataclass(frozen=True, slots=True)
class RateSpec:
    """``requests`` per ``period`` seconds."""

    requests: float
    period: float

    @property
    def per_second(self) -> float:
        return self.requests / self.period

    def scaled(self, factor: float) -> RateSpec:
        return RateSpec(self.requests * factor, self.period)

    def __str__(self) -> str:
        unit = {1.0: "second", 60.0: "minute", 3600.0: "hour"}.get(self.period)
        count = f"{self.requests:g}"
        return f"{count}/{unit}" if unit else f"{count}/{self.period:g}s"


def parse_rate(text: str) -> RateSpec:
    """Parse ``N/s``, ``N/second``, ``N/minute``, ``N/hour`` (case-insensitive).

    Raises:
        ValueError: the text is not such a spec, or N is not positive.
    """
    match = _SPEC.match(text.lower())
    if not match or match.group(2) not in _UNITS:
        raise ValueError(f"invalid rate {text!r}: expected N/second, N/minute or N/hour")
    requests = float(match.group(1))
    if requests <= 0:
        raise ValueError(f"invalid rate {text!r}: the number of requests must be positive")
    return RateSpec(requests, _UNITS[match.group(2)])


class RateGate(Protocol):
    """What the dispatcher needs from a rate limit, local or shared by a fleet."""

    async def acquire(self) -> None: ...

    def pause(self, seconds: float) -> None: ...


class LocalRateGate:
    """A per-process gate: leaky bucket plus a cool-down every sender obeys."""

    def __init__(self, rate: RateSpec, burst: int = 1) -> None:
        self._bucket = AsyncLimiter(burst, burst / rate.per_second)
        self._not_before = 0.0

    async def acquire(self) -> None:
        """Wait for a request slot; never returns while a cool-down is in force."""
        loop = asyncio.get_running_loop()
        while True:
            delay = self._not_before - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            await self._bucket.acquire()
            if self._not_before <= loop.time():
                return

    def pause(self, seconds: float) -> None:
        """Hold every sender back for ``seconds`` from now (extends, never shortens)."""
        if seconds > 0:
            until = asyncio.get_running_loop().time() + seconds
            self._not_before = max(self._not_before, until)
