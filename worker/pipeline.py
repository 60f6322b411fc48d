"""Wires the stages of a purge: source → validate/dedupe → batch → dispatch → record → report.

This is the embedding API: :func:`run_purge` takes one :class:`Settings` and an input path
and returns a :class:`RunResult`; it raises only :class:`UsageError` (nothing was sent).
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, contextmanager
from typing import TextIO

import structlog

from worker import __version__
from worker.audit import AuditLog, default_audit_path, new_run_id, read_key_file
from worker.batching import Batch, Batcher, Deduper
from worker.client import UnleashXClient, http_session
from worker.credentials import TokenSource
from worker.dispatch import Dispatcher
from worker.errors import UsageError
from worker.progress import progress
from worker.ratelimit import LocalRateGate
from worker.recorder import FailedOut, Recorder
from worker.report import RunResult, write_report
from worker.retry import RetryPolicy
from worker.settings import Settings
from worker.sources import ByteSource, InputDigest, Rejected, open_input, read_rows

log = structlog.get_logger("audience_purge.pipeline")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_FATAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 75
GRACE_SECONDS = 20.0


async def plan_batches(
    source: ByteSource, digest: InputDigest, recorder: Recorder, settings: Settings
) -> AsyncIterator[Batch]:
    """Validate, de-duplicate and batch the input, recording every row that is not sent."""
    dedupe = Deduper()
    batcher = Batcher(settings.batch_size)
    try:
        async for block in read_rows(source, digest, default_campaign=settings.campaign_id):
            for item in block:
                if isinstance(item, Rejected):
                    recorder.rejected(item)
                elif not dedupe.first_time(item.campaign_id, item.audience_id):
                    recorder.duplicate(item)
                else:
                    recorder.accepted(item)
                    if (batch := batcher.add(item)) is not None:
                        yield batch
        recorder.tally.input_read = True
        for batch in batcher.flush():
            yield batch
    finally:
        for batch in batcher.flush():  # only left when the run was stopped early
            recorder.failed(
                batch,
                None,
                reason="interrupted before sending",
                retryable=True,
                attempts=0,
                latency_ms=None,
            )


@contextmanager
def signal_handlers(on_signal: Callable[[int], None]) -> Iterator[None]:
    """Explicit SIGINT/SIGTERM handlers: a container's PID 1 has no default ones."""
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        yield
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


class _Interrupts:
    """First signal: stop intake, grace for in-flight requests. Second: cancel them now."""

    def __init__(self, dispatcher: Dispatcher, grace: float) -> None:
        self._dispatcher = dispatcher
        self._grace = grace
        self.task: asyncio.Task[None] | None = None
        self.count = 0

    def __call__(self, signum: int) -> None:
        self.count += 1
        log.warning("signal received", signal=signal.Signals(signum).name, count=self.count)
        self._dispatcher.stop()
        if self.task is None:
            return
        if self.count == 1:
            asyncio.get_running_loop().call_later(self._grace, self.task.cancel)
        else:
            self.task.cancel()


def _exit_code(dispatcher: Dispatcher | None, recorder: Recorder, interrupted: bool) -> int:
    if dispatcher is not None and dispatcher.fatal is not None:
        return EXIT_FATAL
    if interrupted:
        return EXIT_INTERRUPTED
    return EXIT_FAILED if recorder.tally.failed else EXIT_OK


async def run_purge(settings: Settings, input_path: str, *, out: TextIO = sys.stdout) -> RunResult:
    """Run one purge (or, with ``settings.dry_run``, plan it) and return its result.

    Raises:
        UsageError: the input or the settings are unusable; nothing was sent.
    """
    started = time.monotonic()
    tokens = (
        None
        if settings.dry_run
        else TokenSource(settings.token, None if settings.token else settings.token_file)
    )
    source = await open_input(input_path)
    run_id = new_run_id()
    audit_path = settings.audit_log or default_audit_path(settings.audit_dir, run_id)
    digest = InputDigest()
    dispatcher: Dispatcher | None = None
    interrupted = False
    async with AsyncExitStack() as stack:
        stack.callback(source.close)
        audit = AuditLog(audit_path, run_id, key=read_key_file(settings.audit_key_file))
        stack.callback(audit.close)
        failed_out = FailedOut(settings.failed_out) if settings.failed_out else None
        if failed_out is not None:
            stack.callback(failed_out.close)
        recorder = Recorder(audit, failed_out)
        input_sha256, input_lines = await source.survey()
        audit.write(
            "run_started",
            version=__version__,
            command="run",
            dry_run=settings.dry_run,
            settings=settings.public(),
            input=source.name,
            input_size=source.size,
            input_sha256=input_sha256,
        )
        batches = plan_batches(source, digest, recorder, settings)
        try:
            if settings.dry_run:
                await _dry_run(batches, settings, out)
            else:
                assert tokens is not None
                session = await stack.enter_async_context(
                    http_session(settings.timeout, settings.concurrency)
                )
                dispatcher = Dispatcher(
                    client=UnleashXClient(session, settings.base_url, tokens),
                    gate=LocalRateGate(settings.rate, settings.burst),
                    policy=RetryPolicy.from_settings(settings),
                    recorder=recorder,
                    concurrency=settings.concurrency,
                )
                interrupted = await _dispatch(dispatcher, batches, recorder, input_lines, settings)
        except BaseException as exc:
            audit.write(
                "run_finished",
                exit_code=EXIT_USAGE if isinstance(exc, UsageError) else None,
                error=str(exc) or type(exc).__name__,
                duration_s=round(time.monotonic() - started, 3),
                input_sha256=digest.sha256,
                input_bytes=digest.bytes_read,
            )
            raise
        code = _exit_code(dispatcher, recorder, interrupted)
        result = RunResult(
            run_id=run_id,
            exit_code=code,
            tally=recorder.tally,
            duration_s=round(time.monotonic() - started, 3),
            audit_log=audit_path,
            report=settings.report,
            failed_out=settings.failed_out,
            interrupted=interrupted,
            fatal_reason=dispatcher.fatal.reason if dispatcher and dispatcher.fatal else None,
            dry_run=settings.dry_run,
            input_sha256=digest.sha256,
            input_bytes=digest.bytes_read,
        )
        totals = {
            k: v
            for k, v in result.summary().items()
            if k not in ("run_id", "audit_log", "failed_out")
        }
        audit.write("run_finished", **totals)
    if settings.report:
        write_report(settings.report, result.summary())
    return result


async def _dispatch(
    dispatcher: Dispatcher,
    batches: AsyncIterator[Batch],
    recorder: Recorder,
    total_lines: int | None,
    settings: Settings,
) -> bool:
    """Run the dispatcher under signal handlers and progress; True if interrupted."""
    interrupts = _Interrupts(dispatcher, GRACE_SECONDS)
    task = asyncio.create_task(dispatcher.run(batches))
    interrupts.task = task
    with signal_handlers(interrupts):
        async with progress(
            recorder.tally,
            total_lines,
            mode=settings.progress,
            interval=settings.progress_interval,
        ):
            try:
                await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
    return interrupts.count > 0


async def _dry_run(batches: AsyncIterator[Batch], settings: Settings, out: TextIO) -> None:
    """Print the plan: what would be sent, and how long it would take at the set rate."""
    ids: Counter[int] = Counter()
    requests: Counter[int] = Counter()
    async for batch in batches:
        ids[batch.campaign_id] += len(batch.audience_ids)
        requests[batch.campaign_id] += 1
    total = sum(requests.values())
    print(
        f"dry run: nothing was sent. Plan at {settings.rate} (batch size {settings.batch_size}):",
        file=out,
    )
    for campaign in sorted(ids):
        print(
            f"  campaign {campaign}: {ids[campaign]} ids in {requests[campaign]} requests", file=out
        )
    print(
        f"  total: {sum(ids.values())} ids in {len(ids)} campaigns, {total} requests, "
        f"about {total / settings.rate.per_second:.1f}s at the configured rate",
        file=out,
    )
