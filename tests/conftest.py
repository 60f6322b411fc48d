"""Shared fixtures: a real sandbox on loopback and settings pointed at it."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from worker.credentials import Secret
from worker.ratelimit import RateSpec
from worker.sandbox import CampaignSpec, FaultConfig, SandboxConfig, running_sandbox
from worker.sandbox.runner import SandboxHandle
from worker.settings import Settings

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
            "max_retry_time": 10.0,
            "timeout": 5.0,
            "audit_log": tmp_path / "audit.jsonl",
            "report": tmp_path / "report.json",
            "failed_out": tmp_path / "failed.csv",
            "progress": "off",
            "state_dir": tmp_path / "state",
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
