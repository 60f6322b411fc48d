"""Waiting until told to stop: a wait in progress when the stop comes is abandoned at once.

Intake (the CSV reader, a stream's XREADGROUP, stdin that never ends) and the waits before
a request (the rate limit, a retry's backoff) may take long; a stop must not wait for them,
and no request may start once the run is stopping. :func:`until_stopped` and
:func:`unless_stopped` run the wait as its own task beside the stop event, so whichever
comes first wins, and the stop never has to cancel the task that waits (which may be
writing something that must finish).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

T = TypeVar("T")


class Abandoned(Exception):
    """A wait (for the rate limit, a backoff, an attempt) given up because the run stops."""


async def unless_stopped(awaitable: Awaitable[T], stop: asyncio.Event) -> T:
    """The result of ``awaitable``, unless ``stop`` is set first.

    Raises:
        Abandoned: ``stop`` was set before or while waiting (the wait is cancelled).
    """
    if stop.is_set():
        if inspect.iscoroutine(awaitable):
            awaitable.close()
        raise Abandoned
    work: asyncio.Future[T] = asyncio.ensure_future(awaitable)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        either: set[asyncio.Future[Any]] = {work, stopped}
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not work.done():
            work.cancel()
            await _ended(work)
    if work.cancelled():
        raise Abandoned
    result = work.result()
    if stop.is_set():
        # The wait may have swallowed its cancellation and finished anyway (redis-py can,
        # in the shared rate gate): a stop that came first still wins.
        raise Abandoned
    return result


async def until_stopped(source: AsyncIterator[T], stop: asyncio.Event) -> AsyncIterator[T]:
    """The items of ``source`` until it ends or ``stop`` is set, whichever comes first."""
    stopped = asyncio.ensure_future(stop.wait())
    try:
        while not stop.is_set():
            read: asyncio.Future[T] = asyncio.ensure_future(anext(source))
            try:
                either: set[asyncio.Future[Any]] = {read, stopped}
                await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not read.done():
                    read.cancel()  # the stop came first (or we are cancelled): abandon it
                    await _ended(read)
            if read.cancelled():
                return
            try:
                item = read.result()
            except StopAsyncIteration:
                return
            yield item
    finally:
        stopped.cancel()


async def _ended(task: asyncio.Future[Any]) -> None:
    """Wait for an abandoned task to finish its cancellation, without taking its outcome.

    Not ``suppress(CancelledError): await task``: a cancellation of *this* task that lands
    meanwhile would be swallowed with the task's own, and this task would go on as if it
    had not been cancelled (seen: a dispatcher whose run was cancelled waited for ever).
    """
    await asyncio.wait({task})
