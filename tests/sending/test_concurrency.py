"""The concurrency limit: permits, and the adaptive controller in deterministic virtual time
against a simulated server (latency steps, 503 bursts, 429 pauses).

The simulated client is the dispatcher's loop reduced to what the controller sees: take a
permit, wait at the rate gate (a real LocalRateGate, on the virtual clock), send, tell the
controller how it ended, give the permit back. 100/s paced at 97/s, as a run does.
"""

from __future__ import annotations

import asyncio

import pytest
from virtual import Phase, Server, run_virtual

from worker.sending.concurrency import (
    ADAPTIVE,
    FIXED,
    AdaptiveLimit,
    ConcurrencyLimit,
    concurrency_limit,
)
from worker.sending.ratelimit import LocalRateGate
from worker.settings.rate import RateSpec

RATE = 97.0  # 100/s less the 3 % margin: what the gate paces at
MAX = 64
Trace = list[tuple[float, int]]


async def drive(
    limit: ConcurrencyLimit, server: Server, *, seconds: float, senders: int = MAX
) -> Trace:
    """``senders`` clients sending for ``seconds``; the limit every 50 ms."""
    loop = asyncio.get_running_loop()
    gate = LocalRateGate(RateSpec(RATE, 1.0))
    trace: Trace = []

    async def sender() -> None:
        while True:
            await limit.acquire()
            try:
                await gate.acquire()
                limit.started()
                status, latency = await server.request()
                if status == 429:
                    gate.pause(1.0)  # what a 429's Retry-After does to every sender
                limit.ended(latency, pushed_back=status == 429 or status >= 500)
            finally:
                limit.release()

    async def sample() -> None:
        while True:
            trace.append((loop.time(), limit.limit))
            await asyncio.sleep(0.05)

    tasks = [asyncio.create_task(sender()) for _ in range(senders)]
    tasks.append(asyncio.create_task(sample()))
    await asyncio.sleep(seconds)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return trace


def simulate(phases: list[Phase], seconds: float, senders: int = MAX) -> tuple[Trace, Server]:
    server = Server(phases)

    async def main() -> Trace:
        clock = asyncio.get_running_loop().time
        limit = AdaptiveLimit(MAX, rate_per_second=RATE, clock=clock)
        return await drive(limit, server, seconds=seconds, senders=senders)

    return run_virtual(main()), server


def during(trace: Trace, start: float, end: float) -> list[int]:
    return [limit for t, limit in trace if start <= t < end]


# -- convergence ---------------------------------------------------------------------------


def test_converges_to_about_rate_times_latency_and_meets_the_rate() -> None:
    trace, server = simulate([Phase(0.0, latency=0.25)], seconds=20)

    needed = RATE * 0.25  # Little's law: 24.25 in flight on average
    settled = during(trace, 5, 20)
    assert min(settled) >= needed
    assert max(settled) <= 1.5 * needed
    assert server.rate(2, 20) >= 0.99 * RATE
    assert server.mean_in_flight(20) == pytest.approx(needed, rel=0.05)


@pytest.mark.parametrize("latency", [0.05, 0.25, 0.5])
def test_meets_the_rate_whatever_the_latency(latency: float) -> None:
    trace, server = simulate([Phase(0.0, latency=latency, jitter=latency / 5)], seconds=15)

    assert server.rate(3, 15) >= 0.99 * RATE
    assert max(during(trace, 5, 15)) <= 1.5 * RATE * latency + 2


def test_a_fixed_limit_of_8_misses_the_rate_where_the_adaptive_one_meets_it() -> None:
    """The figure of issue #11 (31.8 req/s on main), here in virtual time."""
    server = Server([Phase(0.0, latency=0.25)])

    async def main() -> Trace:
        return await drive(ConcurrencyLimit(8), server, seconds=10)

    run_virtual(main())

    assert server.rate(1, 10) == pytest.approx(8 / 0.25, rel=0.05)


# -- back-off and recovery -----------------------------------------------------------------


def test_drops_on_a_503_burst_and_recovers_after() -> None:
    phases = [Phase(0.0), Phase(10.0, latency=0.05, status=503), Phase(12.0)]
    trace, server = simulate(phases, seconds=30)

    before = min(during(trace, 8, 10))
    assert min(during(trace, 10, 13)) <= 0.6 * before  # about 0.9 per round trip
    assert min(during(trace, 10, 13)) >= 5  # a back-off, not a collapse
    # Back up, +1 per round trip, until the limit no longer holds the rate back.
    assert min(during(trace, 25, 30)) >= RATE * 0.25 + 2
    assert server.rate(25, 30) >= 0.99 * RATE


def test_drops_on_a_latency_step_up_and_recovers_to_the_new_rate_times_latency() -> None:
    phases = [Phase(0.0, latency=0.25), Phase(10.0, latency=0.5)]
    trace, server = simulate(phases, seconds=40)

    before = during(trace, 9.5, 10)[-1]
    assert min(during(trace, 10, 12)) < before  # the server slowed down: back off first
    settled = during(trace, 35, 40)
    assert min(settled) >= RATE * 0.5  # then enough in flight for the rate at 500 ms
    assert server.rate(35, 40) >= 0.99 * RATE


def test_does_not_back_off_on_a_latency_step_down() -> None:
    phases = [Phase(0.0, latency=0.5), Phase(10.0, latency=0.25)]
    trace, server = simulate(phases, seconds=20)

    assert min(during(trace, 10, 20)) >= RATE * 0.25
    assert server.rate(5, 20) >= 0.99 * RATE


def test_a_429_pause_lowers_the_limit_but_nothing_grows_while_paused() -> None:
    phases = [Phase(0.0), Phase(10.0, status=429), Phase(10.3)]
    trace, server = simulate(phases, seconds=30)

    before = min(during(trace, 8, 10))
    assert min(during(trace, 10, 12)) < before
    assert not [t for t in server.starts if 10.3 < t < 11.0]  # the gate's pause held
    assert min(during(trace, 25, 30)) >= RATE * 0.25 + 2
    assert server.rate(25, 30) >= 0.99 * RATE


def test_the_limit_grows_back_only_while_it_holds_requests_back() -> None:
    """Sixteen senders never need more than 16 permits: once the cap is above what is in
    flight, it stops growing (an idle limit is no evidence that the server copes)."""
    phases = [Phase(0.0), Phase(10.0, latency=0.05, status=503), Phase(12.0)]
    trace, _ = simulate(phases, seconds=30, senders=16)

    assert min(during(trace, 10, 13)) < 16
    assert 16 <= max(during(trace, 20, 30)) <= 17


# -- what the limit never does -------------------------------------------------------------


def test_never_more_in_flight_than_the_maximum_nor_starts_beyond_the_rate() -> None:
    phases = [Phase(0.0, latency=2.0, jitter=0.5)]  # needs 194 in flight: more than 64
    _, server = simulate(phases, seconds=10)

    assert server.peak == MAX
    for second in range(10):
        assert server.rate(second, second + 1) <= RATE + 1


def test_before_any_answer_the_limit_is_the_maximum() -> None:
    limit = AdaptiveLimit(MAX, rate_per_second=RATE)

    assert limit.limit == MAX


def test_the_mode_chooses_the_limit() -> None:
    fixed = concurrency_limit(FIXED, 8, rate_per_second=RATE)
    adaptive = concurrency_limit(ADAPTIVE, 8, rate_per_second=RATE)

    assert (type(fixed), fixed.limit, fixed.mode) == (ConcurrencyLimit, 8, FIXED)
    assert (type(adaptive), adaptive.limit, adaptive.mode) == (AdaptiveLimit, 8, ADAPTIVE)


# -- permits ---------------------------------------------------------------------------------


async def test_permits_beyond_the_limit_wait_and_are_served_in_order() -> None:
    limit = ConcurrencyLimit(2)
    got: list[int] = []

    async def take(n: int) -> None:
        await limit.acquire()
        got.append(n)

    await limit.acquire()
    await limit.acquire()
    waiting = [asyncio.create_task(take(n)) for n in (1, 2, 3)]
    await asyncio.sleep(0)
    assert (got, limit.held) == ([], 2)

    limit.release()
    limit.release()
    await asyncio.sleep(0)
    assert (got, limit.held) == ([1, 2], 2)
    limit.release()
    await asyncio.gather(*waiting)
    assert (got, limit.held) == ([1, 2, 3], 2)


async def test_a_lower_limit_keeps_the_permits_held_and_lets_none_in_until_under_it() -> None:
    limit = ConcurrencyLimit(4)
    for _ in range(4):
        await limit.acquire()

    limit._set_limit(2)
    waiter = asyncio.create_task(limit.acquire())
    limit.release()
    limit.release()
    await asyncio.sleep(0)
    assert not waiter.done()  # 2 held: at the new limit

    limit.release()
    await waiter
    assert limit.held == 2


async def test_a_higher_limit_lets_waiters_in_at_once() -> None:
    limit = ConcurrencyLimit(4)
    limit._set_limit(1)
    await limit.acquire()
    waiter = asyncio.create_task(limit.acquire())
    await asyncio.sleep(0)

    limit._set_limit(2)

    await asyncio.wait_for(waiter, timeout=1)
    assert limit.held == 2


async def test_a_cancelled_wait_takes_no_permit_even_one_granted_as_it_was_cancelled() -> None:
    limit = ConcurrencyLimit(1)
    await limit.acquire()
    plain = asyncio.create_task(limit.acquire())
    granted = asyncio.create_task(limit.acquire())
    await asyncio.sleep(0)

    plain.cancel()
    await asyncio.gather(plain, return_exceptions=True)
    limit.release()  # hands the permit to `granted`...
    granted.cancel()  # ...which is cancelled before it could run
    await asyncio.gather(granted, return_exceptions=True)

    assert limit.held == 0
    await asyncio.wait_for(limit.acquire(), timeout=1)
