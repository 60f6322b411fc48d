"""The sandbox's listing faults, over HTTP: each lies exactly the way its name says, only to
audience-list, only as often as asked; records added by churn are records like any other."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from sandbox_http import DRAFT, TOKEN, config, control_state, delete, listing, post, stats

from worker.sandbox import FaultConfig, running_sandbox


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers={"token": TOKEN}) as client:
        yield client


def ids(body: dict[str, Any]) -> list[int]:
    return [record["id"] for record in body["datalist"]]


async def test_churn_removes_the_first_record_and_adds_one_before_page_2(
    session: aiohttp.ClientSession,
) -> None:
    async with running_sandbox(config(listing_fault="churn", listing_fault_times=1)) as sb:
        first = await listing(session, sb, DRAFT.id)
        second = await listing(session, sb, DRAFT.id, page=2)
        third = await listing(session, sb, DRAFT.id, page=2)

        assert ids(first) == list(range(1, 11))
        assert ids(second) == list(range(12, 22))  # 11 moved onto page 1: never listed
        assert second["pagination"]["totalRecords"] == 100  # 1 went, 101 came
        assert ids(third) == ids(second)  # served once only
        last = await listing(session, sb, DRAFT.id, page=10)
        assert ids(last)[-1] == 101
        assert (await stats(session, sb, DRAFT.id))["total_audience"] == 100
        assert (await control_state(session, sb))["listing_faults_served"] == 1
        # An added record is deleted like any other.
        assert (await delete(session, sb, DRAFT.id, [101]))[0] == 200
        assert not sb.state.campaigns[DRAFT.id].alive(101)


async def test_churn_adds_a_record_the_filters_match(session: aiohttp.ClientSession) -> None:
    async with running_sandbox(config(listing_fault="churn", listing_fault_times=1)) as sb:
        params = [("status", "1")]
        before = await listing(session, sb, DRAFT.id, params, limit=100)
        await listing(session, sb, DRAFT.id, params, page=2)
        after = await listing(session, sb, DRAFT.id, params, limit=100)

        assert after["pagination"]["totalRecords"] == before["pagination"]["totalRecords"]
        assert ids(after) == [*ids(before)[1:], ids(after)[-1]]
        assert ids(after)[-1] > DRAFT.last
        assert {r["status"] for r in after["datalist"]} == {"Completed"}


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (
            "error-200",
            {
                "message": "Something went wrong, try later",
                "datalist": [],
                "totals": (0, 0),
            },
        ),
        ("bool-totals", {"datalist": [], "totals": (False, False)}),
        ("endless", {"totals": (100, 10**9)}),
    ],
)
async def test_answers_that_are_not_a_listing(
    session: aiohttp.ClientSession, mode: str, expected: dict[str, Any]
) -> None:
    async with running_sandbox(config(listing_fault=mode)) as sb:
        body = await listing(session, sb, DRAFT.id)
        assert (await stats(session, sb, DRAFT.id))["total_audience"] == 100

    pagination = body["pagination"]
    assert (pagination["totalRecords"], pagination["totalPages"]) == expected["totals"]
    for key in ("message", "datalist"):
        if key in expected:
            assert body[key] == expected[key]


async def test_endless_pages_past_the_end_repeat_page_1(session: aiohttp.ClientSession) -> None:
    async with running_sandbox(config(listing_fault="endless")) as sb:
        assert ids(await listing(session, sb, DRAFT.id, page=1000)) == list(range(1, 11))


async def test_oversized_pages_hold_one_record_more_than_asked(
    session: aiohttp.ClientSession,
) -> None:
    async with running_sandbox(config(listing_fault="oversized")) as sb:
        assert ids(await listing(session, sb, DRAFT.id, page=2)) == list(range(11, 22))


async def test_padded_pages_repeat_a_record_and_pad_with_a_foreign_one(
    session: aiohttp.ClientSession,
) -> None:
    async with running_sandbox(config(listing_fault="padded")) as sb:
        pages = [ids(await listing(session, sb, DRAFT.id, page=n, limit=30)) for n in (1, 2, 4)]

    assert pages[1] == [30, *range(32, 61)]  # 31 left out, 30 again
    assert pages[2] == [91, 92, 93, 94, 95, 96, 97, 98, 99, 100, 1_000_000_100]
    distinct = set(pages[0]) | set(pages[1]) | set(range(61, 91)) | set(pages[2])
    assert len(distinct) == 100  # as many distinct ids as the listing reports


async def test_listing_faults_are_set_and_checked_through_the_control_route(
    session: aiohttp.ClientSession,
) -> None:
    async with running_sandbox(config()) as sb:
        base = sb.url.removesuffix("/api/v1/global")
        status, body = await post(session, f"{base}/_sandbox/faults", {"listing_fault": "nope"})
        assert status == 400
        assert "listing_fault must be one of churn, error-200" in body["message"]
        status, body = await post(
            session, f"{base}/_sandbox/faults", {"listing_fault": "churn", "listing_fault_times": 2}
        )
        assert status == 200
        assert (body["listing_fault"], body["listing_fault_times"]) == ("churn", 2)
        assert sb.state.listing_faults_left == 2

    with pytest.raises(ValueError, match="listing_fault_times must be >= 1"):
        FaultConfig(listing_fault="churn", listing_fault_times=0)
