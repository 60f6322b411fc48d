"""The sandbox behaves like the documented UnleashX API, and its faults are real and repeatable."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from sandbox_http import TOKEN, FakeClock, config

from worker.sandbox import (
    CampaignSpec,
    SandboxConfig,
    parse_campaign_spec,
    running_sandbox,
)
from worker.sandbox.records import FULL_FIELDS, record
from worker.sandbox.runner import SandboxHandle

DELETED = {"message": "Audience deleted successfully"}
NOT_EXIST = {"message": "Campaign not exist"}
AUDIENCE_REQUIRED = {"message": "Audience array is required"}
DRAFT_ONLY = {"message": "All audience can only be deleted when the campaign is in draft status"}


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers={"token": TOKEN}) as client:
        yield client


@pytest.fixture
async def sandbox() -> AsyncIterator[SandboxHandle]:
    async with running_sandbox(config()) as handle:
        yield handle


async def post(
    session: aiohttp.ClientSession, url: str, body: object, **kwargs: Any
) -> tuple[int, Any]:
    async with session.post(url, json=body, **kwargs) as response:
        return response.status, await response.json()


async def get(session: aiohttp.ClientSession, url: str, **params: Any) -> tuple[int, Any]:
    async with session.get(url, params=params) as response:
        return response.status, await response.json()


async def delete(
    session: aiohttp.ClientSession, sb: SandboxHandle, body: object
) -> tuple[int, Any]:
    return await post(session, f"{sb.url}/delete-audience", body)


async def state(session: aiohttp.ClientSession, sb: SandboxHandle, **params: Any) -> Any:
    base = sb.url.removesuffix("/api/v1/global")
    return (await get(session, f"{base}/_sandbox/state", **params))[1]


async def list_ids(session: aiohttp.ClientSession, sb: SandboxHandle, **params: Any) -> list[int]:
    status, body = await get(session, f"{sb.url}/audience-list", **params)
    assert status == 200
    return [row["id"] for row in body["datalist"]]


async def test_delete_removes_only_ids_of_that_campaign(
    sandbox: SandboxHandle, session: aiohttp.ClientSession
) -> None:
    status, body = await delete(session, sandbox, {"campaign_id": 42, "audience": [1, 2, 1001]})

    assert (status, body) == (200, DELETED)
    assert not sandbox.state.campaigns[42].alive(1)
    assert not sandbox.state.campaigns[42].alive(2)
    assert sandbox.state.campaigns[42].deleted_count == 2
    assert sandbox.state.campaigns[7].alive(1001)


async def test_repeating_a_delete_succeeds_and_changes_nothing(
    sandbox: SandboxHandle, session: aiohttp.ClientSession
) -> None:
    first = await delete(session, sandbox, {"campaign_id": 42, "audience": [5, 6]})
    second = await delete(session, sandbox, {"campaign_id": 42, "audience": [5, 6]})

    assert first == second == (200, DELETED)
    assert sandbox.state.campaigns[42].deleted_count == 2


@pytest.mark.parametrize("error_status", [400, 200])
@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"campaign_id": 999, "audience": [1]}, NOT_EXIST),
        ({"audience": [1]}, NOT_EXIST),
        ({"campaign_id": 42}, AUDIENCE_REQUIRED),
        ({"campaign_id": 42, "audience": []}, AUDIENCE_REQUIRED),
        ({"campaign_id": 42, "delete_all": False}, AUDIENCE_REQUIRED),
        ({"campaign_id": 7, "delete_all": True}, DRAFT_ONLY),
    ],
    ids=["unknown", "missing-campaign", "missing", "empty", "delete-all-false", "not-draft"],
)
async def test_documented_errors_use_the_configured_status(
    session: aiohttp.ClientSession, error_status: int, body: object, expected: object
) -> None:
    async with running_sandbox(config(error_status=error_status)) as sb:
        assert await delete(session, sb, body) == (error_status, expected)
        assert sb.state.campaigns[7].deleted_count == 0


async def test_non_integer_audience_is_rejected_with_400(
    sandbox: SandboxHandle, session: aiohttp.ClientSession
) -> None:
    status, body = await delete(session, sandbox, {"campaign_id": 42, "audience": [1, "2", True]})

    assert (status, body) == (400, {"message": "Audience must be an array of integers"})
    assert sandbox.state.campaigns[42].deleted_count == 0


@pytest.mark.parametrize("payload", [b"{not json", b"[1, 2]"])
async def test_invalid_json_body_is_rejected_with_400(
    sandbox: SandboxHandle, session: aiohttp.ClientSession, payload: bytes
) -> None:
    async with session.post(f"{sandbox.url}/delete-audience", data=payload) as response:
        assert response.status == 400
        assert await response.json() == {"message": "Invalid JSON body"}


@pytest.mark.parametrize("headers", [{}, {"token": "wrong"}], ids=["missing", "wrong"])
async def test_requests_without_the_right_token_are_unauthorized(
    sandbox: SandboxHandle, headers: dict[str, str]
) -> None:
    async with aiohttp.ClientSession(headers=headers) as anonymous:
        status, body = await delete(anonymous, sandbox, {"campaign_id": 42, "audience": [1]})
        list_status, _ = await get(anonymous, f"{sandbox.url}/audience-list", campaign_id=42)

    assert (status, body) == (401, {"message": "Unauthorized"})
    assert list_status == 401
    assert sandbox.state.campaigns[42].deleted_count == 0


async def test_delete_all_on_a_draft_campaign_deletes_everything(
    sandbox: SandboxHandle, session: aiohttp.ClientSession
) -> None:
    status, body = await delete(session, sandbox, {"campaign_id": 42, "delete_all": True})

    assert (status, body) == (200, {"message": "All audience deleted successfully"})
    assert sandbox.state.campaigns[42].alive_count == 0


async def test_update_campaign_to_draft_allows_delete_all(
    sandbox: SandboxHandle, session: aiohttp.ClientSession
) -> None:
    update = await post(
        session, f"{sandbox.url}/update-campaign", {"campaign_id": 7, "campaign_status": "draft"}
    )
    result = await delete(session, sandbox, {"campaign_id": 7, "delete_all": True})

    assert update == (200, {"message": "Campaign updated successfully"})
    assert result == (200, {"message": "All audience deleted successfully"})


async def test_update_campaign_rejects_unknown_campaign_and_bad_status(
    sandbox: SandboxHandle, session: aiohttp.ClientSession
) -> None:
    url = f"{sandbox.url}/update-campaign"
    unknown = await post(session, url, {"campaign_id": 9, "campaign_status": "draft"})
    bad_status, _ = await post(session, url, {"campaign_id": 7, "campaign_status": "done"})

    assert unknown == (400, NOT_EXIST)
    assert bad_status == 400
    assert sandbox.state.campaigns[7].status == "inprogress"


async def test_batch_longer_than_max_batch_is_rejected_with_413(
    session: aiohttp.ClientSession,
) -> None:
    async with running_sandbox(config(max_batch=3)) as sb:
        too_big = await delete(session, sb, {"campaign_id": 42, "audience": [1, 2, 3, 4]})
        fits = await delete(session, sb, {"campaign_id": 42, "audience": [1, 2, 3]})

        assert too_big == (413, {"message": "Payload Too Large"})
        assert fits == (200, DELETED)
        assert (await state(session, sb))["max_audience_len"] == 4


async def test_over_the_per_second_limit_answers_429_with_retry_after(
    session: aiohttp.ClientSession,
) -> None:
    async with running_sandbox(config(limit_per_second=5), clock=FakeClock()) as sb:
        answers = []
        for audience_id in range(1, 9):
            async with session.post(
                f"{sb.url}/delete-audience", json={"campaign_id": 42, "audience": [audience_id]}
            ) as response:
                answers.append((response.status, response.headers.get("Retry-After")))
                if response.status == 429:
                    assert await response.json() == {"message": "Too Many Requests"}

    assert answers == [(200, None)] * 5 + [(429, "1")] * 3
    assert sb.state.campaigns[42].deleted_count == 5


async def test_requests_succeed_again_once_the_window_has_passed(
    session: aiohttp.ClientSession,
) -> None:
    clock = FakeClock()
    async with running_sandbox(config(limit_per_second=5), clock=clock) as sb:
        statuses = [(await delete(session, sb, {"campaign_id": 42, "audience": [1]}))[0]]
        statuses += [
            (await delete(session, sb, {"campaign_id": 42, "audience": [1]}))[0] for _ in range(6)
        ]
        clock.now += 1.0
        after, _ = await delete(session, sb, {"campaign_id": 42, "audience": [2]})

    assert statuses == [200] * 5 + [429] * 2
    assert after == 200


async def test_retry_after_counts_seconds_until_a_minute_slot_frees(
    session: aiohttp.ClientSession,
) -> None:
    clock = FakeClock()
    async with running_sandbox(config(limit_per_minute=2), clock=clock) as sb:
        url = f"{sb.url}/delete-audience"
        body = {"campaign_id": 42, "audience": [1]}
        await post(session, url, body)
        clock.now += 10
        await post(session, url, body)
        clock.now += 10
        async with session.post(url, json=body) as refused:
            retry_after = refused.headers["Retry-After"]
        clock.now += 40
        admitted, _ = await post(session, url, body)

    assert refused.status == 429
    assert retry_after == "40"
    assert admitted == 200


async def test_same_seed_gives_the_same_sequence_of_statuses(
    session: aiohttp.ClientSession,
) -> None:
    runs = []
    for _ in range(2):
        async with running_sandbox(config(seed=7, error_ratio=0.5)) as sb:
            runs.append(
                [
                    (await delete(session, sb, {"campaign_id": 42, "audience": [n]}))[0]
                    for n in range(1, 21)
                ]
            )

    assert runs[0] == runs[1]
    assert 200 in runs[0]
    assert set(runs[0]) - {200} <= {500, 502, 503}
    assert set(runs[0]) - {200}


async def test_injected_5xx_can_carry_retry_after_and_deletes_nothing(
    session: aiohttp.ClientSession,
) -> None:
    async with running_sandbox(config(error_ratio=1.0, retry_after_on_5xx=True)) as sb:
        async with session.post(
            f"{sb.url}/delete-audience", json={"campaign_id": 42, "audience": [1]}
        ) as response:
            assert response.status in {500, 502, 503}
            assert response.headers["Retry-After"] == "1"
        assert sb.state.campaigns[42].deleted_count == 0


async def test_dropped_connection_surfaces_as_a_client_error(
    session: aiohttp.ClientSession,
) -> None:
    async with running_sandbox(config(drop_ratio=1.0)) as sb:
        with pytest.raises(aiohttp.ClientError):
            await delete(session, sb, {"campaign_id": 42, "audience": [1]})

        assert sb.state.campaigns[42].deleted_count == 0
        assert (await state(session, sb))["requests"]["dropped"] == 1


async def test_audience_list_paginates_surviving_ids(
    sandbox: SandboxHandle, session: aiohttp.ClientSession
) -> None:
    status, body = await get(
        session, f"{sandbox.url}/audience-list", campaign_id=7, page=3, limit=40
    )

    assert status == 200
    assert [row["id"] for row in body["datalist"]] == list(range(1081, 1101))
    assert body["pagination"] == {
        "totalRecords": 100,
        "totalPages": 3,
        "currentPage": 3,
        "limit": 40,
    }
    assert body["datalist"][0] == record(7, 1081)
    assert list(body["datalist"][0]) == list(FULL_FIELDS)


async def test_deleted_ids_disappear_from_the_audience_list(
    sandbox: SandboxHandle, session: aiohttp.ClientSession
) -> None:
    await delete(session, sandbox, {"campaign_id": 42, "audience": [1, 3, 5]})

    ids = await list_ids(session, sandbox, campaign_id=42, page=1, limit=5)

    assert ids == [2, 4, 6, 7, 8]


@pytest.mark.parametrize(
    ("query", "expected"),
    [("1", {"Completed"}), ("1,2", {"Completed", "Halted"}), (["0", "3"], {"Fresh", "Inqueue"})],
)
async def test_audience_list_filters_by_status(
    sandbox: SandboxHandle, session: aiohttp.ClientSession, query: Any, expected: set[str]
) -> None:
    params = [("campaign_id", "42"), ("limit", "100")]
    params += [("status", value) for value in ([query] if isinstance(query, str) else query)]
    async with session.get(f"{sandbox.url}/audience-list", params=params) as response:
        body = await response.json()

    assert {row["status"] for row in body["datalist"]} == expected
    assert body["pagination"]["totalRecords"] == len(body["datalist"]) == 25 * len(expected)


async def test_stats_total_audience_drops_after_delete(
    sandbox: SandboxHandle, session: aiohttp.ClientSession
) -> None:
    url = f"{sandbox.url}/campaign-audience-stats"
    _, before = await get(session, url, campaign_id=42)
    await delete(session, sandbox, {"campaign_id": 42, "audience": list(range(1, 11))})
    _, after = await get(session, url, campaign_id=42)

    assert before["total_audience"] == 100
    assert after["total_audience"] == 90
    assert after["total_attempt"] < before["total_attempt"]
    assert set(after) == {
        "total_audience",
        "coverage",
        "total_attempt",
        "total_duration",
        "successful_calls",
    }


async def test_list_and_stats_answer_campaign_not_exist_for_unknown_campaign(
    sandbox: SandboxHandle, session: aiohttp.ClientSession
) -> None:
    assert await get(session, f"{sandbox.url}/audience-list", campaign_id=9) == (400, NOT_EXIST)
    assert await get(session, f"{sandbox.url}/campaign-audience-stats", campaign_id=9) == (
        400,
        NOT_EXIST,
    )


async def test_state_counts_received_resent_and_outside_ids(
    sandbox: SandboxHandle, session: aiohttp.ClientSession
) -> None:
    await delete(session, sandbox, {"campaign_id": 42, "audience": [1, 2, 500]})
    await delete(session, sandbox, {"campaign_id": 42, "audience": [2, 3, 500]})
    await delete(session, sandbox, {"campaign_id": 999, "audience": [8]})

    doc = await state(session, sandbox, ids="1")

    assert doc["received"] == {
        "42": {"count": 4, "resent": 2, "outside": [500]},
        "999": {"count": 1, "resent": 0, "outside": [8]},
    }
    assert doc["campaigns"]["42"]["deleted_ids"] == [1, 2, 3]
    assert doc["campaigns"]["42"]["received_ids"] == [1, 2, 3, 500]
    assert doc["campaigns"]["42"]["deleted_count"] == 3
    assert doc["requests"] == {"total": 3, "by_status": {"200": 2, "400": 1}, "dropped": 0}


async def test_state_exposes_accepted_times_on_request(
    sandbox: SandboxHandle, session: aiohttp.ClientSession
) -> None:
    await delete(session, sandbox, {"campaign_id": 42, "audience": [1]})
    await delete(session, sandbox, {"campaign_id": 42, "audience": [2]})

    times = (await state(session, sandbox, times="1"))["accepted_times"]

    assert len(times) == 2
    assert 0 <= times[0] <= times[1]
    assert "accepted_times" not in await state(session, sandbox)


async def test_faults_endpoint_replaces_the_fault_config(
    sandbox: SandboxHandle, session: aiohttp.ClientSession
) -> None:
    control = sandbox.url.removesuffix("/api/v1/global") + "/_sandbox/faults"
    status, new = await post(session, control, {"max_batch": 1, "error_status": 200})
    too_big = await delete(session, sandbox, {"campaign_id": 42, "audience": [1, 2]})
    unknown = await delete(session, sandbox, {"campaign_id": 9, "audience": [1]})
    bad, _ = await post(session, control, {"nonsense": 1})

    assert status == 200
    assert new["max_batch"] == 1
    assert too_big[0] == 413
    assert unknown == (200, NOT_EXIST)
    assert bad == 400


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("42:draft", "ID:STATUS:FIRST-LAST"),
        ("x:draft:1-5", "integers"),
        ("42:done:1-5", "status must be one of"),
        ("42:draft:5-1", "greater than last"),
        ("42:draft:0-5", "positive"),
        ("42:draft:15", "FIRST-LAST"),
    ],
)
def test_parse_campaign_spec_rejects_malformed_text(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_campaign_spec(text)


def test_parse_campaign_spec_reads_id_status_and_range() -> None:
    assert parse_campaign_spec("42:draft:1-5000") == CampaignSpec(42, "draft", 1, 5000)


async def test_ten_million_id_campaign_serves_its_first_page(
    session: aiohttp.ClientSession,
) -> None:
    huge = CampaignSpec(id=1, status="inprogress", first=1, last=10_000_000)
    async with running_sandbox(SandboxConfig(campaigns=(huge,), token=TOKEN)) as sb:
        await delete(session, sb, {"campaign_id": 1, "audience": [1, 9_999_951]})
        first = await list_ids(session, sb, campaign_id=1, page=1, limit=50)
        last_page = await list_ids(session, sb, campaign_id=1, page=200_000, limit=50)

    assert first == list(range(2, 52))
    assert last_page == list(range(9_999_953, 10_000_001))  # 9,999,998 survivors: 48 on page 200k


def test_serve_prints_its_url_and_exits_cleanly_on_sigterm() -> None:
    script = textwrap.dedent(
        """
        from worker.sandbox import CampaignSpec, SandboxConfig, serve
        serve(SandboxConfig(campaigns=(CampaignSpec(1, "draft", 1, 10),), token="t"), port=0)
        """
    )
    with subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        proc.terminate()
        assert proc.wait(timeout=5) == 0

    assert line.startswith("sandbox listening on http://127.0.0.1:")
    assert line.rstrip().endswith("/api/v1/global")


async def test_latency_delays_answers(session: aiohttp.ClientSession) -> None:
    async with running_sandbox(config(latency_ms=50)) as sb:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await delete(session, sb, {"campaign_id": 42, "audience": [1]})

    assert loop.time() - started >= 0.05
