"""A consumer's metrics against a real redis-server: entries, lag, and readiness on Redis."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from queue_helpers import GROUP, STREAM, produce, tens

from worker.commands.consume import run_consumer
from worker.queue.intake import make_queue, open_queue
from worker.queue.streams import open_redis
from worker.queue.watch import QueueWatch
from worker.records.metrics import Metrics
from worker.sandbox.runner import SandboxHandle
from worker.settings import Settings

MakeSettings = Callable[..., Settings]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_a_consumer_serves_entries_and_readiness_while_it_consumes(
    sandbox: SandboxHandle, make_settings: MakeSettings, redis_url: str, rdb: Any
) -> None:
    await rdb.delete(STREAM)
    await produce(rdb, [*tens(1, 200), (42, [])])  # 20 good entries and a malformed one
    port = free_port()
    settings = make_settings(
        redis_url=redis_url, stream=STREAM, consumer="c1", until_empty=False, metrics_port=port
    )
    consumer = asyncio.create_task(run_consumer(settings))
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            found: dict[Any, float] = {}
            for _ in range(200):
                await asyncio.sleep(0.05)
                try:
                    async with http.get(f"{url}/metrics") as resp:
                        found = values(await resp.text())
                except aiohttp.ClientError:
                    continue
                acked = ("audience_purge_stream_entries_total", (("outcome", "acknowledged"),))
                dead = ("audience_purge_stream_entries_total", (("outcome", "dead_lettered"),))
                if (found.get(acked, 0), found.get(dead, 0)) == (20, 1):
                    break
            async with http.get(f"{url}/readyz") as resp:
                ready = resp.status
    finally:
        consumer.cancel()
        await asyncio.gather(consumer, return_exceptions=True)
    assert found[("audience_purge_stream_entries_total", (("outcome", "acknowledged"),))] == 20
    assert found[("audience_purge_stream_entries_total", (("outcome", "dead_lettered"),))] == 1
    assert found[("audience_purge_ids_total", (("outcome", "deleted"),))] == 200
    assert ready == 200


async def test_the_watch_reports_the_groups_lag_and_an_unreachable_redis(
    make_settings: MakeSettings, redis_url: str, rdb: Any
) -> None:
    await rdb.delete(STREAM)
    await produce(rdb, tens(1, 70))  # seven entries, none delivered yet
    settings = make_settings(redis_url=redis_url, stream=STREAM, consumer="c1")
    metrics = Metrics(rate_per_second=1.0)
    async with open_queue(settings) as queue:
        await queue.ensure_group()
        watch = QueueWatch(queue, metrics)
        await watch.poll()
        assert metrics.stream_lag._value.get() == 7
        assert watch.readiness() is None
        await rdb.xreadgroup(GROUP, "other", {STREAM: ">"}, count=3)
        await watch.poll()
        assert metrics.stream_lag._value.get() == 4
    gone = make_queue(settings, open_redis(f"redis://127.0.0.1:{free_port()}/0"))
    try:
        unreachable = QueueWatch(gone, metrics)
        await unreachable.poll()
    finally:
        await gone.close()
    assert (unreachable.readiness() or "").startswith("Redis unreachable")
    assert metrics.stream_lag._value.get() == 4  # the last figure stays
