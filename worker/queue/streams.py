"""The Redis Streams boundary: the only place that reads or writes the work queue.

Message format (one stream entry per batch; any producer may write it):

    campaign_id   decimal string, a positive 64-bit integer
    audience_ids  the ids, as decimal strings separated by commas ("101,102,103") or as a
                  JSON array ("[101, 102, 103]"); at least one, at most MAX_IDS
    ref           optional: a producer's reference (at most 200 characters), copied into the
                  audit records of the entry's ids

An entry with anything else in those fields, or with one of them twice (XADD accepts
``audience_ids 1 audience_ids 2``), is malformed: it goes, whole, to the dead-letter stream
with the reason, and is acknowledged. Nothing of it is sent: an entry is either trusted
entirely or not at all.

Consumers read with XREADGROUP in one group; an entry is acknowledged (XACK) only after
its outcome is in the audit log. Entries left pending by a dead consumer are taken over
with XAUTOCLAIM once idle longer than ``claim_idle``; an entry delivered more than
``max_deliveries`` times is dead-lettered. Redis errors become :class:`QueueUnavailable`.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
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
_DEAD_FIELDS = ("dead_reason", "dead_entry_id", "dead_consumer")

# An entry's fields as Redis holds them: in order, a repeated field repeated.
Pairs = tuple[tuple[str, str], ...]


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


def parse_entry(entry_id: str, fields: Mapping[str, str] | Pairs) -> Entry:
    """Validate one entry's fields (as read from the stream, or by name).

    Raises:
        Malformed: with the reason, for anything that is not a valid message.
    """
    fields = by_name(fields)
    campaign = parse_id(fields.get("campaign_id", ""))
    if isinstance(campaign, str):
        raise Malformed(f"campaign_id {campaign}")
    ids = _ids(fields.get("audience_ids", ""))
    ref = fields.get("ref")
    if ref is not None and len(ref) > MAX_REF:
        raise Malformed(f"ref is longer than {MAX_REF} characters")
    return Entry(entry_id, campaign, ids, ref)


def by_name(fields: Mapping[str, str] | Pairs) -> Mapping[str, str]:
    """The fields by name.

    Raises:
        Malformed: a field is repeated; which of its values the producer meant is unknown.
    """
    if isinstance(fields, Mapping):
        return fields
    named: dict[str, str] = {}
    for name, value in fields:
        if name in named:
            raise Malformed(f"field {name} is repeated")
        named[name] = value
    return named


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


def _entries(raw: Iterable[Any] | None) -> list[tuple[str, Pairs]]:
    """Stream entries as Redis sends them, ``[id, [name, value, ...]]``; a pending entry
    deleted from the stream since has no fields."""
    out = []
    for entry_id, flat in raw or ():
        items = list(flat or ())
        out.append((str(entry_id), tuple(zip(items[::2], items[1::2], strict=False))))
    return out


def _read_reply(response: Any, **options: Any) -> list[tuple[str, Pairs]]:
    """XREADGROUP's entries, of RESP2's ``[[stream, entries]]`` or RESP3's
    ``{stream: entries}``."""
    if not response:
        return []
    streams = response.values() if isinstance(response, dict) else (e for _, e in response)
    return [entry for entries in streams for entry in _entries(entries)]


def _claim_reply(response: Any, **options: Any) -> tuple[str, list[tuple[str, Pairs]]]:
    """XAUTOCLAIM's next cursor and claimed entries."""
    return str(response[0]), _entries(response[1])


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

    def __post_init__(self) -> None:
        # redis-py hands each entry's fields over as a dict, which keeps the last value of a
        # repeated field and hides the repeat: read them as the pairs Redis sends.
        self.redis.set_response_callback("XREADGROUP", _read_reply)
        self.redis.set_response_callback("XAUTOCLAIM", _claim_reply)

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

    async def read(self, count: int, block_ms: int) -> list[tuple[str, Pairs, int]]:
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
    ) -> list[tuple[str, Pairs]]:
        entries: list[tuple[str, Pairs]] = await self._call(
            "XREADGROUP",
            self.redis.xreadgroup(
                self.group, self.consumer, {self.stream: start}, count=count, block=block_ms
            ),
        )
        return entries

    async def _claim(self, count: int) -> list[tuple[str, Pairs]]:
        reply: tuple[str, list[tuple[str, Pairs]]] = await self._call(
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
        self._claim_cursor, claimed = reply
        return claimed

    async def _with_deliveries(self, got: list[tuple[str, Pairs]]) -> list[tuple[str, Pairs, int]]:
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

    async def dead_letter(
        self, entry_id: str, fields: Mapping[str, str] | Pairs, reason: str
    ) -> None:
        """Copy an entry to the dead-letter stream with the reason, then acknowledge it.

        The copy keeps every field as read, a repeated one included (hence a plain XADD of
        pairs: redis-py's ``xadd`` takes a dict)."""
        pairs = fields.items() if isinstance(fields, Mapping) else fields
        record = [(name, value) for name, value in pairs if name not in _DEAD_FIELDS]
        record += zip(_DEAD_FIELDS, (reason, entry_id, self.consumer), strict=True)
        flat = chain.from_iterable(record)
        await self._call("XADD", self.redis.execute_command("XADD", self.dead_stream, "*", *flat))
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
