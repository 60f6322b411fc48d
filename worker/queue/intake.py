"""Queue intake: stream entries → batches for the dispatcher.

Own pending entries first, then idle ones of dead consumers, then new ones (see
:meth:`StreamQueue.read`). A malformed entry, or one delivered more than
``max_deliveries`` times, is dead-lettered whole and nothing of it is sent; a valid one is
cut into batches and handed to :class:`~worker.queue.acks.Acks`, which acknowledges it once
all of them are settled.

A consumer takes no more entries than it can send soon (:func:`prefetch_limit`): what it
holds is pending for it alone, and another consumer could be sending it meanwhile. With
``until_empty``, a consumer waiting for entries another consumer holds says which, and
when it will take them over.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import structlog

from worker.errors import ConfigError, ServiceUnavailable
from worker.input.batching import Batch
from worker.queue.acks import Acks
from worker.queue.admin import PendingEntry, pending_entries
from worker.queue.lease import default_name
from worker.queue.message import Malformed, Pairs, parse_entry, shown
from worker.queue.retrying import RedisBackoff, retry_queue, with_redis_retries
from worker.queue.streams import QueueUnavailable, StreamQueue, open_redis
from worker.records.recorder import Recorder
from worker.sending.credentials import redact_url
from worker.settings import Settings
from worker.times import from_unix, utc_text

log = structlog.get_logger("audience_purge.intake")

CONNECT_ATTEMPTS = 6
PREFETCH_S = 2.0  # seconds of sending at the configured rate a consumer reads ahead at most
WAITING_SHOWN = 10  # entries a waiting consumer names
WAITING_REPEAT_S = 30.0  # seconds between two "waiting" lines when nothing changed


def prefetch_limit(settings: Settings) -> int:
    """Entries a consumer holds at most (read, not yet acknowledged).

    What the senders can usefully have in flight (``--concurrency``, or ``PREFETCH_S``
    seconds at the configured rate, whichever is fewer: the adaptive limit keeps no more
    in flight than that for answers under ``PREFETCH_S``), and as many again waiting; never
    more than it can send in half of ``claim_idle``, so that an entry waiting for the rate
    limit is not taken over as if its consumer were dead. Counted in entries of one request
    each, as ``enqueue`` writes them.
    """
    rate, concurrency = settings.rate.per_second, settings.concurrency
    busy = min(concurrency, math.ceil(rate * PREFETCH_S))
    return max(1, min(2 * busy, math.floor(rate * settings.claim_idle / 2)))


def make_queue(settings: Settings, redis: object) -> StreamQueue:
    if not settings.stream:
        raise ConfigError("queue mode needs --stream NAME", key="stream")
    return StreamQueue(
        redis,
        settings.stream,
        settings.group,
        settings.consumer or default_name(),
        settings.dead_stream or f"{settings.stream}:dead",
        settings.max_deliveries,
        round(settings.claim_idle * 1000),
        settings.dead_letter_max,
    )


@asynccontextmanager
async def open_queue(settings: Settings) -> AsyncIterator[StreamQueue]:
    """The run's stream, once Redis answers a ping (retried with capped backoff: a Redis
    that never answers is a clear error, not a hang).

    Raises:
        ConfigError: no or a malformed Redis URL, or no stream name.
        ServiceUnavailable: Redis did not answer, or refused the credentials (at once:
            the same password cannot succeed later).
    """
    if not settings.redis_url:
        raise ConfigError("queue mode needs --redis URL", key="redis")
    queue = make_queue(settings, open_redis(settings.redis_url))
    where = redact_url(settings.redis_url)
    try:
        try:
            await with_redis_retries(
                queue.ping,
                RedisBackoff.from_settings(settings),
                what="connecting",
                attempts=CONNECT_ATTEMPTS,
            )
        except QueueUnavailable as exc:
            if exc.auth:
                raise ServiceUnavailable(
                    f"Redis authentication failed at {where}: {exc} (check the user and "
                    "password in the Redis URL)"
                ) from None
            if exc.permanent:  # a user without the permission: retrying cannot help
                raise ServiceUnavailable(f"Redis at {where} refused: {exc}") from None
            raise ServiceUnavailable(
                f"cannot reach Redis at {where} after {CONNECT_ATTEMPTS} attempts: {exc}"
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
        self._limit = prefetch_limit(settings)
        self._waiting = _Waiting(queue)

    async def batches(self) -> AsyncIterator[Batch]:
        """Batches until the group is drained (``until_empty``), or for ever: the dispatcher
        abandons the read in progress (or the wait for room) when the run stops."""
        block_ms = 200 if self._settings.until_empty else 2000
        while True:
            room = await self._acks.room(self._limit)
            got = await self._read(room, block_ms)
            if not got:
                if self._settings.until_empty and self._acks.idle():
                    if await self._drained():
                        return
                    await self._waiting.tell()
                continue
            for entry_id, fields, deliveries in got:
                for batch in await self._admit(entry_id, fields, deliveries):
                    yield batch

    async def _read(self, room: int, block_ms: int) -> list[tuple[str, Pairs, int]]:
        """Entries, Redis's outages ridden out.

        Raises:
            ServiceUnavailable: Redis answered that retrying cannot help (a stream or group
                that is gone is not created again: see :func:`lost`), or was away for more
                than ``redis_outage_max``.
        """
        try:
            return await with_redis_retries(
                partial(self._queue.read, room, block_ms),
                self._backoff,
                what="reading entries",
                within=self._settings.redis_outage_max or None,
                # A lost reply may have left entries pending here.
                on_retry=self._queue.rescan_own_pending,
            )
        except QueueUnavailable as exc:
            if not exc.permanent:
                raise ServiceUnavailable(
                    f"Redis away for more than redis_outage_max "
                    f"({self._settings.redis_outage_max:g} s): {exc}; the entries read and "
                    "not acknowledged stay pending"
                ) from None
            raise lost(self._queue, exc) from None

    async def _drained(self) -> bool:
        try:
            return await self._queue.drained()
        except QueueUnavailable as exc:
            if exc.permanent:
                raise lost(self._queue, exc) from None
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
        repeated field once (the reason names it) and bytes that are not UTF-8 in base64,
        the dead-letter copy keeps every value, byte for byte."""
        self._recorder.dead_lettered(entry_id, reason, shown(fields))
        await retry_queue(
            lambda: self._queue.dead_letter(entry_id, fields, reason), self._backoff, entry_id
        )
        return []


def lost(queue: StreamQueue, exc: QueueUnavailable) -> ServiceUnavailable:
    """The one line that ends a consumer on a permanent Redis error.

    A group that is gone mid-run (the stream deleted, the group destroyed, a Redis without
    persistence restarted) is not created again: its pending entries, and whatever the
    stream held, are lost or would be read again from its start, and only the operator can
    say which inputs to enqueue again. The next ``consume`` creates it, from the start of
    the stream as it is then, and says so.
    """
    if any(sign in str(exc) for sign in ("NOGROUP", "UNBLOCKED", "no such key")):
        return ServiceUnavailable(
            f"stream {queue.stream} or its group {queue.group} is gone ({exc}): deleted, or "
            "Redis restarted without persistence; it is not created again mid-run, since the "
            "entries it held are lost or would be read again (enqueue the inputs again; the "
            "next consume creates the group)"
        )
    return ServiceUnavailable(f"{exc} (retrying cannot help)")


class _Waiting:
    """Says what a consumer that has nothing to do but cannot finish waits for: entries
    pending at other consumers, their owners and idle times, and when it will take them
    over (once idle ``claim_idle``). Said when the entries change, else every
    ``WAITING_REPEAT_S`` seconds."""

    def __init__(self, queue: StreamQueue) -> None:
        self._queue = queue
        self._said: tuple[str, ...] = ()
        self._at = -math.inf

    async def tell(self) -> None:
        try:
            held = await pending_entries(self._queue, count=100, exclude=self._queue.consumer)
        except QueueUnavailable as exc:
            if exc.permanent:
                raise lost(self._queue, exc) from None
            return
        now = asyncio.get_running_loop().time()
        ids = tuple(e.entry_id for e in held)
        if not held or (ids == self._said and now - self._at < WAITING_REPEAT_S):
            return
        self._said, self._at = ids, now
        claim_ms = self._queue.claim_idle_ms
        first_ms = max(0, claim_ms - max(e.idle_ms for e in held))
        log.info(
            "waiting for entries pending at other consumers: they are taken over once idle "
            f"{claim_ms / 1000:g} s",
            pending=len(held) if len(held) < 100 else "100 or more",
            entries=[_shown(e, claim_ms) for e in held[:WAITING_SHOWN]],
            first_takeover_in_s=round(first_ms / 1000, 1),
            first_takeover_at=_at(first_ms),
        )


def _shown(entry: PendingEntry, claim_ms: int) -> dict[str, object]:
    return {
        "entry_id": entry.entry_id,
        "consumer": entry.consumer,
        "idle_ms": entry.idle_ms,
        "takeover_in_s": round(max(0, claim_ms - entry.idle_ms) / 1000, 1),
    }


def _at(in_ms: int) -> str:
    return utc_text(from_unix(time.time() + in_ms / 1000), "seconds")
