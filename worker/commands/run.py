"""Wires the stages of a purge: source → validate/dedupe → batch → dispatch → record → report.

This is the embedding API: :func:`run_purge` takes one :class:`Settings` and an input path
and returns a :class:`RunResult`; it raises only :class:`UsageError` (nothing was sent).
Resources live in one ``AsyncExitStack``; progress is checkpointed (see
:mod:`worker.state.resume`) so that re-running the same command continues the purge.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, suppress
from typing import TextIO

import structlog

from worker import __version__
from worker.errors import StateError, UsageError
from worker.exit_codes import ExitCode, finished_code
from worker.input.batching import Batch
from worker.input.planning import plan_batches
from worker.input.sources import InputDigest, open_input
from worker.records.audit import AuditLog, default_audit_path, new_run_id, read_key_file
from worker.records.progress import progress
from worker.records.recorder import FailedOut, Recorder
from worker.records.report import RunResult, print_summary, write_report
from worker.runtime.signals import run_interruptible
from worker.sending.client import UnleashXClient, http_session
from worker.sending.credentials import TokenSource
from worker.sending.dispatch import Dispatcher
from worker.sending.retry import RetryPolicy
from worker.sending.shared_rate import rate_gate
from worker.settings import Settings
from worker.state.checkpoint import Checkpoint, count
from worker.state.resume import Checkpointer, make_plan, open_state, previous_link

log = structlog.get_logger("audience_purge.pipeline")


def run_command(settings: Settings, input_path: str) -> int:
    """``audience-purge run``: purge (or plan) and print the summary."""
    result = asyncio.run(run_purge(settings, input_path))
    if not settings.dry_run:
        print_summary(result, sys.stdout)
    return result.exit_code


async def run_purge(settings: Settings, input_path: str, *, out: TextIO = sys.stdout) -> RunResult:
    """Run one purge (or, with ``settings.dry_run``, plan it) and return its result.

    Raises:
        UsageError: the input, the settings or the saved state are unusable; nothing was
            sent.
    """
    started = time.monotonic()
    tokens = (
        None
        if settings.dry_run
        else TokenSource(settings.token, None if settings.token else settings.token_file)
    )
    store, point = (None, None) if settings.dry_run else open_state(settings, input_path)
    plan = make_plan(point, settings)
    source = await open_input(input_path)
    run_id = new_run_id()
    audit_path = settings.audit_log or default_audit_path(settings.audit_dir, run_id)
    digest = InputDigest()
    dispatcher: Dispatcher | None = None
    interrupted = False
    async with AsyncExitStack() as stack:
        stack.callback(source.close)
        audit = AuditLog(
            audit_path,
            run_id,
            previous=previous_link(point),
            key=read_key_file(settings.audit_key_file),
        )
        stack.callback(audit.close)
        failed_out = FailedOut(settings.failed_out) if settings.failed_out else None
        if failed_out is not None:
            stack.callback(failed_out.close)
        recorder = Recorder(audit, failed_out, dict(point.failed) if point else None)
        input_sha256, input_lines = await source.survey()
        if point is not None and point.input_sha256 and input_sha256 != point.input_sha256:
            raise StateError(
                f"input {source.name} changed since the state was written (its SHA-256 "
                "differs): re-run with --fresh to start over"
            )
        batches = plan_batches(plan, source, digest, recorder, settings)
        checkpoints = (
            None
            if store is None
            else Checkpointer(
                store, plan, digest, recorder, audit, source.name, point, input_sha256
            )
        )
        if checkpoints is not None:
            # Before the first audit record: a crash from here on leaves a state whose audit
            # head names this run's file, so the next run's chain links to it.
            checkpoints.save()
        audit.write(
            "run_started",
            version=__version__,
            command="run",
            dry_run=settings.dry_run,
            settings=settings.public(),
            input=source.name,
            input_size=source.size,
            input_sha256=input_sha256,
            state_dir=str(store.directory) if store else None,
            resumed=_resumed(point),
        )
        try:
            if settings.dry_run:
                await _dry_run(batches, settings, out)
            else:
                assert tokens is not None
                assert checkpoints is not None
                session = await stack.enter_async_context(
                    http_session(settings.timeout, settings.concurrency)
                )
                gate = await stack.enter_async_context(rate_gate(settings))
                dispatcher = Dispatcher(
                    client=UnleashXClient(session, settings.base_url, tokens),
                    gate=gate,
                    policy=RetryPolicy.from_settings(settings),
                    recorder=recorder,
                    concurrency=settings.concurrency,
                    on_settled=plan.ledger.settled,
                )
                interrupted = await _dispatch(
                    dispatcher, batches, recorder, input_lines, settings, checkpoints
                )
        except BaseException as exc:
            if isinstance(exc, UsageError) and point is None and store is not None:
                store.clear()  # nothing was sent: a corrected input must not look "changed"
            audit.write(
                "run_finished",
                exit_code=ExitCode.USAGE if isinstance(exc, UsageError) else None,
                error=str(exc) or type(exc).__name__,
                duration_s=round(time.monotonic() - started, 3),
                input_sha256=digest.sha256,
                input_bytes=digest.bytes_read,
            )
            raise
        fatal = dispatcher.fatal if dispatcher is not None else None
        stopped = interrupted or fatal is not None
        code = finished_code(
            fatal=fatal is not None,
            interrupted=interrupted,
            failed=count(recorder.failed_pairs) > 0,
        )
        result = RunResult(
            run_id=run_id,
            exit_code=code,
            tally=recorder.tally,
            duration_s=round(time.monotonic() - started, 3),
            audit_log=audit_path,
            report=settings.report,
            failed_out=settings.failed_out,
            interrupted=interrupted,
            fatal_reason=fatal.reason if fatal else None,
            dry_run=settings.dry_run,
            input_sha256=digest.sha256,
            input_bytes=digest.bytes_read,
            state_dir=store.directory if store else None,
            failed_left=count(recorder.failed_pairs),
        )
        audit.write("run_finished", **result.audit_totals())
        if checkpoints is not None:
            checkpoints.final(stopped=stopped)
    if settings.report:
        write_report(settings.report, result.summary())
    return result


def _resumed(point: Checkpoint | None) -> dict[str, object] | None:
    if point is None:
        return None
    return {
        "runs": point.run_ids,
        "watermark": point.watermark,
        "complete": point.complete,
        "failed": count(point.failed),
        "confirmed_deleted": point.totals.get("deleted", 0),
    }


async def _dispatch(
    dispatcher: Dispatcher,
    batches: AsyncIterator[Batch],
    recorder: Recorder,
    total_lines: int | None,
    settings: Settings,
    checkpoints: Checkpointer,
) -> bool:
    """Run the dispatcher under signal handlers, progress and checkpoints; True if a
    signal interrupted it."""
    saver = asyncio.create_task(checkpoints.every(settings.checkpoint_interval))
    try:
        async with progress(
            recorder.tally,
            total_lines,
            mode=settings.progress,
            interval=settings.progress_interval,
        ):
            return await run_interruptible(dispatcher.run(batches), dispatcher.stop, settings.grace)
    finally:
        saver.cancel()
        with suppress(asyncio.CancelledError):
            await saver


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
