"""The retry policy: what is retried, how often, for how long, and how long each wait is."""

from __future__ import annotations

import asyncio
import time

import pytest

from worker.errors import PermanentError, RateLimitedError, RetryableError
from worker.runtime.stopping import Abandoned
from worker.sending.retry import RetryPolicy, with_retries


class Gate:
    """A rate gate that only remembers the pauses asked of it."""

    def __init__(self) -> None:
        self.pauses: list[float] = []

    async def acquire(self) -> None:
        return None

    def pause(self, seconds: float) -> None:
        self.pauses.append(seconds)


class Operation:
    """Fails with ``failures`` in turn (sleeping ``takes`` seconds first), then returns the
    attempt number; records each attempt number and when it started."""

    def __init__(self, *failures: Exception, takes: float = 0.0) -> None:
        self.failures = list(failures)
        self.takes = takes
        self.attempts: list[int] = []
        self.started: list[float] = []

    async def __call__(self, attempt: int) -> int:
        self.attempts.append(attempt)
        self.started.append(time.monotonic())
        await asyncio.sleep(self.takes)
        if self.failures:
            raise self.failures.pop(0)
        return attempt


def policy(attempts: int = 5, max_time: float = 30.0) -> RetryPolicy:
    return RetryPolicy(attempts, max_time, backoff_initial=0.001, backoff_max=0.002)


def busy(wait: float | None = None) -> RetryableError:
    return RetryableError("HTTP 503", status=503, wait=wait)


async def test_a_first_success_is_one_attempt() -> None:
    operation = Operation()

    assert await with_retries(operation, policy(), Gate()) == 1
    assert operation.attempts == [1]


async def test_transient_failures_are_retried_with_the_attempt_numbered() -> None:
    operation = Operation(busy(), busy())

    assert await with_retries(operation, policy(), Gate()) == 3
    assert operation.attempts == [1, 2, 3]


async def test_a_permanent_failure_is_raised_at_once() -> None:
    refused = PermanentError("HTTP 400", status=400)
    operation = Operation(refused, busy())

    with pytest.raises(PermanentError) as raised:
        await with_retries(operation, policy(), Gate())
    assert raised.value is refused
    assert operation.attempts == [1]


async def test_attempts_run_out_and_the_last_failure_is_raised() -> None:
    failures = [busy() for _ in range(4)]
    operation = Operation(*failures)

    with pytest.raises(RetryableError) as raised:
        await with_retries(operation, policy(attempts=3), Gate())
    assert raised.value is failures[2]
    assert operation.attempts == [1, 2, 3]


async def test_the_servers_wait_is_kept_and_a_429_pauses_the_gate() -> None:
    operation = Operation(busy(wait=0.2), RateLimitedError("HTTP 429", status=429, wait=0.1))
    gate = Gate()

    assert await with_retries(operation, policy(), gate) == 3
    first, second, third = operation.started
    assert 0.2 <= second - first < 0.35
    assert 0.1 <= third - second < 0.2  # not the 0.2 before it
    assert gate.pauses == [0.1]  # the 429's wait, and only the 429's


async def test_the_time_budget_counts_the_first_attempt() -> None:
    # The first attempt takes 0.3 s of a 0.4 s budget: a retry after the server's 0.15 s
    # would end past the budget, so there is none.
    operation = Operation(busy(wait=0.15), takes=0.3)

    with pytest.raises(RetryableError):
        await with_retries(operation, policy(max_time=0.4), Gate())
    assert operation.attempts == [1]


async def test_a_retry_within_the_time_budget_goes() -> None:
    operation = Operation(busy(wait=0.05), takes=0.1)

    assert await with_retries(operation, policy(max_time=0.4), Gate()) == 2


async def test_a_stop_ends_the_backoff_at_once() -> None:
    operation = Operation(busy(wait=30.0))
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.1, stop.set)
    started = time.monotonic()

    with pytest.raises(Abandoned):
        await with_retries(operation, policy(max_time=120), Gate(), stop=stop)
    assert time.monotonic() - started < 1.0
    assert operation.attempts == [1]
