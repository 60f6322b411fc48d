"""Looking into a queue and repairing it: what ``status`` shows, what ``redrive`` moves, and
what a consumer waiting for another one's entries says it waits for.

Read-only queries but :func:`move_back`, which moves dead letters back to their stream in
one Lua script per page: the entry is added to the stream first and removed from the
dead-letter stream second, inside a script Redis runs whole or (after a crash) not at all,
and a failed XADD (a key of the wrong type) stops the script before its XDEL: a dead letter
is never lost, nor moved twice.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from worker.queue.message import Pairs, shown
from worker.queue.streams import (
    DEAD_FIELDS,
    DEAD_NAMES,
    StreamQueue,
    ask,
)


def entry_time_ms(entry_id: str) -> int:
    """When an entry was added (Unix ms): the first part of its id."""
    return int(entry_id.partition("-")[0])


@dataclass(frozen=True, slots=True)
class PendingEntry:
    """An entry delivered to a consumer and not acknowledged yet."""

    entry_id: str
    consumer: str
    idle_ms: int
    deliveries: int


@dataclass(frozen=True, slots=True)
class ConsumerState:
    name: str
    pending: int
    idle_ms: int  # since its last read or claim


@dataclass(frozen=True, slots=True)
class GroupState:
    """A consumer group: what it holds and how far behind the stream it is."""

    name: str
    pending: int
    lag: int
    lag_exact: bool  # False: Redis could not say (entries deleted); stream length - pending
    last_delivered_id: str
    consumers: list[ConsumerState] = field(default_factory=list)
    oldest_pending: PendingEntry | None = None


@dataclass(frozen=True, slots=True)
class QueueState:
    """A stream, its dead-letter stream and one group (None: not created yet)."""

    stream: str
    exists: bool
    length: int
    memory_bytes: int | None
    dead_stream: str
    dead_length: int
    dead_memory_bytes: int | None
    group: GroupState | None


async def pending_entries(
    queue: StreamQueue, *, count: int, exclude: str | None = None
) -> list[PendingEntry]:
    """The group's oldest pending entries (up to ``count``), but those of ``exclude``."""
    rows = await ask(
        "XPENDING",
        queue.redis.xpending_range(queue.stream, queue.group, min="-", max="+", count=count),
    )
    found = [
        PendingEntry(
            str(row["message_id"]),
            str(row["consumer"]),
            int(row["time_since_delivered"]),
            int(row["times_delivered"]),
        )
        for row in rows
    ]
    return [entry for entry in found if entry.consumer != exclude]


async def queue_state(queue: StreamQueue) -> QueueState:
    """Lengths, memory and the group of ``queue``, as Redis sees them now."""
    redis = queue.redis
    exists = bool(await ask("EXISTS", redis.exists(queue.stream)))
    length = int(await ask("XLEN", redis.xlen(queue.stream)))
    group = await _group_state(queue, length) if exists else None
    return QueueState(
        stream=queue.stream,
        exists=exists,
        length=length,
        memory_bytes=await _memory(queue, queue.stream),
        dead_stream=queue.dead_stream,
        dead_length=int(await ask("XLEN", redis.xlen(queue.dead_stream))),
        dead_memory_bytes=await _memory(queue, queue.dead_stream),
        group=group,
    )


async def _memory(queue: StreamQueue, key: str) -> int | None:
    """MEMORY USAGE of ``key`` (Redis samples a few nodes of a big stream); None if absent."""
    used = await ask("MEMORY USAGE", queue.redis.memory_usage(key))
    return None if used is None else int(used)


async def _group_state(queue: StreamQueue, length: int) -> GroupState | None:
    groups = await ask("XINFO GROUPS", queue.redis.xinfo_groups(queue.stream))
    info = next((g for g in groups if g.get("name") == queue.group), None)
    if info is None:
        return None
    pending = int(info.get("pending") or 0)
    lag = info.get("lag")
    consumers = await ask("XINFO CONSUMERS", queue.redis.xinfo_consumers(queue.stream, queue.group))
    oldest = await pending_entries(queue, count=1)
    return GroupState(
        name=queue.group,
        pending=pending,
        # Redis reports no lag once entries were deleted after the group's last delivered
        # one; acknowledged entries being deleted, the rest of the stream is what is left.
        lag=int(lag) if lag is not None else max(length - pending, 0),
        lag_exact=lag is not None,
        last_delivered_id=str(info.get("last-delivered-id")),
        consumers=[
            ConsumerState(str(c["name"]), int(c["pending"]), int(c["idle"])) for c in consumers
        ],
        oldest_pending=oldest[0] if oldest else None,
    )


# -- dead letters ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An entry of the dead-letter stream: its own fields, and why and when it got there."""

    dead_id: str
    fields: Pairs  # as the producer wrote them (the dead-letter bookkeeping taken off)
    reason: str
    entry_id: str | None  # its id in the stream it came from
    consumer: str | None

    @property
    def dead_at_ms(self) -> int:
        return entry_time_ms(self.dead_id)


def _dead_letter(dead_id: str, pairs: Pairs) -> DeadLetter:
    """A dead letter as read (bytes: a malformed entry's may not be UTF-8); its bookkeeping
    as text (``base64:`` where someone else wrote bytes there)."""
    bookkeeping = shown((name, value) for name, value in pairs if name in DEAD_NAMES)
    return DeadLetter(
        dead_id,
        tuple((name, value) for name, value in pairs if name not in DEAD_NAMES),
        bookkeeping.get("dead_reason", ""),
        bookkeeping.get("dead_entry_id"),
        bookkeeping.get("dead_consumer"),
    )


async def last_dead_id(queue: StreamQueue) -> str | None:
    """The newest dead letter's id: a redrive goes no further, so an entry that fails
    again while it runs is not moved round and round."""
    newest = await queue.entries(queue.dead_stream, "+", "-", 1, newest_first=True)
    return newest[0][0] if newest else None


async def dead_letters(queue: StreamQueue, start: str, end: str, count: int) -> list[DeadLetter]:
    """One page of the dead-letter stream, from ``start`` (``(id`` excludes it) to ``end``."""
    page = await queue.entries(queue.dead_stream, start, end, count)
    return [_dead_letter(dead_id, pairs) for dead_id, pairs in page]


# KEYS: the stream, the dead-letter stream; ARGV: dead-letter ids, then the bookkeeping
# field names. Returns dead id, new id (or "" when the dead letter is gone or has no field
# of its own) for each.
_MOVE_BACK = """
local skip = {}
local n = tonumber(ARGV[1])
for i = n + 2, #ARGV do skip[ARGV[i]] = true end
local out = {}
for i = 2, n + 1 do
  local id = ARGV[i]
  local found = redis.call('XRANGE', KEYS[2], id, id)
  local new = ''
  if #found == 1 then
    local flat, fields = found[1][2], {}
    for j = 1, #flat, 2 do
      if not skip[flat[j]] then
        table.insert(fields, flat[j])
        table.insert(fields, flat[j + 1])
      end
    end
    if #fields > 0 then
      new = redis.call('XADD', KEYS[1], '*', unpack(fields))
      redis.call('XDEL', KEYS[2], id)
    end
  end
  table.insert(out, id)
  table.insert(out, new)
end
return out
"""


async def move_back(queue: StreamQueue, dead_ids: Sequence[str]) -> dict[str, str | None]:
    """Move dead letters back to the stream, each with its own fields as it was written;
    the new entry id of each (None: not moved, being gone or without a field of its own)."""
    if not dead_ids:
        return {}
    script: Any = queue.redis.register_script(_MOVE_BACK)
    keys = [queue.stream, queue.dead_stream]
    flat = await ask("EVALSHA", script(keys=keys, args=[len(dead_ids), *dead_ids, *DEAD_FIELDS]))
    pairs = zip(flat[::2], flat[1::2], strict=True)
    return {str(dead_id): (str(new) if new else None) for dead_id, new in pairs}


def now_ms() -> int:
    return int(time.time() * 1000)
