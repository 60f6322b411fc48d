"""Helpers of the queue tests (tests/queue, tests/sending/test_shared_rate.py): worker
processes started like a user would, and the stream as any producer writes it."""

from __future__ import annotations

import asyncio
import inspect
import os
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.sandbox.runner import SandboxHandle

STREAM = "purge"
DEAD = "purge:dead"
GROUP = "audience-purge"


@dataclass(frozen=True)
class Completed:
    code: int
    out: str
    err: str


def closed_port() -> int:
    """A loopback port nothing listens on (bound once, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_env(token: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UNLEASHX_", "AUDIENCE_"))}
    env.pop("JOB_COMPLETION_INDEX", None)
    if token is not None:
        env["UNLEASHX_TOKEN"] = token
    return env


async def start(*args: str, cwd: Path, token: str | None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        *args,
        cwd=cwd,
        env=child_env(token),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finish(proc: asyncio.subprocess.Process, timeout: float = 30.0) -> Completed:
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Completed(proc.returncode, out.decode(), err.decode())


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]], timeout: float = 10.0, what: str = ""
) -> None:
    """Poll ``condition`` (sync or async) until it holds; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        assert loop.time() < deadline, f"not met within {timeout} s: {what}"
        await asyncio.sleep(0.02)


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
