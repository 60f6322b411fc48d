"""Helpers of the queue tests (tests/queue, tests/sending/test_shared_rate.py): the consumer's
command line and the stream as any producer writes it. Starting and reaping the worker
processes themselves is in processes.py, shared with the other end-to-end tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from worker.sandbox.runner import SandboxHandle

STREAM = "purge"
DEAD = "purge:dead"
GROUP = "audience-purge"


def consume_args(
    sandbox: SandboxHandle, redis_url: str, audit: Path, consumer: str, *extra: str
) -> list[str]:
    return [
        "consume",
        "--redis",
        redis_url,
        "--stream",
        STREAM,
        "--consumer",
        consumer,
        "--base-url",
        sandbox.url,
        "--rate",
        "1000/second",
        "--batch-size",
        "10",
        "--concurrency",
        "2",
        "--audit-log",
        str(audit),
        "--log-level",
        "warning",
        *extra,
    ]


def of(records: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [r for r in records if r["event"] == event]


def audit_has(path: Path, event: str, at_least: int = 1) -> Callable[[], bool]:
    needle = f'"event":"{event}"'.encode()
    return lambda: path.exists() and path.read_bytes().count(needle) >= at_least


def stream_order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)


async def produce(
    rdb: Any, batches: list[tuple[int, list[int]]], ref: str | None = None
) -> list[str]:
    """XADD one entry per batch in the documented message format, as any producer may."""
    ids = []
    for campaign, audience in batches:
        fields = {"campaign_id": str(campaign), "audience_ids": ",".join(map(str, audience))}
        if ref is not None:
            fields["ref"] = ref
        ids.append(await rdb.xadd(STREAM, fields))
    return ids


def tens(first: int, last: int, size: int = 10) -> list[tuple[int, list[int]]]:
    return [(42, list(range(i, min(i + size, last + 1)))) for i in range(first, last + 1, size)]


async def pending_of(rdb: Any, consumer: str | None = None) -> list[str]:
    rows = await rdb.xpending_range(
        STREAM, GROUP, min="-", max="+", count=10_000, consumername=consumer
    )
    return [str(row["message_id"]) for row in rows]


async def pending_count(rdb: Any) -> int:
    return int((await rdb.xpending(STREAM, GROUP))["pending"])
