"""Specification of worker.sending.ratelimit: rate specs and the local gate, on a virtual clock."""

from __future__ import annotations

import asyncio
import math
import random
import selectors
from bisect import bisect_left
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

from worker.runtime.stopping import Abandoned, unless_stopped
from worker.sending.ratelimit import LocalRateGate
from worker.settings.rate import RateSpec, parse_rate

T = TypeVar("T")

# -- parse_rate / RateSpec ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10/s", RateSpec(10, 1.0)),
        ("10/sec", RateSpec(10, 1.0)),
        ("10/second", RateSpec(10, 1.0)),
        ("10/seconds", RateSpec(10, 1.0)),
        ("100/minute", RateSpec(100, 60.0)),
        ("100/min", RateSpec(100, 60.0)),
        ("100/m", RateSpec(100, 60.0)),
        ("5/hour", RateSpec(5, 3600.0)),
        ("5/h", RateSpec(5, 3600.0)),
        ("0.5/s", RateSpec(0.5, 1.0)),
        (" 10 / s ", RateSpec(10, 1.0)),
        ("10/S", RateSpec(10, 1.0)),
        ("1000/MINUTE", RateSpec(1000, 60.0)),
    ],
)
def test_parse_rate_accepts(text: str, expected: RateSpec) -> None:
    assert parse_rate(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        *("abc", "0/s", "0.0/minute", "-1/s", "10/fortnight", "10", "", "/s", "10/", "1e3/s"),
        *("ten/s", "\u0665/s", "1\u0660/minute"),  # the last two: digits other than 0-9
    ],
)
def test_parse_rate_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="invalid rate"):
        parse_rate(text)


@pytest.mark.parametrize(
    ("spec", "text"),
    [
        (RateSpec(10, 1.0), "10/second"),
        (RateSpec(100, 60.0), "100/minute"),
        (RateSpec(5, 3600.0), "5/hour"),
        (RateSpec(0.5, 1.0), "0.5/second"),
        (RateSpec(3, 10.0), "3/10s"),
    ],
)
def test_rate_spec_str(spec: RateSpec, text: str) -> None:
    assert str(spec) == text


@pytest.mark.parametrize("text", ["10/second", "100/minute", "5/hour", "0.5/second"])
def test_rate_spec_str_parses_back_to_the_same_spec(text: str) -> None:
    assert str(parse_rate(text)) == text


def test_rate_spec_per_second() -> None:
    assert parse_rate("120/minute").per_second == 2.0


# -- a loop whose clock only moves when it would otherwise wait -----------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0


# Every loop iteration costs one tick, as on a real clock: float arithmetic can leave a
# residue of ~1e-16 and reschedule a waker at "now", which a clock that only moved on waits
# would spin on for ever.
TICK = 1e-9


class _TimeTravelSelector(selectors.DefaultSelector):
    """Never blocks: when nothing is ready, jump the clock to the next timer instead, and
    past it by ``lateness()``, as a real loop wakes up late."""

    def __init__(self, clock: _Clock, lateness: Callable[[], float]) -> None:
        super().__init__()
        self._clock = clock
        self._lateness = lateness

    def select(self, timeout: float | None = None) -> list[Any]:
        ready: list[Any] = super().select(0)
        if timeout is None and not ready:
            raise RuntimeError("deadlock: nothing is scheduled and nothing can become ready")
        late = self._lateness() if timeout else 0.0
        self._clock.now += max(timeout or 0.0, TICK) + late
        return ready


class VirtualClockLoop(asyncio.SelectorEventLoop):
    def __init__(self, lateness: Callable[[], float] = lambda: 0.0) -> None:
        self._clock = _Clock()
        super().__init__(_TimeTravelSelector(self._clock, lateness))

    def time(self) -> float:
        return self._clock.now


def run_virtual(
    main: Callable[[], Coroutine[Any, Any, T]], lateness: Callable[[], float] = lambda: 0.0
) -> T:
    loop = VirtualClockLoop(lateness)
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


def late_by(most: float, *, stalls: float = 0.0, stall: float = 0.0) -> Callable[[], float]:
    """Wakeups late by 0..``most`` seconds, and a share ``stalls`` of them by 0..``stall``
    (a loop held up by other work); seeded, so that a failure replays."""
    rng = random.Random(20240611)

    def lateness() -> float:
        if rng.random() < stalls:
            return rng.uniform(0.0, stall)
        return rng.uniform(0.0, most)

    return lateness


def approx(expected: Any) -> Any:
    """Equal up to the ticks the loop's own iterations cost."""
    return pytest.approx(expected, abs=1e-5)


def now() -> float:
    return asyncio.get_running_loop().time()


async def acquire_at(gate: LocalRateGate) -> float:
    await gate.acquire()
    return now()


def test_virtual_clock_jumps_over_sleeps() -> None:
    async def main() -> tuple[float, float]:
        start = now()
        await asyncio.sleep(3600)
        return start, now()

    assert run_virtual(main) == approx((0.0, 3600.0))


# -- LocalRateGate ----------------------------------------------------------------------------


@pytest.mark.parametrize(("rate", "count"), [("1/s", 5), ("10/s", 11), ("100/minute", 4)])
def test_sequential_acquisitions_are_evenly_paced(rate: str, count: int) -> None:
    spec = parse_rate(rate)

    async def main() -> list[float]:
        gate = LocalRateGate(spec)
        return [await acquire_at(gate) for _ in range(count)]

    times = run_virtual(main)

    assert times == approx([i / spec.per_second for i in range(count)])


def test_concurrent_acquisitions_are_evenly_paced() -> None:
    async def main() -> list[float]:
        gate = LocalRateGate(RateSpec(2, 1.0))
        return list(await asyncio.gather(*(acquire_at(gate) for _ in range(7))))

    times = run_virtual(main)

    assert sorted(times) == approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0])


def test_n_acquisitions_take_n_minus_one_intervals() -> None:
    async def main() -> float:
        gate = LocalRateGate(parse_rate("100/minute"))
        start = now()
        await asyncio.gather(*(gate.acquire() for _ in range(101)))
        return now() - start

    assert run_virtual(main) == approx(100 * 0.6)


def test_burst_allows_an_initial_burst_then_paces() -> None:
    async def main() -> list[float]:
        gate = LocalRateGate(RateSpec(1, 1.0), burst=3)
        return [await acquire_at(gate) for _ in range(6)]

    times = run_virtual(main)

    assert times == approx([0.0, 0.0, 0.0, 1.0, 2.0, 3.0])


def test_burst_refills_after_idle_time() -> None:
    async def main() -> list[float]:
        gate = LocalRateGate(RateSpec(1, 1.0), burst=3)
        first = [await acquire_at(gate) for _ in range(3)]
        await asyncio.sleep(10)
        return first + [await acquire_at(gate) for _ in range(4)]

    times = run_virtual(main)

    assert times == approx([0.0, 0.0, 0.0, 10.0, 10.0, 10.0, 11.0])


def test_try_acquire_takes_a_free_slot_and_nothing_else() -> None:
    async def main() -> list[object]:
        gate = LocalRateGate(RateSpec(10, 1.0))
        seen: list[object] = [gate.try_acquire(), gate.try_acquire()]  # free, then not due
        waiter = asyncio.ensure_future(acquire_at(gate))  # its slot: 0.1
        await asyncio.sleep(0.15)
        seen += [await waiter, gate.try_acquire()]  # 0.2 is not due at 0.15
        await asyncio.sleep(0.1)
        seen += [gate.try_acquire(), await acquire_at(gate)]  # 0.25: due; the next at 0.35
        gate.pause(1.0)
        await asyncio.sleep(0.2)  # the next slot is due, the cool-down is not over
        seen.append(gate.try_acquire())
        await asyncio.sleep(1.0)
        seen.append(gate.try_acquire())
        return seen

    free, early, waited, not_due, due, next_one, paused, after = run_virtual(main)
    assert (free, early, not_due, due, paused, after) == (True, False, False, True, False, True)
    assert waited == approx(0.1)
    assert next_one == approx(0.35)  # one interval after the slot try_acquire took


def test_pause_delays_the_next_acquisition() -> None:
    async def main() -> float:
        gate = LocalRateGate(RateSpec(100, 1.0))
        gate.pause(5)
        return await acquire_at(gate)

    assert run_virtual(main) == approx(5.0)


def test_pause_delays_every_waiter_already_queued_in_the_bucket() -> None:
    async def main() -> list[float]:
        gate = LocalRateGate(RateSpec(1, 1.0))
        await gate.acquire()
        waiters = [asyncio.ensure_future(acquire_at(gate)) for _ in range(2)]
        await asyncio.sleep(0.5)
        gate.pause(10)
        return list(await asyncio.gather(*waiters))

    times = run_virtual(main)

    assert sorted(times) == approx([10.5, 11.5])


def test_pause_delays_every_concurrent_sender() -> None:
    async def main() -> list[float]:
        gate = LocalRateGate(RateSpec(100, 1.0), burst=100)
        gate.pause(2)
        return list(await asyncio.gather(*(acquire_at(gate) for _ in range(5))))

    assert run_virtual(main) == approx([2.0] * 5)


def test_longer_pause_extends_a_waiter_already_sleeping_out_a_pause() -> None:
    async def main() -> float:
        gate = LocalRateGate(RateSpec(100, 1.0))
        gate.pause(2)
        waiter = asyncio.ensure_future(acquire_at(gate))
        await asyncio.sleep(1)
        gate.pause(5)
        return await waiter

    assert run_virtual(main) == approx(6.0)


def test_shorter_pause_never_shortens_an_existing_pause() -> None:
    async def main() -> float:
        gate = LocalRateGate(RateSpec(100, 1.0))
        gate.pause(10)
        await asyncio.sleep(1)
        gate.pause(2)
        return await acquire_at(gate)

    assert run_virtual(main) == approx(10.0)


@pytest.mark.parametrize("seconds", [0, -5])
def test_non_positive_pause_has_no_effect(seconds: float) -> None:
    async def main() -> float:
        gate = LocalRateGate(RateSpec(100, 1.0))
        gate.pause(seconds)
        return await acquire_at(gate)

    assert run_virtual(main) == approx(0.0)


def test_pacing_resumes_evenly_after_a_pause() -> None:
    async def main() -> list[float]:
        gate = LocalRateGate(RateSpec(1, 1.0))
        gate.pause(3)
        return list(await asyncio.gather(*(acquire_at(gate) for _ in range(3))))

    assert sorted(run_virtual(main)) == approx([3.0, 4.0, 5.0])


def test_cancelled_waiter_does_not_hold_up_the_others() -> None:
    async def main() -> list[float]:
        gate = LocalRateGate(RateSpec(1, 1.0))
        await gate.acquire()
        doomed = asyncio.ensure_future(gate.acquire())
        survivor = asyncio.ensure_future(acquire_at(gate))
        await asyncio.sleep(0.25)
        doomed.cancel()
        later = await survivor
        return [later, await acquire_at(gate)]

    assert run_virtual(main) == approx([1.0, 2.0])


# -- exactness: an absolute timeline, bounded by the rate -----------------------------------


async def paced_run(gate: LocalRateGate, count: int, senders: int) -> list[float]:
    """``senders`` tasks acquiring until ``count`` slots were taken; the first ``count``
    times, in the order they were taken."""
    times: list[float] = []

    async def sender() -> None:
        while len(times) < count:
            await gate.acquire()
            times.append(now())

    await asyncio.gather(*(sender() for _ in range(senders)))
    return times[:count]


def busiest(times: list[float], window: float) -> int:
    """The most acquisitions in any window ``[t, t + window)``. One that starts at an
    acquisition is the busiest of all offsets, so this bounds every fixed window too."""
    ordered = sorted(times)
    return max(bisect_left(ordered, t + window) - i for i, t in enumerate(ordered))


LATE = 0.005  # every wakeup late by 0-5 ms


@pytest.mark.parametrize(
    ("rate", "senders", "count"),
    [("50/s", 1, 3000), ("50/s", 8, 3000), ("190/s", 8, 3000), ("100/minute", 1, 300)],
)
def test_a_long_run_keeps_to_the_absolute_timeline_though_every_wakeup_is_late(
    rate: str, senders: int, count: int
) -> None:
    spec = parse_rate(rate)

    async def main() -> list[float]:
        return await paced_run(LocalRateGate(spec), count, senders)

    times = run_virtual(main, late_by(LATE))

    # The k-th request goes at k/R, or later by one wakeup's lateness at most: the
    # overshoot of each wait is recovered by the next slot, nothing accumulates.
    lag = [t - k / spec.per_second for k, t in enumerate(times)]
    assert min(lag) >= -1e-9
    assert max(lag) <= LATE + 1e-6


@pytest.mark.parametrize(
    ("spec", "burst"),
    [
        (RateSpec(49.5, 1.0), 1),  # 50/s less a 1 % margin
        (RateSpec(50, 1.0), 1),
        (RateSpec(49.5, 1.0), 4),
        (RateSpec(10.3, 1.0), 2),
        (RateSpec(99, 60.0), 1),  # 100/minute less 1 %
    ],
)
def test_no_window_holds_more_than_the_rate_plus_burst(spec: RateSpec, burst: int) -> None:
    interval = 1 / spec.per_second
    # Mostly punctual wakeups, and one in 20 late by up to 1.5 intervals: the gate must not
    # catch up on those past the rate, in a window of the rate's period at any offset.
    lateness = late_by(interval / 10, stalls=0.05, stall=1.5 * interval)
    idle = random.Random(7)

    async def main() -> list[float]:
        gate = LocalRateGate(spec, burst)
        times: list[float] = []
        for _ in range(20):
            times += await paced_run(gate, math.ceil(spec.requests * 2), senders=8)
            await asyncio.sleep(idle.uniform(0, 2 * spec.period))  # the bucket refills
        return times

    times = run_virtual(main, lateness)

    assert busiest(times, spec.period) <= spec.requests + burst


@pytest.mark.parametrize("burst", [1, 3])
def test_after_an_idle_spell_no_more_than_burst_go_at_once(burst: int) -> None:
    spec = RateSpec(10, 1.0)
    interval = 1 / spec.per_second
    idle = random.Random(3)

    async def main() -> list[float]:
        gate = LocalRateGate(spec, burst)
        times: list[float] = []
        for _ in range(30):
            times += await paced_run(gate, 12, senders=8)
            await asyncio.sleep(idle.uniform(0, 3 * interval * burst))
        return times

    times = run_virtual(main, late_by(LATE))

    # Closer than one interval (less the lateness a wakeup may have recovered): a burst.
    assert busiest(times, interval - LATE) <= burst


def test_a_stalled_loop_does_not_make_the_waiters_catch_up_in_a_burst() -> None:
    spec = RateSpec(10, 1.0)
    interval = 1 / spec.per_second

    async def main() -> list[float]:
        return await paced_run(LocalRateGate(spec), 500, senders=8)

    # One wakeup in ten late by up to five intervals.
    times = run_virtual(main, late_by(0.001, stalls=0.1, stall=5 * interval))

    # The slot a late wakeup kept may put two close together, never more: a wakeup late by
    # a whole interval starts the schedule again from now.
    assert busiest(times, interval / 2) <= 2


# -- cancellation ------------------------------------------------------------------------------


def test_a_cancelled_waiter_behind_others_leaves_no_gap() -> None:
    async def main() -> list[float]:
        gate = LocalRateGate(RateSpec(1, 1.0))
        await gate.acquire()
        first = asyncio.ensure_future(acquire_at(gate))
        doomed = asyncio.ensure_future(acquire_at(gate))
        third = asyncio.ensure_future(acquire_at(gate))
        await asyncio.sleep(0.5)
        doomed.cancel()
        return [await first, await third, await acquire_at(gate)]

    assert run_virtual(main) == approx([1.0, 2.0, 3.0])


def test_a_waiter_cancelled_as_its_turn_comes_hands_its_slot_on() -> None:
    async def main() -> list[float]:
        gate = LocalRateGate(RateSpec(1, 1.0))
        await gate.acquire()
        doomed: asyncio.Future[float] | None = None

        async def first() -> float:
            await gate.acquire()
            # Told it is next, the doomed waiter has not run yet when it is cancelled.
            assert doomed is not None
            doomed.cancel()
            return now()

        head = asyncio.ensure_future(first())
        doomed = asyncio.ensure_future(acquire_at(gate))
        third = asyncio.ensure_future(acquire_at(gate))
        return [await head, await third]

    assert run_virtual(main) == approx([1.0, 2.0])


def test_cancelled_waiters_leave_the_schedule_as_it_was() -> None:
    async def main() -> list[float]:
        gate = LocalRateGate(RateSpec(1, 1.0))
        await gate.acquire()
        waiters = [asyncio.ensure_future(gate.acquire()) for _ in range(3)]
        await asyncio.sleep(0.5)
        for waiter in waiters:
            waiter.cancel()
        return [await acquire_at(gate), await acquire_at(gate)]

    # Neither the slot at 1.0 lost, nor 0.5 (sooner than one interval after the last).
    assert run_virtual(main) == approx([1.0, 2.0])


def test_a_stop_abandons_a_waiting_acquire_and_the_next_waiter_takes_its_slot() -> None:
    async def main() -> tuple[bool, list[float]]:
        gate = LocalRateGate(RateSpec(1, 1.0))
        stop = asyncio.Event()
        await gate.acquire()
        stopped = asyncio.ensure_future(unless_stopped(gate.acquire(), stop))
        other = asyncio.ensure_future(acquire_at(gate))
        await asyncio.sleep(0.5)
        stop.set()
        abandoned = False
        try:
            await stopped
        except Abandoned:
            abandoned = True
        return abandoned, [await other, await acquire_at(gate)]

    abandoned, times = run_virtual(main)

    assert abandoned
    assert times == approx([1.0, 2.0])


def test_a_waiter_cancelled_during_a_pause_takes_no_slot() -> None:
    async def main() -> list[float]:
        gate = LocalRateGate(RateSpec(1, 1.0))
        gate.pause(5)
        doomed = asyncio.ensure_future(gate.acquire())
        survivor = asyncio.ensure_future(acquire_at(gate))
        await asyncio.sleep(1)
        doomed.cancel()
        return [await survivor, await acquire_at(gate)]

    assert run_virtual(main) == approx([5.0, 6.0])


# -- the 429 pause in a paced run --------------------------------------------------------------


def test_a_pause_mid_run_holds_every_sender_then_resumes_evenly() -> None:
    async def main() -> tuple[float, list[float]]:
        gate = LocalRateGate(RateSpec(10, 1.0))

        async def refused_at(seconds: float) -> float:
            await asyncio.sleep(seconds)
            gate.pause(1.0)
            return now()

        pauser = asyncio.ensure_future(refused_at(2.05))
        times = await paced_run(gate, 40, senders=8)
        return await pauser, times

    paused_at, times = run_virtual(main, late_by(LATE))

    # Before it and after it, each on an absolute timeline, one at a time; nothing in it.
    before = [t for t in times if t < paused_at]
    after = [t for t in times if t >= paused_at]
    assert len(before) == 21  # 0.0, 0.1, ... 2.0
    lag = [t - k / 10 for k, t in enumerate(before)]
    lag += [t - (paused_at + 1.0 + k / 10) for k, t in enumerate(after)]
    assert min(lag) >= -1e-9
    assert max(lag) <= LATE + 1e-6
