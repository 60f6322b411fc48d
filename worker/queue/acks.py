"""Acknowledging queue entries: an entry is XACKed only when all of its batches settled.

Its failed ids are first copied to the dead-letter stream, so that nothing leaves the queue
without a trace in the audit log or a way back in.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

from worker.input.batching import Batch
from worker.queue.retrying import RedisBackoff, with_redis_retries
from worker.queue.streams import Entry, QueueUnavailable, StreamQueue, encode
from worker.records.recorder import Recorder

log = structlog.get_logger("audience_purge.acks")


QUEUE_WRITE_ATTEMPTS = 12


async def retry_queue(
    call: Callable[[], Awaitable[None]], backoff: RedisBackoff, entry_id: str
) -> bool:
    """A queue write retried while Redis is away (about a minute); False if it never went
    through. The entry then stays pending and is delivered again: its ids are sent again,
    which deletion's idempotence makes harmless."""
    try:
        await with_redis_retries(
            call, backoff, what=f"queue write for entry {entry_id}", attempts=QUEUE_WRITE_ATTEMPTS
        )
    except QueueUnavailable as exc:
        log.warning("queue write failed", entry_id=entry_id, error=str(exc))
        return False
    return True


@dataclass(slots=True)
class Acks:
    """Counts an entry's batches down; the last one settled acknowledges the entry."""

    queue: StreamQueue
    recorder: Recorder
    backoff: RedisBackoff
    parts: dict[str, int] = field(default_factory=dict)
    entries: dict[str, Entry] = field(default_factory=dict)
    failed: dict[str, list[int]] = field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def expect(self, entry: Entry, parts: int) -> None:
        self.parts[entry.entry_id] = parts
        self.entries[entry.entry_id] = entry

    def idle(self) -> bool:
        return not self.parts and not self.tasks

    def settled(self, batch: Batch) -> None:
        entry_id = batch.entry_id
        if entry_id is None or entry_id not in self.parts:
            return
        campaign = self.recorder.failed_pairs.get(batch.campaign_id)
        lost = [i for i in batch.audience_ids if campaign is not None and i in campaign]
        if lost:
            self.failed.setdefault(entry_id, []).extend(lost)
        self.parts[entry_id] -= 1
        if self.parts[entry_id] == 0:
            del self.parts[entry_id]
            task = asyncio.create_task(self._finish(self.entries.pop(entry_id)))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _finish(self, entry: Entry) -> None:
        """Dead-letter the failed ids (if any), then XACK."""
        lost = self.failed.pop(entry.entry_id, [])
        if lost:
            fields = encode(entry.campaign_id, lost, entry.ref)
            done = await retry_queue(
                lambda: self.queue.dead_letter(entry.entry_id, fields, "delete failed"),
                self.backoff,
                entry.entry_id,
            )
        else:
            done = await retry_queue(
                lambda: self.queue.ack(entry.entry_id), self.backoff, entry.entry_id
            )
        if done:
            self.recorder.acknowledged(entry.entry_id, dead_lettered_ids=len(lost))

    async def drain(self) -> None:
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)
