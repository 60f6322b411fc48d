"""Retry policy: tenacity, bounded by attempts *and* by total time, built once from settings.

Only a transient failure (its :class:`~worker.errors.Kind` says so) is retried. The first
attempt runs on its own, and tenacity takes over only after it failed: most requests
succeed at once, and tenacity's machinery costs 17 µs a call. The wait
is the server's ``Retry-After`` when it gave one, otherwise capped exponential backoff with
full jitter. A 429 also pauses the
shared :class:`RateGate` for that wait, so every sender slows down, not only this one.
``CancelledError`` is never caught here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)
from tenacity.stop import stop_base

from worker.errors import ApiError, RateLimitedError, RetryableError
from worker.runtime.stopping import unless_stopped
from worker.sending.ratelimit import RateGate
from worker.settings import Settings

T = TypeVar("T")
log = structlog.get_logger("audience_purge.retry")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int
    max_time: float
    backoff_initial: float
    backoff_max: float

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            settings.max_attempts,
            settings.max_retry_time,
            settings.backoff_initial,
            settings.backoff_max,
        )


class _WaitRetryAfterOrBackoff:
    """Honour the server's wait when it sent one; back off with jitter otherwise."""

    def __init__(self, policy: RetryPolicy) -> None:
        self._backoff = wait_random_exponential(
            multiplier=policy.backoff_initial, max=policy.backoff_max
        )

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RetryableError) and exc.wait is not None:
            return exc.wait
        return float(self._backoff(state))


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, ApiError) and exc.kind.transient


class _BeforeDeadline(stop_base):
    """tenacity's ``stop_before_delay``, counted from the first attempt (which ran before
    tenacity started), not from tenacity's start."""

    def __init__(self, started: float, max_time: float) -> None:
        self._deadline = started + max_time

    def __call__(self, retry_state: RetryCallState) -> bool:
        return time.monotonic() + retry_state.upcoming_sleep >= self._deadline


async def with_retries(
    operation: Callable[[int], Awaitable[T]],
    policy: RetryPolicy,
    gate: RateGate,
    *,
    context: dict[str, object] | None = None,
    stop: asyncio.Event | None = None,
) -> T:
    """Run ``operation(attempt_number)`` until it succeeds or the policy gives up.

    Raises:
        RetryableError: the last one, when attempts or time ran out.
        Abandoned: ``stop`` was set during a backoff (which then ends at once).
        Any other exception from ``operation``, unchanged and at once.
    """
    started = time.monotonic()
    try:
        return await operation(1)
    except Exception as exc:
        if not _transient(exc):
            raise
        first = exc

    async def again(attempt: int) -> T:
        """Attempt 1 is the failure above, given to tenacity as it happened."""
        if attempt == 1:
            raise first
        return await operation(attempt)

    return await _retrying(again, policy, gate, started, context=context, stop=stop)


async def _retrying(
    operation: Callable[[int], Awaitable[T]],
    policy: RetryPolicy,
    gate: RateGate,
    started: float,
    *,
    context: dict[str, object] | None,
    stop: asyncio.Event | None,
) -> T:
    async def sleep(seconds: float) -> None:
        if stop is None:
            await asyncio.sleep(seconds)
        else:
            await unless_stopped(asyncio.sleep(seconds), stop)

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        if isinstance(exc, RateLimitedError):
            gate.pause(wait)
        log.warning(
            "retrying",
            attempt=state.attempt_number,
            wait_s=round(wait, 3),
            reason=getattr(exc, "reason", repr(exc)),
            **(context or {}),
        )

    retrying = AsyncRetrying(
        retry=retry_if_exception(_transient),
        stop=stop_after_attempt(policy.max_attempts) | _BeforeDeadline(started, policy.max_time),
        wait=_WaitRetryAfterOrBackoff(policy),
        before_sleep=before_sleep,
        sleep=sleep,
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            return await operation(attempt.retry_state.attempt_number)
    raise AssertionError("unreachable: tenacity either returns or re-raises")
