"""Which inputs a stream already holds: ``enqueue`` is idempotent per input, and resumes.

One Redis hash per stream, input and campaign, ``STREAM:enqueued:SHA256[:CAMPAIGN]`` (the
SHA-256 of the input file's bytes; the campaign of ``--campaign-id``, which changes what is
deleted). It says how many entries of the input are on the stream, with the batch size
that cut them, which run writes them, and whether the input was written whole
(``status`` ``complete``) or not yet (``writing``: running, or interrupted).

- The entries and the marker's count are written by one Lua script per write, so the count
  is exactly the number of the input's entries on the stream, whatever crashes when.
- A run claims the marker first (:func:`claim`): a complete input is not written again; an
  interrupted one is resumed after the entries already written (the batches of an input
  come in one order for one batch size, so they are skipped by count); ``force`` starts
  over. A run whose marker another run claimed since stops at its next write: two runs
  never write the same input at once (a replaced pod still in its grace period).

Entries leave the stream once consumed; the marker stays (delete the key, or ``--force``,
to enqueue the input again).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis.exceptions import RedisError, ResponseError

from worker.errors import StateError
from worker.queue.streams import StreamQueue, raise_if_cancelled, unavailable
from worker.times import utc_text

COMPLETE, WRITING = "complete", "writing"
_TAKEN = "TAKEN"


def marker_key(stream: str, input_sha256: str, campaign_id: int | None) -> str:
    return f"{stream}:enqueued:{input_sha256}" + (f":{campaign_id}" if campaign_id else "")


@dataclass(frozen=True, slots=True)
class Marker:
    """What a stream holds of one input, as its marker says."""

    key: str
    status: str
    entries: int
    ids: int
    batch_size: int
    run_id: str
    started: str
    updated: str

    @classmethod
    def of(cls, key: str, fields: Mapping[str, str]) -> Marker:
        return cls(
            key,
            fields.get("status", WRITING),
            int(fields.get("entries", 0)),
            int(fields.get("ids", 0)),
            int(fields.get("batch_size", 0)),
            fields.get("run_id", ""),
            fields.get("started", ""),
            fields.get("updated", ""),
        )


@dataclass(frozen=True, slots=True)
class Claim:
    """The outcome of :func:`claim`: what this run is to do."""

    marker: Marker
    previous: Marker | None  # the marker as it was (None: there was none, or forced)

    @property
    def done(self) -> bool:
        """The stream already holds the whole input: nothing to write."""
        return self.previous is not None and self.previous.status == COMPLETE

    @property
    def skip(self) -> int:
        """Entries of the input already on the stream (an interrupted run's)."""
        return self.previous.entries if self.previous is not None and not self.done else 0


def now() -> str:
    return utc_text(datetime.now(UTC), "milliseconds")


# KEYS: the marker. ARGV: run id, force (1/0), batch size, now, then name/value pairs to
# describe the input. Returns the marker before (flat, empty if none) and after the claim.
_CLAIM = """
local before = redis.call('HGETALL', KEYS[1])
local status = redis.call('HGET', KEYS[1], 'status')
if ARGV[2] == '1' or not status then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'status', 'writing', 'entries', 0, 'ids', 0,
    'batch_size', ARGV[3], 'run_id', ARGV[1], 'started', ARGV[4], 'updated', ARGV[4],
    unpack(ARGV, 5))
  if ARGV[2] == '1' then before = {} end
elseif status == 'writing' and redis.call('HGET', KEYS[1], 'batch_size') == ARGV[3] then
  redis.call('HSET', KEYS[1], 'run_id', ARGV[1], 'updated', ARGV[4])
end
return {before, redis.call('HGETALL', KEYS[1])}
"""

# KEYS: the stream, the marker. ARGV: run id, now, ids in these entries, then each entry as
# its number of values followed by its field names and values. Writes nothing unless this
# run still holds the marker; returns the entry ids.
_WRITE = """
local holder = redis.call('HGET', KEYS[2], 'run_id')
if holder ~= ARGV[1] then
  return redis.error_reply('TAKEN by run ' .. tostring(holder))
end
local out, at = {}, 4
while at <= #ARGV do
  local n = tonumber(ARGV[at])
  table.insert(out, redis.call('XADD', KEYS[1], '*', unpack(ARGV, at + 1, at + n)))
  at = at + n + 1
end
redis.call('HINCRBY', KEYS[2], 'entries', #out)
redis.call('HINCRBY', KEYS[2], 'ids', ARGV[3])
redis.call('HSET', KEYS[2], 'updated', ARGV[2])
return out
"""

_FINISH = """
if redis.call('HGET', KEYS[1], 'run_id') ~= ARGV[1] then
  return redis.error_reply('TAKEN by run ' .. tostring(redis.call('HGET', KEYS[1], 'run_id')))
end
redis.call('HSET', KEYS[1], 'status', 'complete', 'updated', ARGV[2], 'finished', ARGV[2])
return 1
"""


def _fields(flat: Sequence[Any]) -> dict[str, str]:
    return {str(k): str(v) for k, v in zip(flat[::2], flat[1::2], strict=True)}


async def _run(queue: StreamQueue, script: str, keys: list[str], args: list[Any]) -> Any:
    """Run a Lua script; a takeover is a StateError, any other failure QueueUnavailable."""
    try:
        return await queue.redis.register_script(script)(keys=keys, args=args)
    except ResponseError as exc:
        if str(exc).startswith(_TAKEN):
            raise StateError(
                f"this enqueue was taken over ({exc}): another enqueue of the same input "
                "continues it; this one stops (its entries so far are on the stream)"
            ) from None
        raise unavailable("EVALSHA", exc) from None
    except RedisError as exc:
        raise_if_cancelled()
        raise unavailable("EVALSHA", exc) from None


async def claim(
    queue: StreamQueue,
    key: str,
    *,
    run_id: str,
    batch_size: int,
    force: bool,
    about: Mapping[str, str],
) -> Claim:
    """Take the input's marker for this run (see the module docstring).

    Raises:
        StateError: an interrupted enqueue of the input used another batch size: resuming
            it would cut other batches (nothing was written).
    """
    args = [run_id, "1" if force else "0", batch_size, now()]
    args += [part for item in about.items() for part in item]
    before, after = await _run(queue, _CLAIM, [key], args)
    previous = Marker.of(key, _fields(before)) if before else None
    if previous is not None and previous.status == WRITING and previous.batch_size != batch_size:
        raise StateError(
            f"an interrupted enqueue of this input (run {previous.run_id}) wrote "
            f"{previous.entries} entries with --batch-size {previous.batch_size}: resume it "
            f"with that batch size, or --force to enqueue the whole input again (marker "
            f"{key})"
        )
    return Claim(Marker.of(key, _fields(after)), previous)


async def write(
    queue: StreamQueue, key: str, run_id: str, entries: Sequence[Mapping[str, str]]
) -> list[str]:
    """XADD ``entries`` and count them in the marker, in one script; their ids.

    Raises:
        StateError: another run claimed the marker since (nothing was written).
    """
    args: list[Any] = [run_id, now(), sum(len(e["audience_ids"].split(",")) for e in entries)]
    for fields in entries:
        args += [2 * len(fields), *(part for item in fields.items() for part in item)]
    return [str(i) for i in await _run(queue, _WRITE, [queue.stream, key], args)]


async def finish(queue: StreamQueue, key: str, run_id: str) -> None:
    """Mark the input as written whole."""
    await _run(queue, _FINISH, [key], [run_id, now()])
