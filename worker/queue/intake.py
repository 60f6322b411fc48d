"""Queue intake: stream entries → batches for the dispatcher.

Own pending entries first, then idle ones of dead consumers, then new ones (see
:meth:`StreamQueue.read`). A malformed entry, or one delivered more than
``max_deliveries`` times, is dead-lettered whole and nothing of it is sent; a valid one is
cut into batches and handed to :class:`~worker.queue.acks.Acks`, which acknowledges it once
all of them are settled.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from worker.errors import ConfigError, ServiceUnavailable
from worker.input.batching import Batch
from worker.queue.acks import Acks
from worker.queue.retrying import RedisBackoff, retry_queue, with_redis_retries
from worker.queue.streams import (
    Malformed,
    Pairs,
    QueueUnavailable,
    StreamQueue,
    open_redis,
    parse_entry,
)
from worker.records.recorder import Recorder
from worker.sending.credentials import redact_url
from worker.settings import Settings

CONNECT_ATTEMPTS = 6


def make_queue(settings: Settings, redis: object) -> StreamQueue:
    if not settings.stream:
        raise ConfigError("queue mode needs --stream NAME", key="stream")
    return StreamQueue(
        redis,
        settings.stream,
        settings.group,
        settings.consumer or socket.gethostname(),
        settings.dead_stream or f"{settings.stream}:dead",
        settings.max_deliveries,
        round(settings.claim_idle * 1000),
    )


@asynccontextmanager
async def open_queue(settings: Settings) -> AsyncIterator[StreamQueue]:
    """The run's stream, once Redis answers a ping (retried with capped backoff: a Redis
    that never answers is a clear error, not a hang).

    Raises:
        ConfigError: no or a malformed Redis URL, or no stream name.
        ServiceUnavailable: Redis did not answer.
    """
    if not settings.redis_url:
        raise ConfigError("queue mode needs --redis URL", key="redis")
    queue = make_queue(settings, open_redis(settings.redis_url))
    try:
        try:
            await with_redis_retries(
                queue.ping,
                RedisBackoff.from_settings(settings),
                what="connecting",
                attempts=CONNECT_ATTEMPTS,
            )
        except QueueUnavailable as exc:
            raise ServiceUnavailable(
                f"cannot reach Redis at {redact_url(settings.redis_url)} after "
                f"{CONNECT_ATTEMPTS} attempts: {exc}"
            ) from None
        yield queue
    finally:
        await queue.close()


class Intake:
    """Turns the stream's entries into batches."""

    def __init__(
        self,
        queue: StreamQueue,
        settings: Settings,
        recorder: Recorder,
        acks: Acks,
        backoff: RedisBackoff,
    ) -> None:
        self._queue = queue
        self._settings = settings
        self._recorder = recorder
        self._acks = acks
        self._backoff = backoff

    async def batches(self) -> AsyncIterator[Batch]:
        """Batches until the group is drained (``until_empty``), or for ever: the dispatcher
        abandons the read in progress when the run stops."""
        block_ms = 200 if self._settings.until_empty else 2000
        while True:
            got = await with_redis_retries(
                lambda: self._queue.read(self._settings.concurrency, block_ms),
                self._backoff,
                what="reading entries",
                # A lost reply may have left entries pending here.
                on_retry=self._queue.rescan_own_pending,
            )
            if not got:
                if self._settings.until_empty and self._acks.idle() and await self._drained():
                    return
                continue
            for entry_id, fields, deliveries in got:
                for batch in await self._admit(entry_id, fields, deliveries):
                    yield batch

    async def _drained(self) -> bool:
        try:
            return await self._queue.drained()
        except QueueUnavailable:
            return False

    async def _admit(self, entry_id: str, fields: Pairs, deliveries: int) -> list[Batch]:
        if entry_id in self._acks.parts:
            return []  # re-read after an outage while still in flight here
        limit = self._settings.max_deliveries
        if deliveries > limit:
            return await self._dead_letter(
                entry_id, fields, f"delivered {deliveries} times (max_deliveries {limit})"
            )
        try:
            entry = parse_entry(entry_id, fields)
        except Malformed as exc:
            return await self._dead_letter(entry_id, fields, f"malformed: {exc}")
        ids = entry.audience_ids
        size = self._settings.batch_size
        batches = [
            Batch(entry.campaign_id, ids[i : i + size], entry_id=entry_id, ref=entry.ref)
            for i in range(0, len(ids), size)
        ]
        self._recorder.admitted(entry_id, ids)
        self._acks.expect(entry, len(batches))
        return batches

    async def _dead_letter(self, entry_id: str, fields: Pairs, reason: str) -> list[Batch]:
        """Audit, then copy the entry whole to the dead-letter stream; the audit shows a
        repeated field once (the reason names it), the dead-letter copy keeps every value."""
        self._recorder.dead_lettered(entry_id, reason, dict(fields))
        await retry_queue(
            lambda: self._queue.dead_letter(entry_id, fields, reason), self._backoff, entry_id
        )
        return []
