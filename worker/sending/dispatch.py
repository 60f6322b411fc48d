"""Dispatch stage: send batches concurrently under the rate gate, with retries and splits.

There are ``concurrency`` senders, each sending one batch at a time; a bounded queue
between the batcher and the senders keeps memory flat. Each request takes a permit from the
:class:`~worker.sending.concurrency.ConcurrencyLimit` *before* it waits at the rate gate and
gives it back when it ended, so requests in flight never exceed ``concurrency``, nor the
limit in force when their permits were taken (a lowered limit lets them finish). The rate
gate alone decides when a request starts: the limit only holds senders back, it never lets
one start sooner. A batch waiting for a retry's backoff holds no permit. A batch *settles*
when its outcome (deleted or failed) is in the audit log; only then is ``on_settled`` told,
which lets the checkpoint move past it.

Stopping (a signal, or a fatal answer such as a 401) stops intake at once, and no request
starts after it: the check follows the rate limit's wait, and a stop cuts that wait, the
wait for a permit and any retry's backoff short. Requests in flight may finish. Batches
that did not settle stay pending in the checkpoint and are sent again by the next run; one
whose request was sent and cut off, or not retried, is audited as ``unconfirmed``. The
``sending`` record is written right before a batch's first request, so a batch that never
left has none.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager

import structlog

from worker.errors import ApiError, FatalError, Kind, PayloadTooLargeError, PermanentError
from worker.input.batching import Batch
from worker.records.recorder import Recorder
from worker.runtime.stopping import Abandoned, unless_stopped, until_stopped
from worker.sending.client import Reply, UnleashXClient
from worker.sending.concurrency import ConcurrencyLimit
from worker.sending.ratelimit import RateGate
from worker.sending.retry import RetryPolicy, with_retries

log = structlog.get_logger("audience_purge.dispatch")


class Dispatcher:
    """Owns the sender tasks and decides each batch's end: deleted, failed or unsettled."""

    def __init__(
        self,
        *,
        client: UnleashXClient,
        gate: RateGate,
        policy: RetryPolicy,
        recorder: Recorder,
        concurrency: int,
        limit: ConcurrencyLimit | None = None,
        on_settled: Callable[[Batch], None] = lambda _: None,
        on_error: Callable[[Exception], None] = lambda _: None,
    ) -> None:
        """``concurrency`` senders; ``limit`` (fixed at ``concurrency`` when not given)
        bounds their requests in flight, and may not allow more than there are senders."""
        if limit is not None and limit.maximum > concurrency:
            raise ValueError(f"a limit of {limit.maximum} needs as many senders, not {concurrency}")
        self._client = client
        self._gate = gate
        self._policy = policy
        self._recorder = recorder
        self._concurrency = concurrency
        self.limit = limit if limit is not None else ConcurrencyLimit(concurrency)
        self._on_settled = on_settled
        self._on_error = on_error
        self.error: Exception | None = None
        self._queue: asyncio.Queue[Batch] = asyncio.Queue(maxsize=concurrency)
        self._size_cap: int | None = None
        self._stop = asyncio.Event()
        self.fatal: FatalError | None = None
        self.stopping = False

    def stop(self) -> None:
        """Stop reading input and starting requests; in-flight requests may finish."""
        self.stopping = True
        self._stop.set()

    async def run(self, batches: AsyncIterator[Batch]) -> None:
        """Send every batch; returns when all settled or the run was stopped.

        The feeder and the senders are one task group. An unexpected error in any of them
        stops the dispatcher as a signal would (``on_error`` is told at once, so that the
        runtime can bound the wait for in-flight requests) and is raised once they ended.
        Cancelling this coroutine cancels the in-flight requests (audited as unconfirmed).
        """
        try:
            async with asyncio.TaskGroup() as group:
                senders = [group.create_task(self._sender()) for _ in range(self._concurrency)]
                group.create_task(self._feed(batches, senders))
        finally:
            if isinstance(batches, AsyncGenerator):
                await batches.aclose()
        if self.error is not None:
            raise self.error

    def _fail(self, error: Exception) -> None:
        if self.error is None:
            self.error = error
        self.stop()
        self._on_error(error)

    async def _feed(self, batches: AsyncIterator[Batch], senders: list[asyncio.Task[None]]) -> None:
        """Queue the batches until the input ends or the run stops (a read in progress is
        abandoned then); once every queued batch is finished, let the senders go."""
        try:
            async for batch in until_stopped(batches, self._stop):
                await self._queue.put(batch)
        except Exception as exc:
            self._fail(exc)
        await self._queue.join()
        for sender in senders:
            sender.cancel()  # each is waiting for a batch that will not come

    async def _sender(self) -> None:
        while True:
            batch = await self._queue.get()
            try:
                if not self.stopping and await self._dispatch(batch):
                    self._on_settled(batch)
            except Exception as exc:
                self._fail(exc)
            finally:
                self._queue.task_done()

    async def _dispatch(self, batch: Batch) -> bool:
        """Send a batch, pre-split to the size the API is known to accept; True if settled."""
        cap = self._size_cap
        if cap is not None and len(batch.audience_ids) > cap:
            return all([await self._dispatch(half) for half in batch.halves()])
        outcome = await self._send(batch)
        if outcome is _Outcome.SPLIT:
            return await self._split(batch)
        return outcome is _Outcome.SETTLED

    async def _send(self, batch: Batch) -> _Outcome:
        """Send with retries, and record the end of the batch if it has one."""
        attempts = 0
        last: Reply | None = None

        async def attempt(number: int) -> Reply:
            nonlocal attempts, last
            loop = asyncio.get_running_loop()
            async with self._permit():
                # Checked after the rate limit's wait too (which a stop cuts short): once
                # the run stops, no request starts.
                waiting = loop.time()
                if self._stop.is_set():
                    raise Abandoned
                if not self._gate.try_acquire():
                    await unless_stopped(self._gate.acquire(), self._stop)
                if number == 1:
                    # Write-ahead: the intent is on disk before the request can reach the API.
                    self._recorder.sending(batch)
                attempts = number
                self._recorder.request_made(retry=number > 1, waited_s=loop.time() - waiting)
                last = await self._request(batch)
            if last.verdict.kind is not Kind.DELETED:
                raise last.verdict.error()
            return last

        context = {"campaign_id": batch.campaign_id, "batch_id": batch.batch_id}
        try:
            reply = await with_retries(
                attempt, self._policy, self._gate, context=context, stop=self._stop
            )
        except asyncio.CancelledError:
            if attempts:
                self._recorder.unconfirmed(batch, "cancelled in flight: outcome unknown")
            raise
        except PayloadTooLargeError:
            if len(batch.audience_ids) > 1:
                return _Outcome.SPLIT
            self._failed(batch, PermanentError("payload too large for a single id"), attempts, last)
            return _Outcome.SETTLED
        except ApiError as exc:
            self._failed(batch, exc, attempts, last)
            # A batch refused by a fatal answer (a bad token) stays pending: the next run,
            # or another consumer, sends it again once the cause is fixed.
            return _Outcome.UNSETTLED if exc.kind.stops_run else _Outcome.SETTLED
        except Abandoned:
            if attempts:
                self._recorder.unconfirmed(batch, "stopped before a retry could settle it")
            return _Outcome.UNSETTLED
        self._recorder.deleted(batch, reply.verdict, attempts=attempts, latency_ms=reply.latency_ms)
        return _Outcome.SETTLED

    @asynccontextmanager
    async def _permit(self) -> AsyncIterator[None]:
        """A place among the requests in flight, held from before the rate gate to the end
        of the request. A stop abandons the wait for it (Abandoned)."""
        if not self.limit.try_acquire():
            await self._wait_for_permit()
        try:
            yield
        finally:
            self.limit.release()

    async def _wait_for_permit(self) -> None:
        """Wait for a permit to be given back (Abandoned on a stop, holding none)."""
        taking = asyncio.ensure_future(self.limit.acquire())
        try:
            await unless_stopped(taking, self._stop)
        except BaseException:
            if not taking.done():
                taking.cancel()  # a stop set before the wait began: it never starts
            elif not taking.cancelled() and taking.exception() is None:
                self.limit.release()  # the permit came just as the stop (or a cancel) did
            raise

    async def _request(self, batch: Batch) -> Reply:
        """One request; its end (an answer, an error, a cancellation) is always told, to
        the recorder and to the concurrency limit (a transient failure is back-pressure)."""
        reply: Reply | None = None
        self.limit.started()
        try:
            reply = await self._client.delete_audience(batch.campaign_id, batch.audience_ids)
            return reply
        finally:
            if reply is None:
                self.limit.ended()
            else:
                self.limit.ended(reply.latency_ms / 1000, pushed_back=reply.verdict.kind.transient)
            verdict = reply.verdict if reply is not None else None
            self._recorder.answered(
                verdict.status if verdict else None,
                verdict.kind.value if verdict else None,
                reply.latency_ms / 1000 if reply is not None else None,
            )

    async def _split(self, batch: Batch) -> bool:
        size = len(batch.audience_ids)
        self._size_cap = min(self._size_cap or size, size // 2 + size % 2)
        log.warning(
            "payload too large: splitting",
            size=size,
            new_cap=self._size_cap,
            campaign_id=batch.campaign_id,
        )
        return all([await self._dispatch(half) for half in batch.halves()])

    def _failed(self, batch: Batch, exc: ApiError, attempts: int, last: Reply | None) -> None:
        if isinstance(exc, FatalError) and self.fatal is None:
            self.fatal = exc
            log.error("fatal API answer: no new requests", reason=exc.reason, status=exc.status)
            self.stop()
        self._recorder.failed(
            batch,
            last.verdict if last else None,
            exc,
            reason=_reason(exc),
            attempts=attempts,
            latency_ms=last.latency_ms if last else None,
        )


class _Outcome(enum.Enum):
    """How a batch's sending ended."""

    SETTLED = "settled"  # deleted or failed for good: its outcome is in the audit log
    UNSETTLED = "unsettled"  # to be sent again (stopped, or refused by a fatal answer)
    SPLIT = "split"  # a 413: send it again in halves


def _reason(exc: ApiError) -> str:
    if exc.kind.transient:
        return f"gave up after retries: {exc.reason}"
    return exc.reason
