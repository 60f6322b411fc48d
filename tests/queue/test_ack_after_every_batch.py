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

import pytest
from aiohttp import web
from conftest import read_audit
from processes import eventually, finish, start
from proxies import api_in_front_of
from queue_helpers import audit_has, consume_args, of, pending_count, pending_of, produce

from worker.sandbox.runner import SandboxHandle

IDS = list(range(1, 31))  # one entry: three batches of 10


@dataclass
class Gate:
    """Lets ``allowed`` delete requests through, holds the others until ``opened``, and
    counts them in ``held``."""

    url: str = ""
    allowed: int = 1
    held: int = 0
    opened: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, endpoint: str, request: web.Request) -> web.Response | None:
        if endpoint == "delete-audience":
            if self.allowed > 0:
                self.allowed -= 1
            else:
                self.held += 1
                await self.opened.wait()
        return None


@pytest.fixture
async def gate(sandbox: SandboxHandle) -> AsyncIterator[Gate]:
    held = Gate()
    async with api_in_front_of(sandbox, held) as held.url:
        try:
            yield held
        finally:
            held.opened.set()


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
