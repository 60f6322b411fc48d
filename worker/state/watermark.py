"""The watermark: how far into the input every row has reached its end.

Batches settle out of order (eight in flight, retries, splits). The watermark is the byte
offset of the first input row that has not: the smallest of the first row of any batch not
yet settled, the first row still waiting in the batcher, and the next row to be read. Rows
of settled batches at or after it are remembered (``done_above``) until it passes them.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator

from worker.input.batching import Batch
from worker.state.checkpoint import Pairs, pairs_from

_PRUNE_EVERY = 32  # settled batches


class Ledger:
    """Which batches are on their way and which finished above the watermark.

    The watermark is the smallest of: the first row of any batch not yet settled, the first
    row still waiting in the batcher, and the next row to be read.
    """

    def __init__(self, read_from: int) -> None:
        self.read_pos = read_from
        self._floor = read_from  # rows before it were finished by earlier runs
        self._pending: dict[int, Batch] = {}
        self._settled: list[tuple[int, int, Batch]] = []
        self._count = 0
        # The first row still waiting in the batcher (the planner wires its batcher in).
        self.open_since: Callable[[], int | None] = lambda: None

    def dispatched(self, batch: Batch) -> None:
        self._pending[id(batch)] = batch

    def settled(self, batch: Batch) -> None:
        """The batch reached its end; settled batches the watermark has passed are let go
        now, not at the next checkpoint: a fast run settles thousands a second, and kept
        until then they were most of its memory."""
        if self._pending.pop(id(batch), None) is not None:
            self._count += 1
            heapq.heappush(self._settled, (batch.last_offset, self._count, batch))
            if self._count % _PRUNE_EVERY == 0:  # the watermark costs a pass over the pending
                self._prune(self.watermark(self.open_since()))

    def _prune(self, watermark: int) -> None:
        while self._settled and self._settled[0][0] < watermark:
            heapq.heappop(self._settled)

    def idle(self) -> bool:
        return not self._pending

    def watermark(self, oldest_open: int | None) -> int:
        candidates = [self.read_pos, *(b.first_offset for b in self._pending.values())]
        if oldest_open is not None:
            candidates.append(oldest_open)
        return max(self._floor, min(candidates))

    def done_above(self, watermark: int) -> Pairs:
        """Pairs of settled batches with rows at or after the watermark (older ones pruned)."""
        self._prune(watermark)
        return pairs_from((b.campaign_id, i) for _, _, b in self._settled for i in b.audience_ids)

    def pending_pairs(self) -> Iterator[tuple[int, int]]:
        for batch in self._pending.values():
            for audience in batch.audience_ids:
                yield batch.campaign_id, audience
