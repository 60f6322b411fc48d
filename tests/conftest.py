"""Shared fixtures: a real sandbox on loopback and settings pointed at it."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from worker.sandbox import CampaignSpec, FaultConfig, SandboxConfig, running_sandbox
from worker.sandbox.runner import SandboxHandle
from worker.sending.credentials import Secret
from worker.settings import Settings
from worker.settings.rate import RateSpec

DRAFT = CampaignSpec(42, "draft", 1, 10_000)
LIVE = CampaignSpec(77, "inprogress", 1, 5_000)


@pytest.fixture
def token() -> str:
    return "tok-" + secrets.token_hex(12)


@pytest.fixture
def faults() -> FaultConfig:
    """Override in a test module (or parametrize) to inject faults."""
    return FaultConfig()


@pytest.fixture
async def sandbox(token: str, faults: FaultConfig) -> AsyncIterator[SandboxHandle]:
    config = SandboxConfig(campaigns=(DRAFT, LIVE), token=token, faults=faults)
    async with running_sandbox(config) as handle:
        yield handle


@pytest.fixture
def make_settings(sandbox: SandboxHandle, token: str, tmp_path: Path) -> Callable[..., Settings]:
    """Fast settings against the sandbox; keyword arguments override any field."""

    def make(**overrides: Any) -> Settings:
        fields: dict[str, Any] = {
            "base_url": sandbox.url,
            "token": Secret(token),
            "rate": RateSpec(1000, 1.0),
            "batch_size": 10,
            "concurrency": 4,
            "backoff_initial": 0.01,
            "backoff_max": 0.05,
            "redis_backoff_initial": 0.01,
            "redis_backoff_max": 0.5,
            "max_retry_time": 10.0,
            "timeout": 5.0,
            "audit_log": tmp_path / "audit.jsonl",
            "report": tmp_path / "report.json",
            "failed_out": tmp_path / "failed.csv",
            "progress": "off",
            "state_dir": tmp_path / "state",
            "metrics_port": 0,
        }
        fields.update(overrides)
        return Settings(**fields)

    return make


def write_csv(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


CHAIN_KEYS = ("seq", "prev_hash", "hash", "previous", "head_hmac")


def read_audit(path: Path, *, chain: bool = False) -> list[dict[str, Any]]:
    """The audit records; without ``chain``, the chain fields are left out (tested apart)."""
    import orjson

    records = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    if chain:
        return records
    return [{k: v for k, v in r.items() if k not in CHAIN_KEYS} for r in records]


def duplicate_rows(records: list[dict[str, Any]]) -> list[tuple[int, int, int]]:
    """(line, campaign_id, audience_id) of every duplicate row the records hold, in order."""
    return [
        (line, r["campaign_id"], audience)
        for r in records
        if r["event"] == "duplicates"
        for line, audience in zip(r["lines"], r["audience_ids"], strict=True)
    ]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a free loopback port, without persistence; its URL.

    Missing redis-server skips queue tests on a developer's machine, but fails under CI
    (CI=true): there, the test command installs it, and its absence is a defect.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is not installed (scripts/test installs it)")
        pytest.skip("redis-server is not installed: run scripts/test, which installs it")
    port = _free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.02)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """The session's Redis, emptied before each test."""
    import redis

    client = redis.Redis.from_url(redis_server)
    client.flushall()
    client.close()
    return redis_server


Refusals = list[tuple[float, int]]


def record_refusals(sandbox: SandboxHandle, monkeypatch: pytest.MonkeyPatch) -> Refusals:
    """Every 429 the sandbox gives from now on, as (seconds since it started, Retry-After)."""
    state = sandbox.state
    refusals: Refusals = []
    admit = state.admit_delete

    def recording_admit() -> int | None:
        wait = admit()
        if wait is not None:
            refusals.append((state.clock() - state.started, wait))
        return wait

    monkeypatch.setattr(state, "admit_delete", recording_admit)
    return refusals


def assert_nothing_accepted_during_a_pause(refusals: Refusals, accepted: list[float]) -> None:
    """No request was accepted between a 429 and the end of its Retry-After."""
    assert refusals, "the sandbox never answered 429"
    for refused_at, wait in refusals:
        early = [t for t in accepted if refused_at < t < refused_at + wait]
        assert early == [], (refused_at, wait, accepted)


@pytest.fixture
async def rdb(redis_url: str) -> AsyncIterator[Any]:
    """A client of the test's redis-server, answering str."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()
