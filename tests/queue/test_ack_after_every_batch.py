"""An entry is acknowledged only once every one of its batches is settled (issue #25): an
entry of three batches, its consumer SIGKILLed right after the first batch is audited while
the second is held at the API, is delivered again to the restarted consumer, which deletes
every id of it and only then acknowledges it. The hold is a loopback proxy in front of the
sandbox that answers the first delete and keeps every later one waiting, so the kill always
falls between the first batch and the last."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from conftest import read_audit
from processes import eventually, finish, start
from queue_helpers import audit_has, consume_args, of, pending_count, pending_of, produce

from worker.sandbox.runner import SandboxHandle

IDS = list(range(1, 31))  # one entry: three batches of 10


@dataclass
class Gate:
    """A proxy to the sandbox that lets ``allowed`` delete requests through, holds the
    others until ``opened``, and counts them in ``held``."""

    url: str = ""
    allowed: int = 1
    held: int = 0
    opened: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture
async def gate(sandbox: SandboxHandle) -> AsyncIterator[Gate]:
    held = Gate()
    session = aiohttp.ClientSession()

    async def forward(request: web.Request) -> web.Response:
        if held.allowed > 0:
            held.allowed -= 1
        else:
            held.held += 1
            await held.opened.wait()
        async with session.post(
            f"{sandbox.url}/{request.match_info['endpoint']}",
            data=await request.read(),
            headers={"token": request.headers["token"], "Content-Type": "application/json"},
        ) as answer:
            body = await answer.read()
            return web.Response(body=body, status=answer.status, content_type="application/json")

    app = web.Application()
    app.router.add_post("/api/{endpoint}", forward)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    held.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/api"  # type: ignore[union-attr]
    try:
        yield held
    finally:
        held.opened.set()
        await runner.cleanup()
        await session.close()


def through(args: list[str], url: str) -> list[str]:
    """The consumer's arguments with the gate as its API."""
    at = args.index("--base-url")
    return [*args[: at + 1], url, *args[at + 2 :]]


async def test_an_entry_killed_after_its_first_batch_is_acknowledged_only_after_all(
    sandbox: SandboxHandle, token: str, redis_url: str, rdb: Any, tmp_path: Path, gate: Gate
) -> None:
    [entry] = await produce(rdb, [(42, IDS)])
    first = tmp_path / "a-1.jsonl"
    args = consume_args(sandbox, redis_url, first, "a", "--until-empty", "--concurrency", "1")
    proc = await start(*through(args, gate.url), cwd=tmp_path, token=token)
    try:
        await eventually(audit_has(first, "deleted"), what="the first batch audited")
        await eventually(lambda: gate.held == 1, what="the second batch held at the API")

        # A consumer that acknowledged now would do it within milliseconds of the audit
        # record: give it a second to show, so the kill cannot come before such an ack.
        async def acknowledged() -> bool:
            return await pending_count(rdb) == 0

        with contextlib.suppress(AssertionError):  # still pending, as it must be
            await eventually(acknowledged, timeout=1.0)
    finally:
        proc.kill()
        await proc.wait()

    assert await pending_of(rdb, "a") == [entry], "acknowledged before all its batches"
    assert not audit_has(first, "acknowledged")()
    gate.opened.set()
    second = tmp_path / "a-2.jsonl"
    done = await finish(
        await start(
            *consume_args(sandbox, redis_url, second, "a", "--until-empty"),
            cwd=tmp_path,
            token=token,
        )
    )

    assert done.code == 0, done.err
    assert not any(sandbox.state.campaigns[42].alive(i) for i in IDS)
    assert await pending_count(rdb) == 0
    records = read_audit(second)
    events = [r["event"] for r in records if r["event"] in ("deleted", "acknowledged")]
    assert events[-1] == "acknowledged"
    assert [r["entry_id"] for r in of(records, "acknowledged")] == [entry]
    redone = {i for r in of(records, "deleted") for i in r["audience_ids"]}
    assert set(IDS) <= redone | {
        i for r in of(read_audit(first), "deleted") for i in r["audience_ids"]
    }
