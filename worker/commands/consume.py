"""Queue mode: ``consume`` sends the ids of Redis Stream entries through the normal
dispatcher (rate limit, retries, audit), and ``enqueue`` writes validated batches as entries.

An entry is acknowledged only after the outcome of every one of its ids is in the audit log.
Ids that failed are copied to the dead-letter stream (with the reason) before the entry is
acknowledged, so nothing leaves the queue without a trace or a way back in.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections.abc import AsyncIterator
from typing import Any, TextIO

import structlog

from worker import __version__
from worker.errors import ConfigError, ServiceUnavailable
from worker.exit_codes import ExitCode, finished_code
from worker.input.batching import Batch
from worker.queue.acks import Acks, retry_queue
from worker.queue.streams import (
    Malformed,
    QueueUnavailable,
    StreamQueue,
    open_redis,
    parse_entry,
)
from worker.records.audit import AuditLog, default_audit_path, new_run_id, read_key_file
from worker.records.recorder import Recorder
from worker.records.report import RunResult, print_summary
from worker.runtime.signals import run_interruptible
from worker.sending.client import UnleashXClient, http_session
from worker.sending.credentials import TokenSource, redact_url
from worker.sending.dispatch import Dispatcher
from worker.sending.retry import RetryPolicy
from worker.sending.shared_rate import rate_gate
from worker.settings import Settings

log = structlog.get_logger("audience_purge.consumer")

CONNECT_ATTEMPTS = 6


def consume_command(settings: Settings) -> int:
    """``audience-purge consume``: consume the stream and print the summary."""
    result = asyncio.run(run_consumer(settings))
    print_summary(result, sys.stdout, "consume")
    return result.exit_code


def make_queue(settings: Settings, redis: Any) -> StreamQueue:
    if not settings.stream:
        raise ConfigError("queue mode needs --stream NAME", key="stream")
    return StreamQueue(
        redis,
        settings.stream,
        settings.group,
        settings.consumer or socket.gethostname(),
        settings.dead_stream or f"{settings.stream}:dead",
        settings.max_deliveries,
        round(settings.claim_idle * 1000),
    )


async def connect(queue: StreamQueue, url: str, backoff: float) -> None:
    """Ping with capped backoff; a Redis that never answers is a clear error, not a hang."""
    for attempt in range(1, CONNECT_ATTEMPTS + 1):
        try:
            await queue.ping()
            return
        except QueueUnavailable as exc:
            if attempt == CONNECT_ATTEMPTS:
                raise ServiceUnavailable(
                    f"cannot reach Redis at {redact_url(url)} after {attempt} attempts: {exc}"
                ) from None
            wait = min(backoff * 2 ** (attempt - 1), 5.0)
            log.warning("redis unreachable, retrying", attempt=attempt, wait_s=wait)
            await asyncio.sleep(wait)


async def _entries(
    queue: StreamQueue,
    settings: Settings,
    recorder: Recorder,
    acks: Acks,
    dispatcher: Dispatcher,
) -> AsyncIterator[Batch]:
    """Batches from the stream; malformed and over-delivered entries are dead-lettered."""
    block_ms = 200 if settings.until_empty else 2000
    failures = 0
    while not dispatcher.stopping:
        try:
            got = await queue.read(settings.concurrency, block_ms)
            failures = 0
        except QueueUnavailable as exc:
            if exc.permanent:
                raise
            failures += 1
            wait = min(settings.backoff_initial * 2**failures, 10.0)
            log.warning("redis unavailable, retrying", error=str(exc), wait_s=wait)
            queue.rescan_own_pending()  # a lost reply may have left entries pending here
            await asyncio.sleep(wait)
            continue
        if not got:
            if settings.until_empty and acks.idle() and await _drained(queue):
                return
            continue
        for entry_id, fields, deliveries in got:
            for batch in await _admit(
                queue, settings, recorder, acks, entry_id, fields, deliveries
            ):
                yield batch


async def _drained(queue: StreamQueue) -> bool:
    try:
        return await queue.drained()
    except QueueUnavailable:
        return False


async def _admit(
    queue: StreamQueue,
    settings: Settings,
    recorder: Recorder,
    acks: Acks,
    entry_id: str,
    fields: dict[str, str],
    deliveries: int,
) -> list[Batch]:
    if entry_id in acks.parts:
        return []  # re-read after an outage while still in flight here
    reason = None
    if deliveries > settings.max_deliveries:
        reason = f"delivered {deliveries} times (max_deliveries {settings.max_deliveries})"
    else:
        try:
            entry = parse_entry(entry_id, fields, deliveries)
        except Malformed as exc:
            reason = f"malformed: {exc}"
    if reason is not None:
        recorder.audit.write(
            "dead_lettered",
            entry_id=entry_id,
            reason=reason,
            fields={k: v[:200] for k, v in fields.items()},
        )
        recorder.tally.dead_lettered += 1
        await retry_queue(
            lambda: queue.dead_letter(entry_id, fields, reason), settings.backoff_initial, entry_id
        )
        return []
    ids = entry.audience_ids
    size = settings.batch_size
    batches = [
        Batch(entry.campaign_id, ids[i : i + size], entry_id=entry_id, ref=entry.ref)
        for i in range(0, len(ids), size)
    ]
    recorder.tally.valid += len(ids)
    acks.expect(entry, len(batches))
    return batches


async def run_consumer(settings: Settings, *, out: TextIO = sys.stdout) -> RunResult:
    """Consume the stream until it is empty (``until_empty``) or a signal stops it."""
    started = time.monotonic()
    tokens = TokenSource(settings.token, None if settings.token else settings.token_file)
    if not settings.redis_url:
        raise ConfigError("queue mode needs --redis URL", key="redis")
    redis = open_redis(settings.redis_url)
    queue = make_queue(settings, redis)
    try:
        await connect(queue, settings.redis_url, settings.backoff_initial)
        await queue.ensure_group()
        return await _consume(settings, tokens, queue, started)
    finally:
        await queue.close()


async def _consume(
    settings: Settings, tokens: TokenSource, queue: StreamQueue, started: float
) -> RunResult:
    run_id = new_run_id()
    audit_path = settings.audit_log or default_audit_path(settings.audit_dir, run_id)
    audit = AuditLog(audit_path, run_id, key=read_key_file(settings.audit_key_file))
    recorder = Recorder(audit)
    acks = Acks(queue, recorder, settings.backoff_initial)
    interrupted = False
    try:
        audit.write(
            "run_started",
            version=__version__,
            command="consume",
            settings=settings.public(),
            stream=queue.stream,
            group=queue.group,
            consumer=queue.consumer,
        )
        async with (
            http_session(settings.timeout, settings.concurrency) as session,
            rate_gate(settings) as gate,
        ):
            dispatcher = Dispatcher(
                client=UnleashXClient(session, settings.base_url, tokens),
                gate=gate,
                policy=RetryPolicy.from_settings(settings),
                recorder=recorder,
                concurrency=settings.concurrency,
                on_settled=acks.settled,
            )
            interrupted = await run_interruptible(
                dispatcher.run(_entries(queue, settings, recorder, acks, dispatcher)),
                dispatcher.stop,
                settings.grace,
            )
            try:
                await asyncio.wait_for(acks.drain(), timeout=max(settings.grace, 5.0))
            except TimeoutError:
                # Redis too slow to take the acknowledgements: those entries stay pending
                # and are delivered again (their ids are sent again, harmlessly).
                log.warning("acknowledgements still pending at exit")
                interrupted = True
        fatal = dispatcher.fatal
        code = finished_code(
            fatal=fatal is not None, interrupted=interrupted, failed=bool(recorder.tally.failed)
        )
        result = RunResult(
            run_id=run_id,
            exit_code=code,
            tally=recorder.tally,
            duration_s=round(time.monotonic() - started, 3),
            audit_log=audit_path,
            report=settings.report,
            failed_out=None,
            interrupted=interrupted,
            fatal_reason=fatal.reason if fatal else None,
            dry_run=False,
            input_sha256="",
            input_bytes=0,
        )
        audit.write("run_finished", **result.audit_totals())
        return result
    except ServiceUnavailable as exc:
        audit.write(
            "run_finished",
            exit_code=ExitCode.UNAVAILABLE,
            error=str(exc),
            duration_s=round(time.monotonic() - started, 3),
        )
        raise
    finally:
        audit.close()
