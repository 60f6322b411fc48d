"""Specification of worker.queue.acks at its edges (issue #25: its mutants showed what the
Redis end-to-end tests leave open): an entry is acknowledged once, after its last batch, its
failed ids dead-lettered first; what is held and how much room is left; what happens to an
acknowledgement that fails or is still waiting when the run ends. A fake queue, no Redis."""

from __future__ import annotations

import asyncio
import gc
import warnings
from pathlib import Path
from typing import Any

import orjson
import pytest
from pyroaring import BitMap64
from structlog.testing import capture_logs

from worker.input.batching import Batch
from worker.queue.acks import Acks
from worker.queue.message import Entry
from worker.queue.retrying import RedisBackoff
from worker.queue.streams import QueueUnavailable
from worker.records.audit import AuditLog
from worker.records.recorder import Recorder

ENTRY = Entry("1-0", 7, (1, 2, 3, 4), "ticket-9")


class FakeQueue:
    """Records the writes; ``gate`` holds each until set, ``error`` makes each raise."""

    def __init__(self, error: Exception | None = None) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.error = error
        self.gate = asyncio.Event()
        self.gate.set()

    async def ack(self, entry_id: str) -> None:
        await self._write(("ack", entry_id))

    async def dead_letter(self, entry_id: str, fields: dict[str, str], reason: str) -> None:
        await self._write(("dead_letter", entry_id, fields, reason))

    async def _write(self, call: tuple[Any, ...]) -> None:
        await self.gate.wait()
        if self.error is not None:
            raise self.error
        self.calls.append(call)


def make(tmp_path: Path, queue: FakeQueue, errors: list[Exception] | None = None) -> Acks:
    recorder = Recorder(AuditLog(tmp_path / "audit.jsonl", "run-1"))
    sink = errors if errors is not None else []
    return Acks(queue, recorder, RedisBackoff(0.0, 0.0), sink.append)  # type: ignore[arg-type]


def acknowledged(tmp_path: Path) -> list[tuple[str, int]]:
    path = tmp_path / "audit.jsonl"
    records = (
        [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []
    )
    return [
        (r["entry_id"], r["dead_lettered_ids"]) for r in records if r["event"] == "acknowledged"
    ]


def batch(*ids: int, entry: str | None = "1-0", campaign: int = 7) -> Batch:
    return Batch(campaign, ids, entry_id=entry)


async def test_an_entry_is_acknowledged_once_after_its_last_batch(tmp_path: Path) -> None:
    queue = FakeQueue()
    acks = make(tmp_path, queue)
    async with acks.running(grace=5):
        acks.expect(ENTRY, 3)
        acks.settled(batch(1))
        acks.settled(batch(2))
        await asyncio.sleep(0)
        assert (queue.calls, acks.held(), acks.idle()) == ([], 1, False)
        acks.settled(batch(3, 4))
        assert (acks.parts, acks.entries) == ({}, {})

    assert queue.calls == [("ack", "1-0")]
    assert acknowledged(tmp_path) == [("1-0", 0)]
    assert (acks.held(), acks.idle(), acks.incomplete) == (0, True, False)


async def test_the_failed_ids_of_an_entry_are_dead_lettered_instead(tmp_path: Path) -> None:
    queue = FakeQueue()
    acks = make(tmp_path, queue)
    acks.recorder.failed_pairs.update({7: BitMap64([2, 4, 99]), 8: BitMap64([1])})
    async with acks.running(grace=5):
        acks.expect(ENTRY, 2)
        acks.settled(batch(1, 2))
        acks.settled(batch(3, 4))

    fields = {"campaign_id": "7", "audience_ids": "2,4", "ref": "ticket-9"}
    assert queue.calls == [("dead_letter", "1-0", fields, "delete failed")]
    assert acknowledged(tmp_path) == [("1-0", 2)]
    assert acks.failed == {}


async def test_a_batch_of_no_entry_or_of_an_entry_not_expected_is_ignored(tmp_path: Path) -> None:
    queue = FakeQueue()
    acks = make(tmp_path, queue)
    async with acks.running(grace=5):
        acks.expect(ENTRY, 1)
        acks.settled(batch(1, entry=None))
        acks.settled(batch(1, entry="2-0"))
        assert acks.parts == {"1-0": 1}
        acks.settled(batch(1))
    assert queue.calls == [("ack", "1-0")]


def test_an_entry_settled_outside_running_is_a_programming_error(tmp_path: Path) -> None:
    acks = make(tmp_path, FakeQueue())
    acks.expect(ENTRY, 1)
    with pytest.raises(RuntimeError, match=r"inside Acks\.running"):
        acks.settled(batch(1))


async def test_a_queue_that_stays_away_leaves_the_entry_unacknowledged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("worker.queue.retrying.QUEUE_WRITE_ATTEMPTS", 2)
    errors: list[Exception] = []
    acks = make(tmp_path, FakeQueue(QueueUnavailable("down")), errors)
    async with acks.running(grace=5):
        acks.expect(ENTRY, 1)
        acks.settled(batch(1))
    assert (acknowledged(tmp_path), errors) == ([], [])


async def test_an_unexpected_error_in_an_acknowledgement_is_handed_to_on_error(
    tmp_path: Path,
) -> None:
    boom = ValueError("boom")
    errors: list[Exception] = []
    acks = make(tmp_path, FakeQueue(boom), errors)
    async with acks.running(grace=5):
        acks.expect(ENTRY, 1)
        acks.settled(batch(1))
    assert (errors, acknowledged(tmp_path)) == ([boom], [])


async def test_room_is_what_the_limit_leaves_and_waits_for_an_acknowledgement(
    tmp_path: Path,
) -> None:
    queue = FakeQueue()
    queue.gate.clear()
    acks = make(tmp_path, queue)
    async with acks.running(grace=5):
        acks.expect(ENTRY, 1)
        acks.expect(Entry("2-0", 7, (5,), None), 1)
        assert await acks.room(3) == 1
        acks.settled(batch(1))  # being acknowledged: still held
        assert acks.held() == 2
        waiting = asyncio.create_task(acks.room(2))
        await asyncio.sleep(0.01)
        assert not waiting.done()
        queue.gate.set()
        assert await asyncio.wait_for(waiting, 5) == 1
        acks.settled(batch(5, entry="2-0"))


async def test_acknowledgements_still_waiting_after_the_grace_are_cancelled(tmp_path: Path) -> None:
    queue = FakeQueue()
    queue.gate.clear()
    acks = make(tmp_path, queue)
    with capture_logs() as logs:
        async with acks.running(grace=0.01):
            acks.expect(ENTRY, 1)
            acks.settled(batch(1))
    assert (acks.incomplete, queue.calls, acknowledged(tmp_path)) == (True, [], [])
    assert [(e["event"], e["entries"]) for e in logs] == [
        ("acknowledgements still pending at exit", 1)
    ]
    assert acks.tasks == set()


async def test_an_entry_settled_as_the_run_ends_on_an_error_stays_pending(tmp_path: Path) -> None:
    """The task group is aborting: no acknowledgement can start, the entry is delivered
    again, and its coroutine is closed (never left un-awaited)."""
    queue = FakeQueue()
    acks = make(tmp_path, queue)
    boom = ValueError("boom")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ExceptionGroup) as raised:
            await _settle_while_aborting(acks, boom)
        gc.collect()

    assert raised.value.exceptions == (boom,)
    assert (queue.calls, acks.tasks, acknowledged(tmp_path)) == ([], set(), [])
    assert [str(w.message) for w in caught if "never awaited" in str(w.message)] == []


async def _settle_while_aborting(acks: Acks, error: Exception) -> None:
    async def fails() -> None:
        raise error

    async with acks.running(grace=5):
        acks.expect(ENTRY, 1)
        assert acks._group is not None
        acks._group.create_task(fails())
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            acks.settled(batch(1))
            raise


async def test_an_entry_being_acknowledged_is_held_and_more_than_the_limit_leaves_no_room(
    tmp_path: Path,
) -> None:
    queue = FakeQueue()
    queue.gate.clear()
    acks = make(tmp_path, queue)
    async with acks.running(grace=5):
        acks.expect(ENTRY, 1)
        acks.settled(batch(1))
        assert (acks.parts, acks.held()) == ({}, 1)  # its acknowledgement is under way
        acks.expect(Entry("2-0", 7, (5,), None), 1)
        acks.expect(Entry("3-0", 7, (6,), None), 1)
        waiting = asyncio.create_task(acks.room(2))  # 3 held, over the limit
        await asyncio.sleep(0.01)
        assert not waiting.done()
        queue.gate.set()
        acks.settled(batch(5, entry="2-0"))
        acks.settled(batch(6, entry="3-0"))
        assert await asyncio.wait_for(waiting, 5) >= 1
