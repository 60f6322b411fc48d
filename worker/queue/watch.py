"""Watching the queue for the operator: the group's lag (a metric) and Redis's reachability
(``/readyz``), polled beside the consumer while its endpoints are served. Redis reports no
lag while the newest delivered entry is deleted and an older one is still pending (consumers
delete the entries they acknowledge); the stream's length less the pending entries is used
then."""

from __future__ import annotations

import asyncio

from redis.exceptions import RedisError

from worker.queue.streams import StreamQueue, raise_if_cancelled
from worker.records.metrics import Metrics

POLL_S = 5.0


class QueueWatch:
    """Polls ``XINFO GROUPS``; never fails the run (the consumer meets outages itself)."""

    def __init__(self, queue: StreamQueue, metrics: Metrics, interval: float = POLL_S) -> None:
        self._queue = queue
        self._metrics = metrics
        self._interval = interval
        self._reason: str | None = None

    def readiness(self) -> str | None:
        """None while the last poll reached Redis, else why it did not."""
        return self._reason

    async def run(self) -> None:
        while True:
            await self.poll()
            await asyncio.sleep(self._interval)

    async def poll(self) -> None:
        queue = self._queue
        try:
            groups = await queue.redis.xinfo_groups(queue.stream)
        except RedisError as exc:
            raise_if_cancelled()
            self._reason = f"Redis unreachable: {type(exc).__name__}"
            return
        self._reason = None
        for info in groups:
            if info.get("name") == queue.group:
                lag = info.get("lag")
                if lag is None:  # entries deleted after the last delivered one: estimated
                    lag = await self._estimated_lag(int(info.get("pending") or 0))
                if lag is not None:
                    self._metrics.stream_lag.set(int(lag))

    async def _estimated_lag(self, pending: int) -> int | None:
        """The stream's length less the group's pending entries: what is left when
        acknowledged entries are deleted (as consumers do). None if Redis is away."""
        try:
            length = int(await self._queue.redis.xlen(self._queue.stream))
        except RedisError:
            raise_if_cancelled()
            return None
        return max(length - pending, 0)
