"""Blocks of plain lines are planned as chunks (issue #11): the batches, their offsets, the
rows recorded and the checkpoints a run can take are exactly those of the row-by-row path."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyroaring import BitMap64

from worker.input import sources
from worker.input.batching import Batch, Batcher, Deduper
from worker.input.planning import Plan, plan_batches
from worker.input.sources import InputDigest, open_input
from worker.records.audit import AuditLog
from worker.records.recorder import Recorder
from worker.settings import Settings
from worker.state.checkpoint import Pairs
from worker.state.watermark import Ledger

CAMPAIGN = 42


class Events:
    """Observer: every event the recorder tells, with its fields."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def on_event(self, event: str, fields: Any) -> None:
        self.seen.append((event, dict(fields)))


def plan_file(
    data: bytes, *, batch_size: int, block: int, chunks: bool, skip: Pairs | None = None
) -> tuple[list[tuple[int, tuple[int, ...], int, int]], dict[str, int], list[int]]:
    """Plan ``data`` as a run would; the batches (campaign, ids, first and last offsets),
    the tally's row counts, and the ids of the duplicates records."""

    async def go() -> tuple[list[tuple[int, tuple[int, ...], int, int]], dict[str, int], list[int]]:
        with tempfile.TemporaryDirectory() as directory, pytest.MonkeyPatch.context() as patch:
            patch.setattr(sources, "BLOCK", block)
            if not chunks:
                patch.setattr(sources, "_chunk", lambda frame, layout, default: None)
            path = Path(directory) / "ids.csv"
            path.write_bytes(data)
            events = Events()
            recorder = Recorder(AuditLog(Path(directory) / "audit.jsonl", "run"), [events])
            plan = Plan(Ledger(0), Batcher(batch_size, stale_rows=7), Deduper())
            plan.skip = {c: ids.copy() for c, ids in (skip or {}).items()}
            source = await open_input(str(path))
            config = Settings(campaign_id=CAMPAIGN, batch_size=batch_size)
            try:
                batches = plan_batches(plan, source, InputDigest(), recorder, config)
                found = [
                    (b.campaign_id, b.audience_ids, b.first_offset, b.last_offset)
                    async for b in batches
                ]
            finally:
                source.close()
            t = recorder.tally
            counts = {
                "rows": t.rows,
                "valid": t.valid,
                "duplicates": t.duplicates,
                "already_done": t.already_done,
            }
            repeats = [i for e, f in events.seen if e == "duplicates" for i in f["audience_ids"]]
            return found, counts, repeats

    return asyncio.run(go())


IDS = st.integers(1, 400).map(lambda i: 10**9 + i)
SHAPES = st.sampled_from(["audience_id", "campaign_id,audience_id", "audience_id,campaign_id"])


@settings(max_examples=40, deadline=None)
@given(
    shape=SHAPES,
    ids=st.lists(IDS, min_size=1, max_size=300),
    campaigns=st.lists(st.sampled_from([7, 8]), min_size=1, max_size=300),
    odd=st.sets(st.integers(0, 299), max_size=5),
    batch_size=st.integers(1, 12),
    block=st.sampled_from([64, 257, 1 << 16]),
)
def test_chunks_plan_exactly_as_rows_do(
    shape: str,
    ids: list[int],
    campaigns: list[int],
    odd: set[int],
    batch_size: int,
    block: int,
) -> None:
    lines = []
    for n, audience in enumerate(ids):
        campaign = campaigns[n % len(campaigns)]
        cells = {"audience_id": str(audience), "campaign_id": str(campaign)}
        line = ",".join(cells[name] for name in shape.split(","))
        lines.append(" " + line if n in odd else line)  # a line for the exact path
    data = (shape + "\n" + "\n".join(lines) + "\n").encode()

    chunked = plan_file(data, batch_size=batch_size, block=block, chunks=True)
    by_rows = plan_file(data, batch_size=batch_size, block=block, chunks=False)

    assert chunked == by_rows


def test_the_chunk_path_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparison above is blind if no block is ever a chunk: count them."""
    made: list[int] = []
    original = sources._chunk

    def counting(frame: Any, layout: Any, default: int | None) -> Any:
        chunk = original(frame, layout, default)
        if chunk is not None:
            made.append(len(chunk.audience_ids))
        return chunk

    monkeypatch.setattr(sources, "_chunk", counting)
    data = ("audience_id\n" + "".join(f"{i}\n" for i in range(1, 3001))).encode()

    found, counts, _ = plan_file(data, batch_size=100, block=4096, chunks=True)

    assert len(made) == 3  # every block but the first (its header decides the layout)
    assert sum(made) > 1900
    assert counts == {"rows": 3000, "valid": 3000, "duplicates": 0, "already_done": 0}
    assert [i for _, batch, _, _ in found for i in batch] == list(range(1, 3001))


def offsets_of(data: bytes) -> Iterator[int]:
    offset = 0
    for line in data.split(b"\n"):
        yield offset
        offset += len(line) + 1


async def test_a_checkpoint_between_two_batches_of_one_row_keeps_the_second(
    tmp_path: Path,
) -> None:
    """A row can end two batches at once (its campaign's, full, and another's, stale). While
    the first is on its way, the second is in neither the batcher nor the ledger unless the
    planner put it there first: a checkpoint then would pass its rows, never sent."""
    # Campaign 8's one row goes stale while campaign 7 fills batches of 3; the stale check
    # runs every 1024 rows, where a batch of 7 also ends.
    rows = ["8,1"] + [f"7,{i}" for i in range(2, 1026)]
    data = ("campaign_id,audience_id\n" + "\n".join(rows) + "\n").encode()
    path = tmp_path / "ids.csv"
    path.write_bytes(data)
    recorder = Recorder(AuditLog(tmp_path / "audit.jsonl", "run"))
    plan = Plan(Ledger(0), Batcher(3, stale_rows=100), Deduper())
    source = await open_input(str(path))
    marks: list[tuple[Batch, int]] = []
    try:
        async for batch in plan_batches(
            plan, source, InputDigest(), recorder, Settings(batch_size=3)
        ):
            marks.append((batch, plan.ledger.watermark(plan.batcher.oldest_open())))
            plan.ledger.settled(batch)
    finally:
        source.close()

    stale = next(b for b, _ in marks if b.campaign_id == 8)
    assert stale.audience_ids == (1,)
    # At every yield, the watermark is at or before the first row of every batch not yet
    # yielded (it may pass only rows whose batches left).
    for index, (_, watermark) in enumerate(marks):
        later = [b.first_offset for b, _ in marks[index + 1 :]]
        assert all(watermark <= first for first in later), (index, watermark)


@pytest.mark.parametrize("block", [512, 4096])
def test_long_runs_of_campaigns_plan_exactly_as_rows_do(block: int) -> None:
    """Past the stale check every 1,024 rows, with campaigns that go stale between runs."""
    rows = [f"{7 + (n // 700) % 3},{10**6 + n % 2600}" for n in range(6000)]
    data = ("campaign_id,audience_id\n" + "\n".join(rows) + "\n").encode()

    chunked = plan_file(data, batch_size=64, block=block, chunks=True)

    assert chunked == plan_file(data, batch_size=64, block=block, chunks=False)
    assert chunked[1]["duplicates"] > 0  # ids repeat: some chunks go row by row


@pytest.mark.parametrize(
    "finished", [range(0, 0), range(1, 3001), range(1, 1500), range(700, 2300)]
)
def test_rows_an_earlier_run_finished_plan_exactly_as_rows_do(finished: range) -> None:
    """On resume: chunks all finished, none finished, or some (row by row)."""
    data = ("audience_id\n" + "".join(f"{i}\n" for i in range(1, 3001))).encode()
    skip = {42: BitMap64(finished)} if finished else {}

    chunked = plan_file(data, batch_size=50, block=2048, chunks=True, skip=skip)

    assert chunked == plan_file(data, batch_size=50, block=2048, chunks=False, skip=skip)
    assert chunked[1]["already_done"] == len(finished)
    assert chunked[1]["rows"] == 3000
