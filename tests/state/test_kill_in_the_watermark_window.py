"""kill -9 inside the window where a late watermark would lose an id (issue #25): a batch is
held at the API (a loopback proxy answers the ones before it and keeps it waiting), a
checkpoint is written while it is in flight, and the run is SIGKILLed. The watermark must be
that batch's first row: the rerun then sends the whole batch again. A watermark one row
late (a batch that says it starts at its second row) would let the rerun skip the first
id, which was never deleted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
from aiohttp import web
from conftest import read_audit
from processes import eventually, finish, start
from proxies import api_in_front_of

from worker.sandbox.runner import SandboxHandle
from worker.state.checkpoint import STATE_FILE

IDS = range(1, 10_001)
BATCH = 500
ANSWERED = 10  # requests answered before the one held: ids 1-5000 deleted, 5001-5500 held
HELD = list(range(ANSWERED * BATCH + 1, (ANSWERED + 1) * BATCH + 1))
# Rows of ids are read a whole block at a time (the fast path) after the first 64 KiB block,
# which a header and rejected rows fill: the held batch is one of a block read at once.
PADDING = [b"audience_id\n", *[b"0" * 49 + b"\n"] * 1299]  # 64,962 bytes: 1,299 rejected


@dataclass
class Gate:
    """Answers ``allowed`` deletes, then holds each later one until the test ends (the
    held request is then refused: the process that sent it is gone)."""

    allowed: int
    held: int = 0
    url: str = ""
    never: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, endpoint: str, request: web.Request) -> web.Response | None:
        if endpoint == "delete-audience":
            if self.allowed == 0:
                self.held += 1
                await self.never.wait()
                return web.json_response({"message": "held"}, status=503)
            self.allowed -= 1
        return None


@pytest.fixture
async def gate(sandbox: SandboxHandle) -> AsyncIterator[Gate]:
    held = Gate(ANSWERED)
    async with api_in_front_of(sandbox, held) as held.url:
        try:
            yield held
        finally:
            held.never.set()


def purge(base_url: str, audit: str) -> list[str]:
    return [
        *("run", "--input", "ids.csv", "--campaign-id", "42", "--base-url", base_url),
        *("--rate", "1000/second", "--batch-size", str(BATCH), "--concurrency", "1"),
        *("--config", "fast.toml", "--state-dir", "state", "--audit-log", audit),
        *("--report", "report.json", "--failed-out", "failed.csv"),
    ]


async def test_a_kill_while_a_batch_is_in_flight_loses_none_of_its_ids(
    sandbox: SandboxHandle, token: str, tmp_path: Path, gate: Gate
) -> None:
    rows = [*PADDING, *(f"{i}\n".encode() for i in IDS)]
    (tmp_path / "ids.csv").write_bytes(b"".join(rows))
    (tmp_path / "fast.toml").write_text("checkpoint_interval = 0.05\n")
    # the byte offset of the held batch's first row
    first_held = len(b"".join(rows[: len(PADDING) + HELD[0] - 1]))
    state = tmp_path / "state" / STATE_FILE

    def checkpointed_in_flight() -> bool:
        """A checkpoint written since every batch before the held one settled."""
        if gate.held != 1 or not state.exists():
            return False
        return int(orjson.loads(state.read_bytes())["input"]["watermark"]) >= first_held

    proc = await start(*purge(gate.url, "a-1.jsonl"), cwd=tmp_path, token=token)
    try:
        await eventually(checkpointed_in_flight, what="a checkpoint with the batch in flight")
    finally:
        proc.kill()
        await proc.wait()
    assert all(sandbox.state.campaigns[42].alive(i) for i in HELD)  # held: not deleted
    gate.allowed = len(IDS)  # the rerun's requests all go through; the held one stays held

    done = await finish(await start(*purge(gate.url, "a-2.jsonl"), cwd=tmp_path, token=token))

    assert done.code == 0, done.err
    assert [i for i in IDS if sandbox.state.campaigns[42].alive(i)] == []
    resent = {
        i
        for r in read_audit(tmp_path / "a-2.jsonl")
        if r["event"] == "deleted"
        for i in r["audience_ids"]
    }
    assert set(HELD) <= resent
