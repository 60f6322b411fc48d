"""Permanent queue errors end the run: a stream or group that disappears under a consumer (the
key deleted, or a Redis without persistence restarted) ends it within seconds with one line
and exit 69, instead of a retry loop that never completes a Job; transient errors are still
retried (tests/queue/test_queue.py rides out a Redis going away and coming back)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from conftest import read_audit
from processes import eventually, finish, start
from queue_helpers import GROUP, STREAM, audit_has, consume_args, produce, tens
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    MasterDownError,
    NoPermissionError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from worker.commands.consume import run_consumer
from worker.errors import ServiceUnavailable
from worker.queue.streams import StreamQueue, unavailable
from worker.sandbox.runner import SandboxHandle

LOSSES = {
    "stream deleted": lambda rdb: rdb.delete(STREAM),
    "group destroyed": lambda rdb: rdb.xgroup_destroy(STREAM, GROUP),
    "redis restarted without persistence": lambda rdb: rdb.flushall(),
}


@pytest.mark.parametrize("loss", list(LOSSES))
@pytest.mark.parametrize("until_empty", [True, False])
async def test_a_stream_or_group_lost_mid_run_ends_the_consumer_with_69_and_one_line(
    sandbox: SandboxHandle,
    token: str,
    redis_url: str,
    rdb: Any,
    tmp_path: Path,
    loss: str,
    until_empty: bool,
) -> None:
    await produce(rdb, tens(1, 20))
    audit = tmp_path / "c1.jsonl"
    extra = ("--until-empty",) if until_empty else ()
    # An entry pending at a consumer that is gone keeps an --until-empty consumer waiting.
    await rdb.xgroup_create(STREAM, GROUP, id="0")
    await rdb.xreadgroup(GROUP, "ghost", {STREAM: ">"}, count=1)
    args = consume_args(sandbox, redis_url, audit, "c1", "--claim-idle", "3600", *extra)
    proc = await start(*args, cwd=tmp_path, token=token)
    await eventually(audit_has(audit, "acknowledged", 1), what="the consumer at work")

    await LOSSES[loss](rdb)
    done = await finish(proc, timeout=15)

    assert done.code == 69, done.err
    assert "Traceback" not in done.err
    lines = [line for line in done.err.splitlines() if not line.startswith("{")]
    assert len(lines) == 1, done.err
    assert lines[0].startswith("audience-purge: error: ")
    assert "NOGROUP" in lines[0] or "UNBLOCKED" in lines[0], lines[0]
    assert "not created again" in lines[0]


@pytest.mark.parametrize(
    "error",
    [
        RedisConnectionError("Connection refused"),
        RedisTimeoutError("Timeout reading from socket"),
        BusyLoadingError("Redis is loading the dataset in memory"),
        ReadOnlyError("You can't write against a read only replica."),
        MasterDownError("Link with MASTER is down and replica-serve-stale-data is set to 'no'."),
        ResponseError("TRYAGAIN Multiple keys request during rehashing of slot"),
    ],
    ids=type,
)
def test_transient_redis_errors_are_retried(error: RedisError) -> None:
    assert not unavailable("XREADGROUP", error).permanent


@pytest.mark.parametrize(
    "error",
    [
        ResponseError("NOGROUP No such key 'purge' or consumer group 'g' in XREADGROUP"),
        ResponseError("UNBLOCKED the stream key no longer exists"),
        ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
        NoPermissionError("NOPERM this user has no permissions to run the 'xack' command"),
        AuthenticationError("WRONGPASS invalid username-password pair"),
        ResponseError("NOAUTH Authentication required."),
    ],
    ids=lambda e: str(e).split()[0],
)
def test_permanent_redis_errors_are_not_retried(error: RedisError) -> None:
    assert unavailable("XREADGROUP", error).permanent


async def test_a_consumer_says_in_run_started_whether_it_created_the_group(
    make_settings: Any, redis_url: str, rdb: Any, tmp_path: Path
) -> None:
    """Creating a group is never silent: the next consumer after a loss records that it
    created the group anew (and reads the stream from its start)."""
    await produce(rdb, tens(1, 10))
    started = []
    for n in (1, 2):
        settings = make_settings(
            redis_url=redis_url,
            stream=STREAM,
            consumer="c1",
            until_empty=True,
            audit_log=tmp_path / f"{n}.jsonl",
        )
        await asyncio.wait_for(run_consumer(settings), timeout=20)
        started.append(read_audit(tmp_path / f"{n}.jsonl")[0])

    assert [r["group_created"] for r in started] == [True, False]


async def test_a_redis_away_longer_than_redis_outage_max_ends_the_consumer_with_69(
    make_settings: Any, redis_url: str, rdb: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Transient errors are retried within the configured budget, then end the run."""
    await produce(rdb, tens(1, 10))
    refused = unavailable("XREADGROUP", RedisConnectionError("Connection refused"))

    async def away(*_: Any) -> Any:
        raise refused

    monkeypatch.setattr(StreamQueue, "read", away)
    settings = make_settings(
        redis_url=redis_url,
        stream=STREAM,
        consumer="c1",
        until_empty=True,
        redis_outage_max=0.5,
        redis_backoff_max=0.1,
    )

    with pytest.raises(ServiceUnavailable, match=r"Redis away for more than redis_outage_max"):
        await asyncio.wait_for(run_consumer(settings), timeout=10)
