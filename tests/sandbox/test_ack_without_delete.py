"""ack_without_delete: a success answer for a delete that was never applied, counted for tests."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from processes import child_env
from sandbox_http import DELETED, TOKEN, control_state, delete, every_page, post

from worker.sandbox import CampaignSpec, FaultConfig, SandboxConfig, running_sandbox
from worker.sandbox.faults import FaultInjector
from worker.sandbox.model import record
from worker.sandbox.runner import SandboxHandle

DRAFT = CampaignSpec(id=42, status="draft", first=1, last=100)


def config(**faults: Any) -> SandboxConfig:
    return SandboxConfig(campaigns=(DRAFT,), token=TOKEN, faults=FaultConfig(**faults))


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers={"token": TOKEN}) as client:
        yield client


async def test_every_delete_is_acknowledged_and_none_applied_at_1(
    session: aiohttp.ClientSession,
) -> None:
    async with running_sandbox(config(ack_without_delete=1.0)) as sb:
        answers = [
            await delete(session, sb, 42, [1, 2, 3]),
            await delete(session, sb, 42, [3, 4, 500]),
        ]
        doc = await control_state(session, sb, ids="1")
        listed = await every_page(session, sb, 42)

    assert answers == [(200, DELETED)] * 2
    assert sb.state.campaigns[42].deleted_count == 0
    assert [r["id"] for r in listed] == list(range(1, 101))
    assert doc["acked_not_applied"] == {"requests": 2, "ids": 6}
    assert doc["campaigns"]["42"]["acked_not_applied_ids"] == [1, 2, 3, 4]
    assert doc["campaigns"]["42"]["received_ids"] == [1, 2, 3, 4, 500]
    assert doc["requests"]["by_status"] == {"200": 2}


async def test_at_0_every_delete_is_applied_and_nothing_counted(
    session: aiohttp.ClientSession,
) -> None:
    async with running_sandbox(config()) as sb:
        answers = [await delete(session, sb, 42, [n, n + 50]) for n in range(1, 51)]
        doc = await control_state(session, sb, ids="1")

    assert answers == [(200, DELETED)] * 50
    assert sb.state.campaigns[42].alive_count == 0
    assert doc["acked_not_applied"] == {"requests": 0, "ids": 0}
    assert doc["campaigns"]["42"]["acked_not_applied_ids"] == []


async def test_delete_all_is_never_acknowledged_without_being_applied(
    session: aiohttp.ClientSession,
) -> None:
    async with running_sandbox(config(ack_without_delete=1.0)) as sb:
        answer = await post(
            session, f"{sb.url}/delete-audience", {"campaign_id": 42, "delete_all": True}
        )

    assert answer == (200, {"message": "All audience deleted successfully"})
    assert sb.state.campaigns[42].alive_count == 0


async def test_refused_deletes_are_not_counted(session: aiohttp.ClientSession) -> None:
    async with running_sandbox(config(ack_without_delete=1.0, error_status=200)) as sb:
        unknown = await delete(session, sb, 9, [1])
        empty = await delete(session, sb, 42, [])
        doc = await control_state(session, sb)

    assert unknown == (200, {"message": "Campaign not exist"})
    assert empty == (200, {"message": "Audience array is required"})
    assert doc["acked_not_applied"] == {"requests": 0, "ids": 0}


async def surviving_after_single_deletes(
    session: aiohttp.ClientSession, **faults: Any
) -> list[int]:
    async with running_sandbox(config(**faults)) as sb:
        for audience_id in range(1, 61):
            assert await delete(session, sb, 42, [audience_id]) == (200, DELETED)
        doc = await control_state(session, sb, ids="1")
    campaign = sb.state.campaigns[42]
    survivors = [i for i in range(1, 61) if campaign.alive(i)]
    assert doc["campaigns"]["42"]["acked_not_applied_ids"] == survivors
    assert doc["acked_not_applied"] == {"requests": len(survivors), "ids": len(survivors)}
    return survivors


async def test_the_same_seed_acknowledges_the_same_deletes(
    session: aiohttp.ClientSession,
) -> None:
    first = await surviving_after_single_deletes(session, seed=5, ack_without_delete=0.3)
    again = await surviving_after_single_deletes(session, seed=5, ack_without_delete=0.3)
    other = await surviving_after_single_deletes(session, seed=6, ack_without_delete=0.3)

    assert first == again
    assert 5 <= len(first) <= 35
    assert other != first


async def statuses(session: aiohttp.ClientSession, sb: SandboxHandle) -> list[int]:
    return [(await delete(session, sb, 42, [n]))[0] for n in range(1, 41)]


@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
async def test_the_other_faults_of_a_seed_stay_what_they_were_before_it_existed(
    session: aiohttp.ClientSession, share: float
) -> None:
    """Three draws per request, as ever: the ack draw comes from a generator of its own."""
    injector = FaultInjector(FaultConfig(seed=7, error_ratio=0.5))
    before_it = [injector.decide().server_error or 200 for _ in range(40)]

    async with running_sandbox(config(seed=7, error_ratio=0.5, ack_without_delete=share)) as sb:
        answers = await statuses(session, sb)

    assert answers == before_it
    assert set(answers) == {200, 500, 502, 503}


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_fault_config_rejects_a_share_outside_0_to_1(value: float) -> None:
    with pytest.raises(
        ValueError, match=f"ack_without_delete must be between 0 and 1, got {value}"
    ):
        FaultConfig(ack_without_delete=value)


def test_fault_config_reads_it_from_json() -> None:
    assert FaultConfig.from_json({"ack_without_delete": 1}).ack_without_delete == 1.0
    assert FaultConfig().to_json()["ack_without_delete"] == 0.0
    with pytest.raises(ValueError, match="ack_without_delete must be a number"):
        FaultConfig.from_json({"ack_without_delete": "half"})


async def test_the_control_plane_switches_it_on_at_runtime(
    session: aiohttp.ClientSession,
) -> None:
    async with running_sandbox(config()) as sb:
        control = sb.url.removesuffix("/api/v1/global") + "/_sandbox/faults"
        status, faults = await post(session, control, {"ack_without_delete": 1})
        answer = await delete(session, sb, 42, [1])
        refused, _ = await post(session, control, {"ack_without_delete": 2})

    assert (status, faults["ack_without_delete"]) == (200, 1.0)
    assert answer == (200, DELETED)
    assert sb.state.campaigns[42].alive(1)
    assert refused == 400


async def sandbox_cli(tmp_path: Path, *flags: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        "sandbox",
        "--port",
        "0",
        "--token",
        TOKEN,
        *flags,
        cwd=tmp_path,
        env=child_env(None),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_the_cli_rejects_a_share_outside_0_to_1_naming_the_flag(tmp_path: Path) -> None:
    proc = await sandbox_cli(tmp_path, "--ack-without-delete", "2")
    out, err = await asyncio.wait_for(proc.communicate(), timeout=30)

    assert proc.returncode == 2
    assert out == b""
    assert err.decode() == (
        "audience-purge: error: --ack-without-delete: must be between 0 and 1, got 2.0\n"
    )


async def test_the_cli_passes_the_share_and_the_records_seed_through(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    proc = await sandbox_cli(
        tmp_path, "--campaign", "42:draft:1-20", "--seed", "4", "--ack-without-delete", "1"
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), timeout=30)).decode()
        url = line.strip().removeprefix("sandbox listening on ")
        answer = await post(session, f"{url}/delete-audience", {"campaign_id": 42, "audience": [1]})
        async with session.get(
            f"{url}/audience-list", params={"campaign_id": "42", "limit": "20"}
        ) as response:
            listed = (await response.json())["datalist"]
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), timeout=10)

    assert answer == (200, DELETED)
    assert listed == [record(42, i, seed=4) for i in range(1, 21)]  # id 1 is still there
