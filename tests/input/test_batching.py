"""Specification of worker.input.batching: dedupe, per-campaign batches, deterministic batch ids."""

from __future__ import annotations

import pytest

from worker.input.batching import Batch, Batcher, Deduper
from worker.input.validate import Row


def rows(campaign_id: int, *ids: int) -> list[Row]:
    return [Row(n, campaign_id, i) for n, i in enumerate(ids, start=1)]


def feed(batcher: Batcher, items: list[Row]) -> list[Batch]:
    return [batch for row in items for batch in batcher.add(row)]


# -- Batcher ------------------------------------------------------------------------------------


def test_batch_is_handed_out_when_it_becomes_full() -> None:
    batcher = Batcher(3)

    results = [list(batcher.add(row)) for row in rows(7, 1, 2, 3)]

    assert results == [[], [], [Batch(7, (1, 2, 3))]]


def test_full_batches_keep_input_order() -> None:
    batcher = Batcher(2)

    assert feed(batcher, rows(7, 5, 3, 9, 1)) == [Batch(7, (5, 3)), Batch(7, (9, 1))]


def test_batches_never_mix_campaigns() -> None:
    batcher = Batcher(2)
    interleaved = [Row(1, 1, 10), Row(2, 2, 20), Row(3, 1, 11), Row(4, 2, 21), Row(5, 3, 30)]

    full = feed(batcher, interleaved)

    assert full == [Batch(1, (10, 11)), Batch(2, (20, 21))]
    assert list(batcher.flush()) == [Batch(3, (30,))]


def test_flush_hands_out_every_partial_batch() -> None:
    batcher = Batcher(10)
    feed(batcher, [Row(1, 1, 10), Row(2, 2, 20), Row(3, 1, 11)])

    assert list(batcher.flush()) == [Batch(1, (10, 11)), Batch(2, (20,))]


def test_flush_empties_the_batcher() -> None:
    batcher = Batcher(10)
    feed(batcher, rows(1, 10, 11))
    list(batcher.flush())

    assert list(batcher.flush()) == []


def test_flush_after_exactly_full_batches_has_nothing_left() -> None:
    batcher = Batcher(2)
    feed(batcher, rows(1, 10, 11, 12, 13))

    assert list(batcher.flush()) == []


def test_campaign_batch_restarts_after_being_handed_out() -> None:
    batcher = Batcher(2)

    full = feed(batcher, rows(1, 10, 11, 12))

    assert (full, list(batcher.flush())) == ([Batch(1, (10, 11))], [Batch(1, (12,))])


def test_batch_size_one_hands_out_every_row() -> None:
    batcher = Batcher(1)

    assert feed(batcher, rows(4, 8, 9)) == [Batch(4, (8,)), Batch(4, (9,))]


@pytest.mark.parametrize(("count", "size"), [(1, 100), (99, 100), (100, 100), (101, 100), (250, 7)])
def test_every_row_lands_in_exactly_one_batch_of_at_most_batch_size(count: int, size: int) -> None:
    batcher = Batcher(size)
    ids = list(range(1, count + 1))

    batches = [*feed(batcher, rows(5, *ids)), *batcher.flush()]

    assert [i for b in batches for i in b.audience_ids] == ids
    assert [len(b.audience_ids) for b in batches] == [size] * (count // size) + (
        [count % size] if count % size else []
    )


# -- Deduper ------------------------------------------------------------------------------------


def test_deduper_accepts_a_pair_the_first_time() -> None:
    assert Deduper().first_time(1, 100) is True


def test_deduper_refuses_every_repeat() -> None:
    deduper = Deduper()
    deduper.first_time(1, 100)

    assert [deduper.first_time(1, 100) for _ in range(3)] == [False, False, False]


def test_deduper_treats_the_same_id_in_another_campaign_as_new() -> None:
    deduper = Deduper()
    deduper.first_time(1, 100)

    assert deduper.first_time(2, 100) is True


def test_deduper_over_a_stream() -> None:
    deduper = Deduper()
    pairs = [(1, 5), (1, 6), (1, 5), (2, 5), (2, 5), (1, 6), (1, 7)]

    assert [deduper.first_time(c, a) for c, a in pairs] == [
        True,
        True,
        False,
        True,
        False,
        False,
        True,
    ]


def test_a_chunk_with_an_id_repeated_inside_it_is_offered_one_by_one() -> None:
    assert Deduper().unseen(1, [5, 6, 5]) is None


def test_a_chunk_with_an_id_its_campaign_saw_before_is_offered_one_by_one() -> None:
    deduper = Deduper()
    deduper.first_time(1, 6)

    assert deduper.unseen(1, [5, 6, 7]) is None
    assert sorted(deduper.unseen(2, [7, 5, 6]) or ()) == [5, 6, 7]  # another campaign's


def test_a_fresh_chunk_is_a_repeat_only_once_remembered() -> None:
    deduper = Deduper()
    first = deduper.unseen(1, [5, 6])
    assert first is not None
    assert deduper.unseen(1, [6, 7]) is not None  # unseen changes nothing

    deduper.remember(1, first)
    second = deduper.unseen(1, [7])
    assert second is not None
    deduper.remember(1, second)  # joins the campaign's earlier ids

    assert [deduper.first_time(1, a) for a in (5, 6, 7, 8)] == [False, False, False, True]


# -- Batch ----------------------------------------------------------------------------------------


def test_batch_id_is_deterministic() -> None:
    assert Batch(42, (101, 102, 103)).batch_id == Batch(42, (101, 102, 103)).batch_id


def test_batch_id_is_24_hex_digits() -> None:
    batch_id = Batch(42, (101,)).batch_id

    assert (len(batch_id), set(batch_id) <= set("0123456789abcdef")) == (24, True)


@pytest.mark.parametrize(
    ("one", "other"),
    [
        (Batch(42, (101, 102)), Batch(43, (101, 102))),
        (Batch(42, (101, 102)), Batch(42, (101, 103))),
        (Batch(42, (101, 102)), Batch(42, (102, 101))),
        (Batch(42, (101, 102)), Batch(42, (101, 102, 103))),
        (Batch(1, (23,)), Batch(12, (3,))),
        (Batch(42, (1, 12)), Batch(42, (11, 2))),
    ],
)
def test_batch_id_differs_for_different_campaigns_or_ids(one: Batch, other: Batch) -> None:
    assert one.batch_id != other.batch_id


@pytest.mark.parametrize(
    ("ids", "first", "second"),
    [
        ((1, 2, 3, 4), (1, 2), (3, 4)),
        ((1, 2, 3, 4, 5), (1, 2), (3, 4, 5)),
        ((1, 2), (1,), (2,)),
    ],
)
def test_halves_split_in_order_within_the_campaign(
    ids: tuple[int, ...], first: tuple[int, ...], second: tuple[int, ...]
) -> None:
    assert Batch(9, ids).halves() == (Batch(9, first), Batch(9, second))


def test_a_partial_batch_that_waited_too_long_is_handed_out_early() -> None:
    batcher = Batcher(10, stale_rows=1000)
    rare = Row(1, 9, 900, offset=0)
    common = [Row(n, 1, n, offset=n * 10) for n in range(2, 1026)]

    handed = feed(batcher, [rare, *common])

    assert Batch(9, (900,)) in handed
    assert batcher.oldest_open() is None or batcher.oldest_open() > 0


def test_oldest_open_is_the_first_offset_still_waiting() -> None:
    batcher = Batcher(10)
    feed(batcher, [Row(1, 1, 5, offset=100), Row(2, 2, 6, offset=200), Row(3, 1, 7, offset=300)])

    assert batcher.oldest_open() == 100
    assert sorted(batcher.open_ids()) == [(1, 5), (1, 7), (2, 6)]


def test_deduper_holds_a_million_clustered_ids_in_little_memory() -> None:
    dedupe = Deduper()
    assert all(dedupe.first_time(1, i) for i in range(1, 1_000_001))
    assert not dedupe.first_time(1, 500_000)
    assert dedupe.seen[1].get_statistics()["n_bytes_bitset_containers"] <= 200_000
