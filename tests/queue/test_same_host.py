"""Two consumers on one host with the same flags both run: the metrics port they both default
to is a warning for the one that finds it busy, and their default names differ; idle clients
of the metrics endpoints do not disturb a run."""

from __future__ import annotations

import asyncio
import resource
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import read_audit
from processes import child_env, eventually, finish
from queue_helpers import STREAM, audit_has, consume_args, of, pending_count, produce, tens

from worker.sandbox.runner import SandboxHandle
from worker.settings.catalogue import DEFAULT_METRICS_PORT


@pytest.fixture
def default_port_busy() -> Iterator[None]:
    """Something else listens on consume's default metrics port (if nothing did already)."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", DEFAULT_METRICS_PORT))
            sock.listen()
        except OSError:
            pass  # busy already: what the test needs
        yield


async def start_default(
    sandbox: SandboxHandle, redis_url: str, audit: Path, cwd: Path, token: str
) -> Any:
    """``consume`` with no --consumer and no --metrics-port (nor its environment variable)."""
    env = child_env(token)
    del env["AUDIENCE_PURGE_METRICS_PORT"]
    return await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "worker", "consume", "--redis", redis_url, "--stream", STREAM),
        *("--base-url", sandbox.url, "--rate", "100/second", "--batch-size", "10"),
        *("--until-empty", "--audit-log", str(audit), "--log-format", "json"),
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_two_consumers_on_one_host_with_the_same_flags_both_run(
    sandbox: SandboxHandle,
    token: str,
    redis_url: str,
    rdb: Any,
    tmp_path: Path,
    default_port_busy: None,
) -> None:
    await produce(rdb, tens(1, 600))
    audits = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    procs = [await start_default(sandbox, redis_url, a, tmp_path, token) for a in audits]
    done = await asyncio.gather(*(finish(p) for p in procs))

    for result in done:
        assert result.code == 0, result.err
        assert "default metrics port busy" in result.err
    started = [read_audit(a)[0] for a in audits]
    assert started[0]["consumer"] != started[1]["consumer"]
    sent = [i for a in audits for r in of(read_audit(a), "sending") for i in r["audience_ids"]]
    assert sorted(sent) == list(range(1, 601))  # every id once, between them
    assert await pending_count(rdb) == 0


def few_descriptors() -> None:
    """In the child: 128 file descriptors at most, so that a flood of idle clients would
    exhaust them if the metrics server took them all."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))


async def test_idle_clients_of_the_metrics_endpoints_leave_the_run_unaffected(
    sandbox: SandboxHandle, token: str, redis_url: str, rdb: Any, tmp_path: Path
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    await produce(rdb, tens(1, 1000))
    audit = tmp_path / "c1.jsonl"
    args = consume_args(sandbox, redis_url, audit, "c1", "--until-empty", "--rate", "25/second")
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "worker", *args, "--metrics-port", str(port)),
        cwd=tmp_path,
        env=child_env(token),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=few_descriptors,
    )
    opened: list[asyncio.StreamWriter] = []
    try:
        await eventually(audit_has(audit, "acknowledged"), what="the consumer at work")
        # Idle clients: they connect and never send a byte. A server that kept them all would
        # run out of descriptors and stop accepting (a connect then hangs): bounded, so that
        # is a failure in seconds, not the suite's timeout.
        async with asyncio.timeout(20):
            for _ in range(300):
                opened.append((await asyncio.open_connection("127.0.0.1", port))[1])
        done = await finish(proc, timeout=60)
    finally:
        for writer in opened:
            writer.close()

    assert done.code == 0, done.err
    assert sandbox.state.receipts[42].received_ids() == list(range(1, 1001))
    assert await pending_count(rdb) == 0
