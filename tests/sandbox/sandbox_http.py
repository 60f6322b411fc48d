"""Talking to a running sandbox over loopback, as a client does: shared by the sandbox tests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import aiohttp

from worker.sandbox import CampaignSpec, FaultConfig, SandboxConfig
from worker.sandbox.runner import SandboxHandle

TOKEN = "test-token"
DELETED = {"message": "Audience deleted successfully"}

Params = Sequence[tuple[str, str]]


DRAFT = CampaignSpec(id=42, status="draft", first=1, last=100)
RUNNING = CampaignSpec(id=7, status="inprogress", first=1001, last=1100)


class FakeClock:
    """A clock the rate-limit tests move by hand instead of sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def config(**faults: Any) -> SandboxConfig:
    """Two campaigns (a draft, one in progress) and the given faults."""
    return SandboxConfig(campaigns=(DRAFT, RUNNING), token=TOKEN, faults=FaultConfig(**faults))


async def get(session: aiohttp.ClientSession, url: str, params: Params) -> tuple[int, Any]:
    async with session.get(url, params=list(params)) as response:
        return response.status, await response.json()


async def post(session: aiohttp.ClientSession, url: str, body: object) -> tuple[int, Any]:
    async with session.post(url, json=body) as response:
        return response.status, await response.json()


async def delete(
    session: aiohttp.ClientSession, sb: SandboxHandle, campaign_id: int, ids: list[int]
) -> tuple[int, Any]:
    body = {"campaign_id": campaign_id, "audience": ids}
    return await post(session, f"{sb.url}/delete-audience", body)


async def listing(
    session: aiohttp.ClientSession,
    sb: SandboxHandle,
    campaign_id: int,
    params: Params = (),
    *,
    page: int = 1,
    limit: int = 10,
) -> Any:
    """One audience-list answer (asserting a 200)."""
    query = [("campaign_id", str(campaign_id)), ("page", str(page)), ("limit", str(limit))]
    status, body = await get(session, f"{sb.url}/audience-list", [*query, *params])
    assert status == 200, body
    return body


async def every_page(
    session: aiohttp.ClientSession,
    sb: SandboxHandle,
    campaign_id: int,
    params: Params = (),
    *,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """The records of pages 1, 2, ... concatenated, up to the first empty page."""
    records: list[dict[str, Any]] = []
    page = 1
    while True:
        body = await listing(session, sb, campaign_id, params, page=page, limit=limit)
        if not body["datalist"]:
            return records
        records += body["datalist"]
        page += 1


async def stats(
    session: aiohttp.ClientSession, sb: SandboxHandle, campaign_id: int, params: Params = ()
) -> Any:
    query = [("campaign_id", str(campaign_id)), *params]
    status, body = await get(session, f"{sb.url}/campaign-audience-stats", query)
    assert status == 200, body
    return body


async def control_state(session: aiohttp.ClientSession, sb: SandboxHandle, **params: str) -> Any:
    base = sb.url.removesuffix("/api/v1/global")
    return (await get(session, f"{base}/_sandbox/state", list(params.items())))[1]
