"""Specification of the batcher's two ways in (issue #25: mutants of batching.py showed what
no test pinned): rows one at a time (``add``) and a block of one campaign's rows at once
(``extend``, the fast path) hand out the same batches, to the last field a resume and the
results file read: ids, lines, and the byte offsets of the first and last row."""

from __future__ import annotations

import pytest

from worker.input.batching import Batch, Batcher
from worker.input.validate import Row


def described(batches: list[Batch]) -> list[tuple[object, ...]]:
    """Every field of each batch, those left out of ``==`` included."""
    return [
        (b.campaign_id, b.audience_ids, b.lines, b.first_offset, b.last_offset) for b in batches
    ]


def one_by_one(batcher: Batcher, rows: list[Row]) -> list[Batch]:
    return [batch for row in rows for batch in batcher.add(row)] + list(batcher.flush(999))


def as_blocks(batcher: Batcher, rows: list[Row], block: int) -> list[Batch]:
    """``rows`` (consecutive lines) handed over in runs of at most ``block`` rows of one
    campaign, as the fast path hands a block's rows over."""
    out: list[Batch] = []
    i = 0
    while i < len(rows):
        j = i
        while j < len(rows) and j - i < block and rows[j].campaign_id == rows[i].campaign_id:
            j += 1
        run = rows[i:j]
        out += batcher.extend(
            run[0].campaign_id, [r.audience_id for r in run], [r.offset for r in run], run[0].line
        )
        i = j
    return out + list(batcher.flush(999))


def input_rows(campaigns: list[int]) -> list[Row]:
    """A row per entry of ``campaigns``, on lines 2, 3, ...; 7 bytes a row from offset 20."""
    return [Row(2 + n, c, 1000 + n, 20 + 7 * n) for n, c in enumerate(campaigns)]


@pytest.mark.parametrize("size", [1, 3, 10, 100, 300])
@pytest.mark.parametrize("block", [1, 4, 37, 5000])
def test_a_block_at_once_gives_every_field_of_every_batch_as_rows_one_by_one_do(
    size: int, block: int
) -> None:
    rows = input_rows([42] * 2500 + [77] * 7 + [42] * 40)

    assert described(as_blocks(Batcher(size), rows, block)) == described(
        one_by_one(Batcher(size), rows)
    )


def test_a_batch_of_a_block_starts_at_its_first_row_and_ends_at_its_last() -> None:
    rows = input_rows([42] * 25)

    batches = as_blocks(Batcher(10), rows, 25)

    assert [(b.lines, b.first_offset, b.last_offset) for b in batches] == [
        (tuple(range(2, 12)), 20, 83),
        (tuple(range(12, 22)), 90, 153),
        (tuple(range(22, 27)), 160, 999),  # the last, flushed at the end of the input
    ]


def test_a_partial_batch_is_handed_out_once_exactly_stale_rows_old() -> None:
    batcher = Batcher(10, stale_rows=1023)
    rows = input_rows([7] + [42] * 1023)  # checked every 1024 rows: 1023 after campaign 7's

    handed = [batch for row in rows for batch in batcher.add(row)]

    assert [b.audience_ids for b in handed if b.campaign_id == 7] == [(1000,)]


def test_a_batch_opened_by_a_block_ages_from_its_own_first_row() -> None:
    batcher = Batcher(10, stale_rows=1023)
    rows = input_rows([5, 7] + [42] * 1022)
    batcher.add(rows[0])  # campaign 5 opens on row 1
    batcher.extend(7, [rows[1].audience_id], [rows[1].offset], rows[1].line)  # 7 on row 2

    handed = [batch for row in rows[2:] for batch in batcher.add(row)]

    # at row 1024, campaign 5's batch is 1023 rows old, campaign 7's 1022: not stale yet
    assert [b.campaign_id for b in handed if b.campaign_id != 42] == [5]


@pytest.mark.parametrize("size", [257, 1000])
def test_a_batch_of_more_than_256_ids_is_handed_out_when_full(size: int) -> None:
    batcher = Batcher(size)
    rows = input_rows([42] * (size + 1))

    handed = [batch for row in rows for batch in batcher.add(row)]

    assert [len(b.audience_ids) for b in handed] == [size]


def test_only_the_partial_batches_stale_rows_old_are_handed_out_early() -> None:
    batcher = Batcher(10, stale_rows=1022)
    rows = input_rows([5, 7] + [42] * 1022)  # 42's last batch opens on row 1023

    handed = [batch for row in rows for batch in batcher.add(row)]

    # at row 1024: campaign 5's batch is 1023 rows old, 7's 1022 (stale), 42's 1 (not)
    assert [(b.campaign_id, len(b.audience_ids)) for b in handed] == [(42, 10)] * 102 + [
        (5, 1),
        (7, 1),
    ]
    assert batcher.oldest_open() == rows[1022].offset


def test_by_default_a_partial_batch_waits_50_000_rows_and_no_fewer() -> None:
    batcher = Batcher(10)  # checked every 1024 rows: at row 51,200 = 50 * 1024
    campaigns = [42] * 51_200
    campaigns[1199], campaigns[1200] = 7, 8  # opened on rows 1,200 and 1,201

    handed = [b.campaign_id for row in input_rows(campaigns) for b in batcher.add(row)]

    # at row 51,200, campaign 7's batch is 50,000 rows old (stale), 8's 49,999 (not)
    assert [c for c in handed if c != 42] == [7]
