"""``enqueue``: validate an input exactly like ``run`` and append one stream entry per batch.

Rejected rows and duplicates are audited here, as in ``run``; each entry written is audited
as ``enqueued`` with its id, so a consumer's records can be traced back to the input.

Enqueueing an input file is idempotent (see :mod:`worker.queue.enqueued`): an input the
stream already holds whole is not written again (exit 0, nothing audited), and an
interrupted enqueue of it is resumed after the entries it wrote; ``--force`` writes it
again from the start. Stdin cannot be recognised before it is read: it is always written.
"""

from __future__ import annotations

import asyncio
import sys
from typing import TextIO

import structlog

from worker.exit_codes import ExitCode
from worker.input.batching import Batch, Batcher, Deduper
from worker.input.planning import Plan, plan_batches
from worker.input.sources import ByteSource, InputDigest, open_input
from worker.queue import enqueued
from worker.queue.intake import open_queue
from worker.queue.message import encode
from worker.queue.streams import StreamQueue
from worker.records.recorder import Recorder
from worker.runtime.runtime import Runtime
from worker.runtime.stopping import until_stopped
from worker.settings import Settings
from worker.state.watermark import Ledger

ENTRIES_PER_WRITE = 100
log = structlog.get_logger("audience_purge.enqueue")


def enqueue_command(settings: Settings, input_path: str) -> int:
    """``audience-purge enqueue``."""
    return asyncio.run(run_enqueue(settings, input_path))


async def run_enqueue(settings: Settings, input_path: str, *, out: TextIO = sys.stdout) -> int:
    """Validate an input like ``run`` and append one stream entry per batch.

    A signal stops the reading; the batches already read are written, and the exit code is
    75 (re-running continues after them).

    Raises:
        StateError: an interrupted enqueue of the input used another batch size, or
            another run took this one's input over.
    """
    runtime = Runtime(
        settings, "enqueue", needs_token=False, plans=False, inputs={"the input": input_path}
    )
    source = await open_input(input_path)
    try:
        digest, _ = await source.survey()
        async with open_queue(settings) as queue:
            claim = await _claim(settings, queue, runtime.run_id, source, digest)
            if claim is not None and claim.done:
                print(_already(claim.previous or claim.marker, source.name, queue.stream), file=out)
                return ExitCode.OK
            return await _enqueue(runtime, queue, source, digest, claim, out)
    finally:
        source.close()


async def _claim(
    settings: Settings,
    queue: StreamQueue,
    run_id: str,
    source: ByteSource,
    digest: str | None,
) -> enqueued.Claim | None:
    """This run's hold on the input's marker; None for a stream (stdin from a program)."""
    if digest is None:
        log.warning(
            "enqueue from a stream is not idempotent: running it again queues its ids again "
            "(give a file to make it so)",
            input=source.name,
        )
        return None
    key = enqueued.marker_key(queue.stream, digest, settings.campaign_id)
    about = {"input": source.name, "input_sha256": digest, "ref": settings.ref or ""}
    return await enqueued.claim(
        queue,
        key,
        run_id=run_id,
        batch_size=settings.batch_size,
        force=settings.force,
        about=about,
    )


def _already(marker: enqueued.Marker, name: str, stream: str) -> str:
    return (
        f"already enqueued: {name} is on {stream} ({marker.entries} entries, {marker.ids} "
        f"ids, written by run {marker.run_id}, finished {marker.updated}); nothing written. "
        f"--force enqueues it again"
    )


async def _enqueue(
    runtime: Runtime,
    queue: StreamQueue,
    source: ByteSource,
    digest: str | None,
    claim: enqueued.Claim | None,
    out: TextIO,
) -> int:
    settings = runtime.settings
    async with runtime.recording() as recorder:
        resumed = None
        if claim is not None and claim.skip:
            previous = claim.previous
            resumed = {"run_id": previous.run_id if previous else None, "entries": claim.skip}
        runtime.start(
            input=source.name,
            input_sha256=digest,
            stream=queue.stream,
            marker=claim.marker.key if claim else None,
            resumed=resumed,
        )
        writer = _EntryWriter(settings, queue, recorder, claim, runtime.run_id)
        interrupted = await runtime.supervise(writer.write_all(source), writer.stop)
        if not interrupted and claim is not None:
            await enqueued.finish(queue, claim.marker.key, runtime.run_id)
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
            skipped_entries=writer.skipped,
        )
    print(
        f"{'interrupted: ' if interrupted else ''}enqueued {writer.ids} ids in {t.enqueued} "
        f"entries on {queue.stream} ({t.rejected} rejected rows, {t.duplicates} duplicates)"
        + (f"; resumed after {writer.skipped} entries already there" if writer.skipped else "")
        + f"; audit log {runtime.audit_path}",
        file=out,
    )
    return code


class _EntryWriter:
    """Appends the input's batches to the stream, ``ENTRIES_PER_WRITE`` per round trip,
    after the ``claim.skip`` first ones (already there)."""

    def __init__(
        self,
        settings: Settings,
        queue: StreamQueue,
        recorder: Recorder,
        claim: enqueued.Claim | None,
        run_id: str,
    ) -> None:
        self._settings = settings
        self._queue = queue
        self._recorder = recorder
        self._claim = claim
        self._run_id = run_id
        self._to_skip = claim.skip if claim else 0
        self._pending: list[Batch] = []
        self._stop = asyncio.Event()
        self.skipped = 0
        self.ids = 0

    def stop(self) -> None:
        """Read no further (a read in progress is abandoned); what was read is written."""
        self._stop.set()

    async def write_all(self, source: ByteSource) -> None:
        settings = self._settings
        plan = Plan(Ledger(0), Batcher(settings.batch_size), Deduper())
        batches = plan_batches(plan, source, InputDigest(), self._recorder, settings)
        try:
            async for batch in until_stopped(batches, self._stop):
                if self.skipped < self._to_skip:
                    self.skipped += 1
                    continue
                self._pending.append(batch)
                if len(self._pending) >= ENTRIES_PER_WRITE:
                    await self._flush()
        finally:
            await batches.aclose()
        if self._pending:
            await self._flush()

    async def _flush(self) -> None:
        ref = self._settings.ref
        entries = [encode(b.campaign_id, b.audience_ids, ref) for b in self._pending]
        if self._claim is None:
            ids = await self._queue.add(entries)
        else:
            ids = await enqueued.write(self._queue, self._claim.marker.key, self._run_id, entries)
        for entry_id, batch in zip(ids, self._pending, strict=True):
            self._recorder.enqueued(entry_id, batch, ref)
            self.ids += len(batch.audience_ids)
        self._pending.clear()
