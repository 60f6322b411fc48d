"""``enqueue``: validate an input exactly like ``run`` and append one stream entry per batch.

Rejected rows and duplicates are audited here, as in ``run``; each entry written is audited
as ``enqueued`` with its id, so a consumer's records can be traced back to the input.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any, TextIO

from worker import __version__
from worker.commands.consume import connect, make_queue
from worker.errors import ConfigError
from worker.input.batching import Batch, Batcher, Deduper
from worker.input.planning import Plan, plan_batches
from worker.input.sources import InputDigest, open_input
from worker.queue.streams import StreamQueue, encode, open_redis
from worker.records.audit import AuditLog, default_audit_path, new_run_id, read_key_file
from worker.records.recorder import Recorder
from worker.settings import Settings
from worker.state.watermark import Ledger


def enqueue_command(settings: Settings, input_path: str) -> int:
    """``audience-purge enqueue``."""
    return asyncio.run(run_enqueue(settings, input_path))


async def run_enqueue(settings: Settings, input_path: str, *, out: TextIO = sys.stdout) -> int:
    """Validate an input like ``run`` and append one stream entry per batch."""
    if not settings.redis_url:
        raise ConfigError("enqueue needs --redis URL", key="redis")
    source = await open_input(input_path)
    redis = open_redis(settings.redis_url)
    queue = make_queue(settings, redis)
    run_id = new_run_id()
    audit_path = settings.audit_log or default_audit_path(settings.audit_dir, run_id)
    try:
        await connect(queue, settings.redis_url, settings.backoff_initial)
        audit = AuditLog(audit_path, run_id, key=read_key_file(settings.audit_key_file))
        try:
            recorder = Recorder(audit)
            audit.write(
                "run_started",
                version=__version__,
                command="enqueue",
                settings=settings.public(),
                input=source.name,
                stream=queue.stream,
            )
            entries = await _enqueue_all(settings, queue, source, recorder)
            t = recorder.tally
            audit.write(
                "run_finished",
                exit_code=0,
                rows=t.rows,
                valid=t.valid,
                rejected=t.rejected,
                duplicates=t.duplicates,
                entries=entries,
            )
        finally:
            audit.close()
    finally:
        source.close()
        await queue.close()
    print(
        f"enqueued {t.valid} ids in {entries} entries on {queue.stream} "
        f"({t.rejected} rejected rows, {t.duplicates} duplicates); audit log {audit_path}",
        file=out,
    )
    return 0


async def _enqueue_all(
    settings: Settings, queue: StreamQueue, source: Any, recorder: Recorder
) -> int:
    plan = Plan(Ledger(0), Batcher(settings.batch_size), Deduper())
    pending: list[Batch] = []
    entries = 0

    async def flush() -> None:
        nonlocal entries
        ids = await queue.add(
            [encode(b.campaign_id, b.audience_ids, settings.ref) for b in pending]
        )
        for entry_id, batch in zip(ids, pending, strict=True):
            recorder.audit.write(
                "enqueued",
                entry_id=entry_id,
                campaign_id=batch.campaign_id,
                audience_ids=batch.audience_ids,
                ref=settings.ref,
            )
        entries += len(pending)
        pending.clear()

    async for batch in plan_batches(plan, source, InputDigest(), recorder, settings):
        pending.append(batch)
        if len(pending) >= 100:
            await flush()
    if pending:
        await flush()
    return entries
