"""Riding out a Redis that is away: one tenacity policy for every queue call that waits.

Connecting at start, reading entries and writing acknowledgements all retry the same way:
capped exponential backoff with full jitter between ``redis_backoff_initial`` and
``redis_backoff_max`` (so a fleet of consumers does not reconnect in lockstep), bounded by
a number of attempts, or a time (``redis_outage_max``), where giving up is possible. A
*permanent* failure (see :func:`worker.queue.streams.transient`) is never retried.
``CancelledError`` is never caught.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    stop_any,
    stop_never,
    wait_random_exponential,
)
from tenacity.stop import StopBaseT, stop_base

from worker.queue.streams import QueueUnavailable
from worker.settings import Settings

T = TypeVar("T")
log = structlog.get_logger("audience_purge.queue")


@dataclass(frozen=True, slots=True)
class RedisBackoff:
    """How long to wait between attempts while Redis is away."""

    initial: float
    maximum: float

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisBackoff:
        return cls(settings.redis_backoff_initial, settings.redis_backoff_max)


def _temporary(exc: BaseException) -> bool:
    return isinstance(exc, QueueUnavailable) and not exc.permanent


async def with_redis_retries(
    call: Callable[[], Awaitable[T]],
    backoff: RedisBackoff,
    *,
    what: str,
    attempts: int | None = None,
    within: float | None = None,
    on_retry: Callable[[], None] | None = None,
) -> T:
    """``call()`` until it succeeds; ``attempts`` bounds the tries, ``within`` the seconds
    of trying (None: until stopped).

    Raises:
        QueueUnavailable: a permanent one at once, or the last one when attempts ran out.
    """

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "redis unavailable, retrying",
            during=what,
            attempt=state.attempt_number,
            wait_s=round(wait, 3),
            error=str(exc),
        )
        if on_retry is not None:
            on_retry()

    retrying = AsyncRetrying(
        retry=retry_if_exception(_temporary),
        stop=_stop(attempts, within),
        wait=wait_random_exponential(multiplier=backoff.initial, max=backoff.maximum),
        before_sleep=before_sleep,
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            return await call()
    raise AssertionError("unreachable: tenacity either returns or re-raises")


def _stop(attempts: int | None, within: float | None) -> StopBaseT:
    stops: list[stop_base] = [stop_after_attempt(attempts)] if attempts is not None else []
    stops += [stop_after_delay(within)] if within is not None else []
    return stop_any(*stops) if stops else stop_never


QUEUE_WRITE_ATTEMPTS = 12


async def retry_queue(
    call: Callable[[], Awaitable[None]], backoff: RedisBackoff, entry_id: str
) -> bool:
    """A queue write retried while Redis is away (about a minute); False if it never went
    through. The entry then stays pending and is delivered again: its ids are sent again,
    which deletion's idempotence makes harmless."""
    try:
        await with_redis_retries(
            call, backoff, what=f"queue write for entry {entry_id}", attempts=QUEUE_WRITE_ATTEMPTS
        )
    except QueueUnavailable as exc:
        log.warning("queue write failed", entry_id=entry_id, error=str(exc))
        return False
    return True
