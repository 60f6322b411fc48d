"""Entries are bytes until proven text: a stream entry with a byte that is not UTF-8 in any
field name or value (a known field or not) is dead-lettered whole, byte for byte, and the
entries read with it are sent; ``redrive`` and ``status`` handle such a dead letter, and
``redrive --since`` a hostile time."""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from conftest import read_audit
from queue_helpers import DEAD, GROUP, STREAM, of, pending_count

from worker.commands.consume import run_consumer
from worker.commands.redrive import parse_since, run_redrive
from worker.commands.status import show_status
from worker.errors import UsageError
from worker.sandbox.runner import SandboxHandle
from worker.settings import Settings

MakeSettings = Callable[..., Settings]
GOOD = [(b"campaign_id", b"42"), (b"audience_ids", b"1,2,3")]
ALSO_GOOD = [(b"campaign_id", b"42"), (b"audience_ids", b"[5, 6]")]
VALID = [(b"campaign_id", b"42"), (b"audience_ids", b"7,8"), (b"ref", b"cafe"), (b"note", b"x")]
LATIN1 = b"\xe9"  # a Latin-1 "e" with an accent: never valid alone in UTF-8
# Where the bad byte goes (a known field's name or value, or an unknown field's), and why
# the entry is then malformed.
POSITIONS = [
    ("name", b"campaign_id", "the name of field 1 is not UTF-8 (byte 0xe9 at offset 11)"),
    ("name", b"audience_ids", "the name of field 2 is not UTF-8 (byte 0xe9 at offset 12)"),
    ("name", b"ref", "the name of field 3 is not UTF-8 (byte 0xe9 at offset 3)"),
    ("name", b"note", "the name of field 4 is not UTF-8 (byte 0xe9 at offset 4)"),
    ("value", b"campaign_id", "field campaign_id is not UTF-8 (byte 0xe9 at offset 2)"),
    ("value", b"audience_ids", "field audience_ids is not UTF-8 (byte 0xe9 at offset 3)"),
    ("value", b"ref", "field ref is not UTF-8 (byte 0xe9 at offset 4)"),
    ("value", b"note", "field note is not UTF-8 (byte 0xe9 at offset 1)"),
]


def poisoned(where: str, field: bytes) -> list[tuple[bytes, bytes]]:
    """The valid entry with one Latin-1 byte appended to ``field``'s name or value."""
    if where == "name":
        return [(n + LATIN1 if n == field else n, v) for n, v in VALID]
    return [(n, v + LATIN1 if n == field else v) for n, v in VALID]


@pytest.fixture
async def raw_rdb(redis_url: str) -> AsyncIterator[Any]:
    """A client that answers bytes, with every stream entry's fields as Redis sends them."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=False)
    client.set_response_callback("XRANGE", lambda response, **options: response)
    yield client
    await client.aclose()


async def add(client: Any, pairs: list[tuple[bytes, bytes]]) -> str:
    flat = [part for pair in pairs for part in pair]
    return (await client.execute_command("XADD", STREAM, "*", *flat)).decode()


async def entries(client: Any, stream: str) -> list[tuple[str, list[tuple[bytes, bytes]]]]:
    got = await client.execute_command("XRANGE", stream, "-", "+")
    return [(i.decode(), list(zip(f[::2], f[1::2], strict=True))) for i, f in got]


def settings_for(make_settings: MakeSettings, redis_url: str, **more: Any) -> Settings:
    fields = {"redis_url": redis_url, "stream": STREAM, "consumer": "c1", "until_empty": True}
    return make_settings(**{**fields, **more})


@pytest.mark.parametrize(("where", "field", "why"), POSITIONS)
@pytest.mark.parametrize("arrival", ["new", "claimed"])
async def test_an_entry_not_in_utf8_is_dead_lettered_byte_for_byte_and_its_neighbours_sent(
    sandbox: SandboxHandle,
    make_settings: MakeSettings,
    redis_url: str,
    rdb: Any,
    raw_rdb: Any,
    where: str,
    field: bytes,
    why: str,
    arrival: str,
) -> None:
    poison_fields = poisoned(where, field)
    good = await add(raw_rdb, GOOD)
    poison = await add(raw_rdb, poison_fields)
    also_good = await add(raw_rdb, ALSO_GOOD)
    if arrival == "claimed":  # read by a consumer that then died: taken over by XAUTOCLAIM
        await raw_rdb.xgroup_create(STREAM, GROUP, id="0")
        await raw_rdb.xreadgroup(GROUP, "ghost", {STREAM: ">"})
    settings = settings_for(make_settings, redis_url, claim_idle=0.5)

    result = await asyncio.wait_for(run_consumer(settings), timeout=20)

    assert (result.exit_code, result.tally.dead_lettered) == (0, 1)
    assert sandbox.state.receipts[42].received_ids() == [1, 2, 3, 5, 6]
    [(_, dead_fields)] = await entries(raw_rdb, DEAD)
    reason = f"malformed: {why}"
    assert dead_fields == [
        *poison_fields,
        (b"dead_reason", reason.encode()),
        (b"dead_entry_id", poison.encode()),
        (b"dead_consumer", b"c1"),
    ]
    assert await pending_count(rdb) == 0
    assert settings.audit_log is not None
    records = read_audit(settings.audit_log)
    [dead] = of(records, "dead_lettered")
    assert (dead["entry_id"], dead["reason"]) == (poison, reason)
    bad = field + LATIN1 if where == "name" else dict(VALID)[field] + LATIN1
    assert "base64:" + base64.b64encode(bad).decode() in [*dead["fields"], *dead["fields"].values()]
    assert sorted(r["entry_id"] for r in of(records, "acknowledged")) == [good, also_good]


async def test_redrive_and_status_handle_a_dead_letter_not_in_utf8(
    make_settings: MakeSettings, redis_url: str, raw_rdb: Any, tmp_path: Path
) -> None:
    poison_fields = poisoned("value", b"ref")
    bookkeeping = [(b"dead_reason", b"malformed: caf" + LATIN1), (b"dead_entry_id", b"1-0")]
    flat = [part for pair in [*poison_fields, *bookkeeping] for part in pair]
    dead_id = (await raw_rdb.execute_command("XADD", DEAD, "*", *flat)).decode()
    await add(raw_rdb, poisoned("name", b"note"))  # and one in the stream, pending at a ghost
    await raw_rdb.xgroup_create(STREAM, GROUP, id="0")
    await raw_rdb.xreadgroup(GROUP, "ghost", {STREAM: ">"})
    settings = make_settings(
        redis_url=redis_url, stream=STREAM, audit_log=tmp_path / "redrive.jsonl"
    )

    shown = io.StringIO()
    asked = make_settings(redis_url=redis_url, stream=STREAM, state_dir=None)
    assert await show_status(asked, as_json=True, out=shown) == 0
    doc = orjson.loads(shown.getvalue())
    assert (doc["length"], doc["dead_length"], doc["group"]["pending"]) == (1, 1, 1)

    reason = "base64:" + base64.b64encode(b"malformed: caf\xe9").decode()
    listed = io.StringIO()
    dry = make_settings(
        redis_url=redis_url, stream=STREAM, audit_log=tmp_path / "dry.jsonl", dry_run=True
    )
    assert await run_redrive(dry, out=listed) == 0
    assert f"would move {dead_id}: {reason} (" in listed.getvalue()
    assert "campaign 42, 2 ids; was 1-0)" in listed.getvalue()

    moved = io.StringIO()
    assert await run_redrive(settings, out=moved) == 0
    assert await entries(raw_rdb, DEAD) == []
    [_, (new_id, new_fields)] = await entries(raw_rdb, STREAM)
    assert new_fields == poison_fields  # byte for byte, the bookkeeping taken off
    [redriven] = of(read_audit(tmp_path / "redrive.jsonl"), "redriven")
    assert (redriven["entry_id"], redriven["dead_letter_id"]) == (new_id, dead_id)
    assert redriven["reason"] == reason


BEFORE_1970 = r"is before 1970-01-01: leave --since out"


@pytest.mark.parametrize(
    ("text", "refusal"),
    [
        ("36500d", BEFORE_1970),
        ("1969-12-31T23:59:59Z", BEFORE_1970),
        ("99999999999999999999w", r"--since: '99999999999999999999w' is more than 100 years"),
        ("0001-01-01T00:00:00+23:59", r"--since: .* between the years 1 and 9999 once in UTC"),
    ],
)
def test_a_since_before_1970_is_a_usage_error_not_an_internal_one(text: str, refusal: str) -> None:
    with pytest.raises(UsageError, match=refusal):
        parse_since(text, 1_790_000_000_000)
