"""A consumer's manners on a real redis-server: it takes no more entries than it can send
soon, says what it waits for when another consumer holds the last entries, and stops at
once, saying why, when Redis refuses its credentials."""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import structlog
from conftest import read_audit
from processes import closed_port, eventually, finish, start
from queue_helpers import GROUP, STREAM, consume_args, of, pending_count, produce, tens

from worker.commands.consume import run_consumer
from worker.errors import ServiceUnavailable
from worker.queue.intake import prefetch_limit
from worker.sandbox.runner import SandboxHandle
from worker.settings import Settings
from worker.settings.rate import RateSpec

MakeSettings = Callable[..., Settings]


# -- the prefetch bound ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "concurrency", "claim_idle", "limit"),
    [
        (RateSpec(10, 1.0), 8, 600.0, 16),  # 8 senders busy + 8 waiting (2 s would be 20)
        (RateSpec(10, 1.0), 64, 600.0, 40),  # the default 64: 2 s at 10/s, twice
        (RateSpec(2, 1.0), 2, 600.0, 4),  # 2 senders + 2 more (2 s is 4)
        (RateSpec(100, 60.0), 64, 600.0, 8),  # 2 s at 1.67/s is 4, twice
        (RateSpec(1000, 1.0), 4, 600.0, 8),  # a fast rate: the senders bound it
        (RateSpec(100, 3600.0), 8, 600.0, 2),  # one request in 2 s, twice
        (RateSpec(1, 3600.0), 8, 600.0, 1),  # what it sends in half of claim_idle, at least 1
    ],
)
def test_the_prefetch_limit_is_twice_what_can_usefully_be_in_flight(
    rate: RateSpec, concurrency: int, claim_idle: float, limit: int
) -> None:
    settings = Settings(rate=rate, concurrency=concurrency, claim_idle=claim_idle)

    assert prefetch_limit(settings) == limit


@pytest.mark.slow
async def test_at_a_slow_rate_a_consumer_holds_no_more_than_its_limit_and_leaves_the_rest(
    sandbox: SandboxHandle, token: str, redis_url: str, rdb: Any, tmp_path: Path
) -> None:
    entries = await produce(rdb, tens(1, 160))  # 16 entries, one request each
    await rdb.xgroup_create(STREAM, GROUP, id="0")  # for the watch's first XPENDING
    limit = prefetch_limit(Settings(rate=RateSpec(2, 1.0), concurrency=2))
    assert limit == 4
    most = {"a": 0, "b": 0}

    async def watch() -> None:
        while True:
            for consumer in most:
                held = await rdb.xpending_range(
                    STREAM, GROUP, min="-", max="+", count=100, consumername=consumer
                )
                most[consumer] = max(most[consumer], len(held))
            await asyncio.sleep(0.005)

    def consumer(name: str) -> list[str]:
        audit = tmp_path / f"{name}.jsonl"
        args = consume_args(sandbox, redis_url, audit, name, "--until-empty")
        return [*args, "--rate", "2/second", "--concurrency", "2"]

    watching = asyncio.create_task(watch())
    procs = []
    try:
        procs.append(await start(*consumer("a"), cwd=tmp_path, token=token))
        await eventually(lambda: most["a"] > 0, what="a took entries")
        await asyncio.sleep(0.5)
        procs.append(await start(*consumer("b"), cwd=tmp_path, token=token))
        done = [await finish(proc) for proc in procs]
    finally:
        watching.cancel()
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    assert [d.code for d in done] == [0, 0], [d.err for d in done]
    assert 0 < most["a"] <= limit
    assert 0 < most["b"] <= limit
    taken = {n: of(read_audit(tmp_path / f"{n}.jsonl"), "acknowledged") for n in ("a", "b")}
    assert len(taken["b"]) >= 3, "the second consumer found nothing left to take"
    assert sorted(r["entry_id"] for r in taken["a"] + taken["b"]) == sorted(entries)
    assert not any(sandbox.state.campaigns[42].alive(i) for i in range(1, 161))


# -- saying what it waits for ------------------------------------------------------------------


@pytest.fixture
def logs() -> Iterator[list[dict[str, Any]]]:
    """The structlog events of the test, whatever level an earlier test configured."""
    before = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        with structlog.testing.capture_logs() as captured:
            yield captured
    finally:
        structlog.configure(**before)


async def test_until_empty_says_which_entries_of_another_consumer_it_waits_for_and_when(
    sandbox: SandboxHandle,
    make_settings: MakeSettings,
    redis_url: str,
    rdb: Any,
    logs: list[dict[str, Any]],
) -> None:
    held, free = await produce(rdb, [(42, [1, 2]), (42, [3, 4])])
    await rdb.xgroup_create(STREAM, GROUP, id="0")
    await rdb.xreadgroup(GROUP, "ghost", {STREAM: ">"}, count=1)  # and then it died
    settings = make_settings(
        redis_url=redis_url,
        stream=STREAM,
        consumer="c1",
        until_empty=True,
        claim_idle=2.0,
        max_retry_time=0.5,
        timeout=1.0,
    )
    began = time.monotonic()

    result = await asyncio.wait_for(run_consumer(settings), timeout=20)

    assert result.exit_code == 0
    assert time.monotonic() - began >= 1.5  # it did wait for the takeover
    assert not any(sandbox.state.campaigns[42].alive(i) for i in (1, 2, 3, 4))
    assert await pending_count(rdb) == 0
    waiting = [e for e in logs if e["event"].startswith("waiting for entries pending at other")]
    assert len(waiting) == 1, waiting  # said once: the entries did not change
    (said,) = waiting
    assert said["event"].endswith("they are taken over once idle 2 s")
    assert said["log_level"] == "info"
    assert said["pending"] == 1
    (entry,) = said["entries"]
    assert (entry["entry_id"], entry["consumer"]) == (held, "ghost")
    assert 0 <= entry["idle_ms"] < 2000
    assert entry["takeover_in_s"] == said["first_takeover_in_s"]
    assert 0 < said["first_takeover_in_s"] <= 2.0
    assert datetime.fromisoformat(said["first_takeover_at"]).tzinfo is not None
    assert free != held


# -- refused credentials -------------------------------------------------------------------------

PASSWORD = "s3cret-pass"


@pytest.fixture
def locked_redis(tmp_path: Path) -> Iterator[int]:
    """A redis-server of its own that wants a password; its port."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = closed_port()
    options = {"port": str(port), "bind": "127.0.0.1", "save": "", "appendonly": "no"}
    options |= {"requirepass": PASSWORD, "dir": str(tmp_path)}
    proc = subprocess.Popen(
        [binary, *(part for name, value in options.items() for part in (f"--{name}", value))],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while subprocess.run(
            ["redis-cli", "-p", str(port), "ping"], capture_output=True, check=False
        ).returncode:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.02)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.parametrize(
    ("auth", "says"),
    [
        (":wrong-pass@", "WRONGPASS|invalid username-password pair"),
        ("", "NOAUTH|Authentication required"),
    ],
    ids=["wrong-password", "no-password"],
)
async def test_refused_credentials_stop_a_consumer_at_once_saying_so(
    make_settings: MakeSettings, locked_redis: int, auth: str, says: str
) -> None:
    settings = make_settings(
        redis_url=f"redis://{auth}127.0.0.1:{locked_redis}/0",
        stream=STREAM,
        consumer="c1",
        until_empty=True,
        redis_backoff_initial=0.5,
        redis_backoff_max=5.0,
    )
    began = time.monotonic()

    with pytest.raises(ServiceUnavailable) as refused:
        await run_consumer(settings)

    assert time.monotonic() - began < 1.0  # not retried
    message = str(refused.value)
    assert message.startswith(
        f"Redis authentication failed at redis://{auth.replace('wrong-pass', '***')}"
        f"127.0.0.1:{locked_redis}/0: "
    )
    assert "cannot reach" not in message
    assert "wrong-pass" not in message
    assert any(word in message for word in says.split("|"))


@pytest.mark.slow
@pytest.mark.parametrize("command", ["consume", "enqueue", "status", "redrive"])
async def test_every_queue_command_exits_69_with_one_line_when_redis_refuses_the_password(
    locked_redis: int, tmp_path: Path, command: str
) -> None:
    (tmp_path / "ids.csv").write_text("1\n2\n", encoding="utf-8")
    url = f"redis://:wrong-pass@127.0.0.1:{locked_redis}/0"
    own = {
        "consume": ["--base-url", f"http://127.0.0.1:{closed_port()}/api/v1/global"],
        "enqueue": ["--input", "ids.csv", "--campaign-id", "42"],
        "status": [],
        "redrive": [],
    }[command]
    began = time.monotonic()

    done = await finish(
        await start(command, "--redis", url, "--stream", STREAM, *own, cwd=tmp_path, token="t")
    )

    assert done.code == 69, done.err
    assert time.monotonic() - began < 5  # one attempt, not six with backoff
    lines = [line for line in done.err.splitlines() if not line.startswith("{")]
    assert len(lines) == 1, done.err
    assert lines[0].startswith(
        f"audience-purge: error: Redis authentication failed at redis://:***@127.0.0.1:"
        f"{locked_redis}/0: "
    )
    assert "wrong-pass" not in done.err + done.out


async def test_a_user_without_the_permission_is_refused_at_once_not_unreachable(
    make_settings: MakeSettings, locked_redis: int
) -> None:
    admin = aioredis.Redis(port=locked_redis, password=PASSWORD)
    try:
        await admin.acl_setuser("reader", enabled=True, passwords=["+pw"], commands=["+auth"])
    finally:
        await admin.aclose()
    settings = make_settings(
        redis_url=f"redis://reader:pw@127.0.0.1:{locked_redis}/0",
        stream=STREAM,
        consumer="c1",
        redis_backoff_initial=0.5,
    )
    began = time.monotonic()

    with pytest.raises(ServiceUnavailable) as refused:
        await run_consumer(settings)

    assert time.monotonic() - began < 1.0
    assert str(refused.value).startswith(
        f"Redis at redis://reader:***@127.0.0.1:{locked_redis}/0 refused: Redis PING failed: "
        "NoPermissionError"
    )
