"""Reading until told to stop: a read in progress when the stop comes is abandoned at once.

Intake (the CSV reader, a stream's XREADGROUP, stdin that never ends) may wait for a long
time; a stop must not wait for it. :func:`until_stopped` runs each read as its own task
beside the stop event, so whichever comes first wins, and the stop never has to cancel the
consumer of the items (which may be writing something that must finish).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import suppress
from typing import Any, TypeVar

T = TypeVar("T")


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
                    with suppress(asyncio.CancelledError, StopAsyncIteration):
                        await read
            if read.cancelled():
                return
            try:
                item = read.result()
            except StopAsyncIteration:
                return
            yield item
    finally:
        stopped.cancel()
