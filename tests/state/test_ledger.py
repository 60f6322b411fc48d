"""The ledger: the watermark, the settled batches it must remember, and letting go of the
rest as soon as the watermark passes them (a fast run settles thousands a second)."""

from __future__ import annotations

from worker.input.batching import Batch, Batcher, Deduper
from worker.input.planning import Plan
from worker.state.watermark import Ledger


def batch(first: int, ids: range) -> Batch:
    """A batch of rows at offsets first, first + 10, ... (one row per id)."""
    return Batch(42, tuple(ids), first, first + 10 * (len(ids) - 1))


def test_settled_batches_are_let_go_once_the_watermark_passes_them() -> None:
    ledger = Ledger(0)
    batches = [batch(100 * n, range(10 * n, 10 * n + 10)) for n in range(50)]
    ledger.read_pos = 5000
    for b in batches:
        ledger.dispatched(b)

    for b in batches:  # in order: each one settled is below the next pending one
        ledger.settled(b)
        assert len(ledger._settled) <= 32  # let go every 32 settles at most

    assert ledger.done_above(ledger.watermark(None)) == {}


def test_batches_settled_above_a_pending_one_are_kept_until_it_settles() -> None:
    ledger = Ledger(0)
    slow, *fast = [batch(100 * n, range(10 * n, 10 * n + 10)) for n in range(5)]
    ledger.read_pos = 500
    for b in (slow, *fast):
        ledger.dispatched(b)
    for b in fast:
        ledger.settled(b)

    watermark = ledger.watermark(None)
    assert watermark == slow.first_offset
    assert {c: set(ids) for c, ids in ledger.done_above(watermark).items()} == {
        42: set(range(10, 50))
    }

    ledger.settled(slow)
    assert ledger.done_above(ledger.watermark(None)) == {}


def test_rows_waiting_in_the_batcher_hold_the_watermark_back() -> None:
    """The planner wires its batcher in: a partial batch from early in the file keeps every
    batch settled after it."""
    plan = Plan(Ledger(0), Batcher(100), Deduper())
    waiting = Batch(7, (1,), 0, 0)
    for _ in plan.batcher.extend(7, [1], [0], first_line=1):
        pass  # campaign 7's row waits at offset 0
    done = [batch(100 * n, range(10 * n, 10 * n + 10)) for n in range(1, 6)]
    plan.ledger.read_pos = 600
    for b in done:
        plan.ledger.dispatched(b)
        plan.ledger.settled(b)

    watermark = plan.ledger.watermark(plan.batcher.oldest_open())
    assert watermark == waiting.first_offset
    done_above = plan.ledger.done_above(watermark)
    assert {c: set(ids) for c, ids in done_above.items()} == {42: set(range(10, 60))}
