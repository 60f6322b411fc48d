"""A rate budget shared by every worker of a fleet, kept in Redis (``--rate-scope shared``).

The vendor limits requests per API key, so N workers must share one budget. This is GCRA
(the generic cell rate algorithm) in its *reservation* form: one Redis key holds the
theoretical arrival time (TAT) of the next free slot; a worker atomically takes the slot
``max(now, TAT, cool-down)`` and moves TAT one interval on, then sleeps until its slot.
Every worker waits exactly once for its own turn: no polling, no thundering herd, and
requests stay evenly spaced across the whole fleet.

Why not the ``limits`` package: its strategies answer "may I send now?", which leaves a
waiting worker to poll; a reservation needs read-modify-write in one step, hence the two
short scripts below (Redis runs a script atomically, on its own clock, so workers on
different machines agree on time).

A 429 seen by any worker calls :meth:`SharedRateGate.pause`, which moves a shared
"cool down until" forward; the next reservation of every worker honours it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from typing import Any

from redis.exceptions import RedisError

from worker.errors import RetryableError
from worker.queue.streams import open_redis, raise_if_cancelled
from worker.sending.ratelimit import RateGate
from worker.settings import Settings
from worker.settings.rate import RateSpec

# KEYS: tat, cooldown. ARGV: interval_us, burst_us. Returns microseconds to wait.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local cool = tonumber(redis.call('GET', KEYS[2]) or '0')
local interval = tonumber(ARGV[1])
local slot = math.max(now, tat - tonumber(ARGV[2]), cool)
local nexttat = math.max(tat, slot) + interval
redis.call('SET', KEYS[1], nexttat, 'PX', math.ceil((nexttat - now) / 1000) + 60000)
return slot - now
"""

# KEYS: cooldown. ARGV: seconds_us. Extends, never shortens.
_PAUSE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local untilus = now + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if untilus > current then
  redis.call('SET', KEYS[1], untilus, 'PX', math.ceil(tonumber(ARGV[1]) / 1000) + 1000)
end
return 0
"""


class SharedRateGate:
    """The :class:`~worker.sending.ratelimit.RateGate` of a fleet: one budget under ``key``."""

    def __init__(self, redis: Any, key: str, rate: RateSpec, burst: int = 1) -> None:
        self._redis = redis
        self._keys = [f"{key}:tat", f"{key}:cooldown"]
        self._interval_us = round(1_000_000 / rate.per_second)
        self._burst_us = (burst - 1) * self._interval_us
        self._reserve = redis.register_script(_RESERVE)
        self._pause = redis.register_script(_PAUSE)
        self._pending: set[asyncio.Task[Any]] = set()

    def try_acquire(self) -> bool:
        """Never: the budget is in Redis, and asking costs a round trip."""
        return False

    async def acquire(self) -> None:
        """Reserve this worker's next slot in the fleet's schedule and wait for it.

        Raises:
            RetryableError: Redis cannot be reached (the request is retried with backoff).
        """
        try:
            while True:
                wait_us = int(
                    await self._reserve(keys=self._keys, args=[self._interval_us, self._burst_us])
                )
                if wait_us > 0:
                    await asyncio.sleep(wait_us / 1_000_000)
                # A 429 elsewhere may have paused the fleet while this worker slept.
                if not await self._cooling_down():
                    return
        except RedisError as exc:
            raise_if_cancelled()
            raise RetryableError(f"shared rate budget unavailable: {type(exc).__name__}") from None

    async def _cooling_down(self) -> bool:
        until = await self._redis.get(self._keys[1])
        if until is None:
            return False
        seconds, micros = await self._redis.time()
        return bool(int(until) > int(seconds) * 1_000_000 + int(micros))

    def pause(self, seconds: float) -> None:
        """Tell the whole fleet to hold back for ``seconds`` (fire and forget)."""
        if seconds <= 0:
            return
        task = asyncio.create_task(self._send_pause(round(seconds * 1_000_000)))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _send_pause(self, micros: int) -> None:
        # If Redis is away, this worker still backs off; the others meet their own 429s.
        with contextlib.suppress(RedisError):
            await self._pause(keys=self._keys[1:], args=[micros])


def budget_key(settings: Settings) -> str:
    """The shared budget's name: given, or derived from the API URL (never the token)."""
    if settings.rate_key:
        return settings.rate_key
    return "audience-purge:rate:" + hashlib.sha256(settings.base_url.encode()).hexdigest()[:16]


@contextlib.asynccontextmanager
async def shared_gate(settings: Settings, rate: RateSpec) -> AsyncIterator[RateGate]:
    """The fleet's gate on ``settings.redis_url``, its connection closed at the end."""
    assert settings.redis_url is not None
    client = open_redis(settings.redis_url)
    try:
        yield SharedRateGate(client, budget_key(settings), rate, settings.burst)
    finally:
        await client.aclose()
