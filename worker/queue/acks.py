"""Acknowledging queue entries: an entry is XACKed only when all of its batches settled.

Its failed ids are first copied to the dead-letter stream, so that nothing leaves the queue
without a trace in the audit log or a way back in.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import structlog

from worker.input.batching import Batch
from worker.queue.message import Entry, encode
from worker.queue.retrying import RedisBackoff, retry_queue
from worker.queue.streams import StreamQueue
from worker.records.recorder import Recorder

log = structlog.get_logger("audience_purge.acks")


@dataclass(slots=True)
class Acks:
    """Counts an entry's batches down; the last one settled acknowledges the entry."""

    queue: StreamQueue
    recorder: Recorder
    backoff: RedisBackoff
    on_error: Callable[[Exception], None]  # an unexpected error: the run stops gracefully
    parts: dict[str, int] = field(default_factory=dict)
    entries: dict[str, Entry] = field(default_factory=dict)
    failed: dict[str, list[int]] = field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    incomplete: bool = False  # acknowledgements were still pending when the run ended
    _group: asyncio.TaskGroup | None = None
    _freed: asyncio.Event = field(default_factory=asyncio.Event)

    @asynccontextmanager
    async def running(self, grace: float) -> AsyncIterator[None]:
        """Acknowledgements are tasks of this block's task group; an error in one is handed
        to ``on_error``, which stops the run gracefully. When the block ends they get
        ``grace`` seconds; any still waiting for Redis then is cancelled, and its entry stays
        pending and is delivered again (its ids are sent again, harmlessly)."""
        async with asyncio.TaskGroup() as group:
            self._group = group
            yield
            if self.tasks:
                _, late = await asyncio.wait(set(self.tasks), timeout=grace)
                if late:
                    log.warning("acknowledgements still pending at exit", entries=len(late))
                    self.incomplete = True
                    for task in late:
                        task.cancel()
        self._group = None

    def expect(self, entry: Entry, parts: int) -> None:
        self.parts[entry.entry_id] = parts
        self.entries[entry.entry_id] = entry

    def idle(self) -> bool:
        return not self.parts and not self.tasks

    def held(self) -> int:
        """Entries taken from the stream and not acknowledged yet (or being acknowledged)."""
        return len(self.parts) + len(self.tasks)

    async def room(self, limit: int) -> int:
        """How many more entries may be taken to hold at most ``limit``: waits until one
        is acknowledged if none may."""
        while (free := limit - self.held()) <= 0:
            self._freed.clear()
            await self._freed.wait()
        return free

    def _release(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self._freed.set()

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
            if self._group is None:
                raise RuntimeError("acknowledgements run inside Acks.running() only")
            finish = self._finish(self.entries.pop(entry_id))
            try:
                task = self._group.create_task(finish)
            except RuntimeError:  # the group is ending on an error: the entry stays pending
                finish.close()
                return
            self.tasks.add(task)
            task.add_done_callback(self._release)

    async def _finish(self, entry: Entry) -> None:
        try:
            await self._acknowledge(entry)
        except Exception as exc:
            self.on_error(exc)

    async def _acknowledge(self, entry: Entry) -> None:
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
