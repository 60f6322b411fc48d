"""Batching stage: drop duplicate ids, group the rest per campaign into fixed-size batches.

A batch never mixes campaigns. Partial batches wait for their campaign's next ids and are
flushed when the input ends, so memory holds at most one open batch per campaign.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

from worker.sources import Row


@dataclass(frozen=True, slots=True)
class Batch:
    """One delete-audience request's worth of ids, in input order."""

    campaign_id: int
    audience_ids: tuple[int, ...]

    @property
    def batch_id(self) -> str:
        """Deterministic: the same campaign and ids always give the same id."""
        text = f"{self.campaign_id}:" + ",".join(map(str, self.audience_ids))
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def halves(self) -> tuple[Batch, Batch]:
        middle = len(self.audience_ids) // 2
        return (
            Batch(self.campaign_id, self.audience_ids[:middle]),
            Batch(self.campaign_id, self.audience_ids[middle:]),
        )


class Deduper:
    """Remembers (campaign, audience) pairs already accepted."""

    def __init__(self) -> None:
        self._seen: dict[int, set[int]] = {}

    def first_time(self, campaign_id: int, audience_id: int) -> bool:
        """True the first time a pair is offered, False for every repeat."""
        seen = self._seen.setdefault(campaign_id, set())
        if audience_id in seen:
            return False
        seen.add(audience_id)
        return True


class Batcher:
    """Collects rows per campaign and hands out full batches."""

    def __init__(self, batch_size: int) -> None:
        self._size = batch_size
        self._open: dict[int, list[int]] = {}

    def add(self, row: Row) -> Batch | None:
        """Add a row; returns the campaign's batch when it became full."""
        ids = self._open.setdefault(row.campaign_id, [])
        ids.append(row.audience_id)
        if len(ids) < self._size:
            return None
        del self._open[row.campaign_id]
        return Batch(row.campaign_id, tuple(ids))

    def flush(self) -> Iterator[Batch]:
        """The partial batches left when the input ended."""
        for campaign_id, ids in self._open.items():
            yield Batch(campaign_id, tuple(ids))
        self._open.clear()
