"""Planning stage: validated rows → de-duplicated batches, on a fresh run or a resumed one.

A resumed run first re-sends the ids that failed before (unless told not to), then picks
the input up at the checkpoint's watermark: rows an earlier run already finished are
counted and skipped, and de-duplication starts from every pair met before the watermark.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass, field

from worker.errors import InputError
from worker.input.batching import Batch, Batcher, Deduper, shard_of
from worker.input.sources import (
    ByteSource,
    InputDigest,
    ResumeFrom,
    open_input,
    read_rows,
    start_resume,
)
from worker.input.validate import Rejected, Row
from worker.records.recorder import Recorder
from worker.settings import Settings
from worker.state.checkpoint import Pairs
from worker.state.watermark import Ledger


@dataclass(slots=True)
class Plan:
    """What one run has to do, and the structures its checkpoints are taken from."""

    ledger: Ledger
    batcher: Batcher
    dedupe: Deduper
    resume: ResumeFrom | None = None
    skip: Pairs = field(default_factory=dict)
    retry: Pairs = field(default_factory=dict)


def retry_batches(retry: Pairs, batch_size: int) -> Iterator[Batch]:
    """The failed pairs of earlier runs, in batches (they are not input rows: no offsets)."""
    for campaign, ids in sorted(retry.items()):
        chunk: list[int] = []
        for audience in ids:
            chunk.append(audience)
            if len(chunk) == batch_size:
                yield Batch(campaign, tuple(chunk))
                chunk = []
        if chunk:
            yield Batch(campaign, tuple(chunk))


def _other_shard(row: Row, settings: Settings) -> bool:
    """Whether the row is another worker's (``--shard INDEX/COUNT``)."""
    count = settings.shard_count
    return count is not None and shard_of(row.audience_id, count) != settings.shard_index


def _already_done(skip: Pairs, campaign: int, audience: int) -> bool:
    ids = skip.get(campaign)
    return ids is not None and audience in ids


def _plan_block(
    plan: Plan, block: list[Row | Rejected], recorder: Recorder, settings: Settings
) -> Iterator[Batch]:
    """The batches a block of rows fills. Every row that is not sent is recorded here; the
    rows taken for sending are told to the recorder in one event before a batch leaves,
    and at the block's end. (This loop runs once per input row: it keeps to locals.)"""
    ledger, skip = plan.ledger, plan.skip
    first_time, add = plan.dedupe.first_time, plan.batcher.add
    sharded = settings.shard_count is not None
    accepted = 0
    try:
        for item in block:
            ledger.read_pos = item.offset
            if isinstance(item, Rejected):
                if not sharded or settings.shard_index == 0:
                    recorder.rejected(item)  # by one shard only
            elif sharded and _other_shard(item, settings):
                recorder.other_shard(item)
            elif not first_time(item.campaign_id, item.audience_id):
                recorder.duplicate(item)
            elif skip and _already_done(skip, item.campaign_id, item.audience_id):
                recorder.already_done(item)
            else:
                accepted += 1
                batches = add(item)
                if batches:
                    recorder.accepted(accepted)
                    accepted = 0
                    yield from batches
    finally:
        recorder.accepted(accepted)


async def plan_batches(
    plan: Plan,
    source: ByteSource,
    digest: InputDigest,
    recorder: Recorder,
    settings: Settings,
) -> AsyncGenerator[Batch, None]:
    """Yield batches to send; every row that is not sent is recorded here."""
    if plan.resume is not None:
        await start_resume(source, digest, plan.resume)  # before any retry is sent
    for batch in retry_batches(plan.retry, settings.batch_size):
        yield batch
    rows = read_rows(
        source,
        digest,
        default_campaign=settings.campaign_id,
        watermark=plan.resume.watermark if plan.resume else 0,
    )
    try:
        async for block in rows:
            for batch in _plan_block(plan, block, recorder, settings):
                plan.ledger.dispatched(batch)
                yield batch
            plan.ledger.read_pos = digest.safe_offset()
    finally:
        # Reading stopped (the end, a signal, an error): the duplicate rows the recorder
        # holds are written now, so the run's totals count every row it read.
        recorder.flush()
    recorder.input_read()
    for batch in plan.batcher.flush(digest.bytes_read):
        plan.ledger.dispatched(batch)
        yield batch


@dataclass(frozen=True, slots=True)
class Count:
    """What an input holds, as a run would see it: distinct valid ids (this shard's), rows
    rejected, repeats; and how long counting took."""

    valid: int
    rejected: int
    duplicates: int
    seconds: float


async def count_input(path: str, settings: Settings) -> Count:
    """Read the whole input once, sending and recording nothing (for the blast-radius
    guards, which must refuse before the first request).

    Raises:
        InputError: the input is not a file that can be read twice (stdin, a pipe), or is
            unusable (see :func:`read_rows`).
    """
    started = time.monotonic()
    source = await open_input(path)
    try:
        if source.size is None:
            raise InputError(
                f"--max-deletes and --expect-count count the input before sending, so it must "
                f"be a file that can be read twice; {source.name} is a stream: save it to a "
                "file first"
            )
        valid = rejected = duplicates = 0
        dedupe = Deduper()
        rows = read_rows(source, InputDigest(), default_campaign=settings.campaign_id)
        async for block in rows:
            for item in block:
                if isinstance(item, Rejected):
                    rejected += 1
                elif _other_shard(item, settings):
                    continue
                elif dedupe.first_time(item.campaign_id, item.audience_id):
                    valid += 1
                else:
                    duplicates += 1
    finally:
        source.close()
    return Count(valid, rejected, duplicates, round(time.monotonic() - started, 3))
