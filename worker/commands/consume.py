"""``audience-purge consume``: send the ids of Redis Stream entries through the normal
dispatcher (rate limit, retries, audit), inside the one runtime.

An entry is acknowledged only after the outcome of every one of its ids is in the audit log,
and deleted from the stream with its acknowledgement (one transaction): the stream holds only
the work left. Ids that failed are copied to the dead-letter stream (with the reason, bounded
by ``dead_letter_max``) before the entry is acknowledged, so nothing leaves the queue without
a trace or a way back in (``redrive``). A consumer holds no more entries than it can send soon
(:func:`~worker.queue.intake.prefetch_limit`).
"""

from __future__ import annotations

import asyncio
import sys

from worker.queue.acks import Acks
from worker.queue.intake import Intake, open_queue
from worker.queue.lease import consumer_name
from worker.queue.retrying import RedisBackoff
from worker.queue.watch import QueueWatch
from worker.records.report import RunResult, print_summary
from worker.runtime.runtime import Runtime
from worker.settings import Settings


def consume_command(settings: Settings) -> int:
    """``audience-purge consume``: consume the stream and print the summary."""
    result = asyncio.run(run_consumer(settings))
    print_summary(result, sys.stdout, "consume")
    return result.exit_code


async def run_consumer(settings: Settings) -> RunResult:
    """Consume the stream until it is empty (``until_empty``) or a signal stops it."""
    runtime = Runtime(settings, "consume", plans=False)
    async with open_queue(settings) as queue, consumer_name(queue) as lease:
        group_created = await queue.ensure_group()
        async with runtime.recording() as recorder:
            runtime.start(
                stream=queue.stream,
                group=queue.group,
                group_created=group_created,
                consumer=queue.consumer,
            )
            backoff = RedisBackoff.from_settings(settings)
            acks = Acks(queue, recorder, backoff, runtime.fail)
            dispatcher = await runtime.dispatcher(on_settled=acks.settled)
            intake = Intake(queue, settings, recorder, acks, backoff)
            runtime.background(lease.keep())
            if runtime.metrics is not None:
                watch = QueueWatch(queue, runtime.metrics)
                runtime.readiness_checks.append(watch.readiness)
                runtime.background(watch.run())

            async def consume() -> None:
                async with acks.running(grace=max(settings.grace, 5.0)):
                    await dispatcher.run(intake.batches())

            interrupted = await runtime.supervise(consume(), dispatcher.stop)
            return runtime.finish_with(
                runtime.result(interrupted=interrupted or acks.incomplete, fatal=dispatcher.fatal)
            )
