"""until_stopped: intake that a stop interrupts at once, and the dispatcher built on it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from worker.input.batching import Batch
from worker.records.audit import AuditLog
from worker.records.recorder import Recorder
from worker.runtime.stopping import Abandoned, unless_stopped, until_stopped
from worker.sending.dispatch import Dispatcher
from worker.sending.ratelimit import LocalRateGate
from worker.sending.retry import RetryPolicy
from worker.settings.rate import RateSpec


class Source:
    """Yields ``items``, then waits forever (a stalled stdin); remembers how it ended."""

    def __init__(self, items: list[int]) -> None:
        self.items = items
        self.reads = 0
        self.closed_by: str | None = None

    async def __aiter__(self) -> AsyncIterator[int]:
        try:
            for item in self.items:
                self.reads += 1
                yield item
            self.reads += 1
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.closed_by = "cancelled"
            raise


async def collect(source: AsyncIterator[int], stop: asyncio.Event) -> list[int]:
    return [item async for item in until_stopped(source, stop)]


async def test_every_item_comes_through_when_nothing_stops_it() -> None:
    async def three() -> AsyncIterator[int]:
        for i in (1, 2, 3):
            yield i

    assert await collect(three(), asyncio.Event()) == [1, 2, 3]


async def test_a_stop_abandons_the_read_in_progress_at_once() -> None:
    source = Source([1, 2])
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, stop.set)

    got = await asyncio.wait_for(collect(source.__aiter__(), stop), timeout=1)

    assert got == [1, 2]
    assert source.closed_by == "cancelled"


async def test_a_stop_before_the_first_read_reads_nothing() -> None:
    source = Source([1, 2])
    stop = asyncio.Event()
    stop.set()

    assert await collect(source.__aiter__(), stop) == []
    assert source.reads == 0


async def test_an_error_of_the_source_reaches_the_consumer() -> None:
    async def broken() -> AsyncIterator[int]:
        yield 1
        raise OSError(5, "Input/output error")

    with pytest.raises(OSError, match="Input/output error"):
        await collect(broken(), asyncio.Event())


async def test_cancelling_the_consumer_cancels_the_read_in_progress() -> None:
    source = Source([])
    task = asyncio.create_task(collect(source.__aiter__(), asyncio.Event()))
    await asyncio.sleep(0.01)

    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task
    assert source.closed_by == "cancelled"


def idle_dispatcher(tmp_path: Path) -> Dispatcher:
    """A dispatcher that is never asked to send anything."""
    return Dispatcher(
        client=None,  # type: ignore[arg-type]
        gate=LocalRateGate(RateSpec(10, 1.0)),
        policy=RetryPolicy(1, 1.0, 0.0, 0.0),
        recorder=Recorder(AuditLog(tmp_path / "audit.jsonl", "run")),
        concurrency=4,
    )


@pytest.mark.parametrize("delay", [0.0, 0.05])
async def test_a_dispatcher_stopped_while_its_input_stalls_returns_at_once(
    tmp_path: Path, delay: float
) -> None:
    async def stalled() -> AsyncIterator[Batch]:
        await asyncio.Event().wait()
        yield Batch(42, (1,))

    dispatcher = idle_dispatcher(tmp_path)
    run = asyncio.create_task(dispatcher.run(stalled()))
    if delay:
        await asyncio.sleep(delay)
    dispatcher.stop()  # with delay 0: before the feeder's first step

    await asyncio.wait_for(run, timeout=1)


async def test_unless_stopped_returns_the_result_when_nothing_stops_it() -> None:
    async def answer() -> int:
        await asyncio.sleep(0.01)
        return 42

    assert await unless_stopped(answer(), asyncio.Event()) == 42


async def test_unless_stopped_cancels_the_wait_when_the_stop_comes() -> None:
    stop = asyncio.Event()
    ended: list[str] = []

    async def slot() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            ended.append("cancelled")
            raise

    asyncio.get_running_loop().call_later(0.05, stop.set)

    with pytest.raises(Abandoned):
        await asyncio.wait_for(unless_stopped(slot(), stop), timeout=1)
    assert ended == ["cancelled"]


@pytest.mark.filterwarnings("error::RuntimeWarning")  # "coroutine ... was never awaited"
async def test_unless_stopped_does_not_even_start_once_stopped() -> None:
    stop = asyncio.Event()
    stop.set()
    started: list[bool] = []

    async def slot() -> None:
        started.append(True)

    with pytest.raises(Abandoned):
        await unless_stopped(slot(), stop)
    assert started == []


async def test_unless_stopped_passes_the_error_of_the_wait_on() -> None:
    async def broken() -> None:
        raise OSError(5, "Input/output error")

    with pytest.raises(OSError, match="Input/output error"):
        await unless_stopped(broken(), asyncio.Event())


class SlowToCancel:
    """A read that takes a moment to finish when it is cancelled (a thread to join, a
    connection to close), which opens the window a lost cancellation hides in."""

    async def __aiter__(self) -> AsyncIterator[int]:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await asyncio.sleep(0.05)
            raise
        yield 1


async def test_a_cancel_arriving_while_the_abandoned_read_finishes_is_not_lost() -> None:
    stop = asyncio.Event()
    went_on: list[bool] = []

    async def consumer() -> None:
        async for _ in until_stopped(SlowToCancel().__aiter__(), stop):
            pass
        went_on.append(True)  # a swallowed cancellation would let it get here
        await asyncio.sleep(10)

    task = asyncio.create_task(consumer())
    await asyncio.sleep(0.01)
    stop.set()  # the read is abandoned: 50 ms to finish
    await asyncio.sleep(0.01)
    task.cancel()  # and the consumer is cancelled meanwhile

    await asyncio.wait({task}, timeout=1)
    assert task.cancelled()
    assert went_on == []


async def test_unless_stopped_loses_no_cancellation_either() -> None:
    stop = asyncio.Event()

    async def slot() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await asyncio.sleep(0.05)
            raise

    async def waiter() -> None:
        with contextlib.suppress(Abandoned):
            await unless_stopped(slot(), stop)
        await asyncio.sleep(10)

    task = asyncio.create_task(waiter())
    await asyncio.sleep(0.01)
    stop.set()
    await asyncio.sleep(0.01)
    task.cancel()

    await asyncio.wait({task}, timeout=1)
    assert task.cancelled()


async def test_unless_stopped_abandons_a_wait_that_ignored_its_cancellation() -> None:
    stop = asyncio.Event()

    async def stubborn_slot() -> int:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            return 42  # as a library that swallows the cancellation and answers anyway
        return 0

    asyncio.get_running_loop().call_later(0.02, stop.set)

    with pytest.raises(Abandoned):
        await asyncio.wait_for(unless_stopped(stubborn_slot(), stop), timeout=1)
