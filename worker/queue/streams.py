"""The Redis Streams boundary: the only place that reads or writes the work queue.

Message format (one stream entry per batch; any producer may write it):

    campaign_id   decimal string, a positive 64-bit integer
    audience_ids  the ids, as decimal strings separated by commas ("101,102,103") or as a
                  JSON array ("[101, 102, 103]"); at least one, at most MAX_IDS
    ref           optional: a producer's reference (at most 200 characters), copied into the
                  audit records of the entry's ids

An entry with anything else in those fields is malformed: it goes, whole, to the
dead-letter stream with the reason, and is acknowledged. Nothing of it is sent: an entry
is either trusted entirely or not at all.

Consumers read with XREADGROUP in one group; an entry is acknowledged (XACK) only after
its outcome is in the audit log. Entries left pending by a dead consumer are taken over
with XAUTOCLAIM once idle longer than ``claim_idle``; an entry delivered more than
``max_deliveries`` times is dead-lettered. Redis errors become :class:`QueueUnavailable`.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from worker.errors import ConfigError, ServiceUnavailable
from worker.input.validate import parse_id
from worker.sending.credentials import redact_url

MAX_IDS = 10_000
MAX_REF = 200
_SPLIT = re.compile(r"\s*,\s*")


class QueueUnavailable(ServiceUnavailable):
    """Redis could not be reached or refused a command. ``permanent`` when retrying cannot
    help (a key of the wrong type, a missing permission): the caller stops retrying."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class Malformed(ValueError):
    """A stream entry that is not a valid message (see the module docstring)."""


@dataclass(frozen=True, slots=True)
class Entry:
    """A valid message: what to delete, and where it came from."""

    entry_id: str
    campaign_id: int
    audience_ids: tuple[int, ...]
    ref: str | None


def parse_entry(entry_id: str, fields: Mapping[str, str]) -> Entry:
    """Validate one entry's fields.

    Raises:
        Malformed: with the reason, for anything that is not a valid message.
    """
    campaign = parse_id(fields.get("campaign_id", ""))
    if isinstance(campaign, str):
        raise Malformed(f"campaign_id {campaign}")
    ids = _ids(fields.get("audience_ids", ""))
    ref = fields.get("ref")
    if ref is not None and len(ref) > MAX_REF:
        raise Malformed(f"ref is longer than {MAX_REF} characters")
    return Entry(entry_id, campaign, ids, ref)


def _ids(text: str) -> tuple[int, ...]:
    text = text.strip()
    if text.startswith("["):
        try:
            raw = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise Malformed("audience_ids is not a valid JSON array") from None
        if not isinstance(raw, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in raw
        ):
            raise Malformed("audience_ids must be an array of integers")
        cells = [str(v) for v in raw]
    else:
        cells = _SPLIT.split(text) if text else []
    if not cells:
        raise Malformed("audience_ids is empty")
    if len(cells) > MAX_IDS:
        raise Malformed(f"more than {MAX_IDS} audience_ids")
    out: list[int] = []
    for cell in cells:
        value = parse_id(cell)
        if isinstance(value, str):
            raise Malformed(f"audience_id {cell!r}: {value}")
        out.append(value)
    return tuple(dict.fromkeys(out))


def encode(campaign_id: int, audience_ids: Sequence[int], ref: str | None) -> dict[str, str]:
    fields = {"campaign_id": str(campaign_id), "audience_ids": ",".join(map(str, audience_ids))}
    if ref:
        fields["ref"] = ref
    return fields


def raise_if_cancelled() -> None:
    """Raise the cancellation that redis-py may have swallowed.

    redis-py 8 can lose a cancellation that arrives during a blocking read: it closes the
    connection under the read and either reports "Connection closed by server" or retries
    the command, so the cancelled task reads on (seen: one cancel in about a hundred at a
    random moment of an XREADGROUP). A call whose task is being cancelled ends cancelled,
    as soon as redis-py hands control back.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def open_redis(url: str) -> Any:
    """A client for ``url``; a malformed URL is a ConfigError naming the key."""
    try:
        return aioredis.from_url(
            url, decode_responses=True, socket_connect_timeout=5, health_check_interval=30
        )
    except ValueError as exc:
        raise ConfigError(f"{redact_url(url)!r} is not a Redis URL ({exc})", key="redis") from None


@dataclass(slots=True)
class StreamQueue:
    """One stream, one consumer group, one consumer."""

    redis: Any
    stream: str
    group: str
    consumer: str
    dead_stream: str
    max_deliveries: int
    claim_idle_ms: int
    _own_cursor: str | None = "0"  # None once this consumer's own pending list was walked
    _claim_cursor: str = "0-0"

    def rescan_own_pending(self) -> None:
        """Walk this consumer's pending list again (after an outage lost a reply)."""
        self._own_cursor = "0"

    async def ping(self) -> None:
        await self._call("PING", self.redis.ping())

    async def ensure_group(self) -> None:
        """Create the group (reading from the stream's start) if it does not exist."""
        try:
            await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise QueueUnavailable(f"XGROUP CREATE failed: {exc}", permanent=True) from None
        except RedisError as exc:
            raise_if_cancelled()
            raise QueueUnavailable(f"XGROUP CREATE failed: {type(exc).__name__}") from None

    async def add(self, entries: Sequence[Mapping[str, str]]) -> list[str]:
        """XADD many entries in one round trip; returns their ids."""
        pipe = self.redis.pipeline(transaction=False)
        for fields in entries:
            pipe.xadd(self.stream, dict(fields))
        return [str(i) for i in await self._call("XADD", pipe.execute())]

    async def read(self, count: int, block_ms: int) -> list[tuple[str, dict[str, str], int]]:
        """(id, fields, deliveries): own pending entries first, then idle ones of dead
        consumers, then new ones (blocking up to ``block_ms``)."""
        if self._own_cursor is not None:
            got = await self._read_group(self._own_cursor, count, None)
            if got:
                self._own_cursor = got[-1][0]
                return await self._with_deliveries(got)
            self._own_cursor = None
        claimed = await self._claim(count)
        if claimed:
            return await self._with_deliveries(claimed)
        got = await self._read_group(">", count, block_ms)
        return [(entry_id, fields, 1) for entry_id, fields in got]

    async def _read_group(
        self, start: str, count: int, block_ms: int | None
    ) -> list[tuple[str, dict[str, str]]]:
        reply = await self._call(
            "XREADGROUP",
            self.redis.xreadgroup(
                self.group, self.consumer, {self.stream: start}, count=count, block=block_ms
            ),
        )
        if not reply:
            return []
        return [(str(i), dict(f or {})) for i, f in reply[0][1]]

    async def _claim(self, count: int) -> list[tuple[str, dict[str, str]]]:
        reply = await self._call(
            "XAUTOCLAIM",
            self.redis.xautoclaim(
                self.stream,
                self.group,
                self.consumer,
                min_idle_time=self.claim_idle_ms,
                start_id=self._claim_cursor,
                count=count,
            ),
        )
        self._claim_cursor = str(reply[0])
        return [(str(i), dict(f or {})) for i, f in reply[1]]

    async def _with_deliveries(
        self, got: list[tuple[str, dict[str, str]]]
    ) -> list[tuple[str, dict[str, str], int]]:
        """Each entry's delivery count, looked up exactly in this consumer's pending list;
        an entry no longer there (acknowledged meanwhile) is dropped."""
        pipe = self.redis.pipeline(transaction=False)
        for entry_id, _ in got:
            pipe.xpending_range(
                self.stream,
                self.group,
                min=entry_id,
                max=entry_id,
                count=1,
                consumername=self.consumer,
            )
        replies = await self._call("XPENDING", pipe.execute())
        out = []
        for (entry_id, fields), rows in zip(got, replies, strict=True):
            if rows:
                out.append((entry_id, fields, int(rows[0]["times_delivered"])))
        return out

    async def ack(self, entry_id: str) -> None:
        await self._call("XACK", self.redis.xack(self.stream, self.group, entry_id))

    async def dead_letter(self, entry_id: str, fields: Mapping[str, str], reason: str) -> None:
        """Copy an entry to the dead-letter stream with the reason, then acknowledge it."""
        record = {
            **fields,
            "dead_reason": reason,
            "dead_entry_id": entry_id,
            "dead_consumer": self.consumer,
        }
        await self._call("XADD", self.redis.xadd(self.dead_stream, record))
        await self.ack(entry_id)

    async def drained(self) -> bool:
        """Nothing new and nothing pending for the group: a Job may finish."""
        groups = await self._call("XINFO GROUPS", self.redis.xinfo_groups(self.stream))
        for info in groups:
            if info.get("name") == self.group:
                lag = info.get("lag")
                return int(info.get("pending", 0)) == 0 and (lag is None or int(lag) == 0)
        return True

    async def _call(self, what: str, awaitable: Any) -> Any:
        try:
            result = await awaitable
        except RedisError as exc:
            raise_if_cancelled()
            raise QueueUnavailable(f"Redis {what} failed: {type(exc).__name__}: {exc}") from None
        raise_if_cancelled()
        return result

    async def close(self) -> None:
        await self.redis.aclose()
