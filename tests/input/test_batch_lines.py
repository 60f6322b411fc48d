"""Every id of a batch knows its input line (issue #12, per-row results): on the fast chunk
path as on the row-by-row one, after a 413 split, and never for ids that are not input rows
of the run (a resumed run's retries of earlier failures)."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyroaring import BitMap64

from worker.input import sources
from worker.input.batching import Batch, Batcher, Deduper
from worker.input.planning import Plan, plan_batches, retry_batches
from worker.input.sources import InputDigest, open_input
from worker.records.audit import AuditLog
from worker.records.recorder import Recorder
from worker.settings import Settings
from worker.state.watermark import Ledger

CAMPAIGN = 42


def planned(data: bytes, *, batch_size: int, block: int, chunks: bool) -> list[Batch]:
    """The batches a run plans from ``data`` (``chunks`` False: every line row by row)."""

    async def go() -> list[Batch]:
        with tempfile.TemporaryDirectory() as directory, pytest.MonkeyPatch.context() as patch:
            patch.setattr(sources, "BLOCK", block)
            if not chunks:
                patch.setattr(sources, "_chunk", lambda frame, layout, default: None)
            path = Path(directory) / "ids.csv"
            path.write_bytes(data)
            recorder = Recorder(AuditLog(Path(directory) / "audit.jsonl", "run"))
            plan = Plan(Ledger(0), Batcher(batch_size, stale_rows=7), Deduper())
            source = await open_input(str(path))
            config = Settings(campaign_id=CAMPAIGN, batch_size=batch_size)
            try:
                return [
                    b async for b in plan_batches(plan, source, InputDigest(), recorder, config)
                ]
            finally:
                source.close()

    return asyncio.run(go())


def pairs_by_line(data: bytes) -> dict[int, tuple[int, int]]:
    """Line number → (campaign, id) of each valid line of a ``campaign_id,audience_id``
    file or a one-column one (campaign :data:`CAMPAIGN`)."""
    lines = data.decode().splitlines()
    two = lines[0] == "campaign_id,audience_id"
    out: dict[int, tuple[int, int]] = {}
    for number, line in enumerate(lines, start=1):
        cells = line.strip().split(",")
        if all(c.isdigit() for c in cells):
            out[number] = (int(cells[0]), int(cells[1])) if two else (CAMPAIGN, int(cells[0]))
    return out


def assert_lines_match(batches: list[Batch], data: bytes) -> None:
    truth = pairs_by_line(data)
    for batch in batches:
        assert batch.lines is not None
        assert len(batch.lines) == len(batch.audience_ids)
        for line, audience in zip(batch.lines, batch.audience_ids, strict=True):
            assert truth[line] == (batch.campaign_id, audience), (line, batch)


@settings(max_examples=40, deadline=None)
@given(
    two_columns=st.booleans(),
    rows=st.lists(
        st.tuples(st.sampled_from([7, 8]), st.integers(1, 300), st.sampled_from(["", " ", "x"])),
        min_size=1,
        max_size=300,
    ),
    batch_size=st.integers(1, 12),
    block=st.sampled_from([64, 257, 1 << 16]),
    chunks=st.booleans(),
)
def test_each_id_of_a_batch_carries_the_line_it_was_read_from(
    two_columns: bool,
    rows: list[tuple[int, int, str]],
    batch_size: int,
    block: int,
    chunks: bool,
) -> None:
    # A leading space sends a line down the exact path; an "x" makes it a rejected row;
    # repeated ids are duplicates: the lines of the ids sent must skip over all of them.
    lines = [
        f"{mark}{campaign},{audience}" if two_columns else f"{mark}{audience}"
        for campaign, audience, mark in rows
    ]
    header = "campaign_id,audience_id" if two_columns else "audience_id"
    data = (header + "\n" + "\n".join(lines) + "\n").encode()

    batches = planned(data, batch_size=batch_size, block=block, chunks=chunks)

    assert_lines_match(batches, data)


def test_a_big_plain_file_takes_the_chunk_path_and_keeps_every_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: list[int] = []
    original = sources._chunk

    def counting(frame: object, layout: object, default: int | None) -> object:
        chunk = original(frame, layout, default)  # type: ignore[arg-type]
        if chunk is not None:
            made.append(len(chunk.audience_ids))
        return chunk

    monkeypatch.setattr(sources, "_chunk", counting)
    body = [str(10**9 + i) for i in range(20_000)]
    body[5_000] = "not-an-id"
    body[12_000] = body[11_000]
    data = ("audience_id\n" + "\n".join(body) + "\n").encode()

    batches = planned(data, batch_size=100, block=4096, chunks=True)

    assert sum(made) > 15_000
    assert_lines_match(batches, data)
    assert sorted(line for b in batches for line in b.lines or ()) == [
        n for n in range(2, 20_002) if n not in (5_002, 12_002)
    ]


def test_halves_of_a_batch_keep_each_id_with_its_line() -> None:
    batch = Batch(CAMPAIGN, (11, 12, 13, 14, 15), 100, 200, lines=(3, 5, 6, 9, 10))

    first, second = batch.halves()

    assert (first.audience_ids, first.lines) == ((11, 12), (3, 5))
    assert (second.audience_ids, second.lines) == ((13, 14, 15), (6, 9, 10))
    assert (first.batch_id, second.batch_id) == (
        Batch(CAMPAIGN, (11, 12)).batch_id,
        Batch(CAMPAIGN, (13, 14, 15)).batch_id,
    )
    no_lines = [half.lines for half in Batch(CAMPAIGN, (1, 2, 3)).halves()]
    assert no_lines == [None, None]


def test_retries_of_earlier_failures_have_no_lines() -> None:
    retried = list(retry_batches({CAMPAIGN: BitMap64(range(1, 8))}, 3))

    assert [b.audience_ids for b in retried] == [(1, 2, 3), (4, 5, 6), (7,)]
    assert [b.lines for b in retried] == [None, None, None]
