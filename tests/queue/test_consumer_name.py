"""One consumer name, one process: a second ``consume`` under a live name is refused before it
reads anything, so no entry is sent twice; default names are unique per process; a name left
by a dead process is taken once its lease expires."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import read_audit
from processes import eventually, finish, start
from queue_helpers import STREAM, audit_has, consume_args, of, produce, tens

from worker.commands.consume import run_consumer
from worker.errors import ServiceUnavailable, UsageError
from worker.queue import lease as lease_module
from worker.queue.intake import make_queue
from worker.queue.lease import Lease, lease_key
from worker.queue.streams import StreamQueue, open_redis
from worker.sandbox.runner import SandboxHandle
from worker.settings import Settings

MakeSettings = Callable[..., Settings]


async def test_a_second_consumer_under_a_live_name_is_refused_and_nothing_is_sent_twice(
    sandbox: SandboxHandle, token: str, redis_url: str, rdb: Any, tmp_path: Path
) -> None:
    await produce(rdb, tens(1, 600))
    first_audit, second_audit = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    first = await start(
        *consume_args(sandbox, redis_url, first_audit, "same", "--rate", "50/second"),
        cwd=tmp_path,
        token=token,
    )
    try:
        await eventually(audit_has(first_audit, "acknowledged"), what="the first at work")
        second = await finish(
            await start(
                *consume_args(sandbox, redis_url, second_audit, "same", "--until-empty"),
                cwd=tmp_path,
                token=token,
            ),
            timeout=lease_module.LEASE_S + 10,
        )
        assert first.returncode is None, "the first consumer must still hold the name"
    finally:
        first.send_signal(signal.SIGTERM)
    await finish(first)

    assert second.code == 2, second.err
    lines = [line for line in second.err.splitlines() if not line.startswith("{")]
    assert len(lines) == 1, second.err
    assert "consumer name 'same' is in use by another process (PID " in lines[0]
    assert not second_audit.exists()  # refused before its run started: nothing read or sent
    sent = [i for r in of(read_audit(first_audit), "sending") for i in r["audience_ids"]]
    assert len(sent) == len(set(sent))


async def test_default_consumer_names_are_unique_per_process(
    make_settings: MakeSettings, redis_url: str
) -> None:
    settings = make_settings(redis_url=redis_url, stream=STREAM, consumer=None)
    names = {make_queue(settings, open_redis(redis_url)).consumer for _ in range(3)}

    assert len(names) == 3
    for name in names:
        assert name.startswith(f"{socket.gethostname()}-{os.getpid()}-")


async def test_a_name_left_by_a_dead_process_is_taken_once_its_lease_expires(
    sandbox: SandboxHandle,
    make_settings: MakeSettings,
    redis_url: str,
    rdb: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(lease_module, "LEASE_S", 0.5)
    await produce(rdb, tens(1, 20))
    settings = make_settings(redis_url=redis_url, stream=STREAM, consumer="c1", until_empty=True)
    queue = make_queue(settings, open_redis(redis_url))
    await rdb.set(lease_key(queue), "PID 1 on gone-host", px=300)  # never renewed

    result = await asyncio.wait_for(run_consumer(settings), timeout=20)

    assert result.exit_code == 0
    assert sandbox.state.receipts[42].received_ids() == list(range(1, 21))
    assert await rdb.exists(lease_key(queue)) == 0  # released at the end
    await queue.close()


@pytest.fixture
async def queue(make_settings: MakeSettings, redis_url: str) -> AsyncIterator[StreamQueue]:
    """The queue of a consumer named c1."""
    settings = make_settings(redis_url=redis_url, stream=STREAM, consumer="c1")
    queue = make_queue(settings, open_redis(redis_url))
    yield queue
    await queue.close()


async def test_a_live_name_is_refused_after_one_lease_period(queue: StreamQueue) -> None:
    holder = Lease(queue, lease_s=0.4)
    await holder.take()
    keeping = asyncio.create_task(holder.keep())
    try:
        with pytest.raises(UsageError, match="consumer name 'c1' is in use by another process"):
            await Lease(queue, lease_s=0.4).take()
    finally:
        keeping.cancel()
    await holder.release()
    await Lease(queue, lease_s=0.4).take()  # free again once released


async def test_a_lease_taken_by_another_process_mid_run_ends_the_run(
    queue: StreamQueue, rdb: Any
) -> None:
    held = Lease(queue, lease_s=0.3)
    await held.take()
    await rdb.set(held.key, "PID 2 on another-host", px=60_000)

    with pytest.raises(ServiceUnavailable, match="was taken by another process"):
        await asyncio.wait_for(held.keep(), timeout=5)
