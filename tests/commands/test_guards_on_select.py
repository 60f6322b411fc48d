"""The count guards on ``run --select`` (issue #25): ``--max-deletes`` and ``--expect-count``
are checked against what the rule selected, after the listing and before the first delete,
as they are against an ``--input`` file."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from worker.commands.parsers import build_parser
from worker.commands.run import run_purge
from worker.errors import InputError
from worker.input.selecting import Selecting, rule_from
from worker.sandbox.runner import SandboxHandle
from worker.settings import Settings

LIVE = 77  # conftest's campaign 77: ids 1-5000, in progress
NOW = datetime(2026, 11, 30, tzinfo=UTC)


def halted(tmp_path: Path) -> Selecting:
    args = build_parser().parse_args(["select", "--campaign-id", str(LIVE), "--status", "halted"])
    return Selecting.of(rule_from(args, LIVE, NOW), tmp_path / "selection.csv")


async def halted_count(sandbox: SandboxHandle, token: str) -> int:
    """How many records of the campaign the rule selects: its whole listing, in one page."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{sandbox.url}/audience-list",
            params={"campaign_id": LIVE, "page": 1, "limit": 10_000},
            headers={"token": token},
        ) as response,
    ):
        assert response.status == 200
        records: list[dict[str, Any]] = (await response.json())["datalist"]
    assert len(records) > 1000  # the whole campaign, not a page of it
    return sum(r["status"] == "Halted" for r in records)


@pytest.mark.parametrize(
    ("guard", "refused"),
    [
        ({"max_deletes": -1}, "valid ids, more than --max-deletes"),
        ({"expect_count": +1}, "valid ids, not the"),
        ({"expect_count": -1}, "valid ids, not the"),
    ],
)
async def test_a_count_guard_refuses_a_selection_before_anything_is_deleted(
    sandbox: SandboxHandle,
    token: str,
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    guard: dict[str, int],
    refused: str,
) -> None:
    count = await halted_count(sandbox, token)
    assert count > 1
    [(name, shift)] = guard.items()
    settings = make_settings(campaign_id=LIVE, **{name: count + shift})

    with pytest.raises(InputError, match=f"holds {count} {refused}.*nothing was sent"):
        await run_purge(settings, str(tmp_path / "selection.csv"), selecting=halted(tmp_path))

    assert LIVE not in sandbox.state.receipts  # not one delete request
    assert await halted_count(sandbox, token) == count


@pytest.mark.parametrize("name", ["max_deletes", "expect_count"])
async def test_a_count_guard_that_holds_lets_the_selection_go(
    sandbox: SandboxHandle,
    token: str,
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    name: str,
) -> None:
    count = await halted_count(sandbox, token)
    settings = make_settings(campaign_id=LIVE, **{name: count})

    result = await run_purge(settings, str(tmp_path / "selection.csv"), selecting=halted(tmp_path))

    assert (result.exit_code, result.tally.deleted) == (0, count)
    assert await halted_count(sandbox, token) == 0
