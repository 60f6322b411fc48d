"""Reads under the sandbox's faults: 5xx, dropped connections and the per-key rate limit meet
audience-list and campaign-audience-stats as they meet deletes, and ``select`` and
``run --verify`` retry through them to the answer a fault-free API gives."""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import structlog
from conftest import DRAFT, LIVE, read_audit, write_csv

from worker.commands.parsers import build_parser
from worker.commands.run import run_purge
from worker.commands.select import select
from worker.input.selecting import Rule, rule_from
from worker.sandbox import FaultConfig, SandboxConfig, running_sandbox
from worker.sandbox.faults import FaultInjector
from worker.sandbox.runner import SandboxHandle
from worker.settings import Settings
from worker.settings.rate import RateSpec

MakeSettings = Callable[..., Settings]
NOW = datetime(2026, 11, 30, tzinfo=UTC)
SERVER_ERRORS = (500, 502, 503)
IDS = range(1, 301)

# Seed 7 fails the first request, whatever its route: the stats a run --verify reads before
# its first delete, the first page of a selection.
ERRORS = FaultConfig(seed=7, error_ratio=0.3)
DROPS = FaultConfig(seed=7, drop_ratio=0.1)
# 10 requests in any second against a client sending 50 a second: 429s, whatever the route.
LIMITED = FaultConfig(limit_per_second=10)
CLIENT_RATE = RateSpec(50, 1.0)


def patient(make_settings: MakeSettings, **overrides: Any) -> Settings:
    """Settings that outlast the faults: many attempts, short backoff, the client's rate
    above the sandbox's limit."""
    fields: dict[str, Any] = {
        "max_attempts": 20,
        "max_retry_time": 60.0,
        "backoff_initial": 0.01,
        "backoff_max": 0.05,
        "rate": CLIENT_RATE,
    }
    return make_settings(**(fields | overrides))


@pytest.fixture
def retries() -> Iterator[list[dict[str, Any]]]:
    """The log events of the run, at warning and above whatever an earlier test configured."""
    before = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    try:
        with structlog.testing.capture_logs() as captured:
            yield captured
    finally:
        structlog.configure(**before)


def retried(logs: list[dict[str, Any]], endpoint: str) -> list[str]:
    """Why reads of ``endpoint`` were retried, in order."""
    return [e["reason"] for e in logs if e["event"] == "retrying" and e.get("endpoint") == endpoint]


def completed_or_halted() -> Rule:
    args = build_parser().parse_args(
        ["select", "--campaign-id", str(LIVE.id), "--status", "completed", "--status", "halted"]
    )
    return rule_from(args, LIVE.id, NOW)


def selected_ids(path: Path) -> list[int]:
    with path.open(newline="") as handle:
        return [int(row["audience_id"]) for row in csv.DictReader(handle)]


async def fault_free_selection(
    faults: FaultConfig, token: str, make_settings: MakeSettings, out: Path
) -> bytes:
    """The selection a sandbox without faults, serving the same records, gives."""
    config = SandboxConfig(campaigns=(DRAFT, LIVE), token=token, seed=faults.seed)
    async with running_sandbox(config) as reference:
        await select(
            make_settings(base_url=reference.url, page_size=100), completed_or_halted(), str(out)
        )
    return out.read_bytes()


def test_seed_7_fails_the_first_request() -> None:
    assert FaultInjector(ERRORS).decide().server_error in SERVER_ERRORS


@pytest.mark.parametrize("faults", [ERRORS, DROPS, LIMITED], ids=["5xx", "drops", "429"])
async def test_select_lists_through_faults_exactly_what_a_fault_free_api_gives(
    sandbox: SandboxHandle,
    token: str,
    faults: FaultConfig,
    make_settings: MakeSettings,
    retries: list[dict[str, Any]],
    tmp_path: Path,
) -> None:
    expected = await fault_free_selection(faults, token, make_settings, tmp_path / "clean.csv")
    out = tmp_path / "selection.csv"

    result = await select(patient(make_settings, page_size=100), completed_or_halted(), str(out))

    assert out.read_bytes() == expected
    ids = selected_ids(out)
    assert len(ids) == len(set(ids)) == result.selected > 2000
    assert result.passes == 2
    state = sandbox.state
    # Each pass: a stats read and its pages, each answered once.
    assert state.by_status[200] == result.pages + result.passes
    reasons = retried(retries, "audience-list")
    if faults is ERRORS:
        stats = retried(retries, "campaign-audience-stats")  # the stats each pass checks
        assert sum(state.by_status[s] for s in SERVER_ERRORS) == len(reasons) + len(stats)
        assert reasons
    elif faults is DROPS:
        assert state.dropped > 0
        assert reasons
    else:
        assert state.by_status[429] == len(reasons) > 0
        assert set(reasons) == {"rate limited (HTTP 429)"}


@pytest.mark.parametrize("faults", [ERRORS, LIMITED], ids=["5xx", "429"])
async def test_run_verify_reads_back_through_faults_and_proves_every_id_gone(
    sandbox: SandboxHandle,
    faults: FaultConfig,
    make_settings: MakeSettings,
    retries: list[dict[str, Any]],
    tmp_path: Path,
) -> None:
    source = write_csv(tmp_path / "ids.csv", ["audience_id", *map(str, IDS)])
    settings = patient(
        make_settings, campaign_id=LIVE.id, verify=True, batch_size=50, page_size=250
    )

    result = await run_purge(settings, str(source))

    assert result.exit_code == 0, result.summary()
    assert result.tally.verified == len(IDS)
    assert result.tally.still_present == 0
    assert not any(sandbox.state.campaigns[LIVE.id].alive(i) for i in IDS)
    records = read_audit(settings.audit_log)
    verified = [r for r in records if r["event"] == "verified"]
    assert [(v["checked"], v["still_present"]) for v in verified] == [(len(IDS), [])]
    left = LIVE.last - LIVE.first + 1 - len(IDS)
    assert verified[0]["listed"] == left
    finished = records[-1]
    assert (finished["total_audience_before"], finished["total_audience_after"]) == (5000, left)
    state = sandbox.state
    listing = retried(retries, "audience-list")
    assert listing, "the read-back was never refused, so never retried"
    if faults is ERRORS:
        assert retried(retries, "campaign-audience-stats")  # the first request failed
        assert sum(state.by_status[s] for s in SERVER_ERRORS) >= len(listing)
    else:
        assert set(listing) == {"rate limited (HTTP 429)"}
        assert state.by_status[429] >= len(listing)
