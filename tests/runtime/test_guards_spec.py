"""Specification of worker.runtime.guards at its edges (issue #25: its mutants showed what
no test pinned): the failure-rate window's size and slide, the ETA from every kind of row
settled, and the deadline watch on a fake clock, deterministic to the second."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from structlog.testing import capture_logs

from worker.records.tally import Tally
from worker.runtime import guards
from worker.runtime.guards import FailureRateGuard, count_refusal, eta_seconds, watch_deadline
from worker.settings import Settings

# -- the failure-rate window ------------------------------------------------------------------


def test_a_window_of_failures_trips_at_its_100th_id_not_before() -> None:
    trips: list[str] = []
    guard = FailureRateGuard(0.5, trips.append, window=1)
    for _ in range(99):
        guard.on_event("failed", {"audience_ids": [1]})
    assert trips == []

    guard.on_event("failed", {"audience_ids": [1]})

    assert trips == ["100 of the last 100 ids failed (100% > --halt-on-failure-rate 50%)"]


def test_the_guard_trips_once_however_many_failures_follow() -> None:
    trips: list[str] = []
    guard = FailureRateGuard(0.5, trips.append)
    for _ in range(30):
        guard.on_event("failed", {"audience_ids": list(range(10))})

    assert len(trips) == 1
    assert guard.tripped


def test_a_large_window_slides_past_old_successes() -> None:
    trips: list[str] = []
    guard = FailureRateGuard(0.5, trips.append, window=300)
    for _ in range(30):
        guard.on_event("deleted", {"audience_ids": list(range(10))})
    for _ in range(15):
        guard.on_event("failed", {"audience_ids": list(range(10))})
    assert trips == []  # 150 of the last 300: not more than half

    guard.on_event("failed", {"audience_ids": list(range(10))})

    assert trips == ["160 of the last 300 ids failed (53% > --halt-on-failure-rate 50%)"]


def test_the_window_drops_a_batch_that_the_newest_ones_push_past_it() -> None:
    trips: list[str] = []
    guard = FailureRateGuard(0.4, trips.append, window=100)
    guard.on_event("deleted", {"audience_ids": list(range(60))})
    guard.on_event("deleted", {"audience_ids": list(range(60))})

    guard.on_event("failed", {"audience_ids": list(range(50))})  # 170 ids: the first 60 go

    assert trips == ["50 of the last 110 ids failed (45% > --halt-on-failure-rate 40%)"]


def test_events_without_ids_or_of_other_kinds_count_for_nothing() -> None:
    trips: list[str] = []
    guard = FailureRateGuard(0.0, trips.append, window=1)
    for _ in range(200):
        guard.on_event("rejected", {"audience_ids": [1]})
        guard.on_event("failed", {"audience_ids": []})

    assert trips == []


# -- the ETA ----------------------------------------------------------------------------------


def test_the_eta_counts_every_row_settled_whatever_became_of_it() -> None:
    tally = Tally(deleted=10, failed=5, rejected=3, duplicates=1, already_done=1)

    assert eta_seconds(tally, 100, 10.0) == 40.0  # 20 rows in 10 s: 80 left at 2 rows/s


@pytest.mark.parametrize(
    ("deleted", "total", "elapsed", "eta"),
    [
        (1, 3, 0.5, 1.0),  # one row in half a second: two left take a second
        (1, 3, 0.4, 0.8),  # 2.5 rows a second, not 2
        (1, 1, 2.0, 0.0),
        (5, 3, 1.0, 0.0),  # more settled than counted (a file that grew): nothing left
        (0, 100, 10.0, None),
        (10, 100, 0.0, None),
        (10, None, 10.0, None),
        (10, 0, 10.0, None),
    ],
)
def test_the_eta_at_its_edges(
    deleted: int, total: int | None, elapsed: float, eta: float | None
) -> None:
    assert eta_seconds(Tally(deleted=deleted), total, elapsed) == pytest.approx(eta)


@pytest.mark.parametrize(("limit", "refused"), [(299, True), (300, False), (301, False)])
def test_max_deletes_refuses_more_ids_than_it_says_and_no_fewer(limit: int, refused: bool) -> None:
    reason = count_refusal(Settings(max_deletes=limit), 300)

    assert (reason is not None) is refused


# -- the deadline watch on a fake clock -------------------------------------------------------


class FakeClock:
    """Seconds from 0; ``sleep`` moves them on (and lets the loop turn once), and refuses
    to be called more than ``limit`` times: a watch that no longer advances fails here."""

    def __init__(self, limit: int = 100) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self.limit = limit
        self.start = datetime(2026, 12, 1, tzinfo=UTC)

    async def sleep(self, seconds: float) -> None:
        assert len(self.sleeps) < self.limit, f"the watch did not end: slept {self.sleeps[-5:]}"
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()

    class FakeDatetime(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> FakeDatetime:
            moment = fake.start + timedelta(seconds=fake.now)
            return cls.fromtimestamp(moment.timestamp(), tz)

    monkeypatch.setattr(guards, "datetime", FakeDatetime)
    # a monotonic clock starts anywhere: here at 10 s, less than the runs below last
    monkeypatch.setattr(guards, "time", SimpleNamespace(monotonic=lambda: 10.0 + fake.now))
    monkeypatch.setattr(guards, "asyncio", SimpleNamespace(sleep=fake.sleep))
    return fake


async def test_the_watch_stops_the_run_when_the_deadline_comes_and_not_before(
    clock: FakeClock,
) -> None:
    passed: list[float] = []
    deadline = clock.start + timedelta(seconds=12)

    await watch_deadline(deadline, Tally(), lambda: None, lambda: passed.append(clock.now))

    assert clock.sleeps == [5.0, 5.0, 2.0]  # every 5 s by default, the last up to the deadline
    assert passed == [12.0]


async def test_the_watch_warns_once_when_the_measured_rate_ends_after_the_deadline(
    clock: FakeClock,
) -> None:
    tally = Tally()
    deadline = clock.start + timedelta(seconds=20)

    def total() -> int:
        tally.deleted = int(clock.now)  # one row a second
        return 30

    with capture_logs() as logs:
        await watch_deadline(deadline, tally, total, lambda: None, interval=4.0)

    etas = [(e["eta_s"], e["deadline_in_s"]) for e in logs if e["event"] == "eta"]
    assert etas == [(26, 16), (22, 12), (18, 8), (14, 4)]  # from t = 4 s: 30 - t left
    risks = [e for e in logs if e["event"].startswith("deadline at risk")]
    assert [(e["eta_s"], e["deadline_in_s"]) for e in risks] == [(26, 16)]
    assert [e["event"] for e in logs][-1] == "deadline passed: stopping gracefully"


async def test_an_eta_that_ends_exactly_at_the_deadline_is_no_risk(clock: FakeClock) -> None:
    tally = Tally()
    deadline = clock.start + timedelta(seconds=20)

    def total() -> int:
        tally.deleted = int(clock.now)
        return 20  # one row a second: it ends exactly at the deadline

    with capture_logs() as logs:
        await watch_deadline(deadline, tally, total, lambda: None, interval=5.0)

    assert [e["event"] for e in logs if e["event"].startswith("deadline at risk")] == []
    assert [(e["eta_s"], e["deadline_in_s"]) for e in logs if e["event"] == "eta"] == [
        (15, 15),
        (10, 10),
        (5, 5),
    ]


async def test_an_eta_well_before_the_deadline_is_no_risk(clock: FakeClock) -> None:
    tally = Tally()
    deadline = clock.start + timedelta(seconds=20)

    def total() -> int:
        tally.deleted = int(clock.now)
        return 10  # one row a second: done at 10 s, long before the deadline

    with capture_logs() as logs:
        await watch_deadline(deadline, tally, total, lambda: None, interval=4.0)

    assert [e["event"] for e in logs if e["event"].startswith("deadline at risk")] == []
    assert [e["eta_s"] for e in logs if e["event"] == "eta"][:2] == [6, 2]
