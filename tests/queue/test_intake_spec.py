"""Specification of worker.queue.intake at its edges (issue #25: its mutants showed what the
Redis end-to-end tests leave open): how an entry becomes batches, when it is dead-lettered
instead, how long a read blocks and for how many entries, how Redis errors end a consumer,
and what a waiting consumer says. A fake queue in process, no Redis."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
from structlog.testing import capture_logs

from worker.errors import ConfigError, ServiceUnavailable
from worker.input.batching import Batch
from worker.queue.acks import Acks
from worker.queue.admin import PendingEntry
from worker.queue.intake import Intake, lost, make_queue, open_queue
from worker.queue.retrying import RedisBackoff
from worker.queue.streams import QueueUnavailable
from worker.records.audit import AuditLog
from worker.records.recorder import Recorder
from worker.settings import Settings

GOOD = {"campaign_id": "7", "audience_ids": "1,2,3,4,5", "ref": "t-1"}


class FakeQueue:
    """Hands out ``reads`` one per read (an exception is raised), then nothing."""

    stream, group, consumer, claim_idle_ms = "s", "g", "me", 60_000

    def __init__(self, *reads: Any, drained: Any = True) -> None:
        self.reads = list(reads)
        self.asked: list[tuple[int, int]] = []
        self.dead: list[tuple[str, Any, str]] = []
        self.acked: list[str] = []
        self.drained_answer = drained
        self.rescans = 0

    async def read(self, room: int, block_ms: int) -> Any:
        self.asked.append((room, block_ms))
        await asyncio.sleep(0)  # a read blocks: the loop runs meanwhile
        got = self.reads.pop(0) if self.reads else []
        if isinstance(got, Exception):
            raise got
        return got

    def rescan_own_pending(self) -> None:
        self.rescans += 1

    async def drained(self) -> bool:
        if isinstance(self.drained_answer, Exception):
            raise self.drained_answer
        return bool(self.drained_answer)

    async def dead_letter(self, entry_id: str, fields: Any, reason: str) -> None:
        self.dead.append((entry_id, fields, reason))

    async def ack(self, entry_id: str) -> None:
        self.acked.append(entry_id)


@pytest.fixture(autouse=True)
def nothing_pending_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("worker.queue.intake.pending_entries", _returning([]))


class FakeRedis:
    def set_response_callback(self, *_: object) -> None:
        pass


def consumer(
    tmp_path: Path, queue: FakeQueue, **settings: Any
) -> tuple[Intake, Acks, Recorder, list[Exception]]:
    recorder = Recorder(AuditLog(tmp_path / "audit.jsonl", "run-1"))
    backoff = RedisBackoff(0.0, 0.0)
    errors: list[Exception] = []
    acks = Acks(queue, recorder, backoff, errors.append)  # type: ignore[arg-type]
    config = Settings(until_empty=True, batch_size=2, max_deliveries=3, **settings)
    return Intake(queue, config, recorder, acks, backoff), acks, recorder, errors  # type: ignore[arg-type]


async def drain(intake: Intake, acks: Acks) -> list[Batch]:
    out: list[Batch] = []
    async with acks.running(grace=5):
        async for batch in intake.batches():
            out.append(batch)
            acks.settled(batch)
    return out


async def read_all(intake: Intake) -> None:
    """Every batch, outside Acks.running: for a consumer that ends before its first one."""
    async for _ in intake.batches():
        pass


def audit(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "audit.jsonl"
    lines = path.read_bytes().splitlines() if path.exists() else []
    return [orjson.loads(line) for line in lines]


async def test_an_entry_is_cut_into_batches_of_the_batch_size_and_acknowledged_after_all(
    tmp_path: Path,
) -> None:
    queue = FakeQueue([("1-0", GOOD, 1)])
    intake, acks, recorder, _ = consumer(tmp_path, queue)
    told: list[tuple[str, Any]] = []
    recorder.subscribe(type("O", (), {"on_event": lambda _, e, f: told.append((e, dict(f)))})())

    batches = await drain(intake, acks)

    assert [(b.campaign_id, b.audience_ids, b.entry_id, b.ref) for b in batches] == [
        (7, (1, 2), "1-0", "t-1"),
        (7, (3, 4), "1-0", "t-1"),
        (7, (5,), "1-0", "t-1"),
    ]
    assert told[0] == ("admitted", {"entry_id": "1-0", "audience_ids": (1, 2, 3, 4, 5)})
    assert queue.acked == ["1-0"]
    assert queue.asked[0][1] == 200  # until_empty: a short block, to notice the end


async def test_an_entry_read_again_while_in_flight_is_not_sent_twice(tmp_path: Path) -> None:
    queue = FakeQueue([("1-0", GOOD, 1)])
    intake, acks, _, _ = consumer(tmp_path, queue)
    acks.expect(type("E", (), {"entry_id": "1-0"})(), 1)

    assert await intake._admit("1-0", GOOD, 2) == []  # type: ignore[arg-type]
    assert acks.parts == {"1-0": 1}


async def test_an_entry_delivered_more_than_max_deliveries_is_dead_lettered_whole(
    tmp_path: Path,
) -> None:
    queue = FakeQueue([("1-0", GOOD, 4), ("2-0", GOOD, 3)])
    intake, acks, _, _ = consumer(tmp_path, queue)

    batches = await drain(intake, acks)

    reason = "delivered 4 times (max_deliveries 3)"
    assert queue.dead == [("1-0", GOOD, reason)]
    assert {b.entry_id for b in batches} == {"2-0"}
    dead = [r for r in audit(tmp_path) if r["event"] == "dead_lettered"]
    assert [(r["entry_id"], r["reason"], r["fields"]) for r in dead] == [("1-0", reason, GOOD)]


async def test_a_malformed_entry_is_dead_lettered_saying_why(tmp_path: Path) -> None:
    bad = [(b"campaign_id", b"7"), (b"audience_ids", b"\xff")]
    queue = FakeQueue([("1-0", bad, 1)])
    intake, acks, _, _ = consumer(tmp_path, queue)

    assert await drain(intake, acks) == []
    ((entry_id, fields, reason),) = queue.dead
    assert (entry_id, fields) == ("1-0", bad)
    assert reason.startswith("malformed: field audience_ids is not UTF-8")


async def test_a_consumer_reads_no_more_than_its_room_and_blocks_2_s_without_until_empty(
    tmp_path: Path,
) -> None:
    from worker.settings.rate import RateSpec

    queue = FakeQueue([("1-0", GOOD, 1)], [("2-0", GOOD, 1)])
    intake, acks, _, _ = consumer(tmp_path, queue, rate=RateSpec(2, 1.0), concurrency=2)
    intake._settings = Settings(until_empty=False, batch_size=2, rate=RateSpec(2, 1.0))

    async with acks.running(grace=5):
        batches = intake.batches()
        for _ in range(4):  # the three batches of the first entry, the first of the second
            await anext(batches)
        await batches.aclose()  # type: ignore[attr-defined]
        acks.parts.clear()
    # the prefetch limit (4) with nothing held, then with the first entry held
    assert queue.asked == [(4, 2000), (3, 2000)]


async def test_until_empty_waits_while_entries_are_held_or_the_group_not_drained(
    tmp_path: Path,
) -> None:
    queue = FakeQueue([], [], drained=False)
    intake, acks, _, _ = consumer(tmp_path, queue)
    answers = iter([False, True])

    async def drained() -> bool:
        return next(answers)

    queue.drained = drained  # type: ignore[method-assign]
    async with acks.running(grace=5):
        assert [b async for b in intake.batches()] == []
    assert len(queue.asked) == 2


async def test_redis_away_longer_than_the_outage_max_ends_the_consumer(tmp_path: Path) -> None:
    queue = FakeQueue()

    async def away(room: int, block_ms: int) -> Any:
        await asyncio.sleep(0.001)  # a refused connection, for as long as it takes
        raise QueueUnavailable("connection refused")

    queue.read = away  # type: ignore[method-assign]
    intake, _, _, _ = consumer(tmp_path, queue, redis_outage_max=0.05)

    # Bounded: a consumer that ignored the outage max would retry for ever.
    with pytest.raises(ServiceUnavailable) as error:
        async with asyncio.timeout(5):
            await read_all(intake)

    assert str(error.value) == (
        "Redis away for more than redis_outage_max (0.05 s): connection refused; the entries "
        "read and not acknowledged stay pending"
    )
    assert queue.rescans >= 1


@pytest.mark.parametrize("where", ["read", "drained"])
async def test_a_group_gone_ends_the_consumer_saying_it_is_not_created_again(
    tmp_path: Path, where: str
) -> None:
    gone = QueueUnavailable("NOGROUP no such group", permanent=True)
    queue = FakeQueue(gone) if where == "read" else FakeQueue(drained=gone)
    intake, _, _, _ = consumer(tmp_path, queue)

    with pytest.raises(ServiceUnavailable, match=r"^stream s or its group g is gone \(NOGROUP"):
        await read_all(intake)


async def test_a_temporary_error_asking_if_drained_reads_again(tmp_path: Path) -> None:
    queue = FakeQueue([], [], drained=QueueUnavailable("timeout"))
    intake, acks, _, _ = consumer(tmp_path, queue)
    reads = 0

    async def read(room: int, block_ms: int) -> Any:
        nonlocal reads
        reads += 1
        if reads == 3:
            queue.drained_answer = True
        return []

    queue.read = read  # type: ignore[method-assign]
    assert await drain(intake, acks) == []
    assert reads == 3


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("UNBLOCKED the stream key no longer exists", "stream s or its group g is gone"),
        ("no such key", "stream s or its group g is gone"),
        ("WRONGTYPE Operation", "WRONGTYPE Operation (retrying cannot help)"),
    ],
)
def test_lost_names_a_group_gone_or_says_retrying_cannot_help(message: str, expected: str) -> None:
    error = lost(FakeQueue(), QueueUnavailable(message, permanent=True))  # type: ignore[arg-type]
    assert str(error).startswith(expected)


def test_make_queue_needs_a_stream_and_derives_the_dead_letter_stream() -> None:
    with pytest.raises(ConfigError, match="queue mode needs --stream NAME"):
        make_queue(Settings(), FakeRedis())
    queue = make_queue(Settings(stream="jobs", consumer="c1", claim_idle=1.2346), FakeRedis())
    assert (queue.stream, queue.group, queue.consumer) == ("jobs", "audience-purge", "c1")
    assert (queue.dead_stream, queue.claim_idle_ms) == ("jobs:dead", 1235)
    named = make_queue(Settings(stream="jobs", dead_stream="graveyard"), FakeRedis())
    assert named.dead_stream == "graveyard"
    assert named.consumer


async def test_open_queue_needs_a_redis_url() -> None:
    with pytest.raises(ConfigError, match="queue mode needs --redis URL"):
        async with open_queue(Settings(stream="jobs")):
            pass


async def test_a_waiting_consumer_says_which_entries_once_until_they_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = [PendingEntry("1-0", "other", 50_500, 1), PendingEntry("2-0", "other", 70_000, 1)]
    monkeypatch.setattr("worker.queue.intake.pending_entries", _returning(held))
    intake, _, _, _ = consumer(tmp_path, FakeQueue())

    with capture_logs() as logs:
        await intake._waiting.tell()
        await intake._waiting.tell()
    assert len(logs) == 1
    line = logs[0]
    assert line["event"].endswith("they are taken over once idle 60 s")
    assert (line["pending"], line["first_takeover_in_s"]) == (2, 0.0)
    assert line["entries"][0] == {
        "entry_id": "1-0",
        "consumer": "other",
        "idle_ms": 50_500,
        "takeover_in_s": 9.5,
    }

    held.pop()
    with capture_logs() as logs:
        await intake._waiting.tell()
    assert [(e["pending"], e["first_takeover_in_s"]) for e in logs] == [(1, 9.5)]


async def test_a_waiting_consumer_says_it_again_every_30_s(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = [PendingEntry("1-0", "other", 50_000, 1)]
    monkeypatch.setattr("worker.queue.intake.pending_entries", _returning(held))
    intake, _, _, _ = consumer(tmp_path, FakeQueue())
    now = [10.0]
    monkeypatch.setattr(asyncio.get_running_loop(), "time", lambda: now[0])

    said = []
    for at in (10.0, 39.9, 40.0, 69.0, 75.0):
        now[0] = at
        with capture_logs() as logs:
            await intake._waiting.tell()
        said += [at] * len(logs)
    assert said == [10.0, 40.0, 75.0]


def _returning(held: list[PendingEntry]) -> Any:
    async def pending_entries(queue: Any, *, count: int, exclude: str | None) -> Any:
        assert (count, exclude) == (100, "me")
        return list(held)

    return pending_entries


@pytest.mark.parametrize(
    ("rate", "concurrency", "claim_idle", "limit"),
    [
        ((10, 1.0), 3, 600.0, 6),  # the senders bound it: 3 busy, 3 waiting
        ((10, 1.0), 64, 600.0, 40),  # 2 s at 10/s is 20 busy: twice
        ((2.5, 1.0), 64, 600.0, 10),  # 2 s at 2.5/s is 5, rounded up from 5.0: twice
        ((2.4, 1.0), 64, 600.0, 10),  # 4.8 rounded up to 5
        ((1, 1.0), 64, 9.0, 4),  # half of claim_idle at 1/s is 4.5, rounded down
        ((1, 3600.0), 8, 600.0, 1),  # at least one
    ],
)
def test_the_prefetch_limit_at_each_of_its_bounds(
    rate: tuple[float, float], concurrency: int, claim_idle: float, limit: int
) -> None:
    from worker.queue.intake import prefetch_limit
    from worker.settings.rate import RateSpec

    settings = Settings(rate=RateSpec(*rate), concurrency=concurrency, claim_idle=claim_idle)
    assert prefetch_limit(settings) == limit


@pytest.mark.parametrize(("held", "shown"), [(99, 99), (100, "100 or more")])
async def test_a_waiting_consumer_counts_what_one_look_can_see(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, held: int, shown: object
) -> None:
    entries = [PendingEntry(f"{i}-0", "other", 1_000, 1) for i in range(held)]
    monkeypatch.setattr("worker.queue.intake.pending_entries", _returning(entries))
    intake, _, _, _ = consumer(tmp_path, FakeQueue())

    with capture_logs() as logs:
        await intake._waiting.tell()
    assert [(e["pending"], len(e["entries"])) for e in logs] == [(shown, 10)]
    assert logs[0]["entries"][0]["takeover_in_s"] == 59.0


async def test_a_waiting_consumer_that_cannot_look_says_nothing_unless_the_group_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    errors = [QueueUnavailable("timeout"), QueueUnavailable("NOGROUP gone", permanent=True)]

    async def failing(queue: Any, *, count: int, exclude: str | None) -> Any:
        raise errors.pop(0)

    monkeypatch.setattr("worker.queue.intake.pending_entries", failing)
    intake, _, _, _ = consumer(tmp_path, FakeQueue())

    with capture_logs() as logs:
        await intake._waiting.tell()
    assert logs == []
    with pytest.raises(ServiceUnavailable, match=r"^stream s or its group g is gone"):
        await intake._waiting.tell()


def test_the_takeover_moment_is_that_many_milliseconds_from_now() -> None:
    from datetime import UTC, datetime, timedelta

    from worker.queue.intake import _at

    expected = datetime.now(UTC) + timedelta(hours=1)
    moment = datetime.fromisoformat(_at(3_600_000).replace("Z", "+00:00"))
    assert abs((moment - expected).total_seconds()) <= 1.5
