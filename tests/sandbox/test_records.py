"""The sandbox's audience records: deterministic from the seed, plausible, and as documented."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from sandbox_http import TOKEN, every_page, listing

from worker.sandbox import CampaignSpec, FaultConfig, SandboxConfig, model, running_sandbox
from worker.sandbox.records import (
    AUDIENCE_STATUSES,
    CALL_STATUSES,
    FULL_FIELDS,
    LAST_ATTEMPT_EARLIEST,
    LAST_ATTEMPT_SPAN,
    PERIOD,
    REFERENCE_INSTANT,
    SIMPLE_FIELDS,
    TIME_FORMAT,
    class_table,
)

CAMPAIGN = CampaignSpec(id=42, status="inprogress", first=1001, last=3000)
IDS = range(CAMPAIGN.first, CAMPAIGN.last + 1)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers={"token": TOKEN}) as client:
        yield client


def record(campaign_id: int, audience_id: int, *, seed: int = 0) -> dict[str, Any]:
    """A record, typed loosely for the assertions."""
    return model.record(campaign_id, audience_id, seed=seed)


def when(stamp: str) -> datetime:
    return datetime.strptime(stamp, TIME_FORMAT).replace(tzinfo=UTC)


def test_the_same_seed_gives_the_same_records() -> None:
    assert [record(42, i, seed=5) for i in IDS] == [record(42, i, seed=5) for i in IDS]


def test_a_seed_gives_the_same_records_in_every_process_and_version() -> None:
    """Pinned: a rehearsal re-run with the same --seed meets the same records."""
    assert [record(42, i, seed=5) for i in (1002, 1003, 1004)] == [
        {
            "id": 1002,
            "mobile_no": "+17135551612",
            "status": "Completed",
            "call_status": "answered",
            "first_status": "no-answer",
            "last_status": "answered",
            "attempt": 3,
            "duration": 163,
            "last_attempt": "2026-06-25 22:14:55",
        },
        {
            "id": 1003,
            "mobile_no": "+13125559319",
            "status": "Halted",
            "call_status": "voicemail",
            "first_status": "no-answer",
            "last_status": "voicemail",
            "attempt": 5,
            "duration": 15,
            "last_attempt": "2025-05-01 19:59:28",
        },
        {
            "id": 1004,
            "mobile_no": "+17025551145",
            "status": "Inqueue",
            "call_status": "answered",
            "first_status": "answered",
            "last_status": "failed",
            "attempt": 3,
            "duration": 420,
            "last_attempt": "2026-01-08 02:56:49",
        },
    ]


def test_seeds_with_the_same_statuses_still_differ_in_their_calls() -> None:
    ours = [record(42, i, seed=1) for i in IDS]
    theirs = [record(42, i, seed=5) for i in IDS]  # 5 = 1 + 4: every status the same

    assert [r["status"] for r in ours] == [r["status"] for r in theirs]
    calls = ("call_status", "first_status", "last_status", "attempt", "duration")
    differ = [
        [a[k] for k in calls] != [b[k] for k in calls] for a, b in zip(ours, theirs, strict=True)
    ]
    assert sum(differ) > 100


@pytest.mark.parametrize("field", ["mobile_no", "status", "call_status", "last_attempt"])
def test_another_seed_gives_other_records(field: str) -> None:
    ours = [record(42, i, seed=5)[field] for i in IDS]
    theirs = [record(42, i, seed=6)[field] for i in IDS]

    changed = sum(a != b for a, b in zip(ours, theirs, strict=True))
    assert changed > len(IDS) // 4


async def test_the_sandbox_serves_the_records_of_its_seed(
    session: aiohttp.ClientSession,
) -> None:
    config = SandboxConfig(campaigns=(CAMPAIGN,), token=TOKEN, seed=9)
    async with running_sandbox(config) as sb:
        rows = await every_page(session, sb, 42, limit=500)

    assert rows == [record(42, i, seed=9) for i in IDS]


async def test_without_a_records_seed_the_fault_seed_is_used(
    session: aiohttp.ClientSession,
) -> None:
    config = SandboxConfig(campaigns=(CAMPAIGN,), token=TOKEN, faults=FaultConfig(seed=3))
    async with running_sandbox(config) as sb:
        body = await listing(session, sb, 42, limit=50)

    assert config.records_seed == 3
    assert body["datalist"] == [record(42, i, seed=3) for i in range(1001, 1051)]


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_never_attempted_records_have_no_call_data(seed: int) -> None:
    rows = [record(42, i, seed=seed) for i in IDS]
    never = [r for r in rows if r["attempt"] == 0]

    assert all(r["status"] in ("Fresh", "Inqueue") for r in never)
    assert {r["status"] for r in never} == {"Fresh", "Inqueue"}  # some Inqueue are not dialled
    assert all(r["attempt"] == 0 for r in rows if r["status"] == "Fresh")
    for r in never:
        assert (r["call_status"], r["first_status"], r["last_status"]) == (None, None, None)
        assert (r["last_attempt"], r["duration"]) == (None, 0)
    assert any(r["attempt"] > 0 for r in rows if r["status"] == "Inqueue")


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_attempted_records_carry_plausible_call_statuses(seed: int) -> None:
    rows = [r for r in (record(42, i, seed=seed) for i in IDS) if r["attempt"] > 0]

    for r in rows:
        calls = {r["call_status"], r["first_status"], r["last_status"]}
        assert calls <= set(CALL_STATUSES), r
        assert isinstance(r["last_attempt"], str)
        if r["call_status"] != "answered":  # no call got through: the last call's status
            assert r["call_status"] == r["last_status"]
            assert "answered" not in calls
    assert all(r["last_status"] == "answered" for r in rows if r["status"] == "Completed")
    assert {r["call_status"] for r in rows} == set(CALL_STATUSES)


def test_each_record_has_at_most_one_answered_call() -> None:
    """Why successful_calls can be checked from records: one per call_status 'answered'."""
    for seed in range(5):
        for fig in class_table(seed, 42):
            assert fig.answered == (1 if fig.call_status == "answered" else 0)


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_last_attempt_lies_within_the_documented_range(seed: int) -> None:
    times = [
        when(r["last_attempt"])
        for r in (record(42, i, seed=seed) for i in range(1, 20_001))
        if r["last_attempt"]
    ]

    assert LAST_ATTEMPT_EARLIEST == REFERENCE_INSTANT - LAST_ATTEMPT_SPAN
    assert all(LAST_ATTEMPT_EARLIEST <= t < REFERENCE_INSTANT for t in times)
    assert max(times) - min(times) > LAST_ATTEMPT_SPAN * 0.95  # spread over the whole range


def test_statuses_are_a_quarter_each_and_repeat_with_the_period() -> None:
    statuses = [record(42, i, seed=3)["status"] for i in range(1, 4 * PERIOD + 1)]

    assert {s: statuses.count(s) for s in AUDIENCE_STATUSES} == dict.fromkeys(
        AUDIENCE_STATUSES, PERIOD
    )
    shown = ("status", "call_status", "first_status", "last_status", "attempt", "duration")
    for i in range(1, PERIOD + 1):
        a, b = record(42, i, seed=3), record(42, i + 7 * PERIOD, seed=3)
        assert [a[k] for k in shown] == [b[k] for k in shown]


def test_mobile_numbers_are_fictional_e164() -> None:
    numbers = [str(record(42, i)["mobile_no"]) for i in IDS]

    assert all(n.startswith("+1") and n[5:8] == "555" and n[1:].isdigit() for n in numbers)
    assert all(len(n) == len("+12025550123") for n in numbers)
    assert len(set(numbers)) > len(numbers) * 0.8


async def test_a_listing_carries_the_full_fields_and_vendor_style_headers(
    session: aiohttp.ClientSession,
) -> None:
    async with running_sandbox(SandboxConfig(campaigns=(CAMPAIGN,), token=TOKEN)) as sb:
        body = await listing(session, sb, 42, limit=5)

    assert [list(r) for r in body["datalist"]] == [list(FULL_FIELDS)] * 5
    assert [h["key"] for h in body["headers"]] == list(FULL_FIELDS[1:])
    assert all(set(h) == {"key", "label"} for h in body["headers"])


@pytest.mark.parametrize("value", ["true", "1", "TRUE"])
async def test_is_new_answers_simplified_records(
    session: aiohttp.ClientSession, value: str
) -> None:
    async with running_sandbox(SandboxConfig(campaigns=(CAMPAIGN,), token=TOKEN)) as sb:
        body = await listing(session, sb, 42, [("is_new", value)], limit=20)

    expected = [{k: record(42, i)[k] for k in SIMPLE_FIELDS} for i in range(1001, 1021)]
    assert body["datalist"] == expected
    assert [h["key"] for h in body["headers"]] == list(SIMPLE_FIELDS[1:])
