"""The Redis Streams boundary: the only place that reads or writes the work queue.

The message format is :mod:`worker.queue.message`. Consumers read with XREADGROUP in one
group; an entry is acknowledged (XACK) only after its outcome is in the audit log, and
deleted (XDEL) in the same transaction, so the stream holds only the work still to do
(unless other groups read the stream too: their entries are kept). Entries left pending by
a dead consumer are taken over with XAUTOCLAIM once idle longer than ``claim_idle``; an
entry delivered more than ``max_deliveries`` times is dead-lettered. The dead-letter stream
keeps the newest ``dead_letter_max`` entries.

Entries are read as bytes (``NEVER_DECODE``): any producer may write any byte, and a field
that is not UTF-8 must make its entry malformed (dead-lettered whole, bytes kept), not fail
the read of every entry beside it. Everything else Redis answers is text.

Redis errors become :class:`QueueUnavailable`, classified here once (:func:`unavailable`):
a lost connection, a timeout, a Redis loading its data or failing over is transient
(retried); an answer that retrying the same command cannot change (``NOGROUP``: the stream
or group is gone; ``WRONGTYPE``; refused credentials or permissions) is permanent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any, TypeVar

import redis.asyncio as aioredis
import structlog
from redis.client import NEVER_DECODE
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    ClusterDownError,
    InvalidResponse,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from worker.errors import ConfigError, ServiceUnavailable
from worker.queue.message import (
    MAX_IDS,
    MAX_REF,
    Entry,
    Malformed,
    Pairs,
    by_name,
    encode,
    parse_entry,
)
from worker.sending.credentials import redact_url

# The message format's names, for the modules and tests that import them from here.
__all__ = [
    "DEAD_FIELDS",
    "DEAD_NAMES",
    "MAX_IDS",
    "MAX_REF",
    "Entry",
    "Malformed",
    "Pairs",
    "QueueUnavailable",
    "StreamQueue",
    "as_bytes",
    "ask",
    "by_name",
    "encode",
    "entry_pairs",
    "open_redis",
    "parse_entry",
    "raise_if_cancelled",
    "refused_credentials",
    "unavailable",
]
T = TypeVar("T")
log = structlog.get_logger("audience_purge.queue")

# What dead_letter adds to an entry's own fields (redrive takes them off again).
DEAD_FIELDS = ("dead_reason", "dead_entry_id", "dead_consumer")
DEAD_NAMES = frozenset(name.encode() for name in DEAD_FIELDS)
# Error replies that a later try of the same command may not get: Redis loading its data,
# a replica being promoted, a cluster slot moving, a script running, memory or disk full.
_TRANSIENT_REPLIES = (
    "LOADING",
    "READONLY",
    "MASTERDOWN",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "BUSY",
    "MISCONF",
    "NOREPLICAS",
    "OOM",
)


class QueueUnavailable(ServiceUnavailable):
    """Redis could not be reached or refused a command. ``permanent`` when retrying cannot
    help (a key of the wrong type, a missing permission, a refused password): the caller
    stops retrying. ``auth``: Redis refused the credentials (or asked for some)."""

    def __init__(self, message: str, *, permanent: bool = False, auth: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent or auth
        self.auth = auth


def refused_credentials(exc: RedisError) -> bool:
    """Redis refused the password or user (WRONGPASS), or wants one (NOAUTH): retrying the
    same credentials cannot help."""
    if isinstance(exc, AuthenticationError):
        return True
    text = str(exc)
    return isinstance(exc, ResponseError) and text.startswith(("WRONGPASS", "NOAUTH"))


def transient(exc: RedisError) -> bool:
    """Whether the same call may succeed later: a connection lost or refused, a timeout, or
    an error reply of a Redis that is loading, failing over or full. Any other error reply
    (``NOGROUP``, ``WRONGTYPE``, ``UNBLOCKED`` for a stream deleted under a blocking read,
    ``NOPERM``, ``ERR ...``) answers the command itself: it is permanent."""
    if isinstance(exc, AuthenticationError | AuthorizationError):
        return False
    if isinstance(exc, RedisConnectionError | RedisTimeoutError | InvalidResponse):
        return True
    if isinstance(exc, ReadOnlyError | TryAgainError | ClusterDownError | OutOfMemoryError):
        return True
    return isinstance(exc, ResponseError) and str(exc).startswith(_TRANSIENT_REPLIES)


def unavailable(what: str, exc: RedisError) -> QueueUnavailable:
    """The QueueUnavailable of a failed Redis call: permanent when retrying cannot help."""
    message = f"Redis {what} failed: {type(exc).__name__}: {exc}"
    if refused_credentials(exc) or isinstance(exc, AuthorizationError):
        return QueueUnavailable(message, auth=True)
    return QueueUnavailable(message, permanent=not transient(exc))


async def ask(what: str, call: Awaitable[T]) -> T:
    """A Redis call; its failure is a QueueUnavailable naming ``what``."""
    try:
        result = await call
    except RedisError as exc:
        raise_if_cancelled()
        raise unavailable(what, exc) from None
    return result


def as_bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def as_pair(name: str | bytes, value: str | bytes) -> tuple[bytes, bytes]:
    return as_bytes(name), as_bytes(value)


def _text_id(value: str | bytes) -> str:
    """An entry id (Redis makes them, always ASCII digits and a dash)."""
    return value.decode("ascii") if isinstance(value, bytes) else str(value)


def entry_pairs(raw: Iterable[Any] | None) -> list[tuple[str, Pairs]]:
    """Stream entries as Redis sends them, ``[id, [name, value, ...]]``; a pending entry
    deleted from the stream since has no fields."""
    out = []
    for entry_id, flat in raw or ():
        items = [as_bytes(item) for item in flat or ()]
        out.append((_text_id(entry_id), tuple(zip(items[::2], items[1::2], strict=False))))
    return out


def _read_reply(response: Any, **options: Any) -> list[tuple[str, Pairs]]:
    """XREADGROUP's entries, of RESP2's ``[[stream, entries]]`` or RESP3's
    ``{stream: entries}``."""
    if not response:
        return []
    streams = response.values() if isinstance(response, dict) else (e for _, e in response)
    return [entry for entries in streams for entry in entry_pairs(entries)]


def _range_reply(response: Any, **options: Any) -> list[tuple[str, Pairs]]:
    return entry_pairs(response)


def _claim_reply(response: Any, **options: Any) -> tuple[str, list[tuple[str, Pairs]]]:
    """XAUTOCLAIM's next cursor and claimed entries."""
    return _text_id(response[0]), entry_pairs(response[1])


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
    dead_letter_max: int = 0  # 0: no bound
    # Acknowledged entries are deleted, unless other groups read the stream too.
    delete_acked: bool = True
    _own_cursor: str | None = "0"  # None once this consumer's own pending list was walked
    _claim_cursor: str = "0-0"

    def __post_init__(self) -> None:
        # redis-py hands each entry's fields over as a dict, which keeps the last value of a
        # repeated field and hides the repeat: read them as the pairs Redis sends.
        self.redis.set_response_callback("XREADGROUP", _read_reply)
        self.redis.set_response_callback("XAUTOCLAIM", _claim_reply)
        for command in ("XRANGE", "XREVRANGE"):
            self.redis.set_response_callback(command, _range_reply)

    def rescan_own_pending(self) -> None:
        """Walk this consumer's pending list again (after an outage lost a reply)."""
        self._own_cursor = "0"

    async def ping(self) -> None:
        await self._call("PING", self.redis.ping())

    async def ensure_group(self) -> bool:
        """Create the group (reading from the stream's start) if it does not exist, and
        keep acknowledged entries if another group reads the stream too (deleting them
        would take them from that group). True if the group was created.

        Only here, at a consumer's start: a group lost mid-run is not created again (see
        :func:`worker.queue.intake.lost`)."""
        try:
            await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
            created = True
        except RedisError as exc:
            raise_if_cancelled()
            if "BUSYGROUP" not in str(exc):
                raise unavailable("XGROUP CREATE", exc) from None
            created = False
        if created:
            log.info(
                "consumer group created: it reads the stream from its start",
                stream=self.stream,
                group=self.group,
                entries=await self._call("XLEN", self.redis.xlen(self.stream)),
            )
        groups = await self._call("XINFO GROUPS", self.redis.xinfo_groups(self.stream))
        others = sorted(str(g["name"]) for g in groups if g.get("name") != self.group)
        self.delete_acked = not others
        if others:
            log.warning(
                "other consumer groups read this stream: acknowledged entries are kept",
                stream=self.stream,
                groups=others,
            )
        return created

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
        block = () if block_ms is None else ("BLOCK", block_ms)
        entries: list[tuple[str, Pairs]] = await self._raw(
            "XREADGROUP",
            *("GROUP", self.group, self.consumer, "COUNT", count, *block),
            *("STREAMS", self.stream, start),
        )
        return entries

    async def _claim(self, count: int) -> list[tuple[str, Pairs]]:
        reply: tuple[str, list[tuple[str, Pairs]]] = await self._raw(
            "XAUTOCLAIM",
            *(self.stream, self.group, self.consumer, self.claim_idle_ms, self._claim_cursor),
            *("COUNT", count),
        )
        self._claim_cursor, claimed = reply
        return claimed

    async def entries(
        self, key: str, start: str, end: str, count: int, *, newest_first: bool = False
    ) -> list[tuple[str, Pairs]]:
        """XRANGE (or XREVRANGE, ``start`` then being the newer end) of any stream, as bytes."""
        command = "XREVRANGE" if newest_first else "XRANGE"
        got: list[tuple[str, Pairs]] = await self._raw(command, key, start, end, "COUNT", count)
        return got

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
        """XACK, and XDEL in the same transaction: a done entry leaves the stream."""
        if not self.delete_acked:
            await self._call("XACK", self.redis.xack(self.stream, self.group, entry_id))
            return
        pipe = self.redis.pipeline(transaction=True)
        pipe.xack(self.stream, self.group, entry_id)
        pipe.xdel(self.stream, entry_id)
        await self._call("XACK", pipe.execute())

    async def dead_letter(
        self, entry_id: str, fields: Mapping[str, str] | Pairs, reason: str
    ) -> None:
        """Copy an entry to the dead-letter stream with the reason, then acknowledge it.

        The copy keeps every field as read, a repeated one included (hence a plain XADD of
        pairs: redis-py's ``xadd`` takes a dict). Two steps, not one transaction: a copy
        that fails (a key of the wrong type) must leave the entry pending, and a MULTI runs
        its other commands whatever one of them answers. Beyond ``dead_letter_max``
        entries, the oldest dead letter is trimmed (exactly: dead-lettering is rare).
        """
        pairs = fields.items() if isinstance(fields, Mapping) else fields
        record = [as_pair(n, v) for n, v in pairs if as_bytes(n) not in DEAD_NAMES]
        ours = (reason, entry_id, self.consumer)
        record += (as_pair(name, value) for name, value in zip(DEAD_FIELDS, ours, strict=True))
        flat = chain.from_iterable(record)
        bound = ("MAXLEN", str(self.dead_letter_max)) if self.dead_letter_max else ()
        pipe = self.redis.pipeline(transaction=True)
        pipe.execute_command("XADD", self.dead_stream, *bound, "*", *flat)
        pipe.xlen(self.dead_stream)
        _, length = await self._call("XADD", pipe.execute())
        if self.dead_letter_max and int(length) >= self.dead_letter_max:
            log.warning(
                "dead-letter stream at its bound: its oldest entries are trimmed "
                "(their ids stay in the audit logs)",
                dead_stream=self.dead_stream,
                dead_letter_max=self.dead_letter_max,
            )
        await self.ack(entry_id)

    async def drained(self) -> bool:
        """Nothing new and nothing pending for the group: a Job may finish.

        Redis reports no lag when entries were deleted at or after the group's last
        delivered one; then whether anything follows that entry is asked directly."""
        groups = await self._call("XINFO GROUPS", self.redis.xinfo_groups(self.stream))
        for info in groups:
            if info.get("name") == self.group:
                if int(info.get("pending", 0)) != 0:
                    return False
                lag = info.get("lag")
                if lag is not None:
                    return int(lag) == 0
                after = f"({info['last-delivered-id']}"
                return not await self.entries(self.stream, after, "+", 1)
        return True

    async def _call(self, what: str, awaitable: Any) -> Any:
        try:
            result = await awaitable
        except RedisError as exc:
            raise_if_cancelled()
            raise unavailable(what, exc) from None
        raise_if_cancelled()
        return result

    async def _raw(self, command: str, *args: str | int) -> Any:
        """A command whose reply holds entries: read undecoded (see the module docstring)."""
        call = self.redis.execute_command(command, *args, **{NEVER_DECODE: True})
        return await self._call(command, call)

    async def close(self) -> None:
        await self.redis.aclose()
