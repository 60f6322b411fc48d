"""Queue hygiene on a real redis-server: acknowledged entries leave the stream, the
dead-letter stream is bounded, and ``enqueue`` of the same input is idempotent and resumes
an interrupted run instead of doubling its entries."""

from __future__ import annotations

import asyncio
import io
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import read_audit, write_csv
from queue_helpers import DEAD, GROUP, STREAM, of, pending_count, produce, tens

from worker.commands import enqueue as enqueue_command
from worker.commands.consume import run_consumer
from worker.commands.enqueue import run_enqueue
from worker.errors import StateError
from worker.queue import enqueued
from worker.queue.intake import make_queue
from worker.queue.streams import open_redis
from worker.queue.watch import QueueWatch
from worker.records.metrics import Metrics
from worker.sandbox.runner import SandboxHandle
from worker.settings import Settings

MakeSettings = Callable[..., Settings]


def consumer_settings(make_settings: MakeSettings, redis_url: str, **more: Any) -> Settings:
    fields: dict[str, Any] = {
        "redis_url": redis_url,
        "stream": STREAM,
        "consumer": "c1",
        "until_empty": True,
    }
    return make_settings(**{**fields, **more})


async def consume_here(settings: Settings) -> Any:
    return await asyncio.wait_for(run_consumer(settings), timeout=20)


# -- acknowledged entries leave the stream ---------------------------------------------------


async def test_acknowledged_entries_are_deleted_so_the_stream_holds_only_work_left(
    sandbox: SandboxHandle, make_settings: MakeSettings, redis_url: str, rdb: Any
) -> None:
    entries = await produce(rdb, tens(1, 300))

    result = await consume_here(consumer_settings(make_settings, redis_url))

    assert result.exit_code == 0
    assert not any(sandbox.state.campaigns[42].alive(i) for i in range(1, 301))
    assert await rdb.xlen(STREAM) == 0
    assert await pending_count(rdb) == 0
    records = read_audit(make_settings().audit_log)
    assert sorted(r["entry_id"] for r in of(records, "acknowledged")) == sorted(entries)


async def test_entries_whose_ids_failed_leave_the_stream_once_dead_lettered(
    sandbox: SandboxHandle, make_settings: MakeSettings, redis_url: str, rdb: Any
) -> None:
    await produce(rdb, [(42, [1, 2]), (999, [1, 2, 3])])
    await rdb.xadd(STREAM, {"campaign_id": "forty-two", "audience_ids": "4"})

    result = await consume_here(consumer_settings(make_settings, redis_url))

    assert result.exit_code == 1
    assert await rdb.xlen(STREAM) == 0
    reasons = [fields["dead_reason"] for _, fields in await rdb.xrange(DEAD)]
    assert sorted(reasons) == ["delete failed", "malformed: campaign_id not an integer"]


async def test_entries_are_kept_when_another_group_reads_the_stream_too(
    sandbox: SandboxHandle, make_settings: MakeSettings, redis_url: str, rdb: Any
) -> None:
    entries = await produce(rdb, tens(1, 50))
    await rdb.xgroup_create(STREAM, "archive", id="0")

    result = await consume_here(consumer_settings(make_settings, redis_url))

    assert result.exit_code == 0
    assert await rdb.xlen(STREAM) == 5
    assert await pending_count(rdb) == 0
    got = await rdb.xreadgroup("archive", "a1", {STREAM: ">"})
    assert [entry_id for entry_id, _ in got[0][1]] == entries  # the other group reads them all


async def test_until_empty_still_ends_when_redis_reports_no_lag_after_deletions(
    sandbox: SandboxHandle, make_settings: MakeSettings, redis_url: str, rdb: Any
) -> None:
    # The newest delivered entry deleted, an older one still pending: XINFO GROUPS says lag
    # NULL. The consumer must neither take that for "drained" nor wait for ever.
    entries = await produce(rdb, tens(1, 40))
    await rdb.xgroup_create(STREAM, GROUP, id="0")
    await rdb.xreadgroup(GROUP, "c1", {STREAM: ">"}, count=2)
    await rdb.xack(STREAM, GROUP, entries[1])
    await rdb.xdel(STREAM, entries[1])
    (info,) = await rdb.xinfo_groups(STREAM)
    assert info["lag"] is None

    result = await consume_here(consumer_settings(make_settings, redis_url))

    assert result.exit_code == 0
    assert result.tally.deleted == 30  # c1's own pending entry, then the two undelivered
    assert await rdb.xlen(STREAM) == 0


async def test_drained_looks_past_a_lag_redis_cannot_tell(redis_url: str, rdb: Any) -> None:
    # Nothing pending, the newest delivered entry deleted, an older one acknowledged but kept
    # (by an older version), and an entry added after the last read: Redis says lag NULL.
    entries = await produce(rdb, tens(1, 20))
    await rdb.xgroup_create(STREAM, GROUP, id="0")
    await rdb.xreadgroup(GROUP, "c1", {STREAM: ">"})
    await rdb.xack(STREAM, GROUP, *entries)
    await rdb.xdel(STREAM, entries[1])
    queue = make_queue(
        Settings(redis_url=redis_url, stream=STREAM, consumer="c1"), open_redis(redis_url)
    )
    try:
        assert await queue.drained()
        late = await rdb.xadd(STREAM, {"campaign_id": "42", "audience_ids": "99"})
        (info,) = await rdb.xinfo_groups(STREAM)
        assert (info["pending"], info["lag"]) == (0, None)

        assert not await queue.drained()

        await rdb.xreadgroup(GROUP, "c1", {STREAM: ">"})
        await rdb.xack(STREAM, GROUP, late)
        assert await queue.drained()
    finally:
        await queue.close()


async def test_the_lag_metric_is_estimated_while_redis_reports_none(
    redis_url: str, rdb: Any
) -> None:
    entries = await produce(rdb, tens(1, 100))
    await rdb.xgroup_create(STREAM, GROUP, id="0")
    await rdb.xreadgroup(GROUP, "c1", {STREAM: ">"}, count=4)
    await rdb.xack(STREAM, GROUP, entries[3])  # acknowledged out of order, and deleted
    await rdb.xdel(STREAM, entries[3])
    assert (await rdb.xinfo_groups(STREAM))[0]["lag"] is None
    metrics = Metrics(rate_per_second=1.0)
    queue = make_queue(
        Settings(redis_url=redis_url, stream=STREAM, consumer="c1"), open_redis(redis_url)
    )
    try:
        await QueueWatch(queue, metrics).poll()
    finally:
        await queue.close()

    assert metrics.stream_lag._value.get() == 6  # 9 entries left, 3 of them pending


# -- the dead-letter stream is bounded ---------------------------------------------------------


async def test_the_dead_letter_stream_keeps_the_newest_dead_letter_max_entries(
    sandbox: SandboxHandle, make_settings: MakeSettings, redis_url: str, rdb: Any
) -> None:
    poison = [
        await rdb.xadd(STREAM, {"campaign_id": "x", "audience_ids": str(i)}) for i in range(7)
    ]

    result = await consume_here(consumer_settings(make_settings, redis_url, dead_letter_max=3))

    assert result.tally.dead_lettered == 7
    dead = await rdb.xrange(DEAD)
    assert [fields["dead_entry_id"] for _, fields in dead] == poison[-3:]
    records = read_audit(make_settings().audit_log)
    assert [r["entry_id"] for r in of(records, "dead_lettered")] == poison  # all audited


async def test_a_dead_letter_max_of_0_keeps_every_dead_letter(
    sandbox: SandboxHandle, make_settings: MakeSettings, redis_url: str, rdb: Any
) -> None:
    for i in range(5):
        await rdb.xadd(STREAM, {"campaign_id": "x", "audience_ids": str(i)})

    await consume_here(consumer_settings(make_settings, redis_url, dead_letter_max=0))

    assert await rdb.xlen(DEAD) == 5


# -- enqueue is idempotent per input -------------------------------------------------------------


def enqueue_settings(make_settings: MakeSettings, redis_url: str, **more: Any) -> Settings:
    fields: dict[str, Any] = {
        "redis_url": redis_url,
        "stream": STREAM,
        "campaign_id": 42,
        "batch_size": 10,
    }
    return make_settings(**{**fields, **more})


def audit_at(tmp_path: Path, name: str) -> dict[str, Any]:
    return {"audit_log": tmp_path / f"{name}.jsonl"}


async def entry_ids(rdb: Any) -> list[int]:
    return [int(i) for _, f in await rdb.xrange(STREAM) for i in f["audience_ids"].split(",")]


async def test_enqueueing_the_same_input_twice_writes_it_once(
    make_settings: MakeSettings, redis_url: str, rdb: Any, tmp_path: Path
) -> None:
    path = write_csv(tmp_path / "ids.csv", [str(i) for i in range(1, 251)])
    first = enqueue_settings(make_settings, redis_url, **audit_at(tmp_path, "first"))
    again = enqueue_settings(make_settings, redis_url, **audit_at(tmp_path, "again"))
    assert await run_enqueue(first, str(path), out=io.StringIO()) == 0
    out = io.StringIO()

    code = await run_enqueue(again, str(path), out=out)

    assert code == 0
    assert await rdb.xlen(STREAM) == 25
    assert await entry_ids(rdb) == list(range(1, 251))
    run_id = read_audit(tmp_path / "first.jsonl")[0]["run_id"]
    assert out.getvalue().startswith(
        f"already enqueued: {path} is on {STREAM} (25 entries, 250 ids, written by run {run_id}"
    )
    assert "nothing written. --force enqueues it again" in out.getvalue()
    assert not (tmp_path / "again.jsonl").exists()  # nothing done, nothing to audit


async def test_force_enqueues_the_same_input_again(
    make_settings: MakeSettings, redis_url: str, rdb: Any, tmp_path: Path
) -> None:
    path = write_csv(tmp_path / "ids.csv", [str(i) for i in range(1, 51)])
    await run_enqueue(enqueue_settings(make_settings, redis_url), str(path), out=io.StringIO())

    code = await run_enqueue(
        enqueue_settings(make_settings, redis_url, force=True), str(path), out=io.StringIO()
    )

    assert code == 0
    assert await entry_ids(rdb) == [*range(1, 51), *range(1, 51)]


async def test_the_same_file_for_another_campaign_is_another_enqueue(
    make_settings: MakeSettings, redis_url: str, rdb: Any, tmp_path: Path
) -> None:
    path = write_csv(tmp_path / "ids.csv", [str(i) for i in range(1, 31)])
    await run_enqueue(enqueue_settings(make_settings, redis_url), str(path), out=io.StringIO())

    await run_enqueue(
        enqueue_settings(make_settings, redis_url, campaign_id=77), str(path), out=io.StringIO()
    )

    campaigns = [f["campaign_id"] for _, f in await rdb.xrange(STREAM)]
    assert campaigns == ["42"] * 3 + ["77"] * 3


async def crashing(settings: Settings, path: Path) -> None:
    """An enqueue that dies part of the way (see :func:`break_after`), in a task of its own:
    on Python 3.11 a TaskGroup whose child fails leaves its parent task with a pending
    cancellation request, which would cancel this test's next Redis call."""
    with pytest.raises(OSError, match="died"):
        await asyncio.create_task(run_enqueue(settings, str(path), out=io.StringIO()))


def break_after(writes: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The enqueue's ``writes + 1``-th write to Redis fails: a crash part of the way."""
    real = enqueued.write
    calls = 0

    async def failing(*args: Any, **kwargs: Any) -> list[str]:
        nonlocal calls
        calls += 1
        if calls > writes:
            raise OSError("the process died here")
        return await real(*args, **kwargs)

    monkeypatch.setattr(enqueued, "write", failing)


async def test_an_interrupted_enqueue_is_resumed_after_the_entries_it_wrote(
    make_settings: MakeSettings,
    redis_url: str,
    rdb: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ids = [str(i) for i in range(1, 2_501)]
    path = write_csv(tmp_path / "ids.csv", [*ids[:700], "bad", "3", *ids[700:]])
    break_after(2, monkeypatch)  # 2 writes of ENTRIES_PER_WRITE entries, then a crash
    await crashing(enqueue_settings(make_settings, redis_url, **audit_at(tmp_path, "first")), path)
    written = 2 * enqueue_command.ENTRIES_PER_WRITE
    assert await rdb.xlen(STREAM) == written
    monkeypatch.undo()
    out = io.StringIO()

    code = await run_enqueue(
        enqueue_settings(make_settings, redis_url, **audit_at(tmp_path, "second")),
        str(path),
        out=out,
    )

    assert code == 0
    assert await entry_ids(rdb) == list(range(1, 2_501))  # every id once, in input order
    assert await rdb.xlen(STREAM) == math.ceil(2_500 / 10)
    first = read_audit(tmp_path / "first.jsonl")
    records = read_audit(tmp_path / "second.jsonl")
    assert records[0]["resumed"] == {"run_id": first[0]["run_id"], "entries": written}
    assert len(of(records, "enqueued")) == 250 - written
    assert records[-1]["skipped_entries"] == written
    assert f"resumed after {written} entries already there" in out.getvalue()
    marker = await rdb.hgetall(records[0]["marker"])
    assert (marker["status"], marker["entries"], marker["ids"]) == ("complete", "250", "2500")
    assert marker["run_id"] == records[0]["run_id"]


async def test_an_interrupted_enqueue_is_not_resumed_with_another_batch_size(
    make_settings: MakeSettings,
    redis_url: str,
    rdb: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = write_csv(tmp_path / "ids.csv", [str(i) for i in range(1, 3_001)])
    break_after(1, monkeypatch)
    await crashing(enqueue_settings(make_settings, redis_url), path)
    monkeypatch.undo()

    with pytest.raises(StateError, match="wrote 100 entries with --batch-size 10: resume it"):
        await run_enqueue(
            enqueue_settings(make_settings, redis_url, batch_size=20), str(path), out=io.StringIO()
        )

    assert await rdb.xlen(STREAM) == 100  # nothing written by the refused run
    await run_enqueue(
        enqueue_settings(make_settings, redis_url, batch_size=20, force=True),
        str(path),
        out=io.StringIO(),
    )
    assert await rdb.xlen(STREAM) == 100 + 150  # --force: the whole input again


async def test_a_run_whose_input_another_run_took_over_writes_nothing_more(
    redis_url: str, rdb: Any
) -> None:
    queue = make_queue(
        Settings(redis_url=redis_url, stream=STREAM, consumer="x"), open_redis(redis_url)
    )
    key = enqueued.marker_key(STREAM, "ab" * 32, 42)
    entry = {"campaign_id": "42", "audience_ids": "1,2"}
    try:
        old = await enqueued.claim(
            queue, key, run_id="old", batch_size=10, force=False, about={"input": "ids.csv"}
        )
        await enqueued.write(queue, key, "old", [entry])
        new = await enqueued.claim(
            queue, key, run_id="new", batch_size=10, force=False, about={"input": "ids.csv"}
        )

        with pytest.raises(StateError, match=r"taken over \(TAKEN by run new\)"):
            await enqueued.write(queue, key, "old", [entry, entry])
    finally:
        await queue.close()

    assert old.skip == 0
    assert (new.skip, new.previous.run_id if new.previous else None) == (1, "old")
    assert await rdb.xlen(STREAM) == 1
    assert (await rdb.hgetall(key))["entries"] == "1"
