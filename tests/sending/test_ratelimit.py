"""Specification of worker.sending.ratelimit: rate specs and the local gate, on a virtual clock."""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

from worker.sending.ratelimit import LocalRateGate, RateSpec, parse_rate

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


# Every loop iteration costs one tick, as on a real clock: aiolimiter's float arithmetic can
# leave a residue of ~1e-16 in the bucket and reschedule its waker at "now", which a clock
# that only moved on waits would spin on for ever.
TICK = 1e-9


class _TimeTravelSelector(selectors.DefaultSelector):
    """Never blocks: when nothing is ready, jump the clock to the next timer instead."""

    def __init__(self, clock: _Clock) -> None:
        super().__init__()
        self._clock = clock

    def select(self, timeout: float | None = None) -> list[Any]:
        ready: list[Any] = super().select(0)
        if timeout is None and not ready:
            raise RuntimeError("deadlock: nothing is scheduled and nothing can become ready")
        self._clock.now += max(timeout or 0.0, TICK)
        return ready


class VirtualClockLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self._clock = _Clock()
        super().__init__(_TimeTravelSelector(self._clock))

    def time(self) -> float:
        return self._clock.now


def run_virtual(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    loop = VirtualClockLoop()
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


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
