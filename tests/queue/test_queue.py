"""Queue mode: the message format, ``enqueue``, and consumers on a real Redis against the sandbox.

Consumers that must run side by side, crash, or get a signal are ``python -m worker consume``
subprocesses, started with ``asyncio.create_subprocess_exec`` so that the in-process sandbox
keeps serving; the others run in-process through :func:`run_consumer`.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import math
import os
import random
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from conftest import read_audit, write_csv
from processes import closed_port, eventually, finish, start
from queue_helpers import (
    DEAD,
    GROUP,
    STREAM,
    audit_has,
    consume_args,
    of,
    pending_count,
    pending_of,
    produce,
    stream_order,
    tens,
)

from worker.commands.consume import run_consumer
from worker.commands.enqueue import run_enqueue
from worker.errors import UsageError
from worker.queue.streams import (
    MAX_IDS,
    MAX_REF,
    Entry,
    Malformed,
    StreamQueue,
    open_redis,
    parse_entry,
)
from worker.records.recorder import Recorder
from worker.sandbox import FaultConfig
from worker.sandbox.runner import SandboxHandle
from worker.sending.credentials import Secret
from worker.settings import Settings

MakeSettings = Callable[..., Settings]


def queue_settings(make_settings: MakeSettings, redis_url: str, **overrides: Any) -> Settings:
    fields: dict[str, Any] = {
        "redis_url": redis_url,
        "stream": STREAM,
        "consumer": "c1",
        "until_empty": True,
    }
    fields.update(overrides)
    return make_settings(**fields)


async def consume_here(settings: Settings, timeout: float = 20.0) -> Any:
    return await asyncio.wait_for(run_consumer(settings), timeout=timeout)


# -- parse_entry: the message format -----------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "campaign", "ids", "ref"),
    [
        ({"campaign_id": "42", "audience_ids": "101,102,103"}, 42, (101, 102, 103), None),
        ({"campaign_id": "42", "audience_ids": "[101, 102, 103]"}, 42, (101, 102, 103), None),
        ({"campaign_id": " 42 ", "audience_ids": " 101 , 102,103 "}, 42, (101, 102, 103), None),
        ({"campaign_id": "42", "audience_ids": "  [101,102]  "}, 42, (101, 102), None),
        ({"campaign_id": "42", "audience_ids": "7,8,7,9,8"}, 42, (7, 8, 9), None),
        ({"campaign_id": "42", "audience_ids": "[7, 8, 7]"}, 42, (7, 8), None),
        ({"campaign_id": "42", "audience_ids": "5", "ref": "ticket-9"}, 42, (5,), "ticket-9"),
        (
            {"campaign_id": "9223372036854775807", "audience_ids": "9223372036854775807"},
            2**63 - 1,
            (2**63 - 1,),
            None,
        ),
    ],
    ids=[
        "commas",
        "json-array",
        "whitespace",
        "json-with-whitespace",
        "duplicates-collapsed",
        "json-duplicates-collapsed",
        "ref",
        "64-bit-max",
    ],
)
def test_parse_entry_accepts_a_valid_message(
    fields: dict[str, str], campaign: int, ids: tuple[int, ...], ref: str | None
) -> None:
    assert parse_entry("1-0", fields) == Entry("1-0", campaign, ids, ref)


def test_parse_entry_accepts_exactly_max_ids_and_a_ref_of_max_length() -> None:
    fields = {
        "campaign_id": "42",
        "audience_ids": ",".join(str(i) for i in range(1, MAX_IDS + 1)),
        "ref": "r" * MAX_REF,
    }

    entry = parse_entry("1-0", fields)

    assert len(entry.audience_ids) == MAX_IDS
    assert entry.ref == "r" * MAX_REF


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"audience_ids": "1"}, "campaign_id empty value"),
        ({"campaign_id": "", "audience_ids": "1"}, "campaign_id empty value"),
        ({"campaign_id": "abc", "audience_ids": "1"}, "campaign_id not an integer"),
        ({"campaign_id": "-42", "audience_ids": "1"}, "campaign_id not a positive integer"),
        ({"campaign_id": "0", "audience_ids": "1"}, "campaign_id not a positive integer"),
        ({"campaign_id": "4.2", "audience_ids": "1"}, "campaign_id not an integer"),
        ({"campaign_id": "9223372036854775808", "audience_ids": "1"}, "64-bit range"),
        ({"campaign_id": "42"}, "audience_ids is empty"),
        ({"campaign_id": "42", "audience_ids": ""}, "audience_ids is empty"),
        ({"campaign_id": "42", "audience_ids": "   "}, "audience_ids is empty"),
        ({"campaign_id": "42", "audience_ids": "[]"}, "audience_ids is empty"),
        ({"campaign_id": "42", "audience_ids": "1,abc"}, "audience_id 'abc': not an integer"),
        (
            {"campaign_id": "42", "audience_ids": "1,-1"},
            "audience_id '-1': not a positive integer",
        ),
        ({"campaign_id": "42", "audience_ids": "0"}, "audience_id '0': not a positive integer"),
        ({"campaign_id": "42", "audience_ids": "1.5"}, "audience_id '1.5': not an integer"),
        (
            {"campaign_id": "42", "audience_ids": "99999999999999999999"},
            "audience_id '99999999999999999999': out of 64-bit range",
        ),
        (
            {"campaign_id": "42", "audience_ids": "9223372036854775808"},
            "out of 64-bit range",
        ),
        ({"campaign_id": "42", "audience_ids": "1,,2"}, "audience_id '': empty value"),
        ({"campaign_id": "42", "audience_ids": "1,2,"}, "audience_id '': empty value"),
        ({"campaign_id": "42", "audience_ids": "1;2"}, "not an integer"),
        ({"campaign_id": "42", "audience_ids": '[1, "2"]'}, "must be an array of integers"),
        ({"campaign_id": "42", "audience_ids": "[1, true]"}, "must be an array of integers"),
        ({"campaign_id": "42", "audience_ids": "[1, 2.5]"}, "must be an array of integers"),
        ({"campaign_id": "42", "audience_ids": "[1, null]"}, "must be an array of integers"),
        ({"campaign_id": "42", "audience_ids": "[[1]]"}, "must be an array of integers"),
        ({"campaign_id": "42", "audience_ids": "[1, 2"}, "not a valid JSON array"),
        ({"campaign_id": "42", "audience_ids": "[0]"}, "not a positive integer"),
        ({"campaign_id": "42", "audience_ids": "[-1]"}, "not a positive integer"),
        ({"campaign_id": "42", "audience_ids": "[9223372036854775808]"}, "64-bit range"),
        (
            {"campaign_id": "42", "audience_ids": ",".join(["1"] * (MAX_IDS + 1))},
            f"more than {MAX_IDS} audience_ids",
        ),
        (
            {"campaign_id": "42", "audience_ids": str(list(range(1, MAX_IDS + 2)))},
            f"more than {MAX_IDS} audience_ids",
        ),
        (
            {"campaign_id": "42", "audience_ids": "1", "ref": "r" * (MAX_REF + 1)},
            f"ref is longer than {MAX_REF} characters",
        ),
    ],
    ids=[
        "campaign-missing",
        "campaign-empty",
        "campaign-abc",
        "campaign-negative",
        "campaign-zero",
        "campaign-decimal",
        "campaign-overflow",
        "ids-missing",
        "ids-empty",
        "ids-blank",
        "ids-empty-json",
        "id-abc",
        "id-negative",
        "id-zero",
        "id-decimal",
        "id-overflow-20-digits",
        "id-overflow-2^63",
        "id-empty-cell",
        "id-trailing-comma",
        "id-other-separator",
        "json-string-element",
        "json-bool-element",
        "json-float-element",
        "json-null-element",
        "json-nested",
        "json-unterminated",
        "json-zero",
        "json-negative",
        "json-overflow",
        "too-many-ids",
        "too-many-ids-json",
        "ref-too-long",
    ],
)
def test_parse_entry_refuses_a_malformed_message_with_the_reason(
    fields: dict[str, str], reason: str
) -> None:
    with pytest.raises(Malformed) as refused:
        parse_entry("1-0", fields)

    assert reason in str(refused.value)


@pytest.mark.parametrize("field", ["campaign_id", "audience_ids", "ref"])
def test_parse_entry_refuses_a_repeated_field_whatever_its_values(field: str) -> None:
    pairs = (("campaign_id", "42"), ("audience_ids", "1"), ("ref", "r"), (field, "42"))

    with pytest.raises(Malformed, match=f"^field {field} is repeated$"):
        parse_entry("1-0", pairs)


def test_parse_entry_reads_fields_as_pairs_like_fields_by_name() -> None:
    pairs = (("campaign_id", "42"), ("audience_ids", "1,2"), ("ref", "r"))

    assert parse_entry("1-0", pairs) == parse_entry("1-0", dict(pairs))


# -- enqueue ------------------------------------------------------------------------------------


async def test_enqueue_writes_one_entry_per_batch_and_audits_rejected_rows_and_duplicates(
    make_settings: MakeSettings, redis_url: str, rdb: Any, tmp_path: Path
) -> None:
    path = write_csv(
        tmp_path / "ids.csv", [str(i) for i in range(1, 26)] + ["abc", "-1", "3", "0", "5"]
    )
    settings = make_settings(
        redis_url=redis_url,
        stream=STREAM,
        campaign_id=42,
        batch_size=10,
        ref="ticket-7",
        audit_log=tmp_path / "enqueue.jsonl",
    )
    out = io.StringIO()

    code = await run_enqueue(settings, str(path), out=out)

    assert code == 0
    entries = await rdb.xrange(STREAM)
    assert [fields for _, fields in entries] == [
        {"campaign_id": "42", "audience_ids": ",".join(map(str, ids)), "ref": "ticket-7"}
        for ids in (range(1, 11), range(11, 21), range(21, 26))
    ]
    records = read_audit(tmp_path / "enqueue.jsonl")
    run_id = records[0]["run_id"]
    assert records[0]["command"] == "enqueue"
    rejected = of(records, "rejected")
    assert [(r["line"], r["audience_raw"], r["reason"]) for r in rejected] == [
        (26, "abc", "audience_id not an integer"),
        (27, "-1", "audience_id not a positive integer"),
        (29, "0", "audience_id not a positive integer"),
    ]
    assert rejected[0] == {
        "ts": rejected[0]["ts"],
        "event": "rejected",
        "run_id": run_id,
        "line": 26,
        "audience_raw": "abc",
        "raw_sha256": hashlib.sha256(b"abc").hexdigest(),
        "reason": "audience_id not an integer",
    }
    duplicates = of(records, "duplicates")
    assert duplicates == [
        {
            "ts": duplicates[0]["ts"],
            "event": "duplicates",
            "run_id": run_id,
            "campaign_id": 42,
            "lines": [28, 30],
            "audience_ids": [3, 5],
        }
    ]
    enqueued = of(records, "enqueued")
    assert enqueued == [
        {
            "ts": r["ts"],
            "event": "enqueued",
            "run_id": run_id,
            "entry_id": entry_id,
            "campaign_id": 42,
            "audience_ids": [int(i) for i in fields["audience_ids"].split(",")],
            "ref": "ticket-7",
        }
        for r, (entry_id, fields) in zip(enqueued, entries, strict=True)
    ]
    finished = records[-1]
    assert {k: finished[k] for k in ("event", "exit_code", "rows", "valid", "rejected")} == {
        "event": "run_finished",
        "exit_code": 0,
        "rows": 30,
        "valid": 25,
        "rejected": 3,
    }
    assert (finished["duplicates"], finished["entries"]) == (2, 3)
    assert out.getvalue().startswith(
        f"enqueued 25 ids in 3 entries on {STREAM} (3 rejected rows, 2 duplicates)"
    )


@pytest.mark.parametrize("batch_size", [1, 7, 10, 25, 1000])
async def test_enqueue_writes_ceil_valid_over_batch_size_entries(
    make_settings: MakeSettings, redis_url: str, rdb: Any, tmp_path: Path, batch_size: int
) -> None:
    path = write_csv(tmp_path / "ids.csv", [str(i) for i in range(1, 26)] + ["1", "x"])
    settings = make_settings(
        redis_url=redis_url, stream=STREAM, campaign_id=42, batch_size=batch_size
    )

    await run_enqueue(settings, str(path), out=io.StringIO())

    entries = await rdb.xrange(STREAM)
    assert len(entries) == math.ceil(25 / batch_size)
    sent = [int(i) for _, fields in entries for i in fields["audience_ids"].split(",")]
    assert sent == list(range(1, 26))
    assert all("ref" not in fields for _, fields in entries)


# -- consumers against the sandbox ------------------------------------------------------------


@pytest.mark.slow
async def test_three_consumers_in_parallel_delete_every_id_once_and_ack_every_entry(
    sandbox: SandboxHandle, token: str, redis_url: str, rdb: Any, tmp_path: Path
) -> None:
    ids = list(range(1, 301))
    path = write_csv(tmp_path / "ids.csv", [str(i) for i in ids])
    enqueued = await finish(
        await start(
            "enqueue",
            "--input",
            str(path),
            "--campaign-id",
            "42",
            "--redis",
            redis_url,
            "--stream",
            STREAM,
            "--batch-size",
            "10",
            "--ref",
            "ticket-7",
            "--audit-log",
            str(tmp_path / "enqueue.jsonl"),
            cwd=tmp_path,
            token=None,
        )
    )
    assert enqueued.code == 0, enqueued.err
    entries = {entry_id: fields for entry_id, fields in await rdb.xrange(STREAM)}
    assert len(entries) == 30
    sandbox.state.replace_faults(FaultConfig(latency_ms=20))  # so the work spreads out
    names = ["c1", "c2", "c3"]

    procs = [
        await start(
            *consume_args(sandbox, redis_url, tmp_path / f"{n}.jsonl", n, "--until-empty"),
            cwd=tmp_path,
            token=token,
        )
        for n in names
    ]
    done = [await finish(p) for p in procs]

    assert [d.code for d in done] == [0, 0, 0], [d.err for d in done]
    assert not any("Traceback" in d.err for d in done)
    assert sandbox.state.receipts[42].received_ids() == ids
    assert sandbox.state.receipts[42].resent == 0
    assert set(sandbox.state.receipts) == {42}
    assert not any(sandbox.state.campaigns[42].alive(i) for i in ids)
    assert await pending_count(rdb) == 0
    assert {c["name"] for c in await rdb.xinfo_consumers(STREAM, GROUP)} == set(names)
    audits = {n: read_audit(tmp_path / f"{n}.jsonl") for n in names}
    deleted = [r for records in audits.values() for r in of(records, "deleted")]
    assert sorted(r["entry_id"] for r in deleted) == sorted(entries)
    for record in deleted:
        fields = entries[record["entry_id"]]
        assert record == {
            "ts": record["ts"],
            "event": "deleted",
            "run_id": record["run_id"],
            "campaign_id": 42,
            "batch_id": record["batch_id"],
            "audience_ids": [int(i) for i in fields["audience_ids"].split(",")],
            "http_status": 200,
            "attempts": 1,
            "latency_ms": record["latency_ms"],
            "message": "Audience deleted successfully",
            "entry_id": record["entry_id"],
            "ref": "ticket-7",
        }
    acknowledged = [r for records in audits.values() for r in of(records, "acknowledged")]
    assert sorted(r["entry_id"] for r in acknowledged) == sorted(entries)
    assert {r["dead_lettered_ids"] for r in acknowledged} == {0}
    for records in audits.values():
        assert records[-1]["event"] == "run_finished"
        assert records[-1]["exit_code"] == 0


async def kill_holding_entries(
    sandbox: SandboxHandle, token: str, redis_url: str, rdb: Any, tmp_path: Path, audit: Path
) -> list[str]:
    """Start consumer ``a`` against a slow sandbox, SIGKILL it while its requests are in
    flight, and return the entries it left pending."""
    sandbox.state.replace_faults(FaultConfig(latency_ms=1500))
    proc = await start(
        *consume_args(sandbox, redis_url, audit, "a", "--until-empty"), cwd=tmp_path, token=token
    )
    try:
        await eventually(audit_has(audit, "sending", 2), what="consumer a sends")
    finally:
        proc.kill()
        await proc.wait()
    sandbox.state.replace_faults(FaultConfig())
    held = await pending_of(rdb, "a")
    assert held, "the killed consumer held no entries"
    assert not audit_has(audit, "acknowledged")()
    return held


@pytest.mark.slow
async def test_entries_of_a_killed_consumer_are_claimed_by_another_and_completed(
    sandbox: SandboxHandle, token: str, redis_url: str, rdb: Any, tmp_path: Path
) -> None:
    entry_ids = await produce(rdb, tens(1, 200))
    held = await kill_holding_entries(
        sandbox, token, redis_url, rdb, tmp_path, tmp_path / "a.jsonl"
    )
    # claim_idle must exceed max_retry_time + timeout (1 + 1): 3 s is the smallest sane one.
    config = tmp_path / "fast.toml"
    config.write_text("max_retry_time = 1\n", encoding="utf-8")
    audit = tmp_path / "b.jsonl"

    done = await finish(
        await start(
            *consume_args(
                sandbox,
                redis_url,
                audit,
                "b",
                "--until-empty",
                "--claim-idle",
                "3",
                "--timeout",
                "1",
                "--config",
                str(config),
            ),
            cwd=tmp_path,
            token=token,
        )
    )

    assert done.code == 0, done.err
    assert not any(sandbox.state.campaigns[42].alive(i) for i in range(1, 201))
    assert await pending_count(rdb) == 0
    assert await rdb.xlen(DEAD) == 0
    acknowledged = [r["entry_id"] for r in of(read_audit(audit), "acknowledged")]
    assert sorted(acknowledged) == sorted(entry_ids)
    assert set(held) <= set(acknowledged)


@pytest.mark.slow
async def test_a_restarted_consumer_first_finishes_its_own_pending_entries(
    sandbox: SandboxHandle, token: str, redis_url: str, rdb: Any, tmp_path: Path
) -> None:
    entry_ids = await produce(rdb, tens(1, 200))
    held = await kill_holding_entries(
        sandbox, token, redis_url, rdb, tmp_path, tmp_path / "a-1.jsonl"
    )
    audit = tmp_path / "a-2.jsonl"

    # Default claim_idle (600 s): only its own pending list can bring the entries back.
    done = await finish(
        await start(
            *consume_args(sandbox, redis_url, audit, "a", "--until-empty"),
            cwd=tmp_path,
            token=token,
        )
    )

    assert done.code == 0, done.err
    assert not any(sandbox.state.campaigns[42].alive(i) for i in range(1, 201))
    assert await pending_count(rdb) == 0
    assert await rdb.xrange(DEAD) == []
    records = read_audit(audit)
    acknowledged = [r["entry_id"] for r in of(records, "acknowledged")]
    assert sorted(acknowledged) == sorted(entry_ids)
    first_sent = [r["entry_id"] for r in of(records, "sending")][: len(held)]
    assert sorted(first_sent) == sorted(held)
    resent_per_entry = [r["entry_id"] for r in of(records, "sending")]
    assert sorted(resent_per_entry) == sorted(entry_ids), "an entry was sent twice"


async def test_a_malformed_entry_is_dead_lettered_and_acked_and_the_others_proceed(
    sandbox: SandboxHandle, make_settings: MakeSettings, redis_url: str, rdb: Any
) -> None:
    good = await rdb.xadd(STREAM, {"campaign_id": "42", "audience_ids": "1,2,3"})
    poison_fields = {"campaign_id": "forty-two", "audience_ids": "4", "ref": "bad"}
    poison = await rdb.xadd(STREAM, poison_fields)
    also_good = await rdb.xadd(STREAM, {"campaign_id": "42", "audience_ids": "[5, 6]"})
    settings = queue_settings(make_settings, redis_url)

    result = await consume_here(settings)

    assert result.exit_code == 0  # like a rejected input row: reported, not a failed id
    assert result.tally.dead_lettered == 1
    dead = await rdb.xrange(DEAD)
    assert dead == [
        (
            dead[0][0],
            {
                **poison_fields,
                "dead_reason": "malformed: campaign_id not an integer",
                "dead_entry_id": poison,
                "dead_consumer": "c1",
            },
        )
    ]
    assert await pending_count(rdb) == 0
    assert sandbox.state.receipts[42].received_ids() == [1, 2, 3, 5, 6]
    assert set(sandbox.state.receipts) == {42}
    assert settings.audit_log is not None
    records = read_audit(settings.audit_log)
    assert of(records, "dead_lettered") == [
        {
            "ts": of(records, "dead_lettered")[0]["ts"],
            "event": "dead_lettered",
            "run_id": result.run_id,
            "entry_id": poison,
            "reason": "malformed: campaign_id not an integer",
            "fields": poison_fields,
        }
    ]
    assert sorted(r["entry_id"] for r in of(records, "acknowledged")) == [good, also_good]


async def raw_entries(redis_url: str, stream: str) -> list[list[Any]]:
    """XRANGE of ``stream`` as Redis answers it: each entry's fields a flat list, a repeated
    field repeated (redis-py's xrange would fold them into a dict)."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    client.set_response_callback("XRANGE", lambda response, **options: response)
    try:
        entries: list[list[Any]] = await client.execute_command("XRANGE", stream, "-", "+")
        return entries
    finally:
        await client.aclose()


@pytest.mark.parametrize("field", ["audience_ids", "campaign_id"])
@pytest.mark.parametrize("arrival", ["new", "claimed"])
async def test_an_entry_with_a_repeated_field_is_dead_lettered_whole_and_none_of_it_is_sent(
    sandbox: SandboxHandle,
    make_settings: MakeSettings,
    redis_url: str,
    rdb: Any,
    field: str,
    arrival: str,
) -> None:
    good = await rdb.xadd(STREAM, {"campaign_id": "42", "audience_ids": "1,2"})
    again = {"audience_ids": "5,6", "campaign_id": "43"}[field]
    flat = ["campaign_id", "42", "audience_ids", "3,4", field, again]
    twice = await rdb.execute_command("XADD", STREAM, "*", *flat)
    if arrival == "claimed":  # read by a consumer that then died: taken over by XAUTOCLAIM
        await rdb.xgroup_create(STREAM, GROUP, id="0")
        await rdb.xreadgroup(GROUP, "ghost", {STREAM: ">"})
    settings = queue_settings(make_settings, redis_url, claim_idle=1.0)

    result = await consume_here(settings)

    reason = f"malformed: field {field} is repeated"
    dead = await raw_entries(redis_url, DEAD)
    assert dead == [
        [
            dead[0][0],
            [*flat, "dead_reason", reason, "dead_entry_id", twice, "dead_consumer", "c1"],
        ]
    ]
    assert sandbox.state.receipts[42].received_ids() == [1, 2]
    assert set(sandbox.state.receipts) == {42}
    assert await pending_count(rdb) == 0
    assert (result.exit_code, result.tally.dead_lettered) == (0, 1)
    assert settings.audit_log is not None
    records = read_audit(settings.audit_log)
    assert of(records, "dead_lettered") == [
        {
            "ts": of(records, "dead_lettered")[0]["ts"],
            "event": "dead_lettered",
            "run_id": result.run_id,
            "entry_id": twice,
            "reason": reason,
            "fields": {"campaign_id": "42", "audience_ids": "3,4", field: again},
        }
    ]
    assert [r["entry_id"] for r in of(records, "acknowledged")] == [good]


async def test_an_entry_delivered_more_than_max_deliveries_to_its_consumer_is_dead_lettered(
    sandbox: SandboxHandle, make_settings: MakeSettings, redis_url: str, rdb: Any
) -> None:
    fields = {"campaign_id": "42", "audience_ids": "7,8"}
    entry = await rdb.xadd(STREAM, fields)
    await rdb.xgroup_create(STREAM, GROUP, id="0")
    await rdb.xreadgroup(GROUP, "c1", {STREAM: ">"})  # delivery 1: then the consumer died
    for _ in range(2):
        await rdb.xclaim(STREAM, GROUP, "c1", 0, [entry])  # deliveries 2 and 3
    settings = queue_settings(make_settings, redis_url, max_deliveries=3)

    result = await consume_here(settings)

    # Its restart reads its own pending entry once more: delivery 4.
    dead = await rdb.xrange(DEAD)
    assert dead == [
        (
            dead[0][0],
            {
                **fields,
                "dead_reason": "delivered 4 times (max_deliveries 3)",
                "dead_entry_id": entry,
                "dead_consumer": "c1",
            },
        )
    ]
    assert sandbox.state.requests_total == 0
    assert await pending_count(rdb) == 0
    assert result.tally.dead_lettered == 1


async def test_an_over_delivered_entry_claimed_from_a_dead_consumer_is_dead_lettered(
    sandbox: SandboxHandle, make_settings: MakeSettings, redis_url: str, rdb: Any
) -> None:
    fields = {"campaign_id": "42", "audience_ids": "7,8"}
    entry = await rdb.xadd(STREAM, fields)
    await rdb.xgroup_create(STREAM, GROUP, id="0")
    await rdb.xreadgroup(GROUP, "ghost", {STREAM: ">"})
    for _ in range(4):
        await rdb.xclaim(STREAM, GROUP, "ghost", 0, [entry])  # 5 deliveries to a crash-looper
    settings = queue_settings(make_settings, redis_url, max_deliveries=5, claim_idle=1.0)

    result = await consume_here(settings)

    dead = await rdb.xrange(DEAD)
    assert [f["dead_entry_id"] for _, f in dead] == [entry]
    assert dead[0][1]["dead_reason"] == "delivered 6 times (max_deliveries 5)"
    assert sandbox.state.requests_total == 0
    assert await pending_count(rdb) == 0
    assert result.exit_code == 0


async def test_an_over_delivered_entry_is_dead_lettered_among_other_consumers_pending_entries(
    sandbox: SandboxHandle, make_settings: MakeSettings, redis_url: str, rdb: Any
) -> None:
    # c1's own pending entries are far apart in the stream, with 40 entries pending for
    # another consumer in between: the delivery count must still be c1's entry's own.
    first = await rdb.xadd(STREAM, {"campaign_id": "42", "audience_ids": "1"})
    middle = await produce(rdb, [(42, [i]) for i in range(100, 140)])
    poison = await rdb.xadd(STREAM, {"campaign_id": "42", "audience_ids": "99"})
    await rdb.xgroup_create(STREAM, GROUP, id="0")
    await rdb.xreadgroup(GROUP, "c1", {STREAM: ">"}, count=1)
    await rdb.xreadgroup(GROUP, "other", {STREAM: ">"}, count=len(middle))
    await rdb.xreadgroup(GROUP, "c1", {STREAM: ">"}, count=1)
    for _ in range(5):
        await rdb.xclaim(STREAM, GROUP, "c1", 0, [poison])
    settings = queue_settings(
        make_settings, redis_url, max_deliveries=3, concurrency=2, claim_idle=1.0
    )

    await consume_here(settings)

    assert 99 not in sandbox.state.receipts[42].received_ids()
    dead = await rdb.xrange(DEAD)
    assert [f["dead_entry_id"] for _, f in dead] == [poison]
    assert first not in [f["dead_entry_id"] for _, f in dead]
    assert not sandbox.state.campaigns[42].alive(1)
    assert await pending_count(rdb) == 0


@pytest.mark.parametrize(
    "faults",
    [FaultConfig(error_status=400), FaultConfig(error_status=200)],
    ids=["error-status-400", "error-status-200"],
)
async def test_ids_that_fail_are_dead_lettered_the_entry_acked_and_the_exit_code_is_1(
    sandbox: SandboxHandle, make_settings: MakeSettings, redis_url: str, rdb: Any
) -> None:
    good, bad = await produce(rdb, [(42, [1, 2]), (999, [1, 2, 3])], ref="ticket-3")
    settings = queue_settings(make_settings, redis_url)

    result = await consume_here(settings)

    assert result.exit_code == 1
    assert not sandbox.state.campaigns[42].alive(1)
    assert not sandbox.state.campaigns[42].alive(2)
    dead = await rdb.xrange(DEAD)
    assert dead == [
        (
            dead[0][0],
            {
                "campaign_id": "999",
                "audience_ids": "1,2,3",
                "ref": "ticket-3",
                "dead_reason": "delete failed",
                "dead_entry_id": bad,
                "dead_consumer": "c1",
            },
        )
    ]
    assert await pending_count(rdb) == 0
    assert settings.audit_log is not None
    records = read_audit(settings.audit_log)
    failed = of(records, "failed")
    assert [(r["campaign_id"], r["audience_ids"], r["entry_id"], r["ref"]) for r in failed] == [
        (999, [1, 2, 3], bad, "ticket-3")
    ]
    assert failed[0]["reason"] == "unknown campaign"
    assert failed[0]["retryable"] is False
    assert {r["entry_id"]: r["dead_lettered_ids"] for r in of(records, "acknowledged")} == {
        good: 0,
        bad: 3,
    }
    assert records[-1]["exit_code"] == 1


# -- Redis unreachable, away, or a stop signal ------------------------------------------------


@pytest.mark.slow
async def test_redis_unreachable_at_start_exits_69_with_one_clear_line(tmp_path: Path) -> None:
    port = closed_port()
    config = tmp_path / "fast.toml"
    config.write_text("redis_backoff_initial = 0.01\n", encoding="utf-8")
    loop = asyncio.get_running_loop()
    began = loop.time()

    done = await finish(
        await start(
            "consume",
            "--redis",
            f"redis://:hunter2@127.0.0.1:{port}/0",
            "--stream",
            STREAM,
            "--base-url",
            f"http://127.0.0.1:{closed_port()}/api/v1/global",
            "--config",
            str(config),
            cwd=tmp_path,
            token="tok",
        ),
        timeout=20,
    )

    assert done.code == 69
    assert loop.time() - began < 10
    assert "Traceback" not in done.err
    lines = [line for line in done.err.splitlines() if not line.startswith("{")]
    assert len(lines) == 1, done.err
    assert lines[0].startswith(
        f"audience-purge: error: cannot reach Redis at redis://:***@127.0.0.1:{port}/0 "
        "after 6 attempts"
    )
    assert "hunter2" not in done.err + done.out


@pytest.mark.parametrize("url", ["http://x", "redis://127.0.0.1:notaport/0"])
@pytest.mark.slow
async def test_a_malformed_redis_url_exits_2(tmp_path: Path, url: str) -> None:
    done = await finish(
        await start(
            "consume",
            "--redis",
            url,
            "--stream",
            STREAM,
            "--base-url",
            f"http://127.0.0.1:{closed_port()}/api/v1/global",
            cwd=tmp_path,
            token="tok",
        )
    )

    assert done.code == 2, done.err
    assert "Traceback" not in done.err
    lines = done.err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("audience-purge: error: redis:")


@pytest.mark.slow
async def test_a_stream_key_holding_another_type_exits_with_one_clear_line(
    sandbox: SandboxHandle, token: str, redis_url: str, rdb: Any, tmp_path: Path
) -> None:
    await rdb.set(STREAM, "not a stream")

    done = await finish(
        await start(
            *consume_args(sandbox, redis_url, tmp_path / "c1.jsonl", "c1", "--until-empty"),
            cwd=tmp_path,
            token=token,
        )
    )

    assert "Traceback" not in done.err, done.err
    assert done.code in (2, 69), done.err  # 1 would claim ids failed
    lines = [line for line in done.err.splitlines() if not line.startswith("{")]
    assert len(lines) == 1, done.err
    assert lines[0].startswith("audience-purge: error:")
    assert sandbox.state.requests_total == 0


class RedisProcess:
    """A redis-server of one test's own, with an append-only file so it can be killed and
    restarted with its data: the stream, the group and its pending entries."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            if os.environ.get("CI") == "true":
                pytest.fail("redis-server is not installed (scripts/test installs it)")
            pytest.skip("redis-server is not installed")
        self.binary = binary
        self.workdir = workdir
        self.port = closed_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        async def answers() -> bool:
            client = aioredis.Redis(port=self.port, socket_connect_timeout=0.2)
            try:
                return bool(await client.ping())
            except Exception:
                return False
            finally:
                await client.aclose()

        await eventually(answers, what="redis-server answers")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    workdir = tmp_path / "own-redis"
    workdir.mkdir()
    server = RedisProcess(workdir)
    try:
        yield server
    finally:
        server.kill()


@pytest.mark.slow
async def test_a_consumer_rides_out_redis_going_away_and_coming_back(
    sandbox: SandboxHandle, token: str, own_redis: RedisProcess, tmp_path: Path
) -> None:
    await own_redis.start()
    client = aioredis.Redis.from_url(own_redis.url, decode_responses=True)
    try:
        for campaign, ids in tens(1, 150, size=5):
            await client.xadd(STREAM, {"campaign_id": str(campaign), "audience_ids": str(ids)})
    finally:
        await client.aclose()
    sandbox.state.replace_faults(FaultConfig(latency_ms=50))
    config = tmp_path / "fast.toml"
    config.write_text(
        "backoff_initial = 0.05\nbackoff_max = 0.5\n"
        "redis_backoff_initial = 0.05\nredis_backoff_max = 0.5\n",
        encoding="utf-8",
    )
    audit = tmp_path / "c1.jsonl"
    proc = await start(
        *consume_args(
            sandbox, own_redis.url, audit, "c1", "--until-empty", "--config", str(config)
        ),
        cwd=tmp_path,
        token=token,
    )
    assert proc.stderr is not None
    seen: list[str] = []

    async def outage_logged() -> None:
        assert proc.stderr is not None
        while True:
            line = (await proc.stderr.readline()).decode()
            seen.append(line)
            if "retrying" in line or not line:
                return

    try:
        await eventually(audit_has(audit, "acknowledged", 2), what="first entries acked")
        own_redis.kill()
        await asyncio.wait_for(outage_logged(), timeout=10)
        await own_redis.start()
        done = await finish(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    assert done.code == 0, "".join(seen) + done.err
    assert "Traceback" not in "".join(seen) + done.err
    assert any("redis unavailable, retrying" in s or "ack failed" in s for s in seen)
    assert not any(sandbox.state.campaigns[42].alive(i) for i in range(1, 151))
    client = aioredis.Redis.from_url(own_redis.url, decode_responses=True)
    try:
        assert int((await client.xpending(STREAM, GROUP))["pending"]) == 0
        assert await client.xlen(DEAD) == 0
    finally:
        await client.aclose()


@pytest.mark.slow
async def test_without_until_empty_the_consumer_waits_for_work_until_sigterm_then_exits_75(
    sandbox: SandboxHandle, token: str, redis_url: str, rdb: Any, tmp_path: Path
) -> None:
    entry_ids = await produce(rdb, tens(1, 30))
    audit = tmp_path / "c1.jsonl"
    proc = await start(*consume_args(sandbox, redis_url, audit, "c1"), cwd=tmp_path, token=token)
    try:
        await eventually(audit_has(audit, "acknowledged", len(entry_ids)), what="all acked")
        with pytest.raises(TimeoutError):  # an empty stream is no reason to stop
            await asyncio.wait_for(asyncio.shield(proc.wait()), timeout=0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
    done = await finish(proc)

    assert done.code == 75, done.err
    assert "Traceback" not in done.err
    finished = read_audit(audit)[-1]
    assert finished["event"] == "run_finished"
    assert (finished["exit_code"], finished["interrupted"], finished["deleted"]) == (75, True, 30)
    assert await pending_count(rdb) == 0


@pytest.mark.slow
async def test_sigterm_mid_run_exits_75_with_every_settled_entry_acked(
    sandbox: SandboxHandle, token: str, redis_url: str, rdb: Any, tmp_path: Path
) -> None:
    entry_ids = await produce(rdb, tens(1, 100, size=5))
    entries = dict(await rdb.xrange(STREAM))  # acknowledged entries are deleted
    sandbox.state.replace_faults(FaultConfig(latency_ms=300))
    audit = tmp_path / "c1.jsonl"
    proc = await start(
        *consume_args(sandbox, redis_url, audit, "c1", "--grace", "5"), cwd=tmp_path, token=token
    )
    try:
        await eventually(audit_has(audit, "acknowledged"), what="a first entry acked")
    finally:
        proc.send_signal(signal.SIGTERM)
    done = await finish(proc)

    assert done.code == 75, done.err
    assert "Traceback" not in done.err
    records = read_audit(audit)
    assert records[-1]["event"] == "run_finished"
    assert (records[-1]["exit_code"], records[-1]["interrupted"]) == (75, True)
    deleted_ids: dict[str, set[int]] = {}
    for r in of(records, "deleted"):
        deleted_ids.setdefault(r["entry_id"], set()).update(r["audience_ids"])
    settled = {
        e
        for e, ids in deleted_ids.items()
        if ids == set(map(int, entries[e]["audience_ids"].split(",")))
    }
    acknowledged = {r["entry_id"] for r in of(records, "acknowledged")}
    assert settled
    assert acknowledged == settled
    assert len(acknowledged) < len(entry_ids)
    pending = set(await pending_of(rdb))
    assert pending.isdisjoint(acknowledged)
    (group,) = await rdb.xinfo_groups(STREAM)
    last = stream_order(group["last-delivered-id"])
    delivered = {e for e in entry_ids if stream_order(e) <= last}
    assert pending == delivered - acknowledged


async def test_a_refused_token_leaves_the_entries_pending_not_dead_lettered(
    sandbox: SandboxHandle, make_settings: MakeSettings, redis_url: str, rdb: Any
) -> None:
    entries = await produce(rdb, [(42, [1, 2]), (42, [3, 4]), (42, [5, 6])])
    settings = queue_settings(make_settings, redis_url, token=Secret("wrong"), concurrency=1)

    result = await consume_here(settings)

    assert result.exit_code == 3
    assert await rdb.xlen(f"{STREAM}:dead") == 0
    refused = await pending_of(rdb, "c1")
    assert refused
    assert set(refused) <= set(entries)
    assert sandbox.state.campaigns[42].deleted_count == 0


async def test_consume_refuses_a_dry_run_before_reading_anything(
    sandbox: SandboxHandle, make_settings: MakeSettings, redis_url: str, rdb: Any
) -> None:
    await produce(rdb, tens(1, 20))
    settings = queue_settings(make_settings, redis_url, dry_run=True)

    with pytest.raises(UsageError, match="consume has no dry run"):
        await consume_here(settings)

    assert await rdb.xinfo_groups(STREAM) == []  # not even a group was created
    assert sandbox.state.requests_total == 0
    assert settings.audit_log is not None
    assert not settings.audit_log.exists()


async def test_enqueue_refuses_a_dry_run_before_writing_an_entry(
    make_settings: MakeSettings, redis_url: str, rdb: Any, tmp_path: Path
) -> None:
    path = write_csv(tmp_path / "ids.csv", ["1", "2", "3"])
    settings = make_settings(redis_url=redis_url, stream=STREAM, campaign_id=42, dry_run=True)

    with pytest.raises(UsageError, match="enqueue has no dry run"):
        await run_enqueue(settings, str(path))

    assert await rdb.exists(STREAM) == 0


async def test_sigterm_during_enqueue_writes_what_was_read_and_exits_75(
    make_settings: MakeSettings, redis_url: str, rdb: Any, tmp_path: Path
) -> None:
    path = write_csv(tmp_path / "ids.csv", [str(i) for i in range(1, 500_001)])
    settings = make_settings(
        redis_url=redis_url, stream=STREAM, campaign_id=42, audit_log=tmp_path / "enqueue.jsonl"
    )
    loop = asyncio.get_running_loop()
    loop.call_later(0.3, os.kill, os.getpid(), signal.SIGTERM)

    code = await run_enqueue(settings, str(path), out=io.StringIO())

    assert code == 75
    records = read_audit(tmp_path / "enqueue.jsonl")
    enqueued = [r["entry_id"] for r in of(records, "enqueued")]
    assert 0 < len(enqueued) < 50_000  # stopped part of the way
    assert [entry_id for entry_id, _ in await rdb.xrange(STREAM)] == enqueued
    finished = records[-1]
    assert (finished["event"], finished["exit_code"], finished["interrupted"]) == (
        "run_finished",
        75,
        True,
    )
    assert finished["entries"] == len(enqueued)


async def test_an_error_while_acknowledging_ends_the_consumer_instead_of_vanishing(
    sandbox: SandboxHandle,
    make_settings: MakeSettings,
    redis_url: str,
    rdb: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await produce(rdb, tens(1, 50))
    settings = queue_settings(make_settings, redis_url)

    def broken(self: Recorder, entry_id: str, dead_lettered_ids: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Recorder, "acknowledged", broken)

    with pytest.raises(OSError, match="No space left on device"):
        await consume_here(settings)

    finished = read_audit(settings.audit_log)[-1]
    assert finished["event"] == "run_finished"
    assert "No space left on device" in finished["error"]


async def test_a_cancelled_read_ends_cancelled_whatever_redis_py_does(redis_url: str) -> None:
    # redis-py 8 loses about one cancel in twenty that lands as a short blocking read
    # returns: it retries the command, or reports a closed connection instead.
    queue = StreamQueue(open_redis(redis_url), STREAM, GROUP, "c1", DEAD, 5, 600_000)
    await queue.ensure_group()
    rng = random.Random(7)

    async def read_forever() -> None:
        while True:
            await queue.read(4, 5)

    try:
        for _ in range(300):
            task = asyncio.create_task(read_forever())
            await asyncio.sleep(rng.uniform(0, 0.02))
            task.cancel()
            await asyncio.wait({task}, timeout=2)
            assert task.cancelled(), task
    finally:
        await queue.close()
