"""``enqueue``: validate an input exactly like ``run`` and append one stream entry per batch.

Rejected rows and duplicates are audited here, as in ``run``; each entry written is audited
as ``enqueued`` with its id, so a consumer's records can be traced back to the input.
"""

from __future__ import annotations

import asyncio
import sys
from typing import TextIO

from worker.exit_codes import ExitCode
from worker.input.batching import Batch, Batcher, Deduper
from worker.input.planning import Plan, plan_batches
from worker.input.sources import ByteSource, InputDigest, open_input
from worker.queue.intake import open_queue
from worker.queue.streams import StreamQueue, encode
from worker.records.recorder import Recorder
from worker.runtime.paths import check_distinct
from worker.runtime.runtime import Runtime
from worker.runtime.stopping import until_stopped
from worker.settings import Settings
from worker.state.watermark import Ledger

ENTRIES_PER_WRITE = 100


def enqueue_command(settings: Settings, input_path: str) -> int:
    """``audience-purge enqueue``."""
    return asyncio.run(run_enqueue(settings, input_path))


async def run_enqueue(settings: Settings, input_path: str, *, out: TextIO = sys.stdout) -> int:
    """Validate an input like ``run`` and append one stream entry per batch.

    A signal stops the reading; the batches already read are written, and the exit code is
    75 (re-running enqueues the whole input again).
    """
    runtime = Runtime(settings, "enqueue", needs_token=False, plans=False)
    check_distinct(input_path, {"--audit-log": runtime.audit_path})
    source = await open_input(input_path)
    try:
        async with open_queue(settings) as queue, runtime.recording() as recorder:
            runtime.start(input=source.name, stream=queue.stream)
            writer = _EntryWriter(settings, queue, recorder)
            interrupted = await runtime.supervise(writer.write_all(source), writer.stop)
            code = ExitCode.INTERRUPTED if interrupted else ExitCode.OK
            t = recorder.tally
            runtime.finish(
                exit_code=code,
                interrupted=interrupted,
                rows=t.rows,
                valid=t.valid,
                rejected=t.rejected,
                duplicates=t.duplicates,
                entries=t.enqueued,
            )
    finally:
        source.close()
    print(
        f"{'interrupted: ' if interrupted else ''}enqueued {t.valid} ids in {t.enqueued} entries "
        f"on {queue.stream} ({t.rejected} rejected rows, {t.duplicates} duplicates); "
        f"audit log {runtime.audit_path}",
        file=out,
    )
    return code


class _EntryWriter:
    """Appends the input's batches to the stream, ``ENTRIES_PER_WRITE`` per round trip."""

    def __init__(self, settings: Settings, queue: StreamQueue, recorder: Recorder) -> None:
        self._settings = settings
        self._queue = queue
        self._recorder = recorder
        self._pending: list[Batch] = []
        self._stop = asyncio.Event()

    def stop(self) -> None:
        """Read no further (a read in progress is abandoned); what was read is written."""
        self._stop.set()

    async def write_all(self, source: ByteSource) -> None:
        settings = self._settings
        plan = Plan(Ledger(0), Batcher(settings.batch_size), Deduper())
        batches = plan_batches(plan, source, InputDigest(), self._recorder, settings)
        try:
            async for batch in until_stopped(batches, self._stop):
                self._pending.append(batch)
                if len(self._pending) >= ENTRIES_PER_WRITE:
                    await self._flush()
        finally:
            await batches.aclose()
        if self._pending:
            await self._flush()

    async def _flush(self) -> None:
        ref = self._settings.ref
        ids = await self._queue.add(
            [encode(b.campaign_id, b.audience_ids, ref) for b in self._pending]
        )
        for entry_id, batch in zip(ids, self._pending, strict=True):
            self._recorder.enqueued(entry_id, batch, ref)
        self._pending.clear()
