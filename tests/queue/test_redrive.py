"""``audience-purge redrive`` on a real redis-server: dead letters back to their stream, with
the fields their producer wrote, audited, and never lost or moved twice."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import read_audit
from processes import finish, start
from queue_helpers import DEAD, GROUP, STREAM, of

from worker.commands import redrive as redrive_module
from worker.commands.consume import run_consumer
from worker.commands.redrive import parse_since, run_redrive
from worker.errors import UsageError
from worker.queue import admin
from worker.queue.streams import QueueUnavailable
from worker.sandbox.runner import SandboxHandle
from worker.settings import Settings

MakeSettings = Callable[..., Settings]
NOW_MS = 1_790_000_000_000


def redrive_settings(
    make_settings: MakeSettings, redis_url: str, tmp_path: Path, **more: Any
) -> Settings:
    fields: dict[str, Any] = {
        "redis_url": redis_url,
        "stream": STREAM,
        "audit_log": tmp_path / "redrive.jsonl",
    }
    return make_settings(**{**fields, **more})


async def redrive(settings: Settings, **choice: Any) -> tuple[int, str]:
    out = io.StringIO()
    code = await run_redrive(settings, out=out, **choice)
    return code, out.getvalue()


async def dead_letter(
    rdb: Any, reason: str, fields: dict[str, str], dead_id: str = "*", was: str = "1-0"
) -> str:
    """A dead letter as a consumer writes it: the entry's fields, then the bookkeeping."""
    more = {"dead_reason": reason, "dead_entry_id": was, "dead_consumer": "c9"}
    return str(await rdb.xadd(DEAD, {**fields, **more}, id=dead_id))


def entry(campaign: int, ids: Sequence[int], **more: str) -> dict[str, str]:
    return {"campaign_id": str(campaign), "audience_ids": ",".join(map(str, ids)), **more}


# -- moving back ------------------------------------------------------------------------------


async def test_an_over_delivered_entry_is_redriven_with_its_fields_audited_and_then_deleted(
    sandbox: SandboxHandle, make_settings: MakeSettings, redis_url: str, rdb: Any, tmp_path: Path
) -> None:
    fields = entry(42, [7, 8], ref="ticket-9")
    original = await rdb.xadd(STREAM, fields)
    await rdb.xgroup_create(STREAM, GROUP, id="0")
    await rdb.xreadgroup(GROUP, "crash-looper", {STREAM: ">"})
    for _ in range(5):
        await rdb.xclaim(STREAM, GROUP, "crash-looper", 0, [original])
    consume = make_settings(
        redis_url=redis_url, stream=STREAM, consumer="c1", until_empty=True, claim_idle=1.0
    )
    await asyncio.wait_for(run_consumer(consume), timeout=20)
    [(dead_id, dead_fields)] = await rdb.xrange(DEAD)
    assert dead_fields["dead_reason"] == "delivered 7 times (max_deliveries 5)"
    assert sandbox.state.campaigns[42].alive(7)

    code, out = await redrive(redrive_settings(make_settings, redis_url, tmp_path))

    assert code == 0
    assert await rdb.xlen(DEAD) == 0
    [(new_id, new_fields)] = await rdb.xrange(STREAM)
    assert new_fields == fields  # as the producer wrote it: no dead-letter bookkeeping
    assert new_id != original
    records = read_audit(tmp_path / "redrive.jsonl")
    assert records[0]["command"] == "redrive"
    assert of(records, "redriven") == [
        {
            "ts": of(records, "redriven")[0]["ts"],
            "event": "redriven",
            "run_id": records[0]["run_id"],
            "entry_id": new_id,
            "dead_letter_id": dead_id,
            "original_entry_id": original,
            "reason": "delivered 7 times (max_deliveries 5)",
        }
    ]
    finished = records[-1]
    assert (finished["exit_code"], finished["matched"], finished["redriven"]) == (0, 1, 1)
    assert f"moved {dead_id} -> {new_id}: delivered 7 times (max_deliveries 5)" in out
    assert f"campaign 42, 2 ids; was {original})" in out
    assert out.splitlines()[-1].startswith(f"moved 1 dead letters from {DEAD} back to {STREAM}")

    again = make_settings(
        redis_url=redis_url,
        stream=STREAM,
        consumer="c1",
        until_empty=True,
        audit_log=tmp_path / "again.jsonl",
    )
    result = await asyncio.wait_for(run_consumer(again), timeout=20)

    assert result.exit_code == 0
    assert not sandbox.state.campaigns[42].alive(7)
    assert not sandbox.state.campaigns[42].alive(8)
    assert await rdb.xlen(STREAM) == 0


async def test_reason_picks_dead_letters_by_a_part_of_their_reason_in_any_case(
    make_settings: MakeSettings, redis_url: str, rdb: Any, tmp_path: Path
) -> None:
    failed = [await dead_letter(rdb, "delete failed", entry(42, [i])) for i in (1, 2)]
    bad = await dead_letter(rdb, "malformed: campaign_id not an integer", entry(42, [3]))

    code, _ = await redrive(
        redrive_settings(make_settings, redis_url, tmp_path), reason="DELETE FAIL"
    )

    assert code == 0
    assert [dead_id for dead_id, _ in await rdb.xrange(DEAD)] == [bad]
    assert [f["audience_ids"] for _, f in await rdb.xrange(STREAM)] == ["1", "2"]
    records = read_audit(tmp_path / "redrive.jsonl")
    assert [r["dead_letter_id"] for r in of(records, "redriven")] == failed
    assert records[0]["reason"] == "DELETE FAIL"


async def test_since_picks_dead_letters_by_when_they_were_dead_lettered(
    make_settings: MakeSettings, redis_url: str, rdb: Any, tmp_path: Path
) -> None:
    old = await dead_letter(rdb, "delete failed", entry(42, [1]), dead_id="1000-0")
    recent = await dead_letter(rdb, "delete failed", entry(42, [2]))
    since = admin.now_ms() - 3_600_000

    code, _ = await redrive(redrive_settings(make_settings, redis_url, tmp_path), since_ms=since)

    assert code == 0
    assert [dead_id for dead_id, _ in await rdb.xrange(DEAD)] == [old]
    assert [f["audience_ids"] for _, f in await rdb.xrange(STREAM)] == ["2"]
    assert recent != old


async def test_a_dry_run_lists_what_would_move_and_moves_nothing(
    make_settings: MakeSettings, redis_url: str, rdb: Any, tmp_path: Path
) -> None:
    ids = [await dead_letter(rdb, "delete failed", entry(42, [i, i + 1])) for i in (1, 3)]

    code, out = await redrive(redrive_settings(make_settings, redis_url, tmp_path, dry_run=True))

    assert code == 0
    assert await rdb.xlen(DEAD) == 2
    assert await rdb.exists(STREAM) == 0
    lines = out.splitlines()
    assert [line.split(":")[0] for line in lines[:2]] == [f"would move {i}" for i in ids]
    assert "delete failed (dead-lettered " in lines[0]
    assert lines[2].startswith(f"dry run: would move 2 dead letters from {DEAD} back to {STREAM}")
    records = read_audit(tmp_path / "redrive.jsonl")
    assert records[0]["dry_run"] is True
    assert of(records, "redriven") == []
    assert (records[-1]["matched"], records[-1]["redriven"]) == (2, 0)


async def test_a_dead_letter_with_a_repeated_field_goes_back_with_every_value(
    make_settings: MakeSettings, redis_url: str, rdb: Any, tmp_path: Path
) -> None:
    await rdb.execute_command(
        "XADD", DEAD, "*", "campaign_id", "42", "audience_ids", "1", "audience_ids", "2",
        "dead_reason", "malformed: field audience_ids is repeated", "dead_entry_id", "5-0",
    )  # fmt: skip

    await redrive(redrive_settings(make_settings, redis_url, tmp_path))

    rdb.set_response_callback("XRANGE", lambda response, **options: response)  # as sent
    raw = await rdb.execute_command("XRANGE", STREAM, "-", "+")
    assert [list(fields) for _, fields in raw] == [
        ["campaign_id", "42", "audience_ids", "1", "audience_ids", "2"]
    ]


# -- never lost, never moved twice --------------------------------------------------------------


async def test_a_dead_letter_whose_copy_fails_stays_where_it_is(
    make_settings: MakeSettings, redis_url: str, rdb: Any, tmp_path: Path
) -> None:
    ids = [await dead_letter(rdb, "delete failed", entry(42, [i])) for i in (1, 2)]
    await rdb.set(STREAM, "not a stream")  # XADD to it fails inside the script

    with pytest.raises(QueueUnavailable, match="WRONGTYPE"):
        await redrive(redrive_settings(make_settings, redis_url, tmp_path))

    assert [dead_id for dead_id, _ in await rdb.xrange(DEAD)] == ids


async def test_dead_letters_added_while_a_redrive_runs_are_not_moved(
    make_settings: MakeSettings,
    redis_url: str,
    rdb: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for i in range(redrive_module.PAGE + 20):
        await dead_letter(rdb, "delete failed", entry(42, [i + 1]))
    real = admin.move_back
    late: list[str] = []

    async def failing_again(queue: Any, dead_ids: Sequence[str]) -> dict[str, str | None]:
        moved = await real(queue, dead_ids)
        if not late:  # a consumer dead-letters one of them again meanwhile
            late.append(await dead_letter(rdb, "delete failed", entry(42, [1])))
        return moved

    monkeypatch.setattr(redrive_module, "move_back", failing_again)

    code, _ = await redrive(redrive_settings(make_settings, redis_url, tmp_path))

    assert code == 0
    assert await rdb.xlen(STREAM) == redrive_module.PAGE + 20
    assert [dead_id for dead_id, _ in await rdb.xrange(DEAD)] == late


async def test_a_dead_letter_already_moved_by_another_redrive_is_left_out(
    make_settings: MakeSettings, redis_url: str, rdb: Any, tmp_path: Path
) -> None:
    gone, kept = [await dead_letter(rdb, "delete failed", entry(42, [i])) for i in (1, 2)]
    real = admin.move_back

    async def raced(queue: Any, dead_ids: Sequence[str]) -> dict[str, str | None]:
        await real(queue, [gone])  # another redrive got there first
        return await real(queue, dead_ids)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(redrive_module, "move_back", raced)
        code, out = await redrive(redrive_settings(make_settings, redis_url, tmp_path))

    assert code == 0
    assert await rdb.xlen(STREAM) == 2  # once each, not three entries
    records = read_audit(tmp_path / "redrive.jsonl")
    assert [r["dead_letter_id"] for r in of(records, "redriven")] == [kept]
    assert f"left {gone}: gone, or no field of its own" in out


# -- --since -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("90s", NOW_MS - 90_000),
        ("30m", NOW_MS - 1_800_000),
        ("1h30m", NOW_MS - 5_400_000),
        ("2d", NOW_MS - 172_800_000),
        ("2026-11-26T06:00:00Z", 1_795_672_800_000),
        ("2026-11-26T07:00:00+01:00", 1_795_672_800_000),
        ("2026-11-26T06:00:00.250Z", 1_795_672_800_250),
    ],
)
def test_since_takes_a_duration_or_an_rfc3339_time(text: str, ms: int) -> None:
    assert parse_since(text, NOW_MS) == ms


@pytest.mark.parametrize(
    "text", ["yesterday", "2026-11-26T06:00:00", "2026-11-26", "1.5h", "\u0663\u0660m", "-5m"]
)
def test_since_refuses_anything_else_naming_what_it_takes(text: str) -> None:
    with pytest.raises(UsageError, match=r"expected a duration .* or an RFC 3339 time"):
        parse_since(text, NOW_MS)


@pytest.mark.slow
async def test_the_cli_redrives_and_audits_in_the_default_audit_directory(
    redis_url: str, rdb: Any, tmp_path: Path
) -> None:
    await dead_letter(rdb, "delete failed", entry(42, [1, 2]))
    await dead_letter(rdb, "malformed: x", entry(42, [3]))

    done = await finish(
        await start(
            "redrive",
            "--redis",
            redis_url,
            "--stream",
            STREAM,
            "--reason",
            "delete failed",
            "--since",
            "1h",
            cwd=tmp_path,
            token=None,
        )
    )

    assert done.code == 0, done.err
    assert "moved 1 dead letters from purge:dead back to purge" in done.out
    [audit] = (tmp_path / "purge-audit").glob("audit-*.jsonl")
    assert len(of(read_audit(audit), "redriven")) == 1
    assert await rdb.xlen(DEAD) == 1
