"""The rate limit, the injected 5xx and the dropped connections meet every API route, as the
vendor's per-key limit and its failures do: reads and update-campaign, not only deletes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from sandbox_http import TOKEN, FakeClock, config

from worker.sandbox import FaultConfig, running_sandbox
from worker.sandbox.faults import FaultInjector
from worker.sandbox.runner import SandboxHandle

ROUTES = ("delete-audience", "audience-list", "campaign-audience-stats", "update-campaign")


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers={"token": TOKEN}) as client:
        yield client


async def call(
    session: aiohttp.ClientSession, sb: SandboxHandle, route: str, n: int = 1
) -> tuple[int, str | None]:
    """One valid request to ``route`` (``n`` varies it): its status and Retry-After."""
    url = f"{sb.url}/{route}"
    if route == "delete-audience":
        request = session.post(url, json={"campaign_id": 42, "audience": [n]})
    elif route == "update-campaign":
        request = session.post(url, json={"campaign_id": 7, "campaign_status": "hold"})
    else:
        request = session.get(url, params={"campaign_id": "7", "page": str(n), "limit": "10"})
    async with request as response:
        await response.read()
        return response.status, response.headers.get("Retry-After")


async def control(session: aiohttp.ClientSession, sb: SandboxHandle, path: str) -> int:
    base = sb.url.removesuffix("/api/v1/global")
    async with session.get(f"{base}/_sandbox/{path}") as response:
        await response.read()
        return response.status


async def test_reads_and_updates_spend_the_same_window_as_deletes(
    session: aiohttp.ClientSession,
) -> None:
    async with running_sandbox(config(limit_per_second=4), clock=FakeClock()) as sb:
        admitted = [await call(session, sb, route) for route in ROUTES]
        refused = [await call(session, sb, route, 2) for route in ROUTES]

    assert admitted == [(200, None)] * 4
    assert refused == [(429, "1")] * 4
    assert sb.state.by_status == {200: 4, 429: 4}
    assert sb.state.campaigns[42].deleted_count == 1


async def test_a_refused_update_changes_nothing(session: aiohttp.ClientSession) -> None:
    async with running_sandbox(config(limit_per_minute=1), clock=FakeClock()) as sb:
        await call(session, sb, "audience-list")
        refused = await call(session, sb, "update-campaign")

    assert refused == (429, "60")
    assert sb.state.campaigns[7].status == "inprogress"


async def test_every_admitted_api_request_has_its_accepted_time(
    session: aiohttp.ClientSession,
) -> None:
    clock = FakeClock()
    async with running_sandbox(config(limit_per_second=3), clock=clock) as sb:
        for route in ROUTES:
            await call(session, sb, route)
            clock.now += 0.25

    # The fourth request came while three were admitted within the last second.
    assert list(sb.state.accepted_times) == [0.0, 0.25, 0.5]
    assert sb.state.by_status == {200: 3, 429: 1}


@pytest.mark.parametrize("route", ROUTES)
async def test_injected_5xx_reach_every_route_and_apply_nothing(
    session: aiohttp.ClientSession, route: str
) -> None:
    async with running_sandbox(config(error_ratio=1.0, retry_after_on_5xx=True)) as sb:
        status, retry_after = await call(session, sb, route)

    assert status in {500, 502, 503}
    assert retry_after == "1"
    assert sb.state.campaigns[42].deleted_count == 0
    assert sb.state.campaigns[7].status == "inprogress"


@pytest.mark.parametrize("route", ROUTES)
async def test_dropped_connections_reach_every_route_and_apply_nothing(
    session: aiohttp.ClientSession, route: str
) -> None:
    async with running_sandbox(config(drop_ratio=1.0)) as sb:
        with pytest.raises(aiohttp.ClientError):
            await call(session, sb, route)

    assert sb.state.dropped >= 1  # aiohttp resends an idempotent GET once on its own
    assert sb.state.dropped == sb.state.requests_total
    assert sb.state.campaigns[42].deleted_count == 0
    assert sb.state.campaigns[7].status == "inprogress"


async def test_a_seed_fails_the_same_requests_whatever_their_routes(
    session: aiohttp.ClientSession,
) -> None:
    """Three draws per API request in arrival order, as ever: the seed predicts the answers
    of a mixed sequence exactly as it predicts those of deletes alone."""
    injector = FaultInjector(FaultConfig(seed=7, error_ratio=0.5))
    predicted = [injector.decide().server_error or 200 for _ in range(40)]

    async with running_sandbox(config(seed=7, error_ratio=0.5)) as sb:
        answers = [(await call(session, sb, ROUTES[n % 4], n + 1))[0] for n in range(40)]

    assert answers == predicted
    assert set(answers) == {200, 500, 502, 503}


async def test_control_routes_bypass_the_limit_and_the_faults(
    session: aiohttp.ClientSession,
) -> None:
    faults = {"limit_per_minute": 1, "error_ratio": 1.0, "drop_ratio": 1.0}
    async with running_sandbox(config(**faults), clock=FakeClock()) as sb:
        statuses = [await control(session, sb, path) for path in ("state", "faults") * 3]

    assert statuses == [200] * 6
    assert sb.state.requests_total == 0
    assert list(sb.state.accepted_times) == []
