"""``enqueue``: validate an input exactly like ``run`` and append one stream entry per batch.

Rejected rows and duplicates are audited here, as in ``run``; each entry written is audited
as ``enqueued`` with its id, so a consumer's records can be traced back to the input.
"""

from __future__ import annotations

import asyncio
import sys
from typing import TextIO

from worker.input.batching import Batch, Batcher, Deduper
from worker.input.planning import Plan, plan_batches
from worker.input.sources import ByteSource, InputDigest, open_input
from worker.queue.intake import open_queue
from worker.queue.streams import StreamQueue, encode
from worker.records.recorder import Recorder
from worker.runtime.runtime import Runtime
from worker.settings import Settings
from worker.state.watermark import Ledger

ENTRIES_PER_WRITE = 100


def enqueue_command(settings: Settings, input_path: str) -> int:
    """``audience-purge enqueue``."""
    return asyncio.run(run_enqueue(settings, input_path))


async def run_enqueue(settings: Settings, input_path: str, *, out: TextIO = sys.stdout) -> int:
    """Validate an input like ``run`` and append one stream entry per batch."""
    runtime = Runtime(settings, "enqueue", needs_token=False, plans=False)
    source = await open_input(input_path)
    try:
        async with open_queue(settings) as queue, runtime.recording() as recorder:
            runtime.start(input=source.name, stream=queue.stream)
            await _enqueue_all(settings, queue, source, recorder)
            t = recorder.tally
            runtime.finish(
                exit_code=0,
                rows=t.rows,
                valid=t.valid,
                rejected=t.rejected,
                duplicates=t.duplicates,
                entries=t.enqueued,
            )
    finally:
        source.close()
    print(
        f"enqueued {t.valid} ids in {t.enqueued} entries on {queue.stream} "
        f"({t.rejected} rejected rows, {t.duplicates} duplicates); audit log {runtime.audit_path}",
        file=out,
    )
    return 0


async def _enqueue_all(
    settings: Settings, queue: StreamQueue, source: ByteSource, recorder: Recorder
) -> None:
    plan = Plan(Ledger(0), Batcher(settings.batch_size), Deduper())
    pending: list[Batch] = []

    async def flush() -> None:
        ids = await queue.add(
            [encode(b.campaign_id, b.audience_ids, settings.ref) for b in pending]
        )
        for entry_id, batch in zip(ids, pending, strict=True):
            recorder.enqueued(entry_id, batch, settings.ref)
        pending.clear()

    async for batch in plan_batches(plan, source, InputDigest(), recorder, settings):
        pending.append(batch)
        if len(pending) >= ENTRIES_PER_WRITE:
            await flush()
    if pending:
        await flush()
