"""One consumer name, one process: a lease on the name, in Redis, for as long as a consumer runs.

Redis hands a group's entries to a consumer *name*: two processes reading under one name
share its pending list, each re-reads what the other holds, and the same ids are sent twice.
So a consumer first takes the key ``STREAM:consumer:GROUP:NAME`` (``SET NX PX``, its value
naming the process), renews it every third of :data:`LEASE_S` while it runs, and deletes it
when it ends. A name whose lease is live is refused (exit 2, nothing read): a process that
died without deleting it leaves a lease that expires within :data:`LEASE_S`, and a consumer
restarted under the same name waits that long for it rather than failing. Renewing is the
only proof of life: a lease found taken by another process while running ends the run.
Without ``--consumer``, names are unique per process (host, PID and random), so consumers on
one host never share one.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import structlog

from worker.errors import ServiceUnavailable, UsageError
from worker.queue.streams import QueueUnavailable, StreamQueue, ask
from worker.times import utc_text

log = structlog.get_logger("audience_purge.queue")

WHAT = "consumer name lease"
LEASE_S = 10.0
POLL_S = 0.25  # between two tries for a lease that is not live any more

# KEYS: the lease; ARGV: this process's value, the lease in ms. 1 if renewed (or taken again
# after it expired unseen), 0 if another process holds it now.
_RENEW = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] or not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def default_name() -> str:
    """A consumer name no other process has: the host (the pod's name), PID and random."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def lease_key(queue: StreamQueue) -> str:
    return f"{queue.stream}:consumer:{queue.group}:{queue.consumer}"


class Lease:
    """This process's hold on its consumer name."""

    def __init__(self, queue: StreamQueue, lease_s: float | None = None) -> None:
        self._queue = queue
        self._ms = round((lease_s or LEASE_S) * 1000)
        self.key = lease_key(queue)
        when = utc_text(datetime.now(UTC), "seconds")
        self.value = (
            f"PID {os.getpid()} on {socket.gethostname()} since {when} ({secrets.token_hex(4)})"
        )

    async def take(self) -> None:
        """Take the name, waiting up to one lease period for a lease nobody renews.

        Raises:
            UsageError: another live process holds the name (nothing was read).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._ms / 1000 + POLL_S
        said = False
        while True:
            taken = await ask(
                WHAT, self._queue.redis.set(self.key, self.value, nx=True, px=self._ms)
            )
            if taken:
                return
            holder = await ask(WHAT, self._queue.redis.get(self.key))
            if loop.time() >= deadline:
                raise UsageError(
                    f"consumer name {self._queue.consumer!r} is in use by another process "
                    f"({holder or 'unknown'}; lease {self.key}): two processes under one name "
                    "would send the same entries twice; give each its own --consumer, or "
                    "leave it out for a unique one"
                )
            if not said:
                log.warning(
                    "consumer name held by another process: waiting for its lease to expire",
                    consumer=self._queue.consumer,
                    holder=holder,
                    wait_up_to_s=self._ms / 1000,
                )
                said = True
            await asyncio.sleep(POLL_S)

    async def keep(self) -> None:
        """Renew the lease until cancelled; Redis away is ridden out (the lease lasts a
        while), the lease taken by another process ends the run.

        Raises:
            ServiceUnavailable: another process holds the name now.
        """
        script = self._queue.redis.register_script(_RENEW)
        while True:
            await asyncio.sleep(self._ms / 3000)
            try:
                kept = await ask(WHAT, script(keys=[self.key], args=[self.value, self._ms]))
            except QueueUnavailable as exc:
                if exc.permanent:
                    raise
                log.warning("consumer name lease not renewed", error=str(exc))
                continue
            if not kept:
                raise ServiceUnavailable(
                    f"consumer name {self._queue.consumer!r} was taken by another process "
                    f"while this one ran (lease {self.key} not renewed within {self._ms / 1000:g} "
                    "s): this consumer stops; its entries stay pending"
                )

    async def release(self) -> None:
        """Delete the lease if it is still ours; a failure only delays the name's reuse."""
        script = self._queue.redis.register_script(_RELEASE)
        try:
            await ask(WHAT, script(keys=[self.key], args=[self.value]))
        except QueueUnavailable as exc:
            log.warning("consumer name lease not released: it expires", error=str(exc))


@asynccontextmanager
async def consumer_name(queue: StreamQueue) -> AsyncIterator[Lease]:
    """Hold the queue's consumer name for the body of the block (see the module docstring)."""
    lease = Lease(queue)
    await lease.take()
    try:
        yield lease
    finally:
        await lease.release()
