"""Planning stage: validated rows → de-duplicated batches, on a fresh run or a resumed one.

A resumed run first re-sends the ids that failed before (unless told not to), then picks
the input up at the checkpoint's watermark: rows an earlier run already finished are
counted and skipped, and de-duplication starts from every pair met before the watermark.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Iterator, Sequence
from dataclasses import dataclass, field

from worker.errors import InputError
from worker.input.batching import Batch, Batcher, Deduper, shard_of
from worker.input.sources import (
    ByteSource,
    InputDigest,
    ResumeFrom,
    open_input,
    read_blocks,
    read_rows,
    start_resume,
)
from worker.input.validate import Chunk, Rejected, Row
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

    def __post_init__(self) -> None:
        self.ledger.open_since = self.batcher.oldest_open


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
    accepted = already = 0
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
                already += 1
            else:
                accepted += 1
                batches = add(item)
                if batches:
                    recorder.accepted(accepted)
                    recorder.already_done(already)
                    accepted = already = 0
                    yield from _pending(ledger, batches)
    finally:
        recorder.accepted(accepted)
        recorder.already_done(already)


def _plan_chunk(
    plan: Plan, chunk: Chunk, recorder: Recorder, settings: Settings
) -> Iterator[Batch]:
    """:func:`_plan_block` for a chunk, at once when it can be: none of its ids met before
    or repeated, no shard, and (on resume) none or all of them finished by an earlier run;
    otherwise row by row."""
    campaign, ids = chunk.campaign_id, chunk.audience_ids
    fresh = plan.dedupe.unseen(campaign, ids) if settings.shard_count is None else None
    done = plan.skip.get(campaign)
    finished = False
    if fresh is not None and done is not None and done.intersect(fresh):
        finished = fresh.issubset(done)
        fresh = fresh if finished else None  # some finished, some not
    if fresh is None:
        yield from _plan_block(plan, [*chunk.rows()], recorder, settings)
        return
    plan.dedupe.remember(campaign, fresh)
    plan.ledger.read_pos = chunk.offsets[-1]
    if finished:
        recorder.already_done(len(ids))
        return
    batches = plan.batcher.extend(campaign, ids, chunk.offsets, chunk.first_line)
    recorder.accepted(len(ids))
    yield from _pending(plan.ledger, batches)


def _pending(ledger: Ledger, batches: Sequence[Batch]) -> Iterator[Batch]:
    """The batches, every one of them pending in the ledger before the first leaves: a
    checkpoint taken while the first is on its way must not pass the rows of the others
    (they are in neither the batcher nor the ledger otherwise)."""
    for batch in batches:
        ledger.dispatched(batch)
    yield from batches


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
    blocks = read_blocks(
        source,
        digest,
        default_campaign=settings.campaign_id,
        watermark=plan.resume.watermark if plan.resume else 0,
        chunks=True,
    )
    try:
        async for block in blocks:
            planned = (
                _plan_chunk(plan, block, recorder, settings)
                if isinstance(block, Chunk)
                else _plan_block(plan, block, recorder, settings)
            )
            for batch in planned:  # pending in the ledger already
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
