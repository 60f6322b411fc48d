"""Batching stage: drop duplicate ids, group the rest per campaign into fixed-size batches.

A batch never mixes campaigns. A partial batch waits for its campaign's next ids; it is sent
when the input ends, or early when it has waited for ``stale_rows`` rows, so that a rare
campaign cannot hold the resume watermark back for the whole file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

from pyroaring import BitMap64

from worker.input.validate import Row

STALE_ROWS = 50_000
_GOLDEN = 0x9E3779B97F4A7C15
_MASK = (1 << 64) - 1


def shard_of(audience_id: int, count: int) -> int:
    """The shard of an id: a fixed multiplicative hash, so the same id always lands in the
    same shard on every machine, and a campaign's ids spread evenly."""
    return (((audience_id * _GOLDEN) & _MASK) >> 32) % count


@dataclass(frozen=True, slots=True)
class Batch:
    """One delete-audience request's worth of ids, in input order.

    ``first_offset``/``last_offset`` are the byte offsets of its first and last input rows;
    ``lines[i]`` is the input line of ``audience_ids[i]`` (for the per-row results file),
    None for a batch that is not input rows (a resumed run's retries, a queue entry).
    """

    campaign_id: int
    audience_ids: tuple[int, ...]
    first_offset: int = field(default=0, compare=False)
    last_offset: int = field(default=0, compare=False)
    entry_id: str | None = field(default=None, compare=False)  # queue mode: its stream entry
    ref: str | None = field(default=None, compare=False)  # queue mode: the producer's ref
    lines: tuple[int, ...] | None = field(default=None, compare=False, repr=False)
    # Deterministic: the same campaign and ids always give the same id. Computed once: the
    # audit names it in two records of every batch.
    batch_id: str = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        text = f"{self.campaign_id}:" + ",".join(map(str, self.audience_ids))
        object.__setattr__(self, "batch_id", hashlib.sha256(text.encode()).hexdigest()[:24])

    def halves(self) -> tuple[Batch, Batch]:
        """The batch in two (a 413), each id keeping its line."""
        middle = len(self.audience_ids) // 2
        return self._part(slice(None, middle)), self._part(slice(middle, None))

    def _part(self, part: slice) -> Batch:
        lines = None if self.lines is None else self.lines[part]
        return replace(self, audience_ids=self.audience_ids[part], lines=lines)


class Deduper:
    """Remembers (campaign, audience) pairs already accepted, in roaring bitmaps.

    Ids from a database are clustered, so this costs a few bits per id rather than the
    ~70 bytes of a Python set entry: 10 million ids fit in a few megabytes.
    """

    def __init__(self, seen: dict[int, BitMap64] | None = None) -> None:
        self.seen: dict[int, BitMap64] = seen if seen is not None else {}

    def unseen(self, campaign_id: int, audience_ids: Sequence[int]) -> BitMap64 | None:
        """The ids as a bitmap if none was offered before and none repeats (then
        :meth:`remember` them), else None (offer them one by one). Changes nothing."""
        fresh = BitMap64(audience_ids)
        if len(fresh) != len(audience_ids):
            return None
        ids = self.seen.get(campaign_id)
        return None if ids is not None and ids.intersect(fresh) else fresh

    def remember(self, campaign_id: int, fresh: BitMap64) -> None:
        ids = self.seen.get(campaign_id)
        if ids is None:
            self.seen[campaign_id] = fresh
        else:
            ids |= fresh

    def first_time(self, campaign_id: int, audience_id: int) -> bool:
        """True the first time a pair is offered, False for every repeat."""
        ids = self.seen.get(campaign_id)
        if ids is None:
            ids = self.seen[campaign_id] = BitMap64()
        if audience_id in ids:
            return False
        ids.add(audience_id)
        return True


@dataclass(slots=True)
class _Open:
    ids: list[int]
    first_offset: int
    first_row: int
    lines: list[int] = field(default_factory=list)

    def batch(self, campaign: int, last_offset: int) -> Batch:
        """These rows as a batch, the last of them at ``last_offset``."""
        return Batch(
            campaign, tuple(self.ids), self.first_offset, last_offset, lines=tuple(self.lines)
        )


class Batcher:
    """Collects rows per campaign and hands out full (or stale) batches."""

    def __init__(self, batch_size: int, stale_rows: int = STALE_ROWS) -> None:
        self._size = batch_size
        self._stale = stale_rows
        self._open: dict[int, _Open] = {}
        self._rows = 0

    def add(self, row: Row) -> Sequence[Batch]:
        """Add a row; the campaign's batch when full, and any stale partial batch. (A
        sequence, empty for most rows: a generator would cost more than the rest of the
        call.)"""
        self._rows += 1
        entry = self._open.get(row.campaign_id)
        if entry is None:
            entry = self._open[row.campaign_id] = _Open([], row.offset, self._rows)
        entry.ids.append(row.audience_id)
        entry.lines.append(row.line)
        done: list[Batch] | tuple[()] = ()
        if len(entry.ids) >= self._size:
            del self._open[row.campaign_id]
            done = [entry.batch(row.campaign_id, row.offset)]
        if self._rows % 1024 == 0:
            done = [*done, *self._flush_stale(row.offset)]
        return done

    def extend(
        self, campaign: int, ids: Sequence[int], offsets: Sequence[int], first_line: int
    ) -> list[Batch]:
        """:meth:`add` for rows of one campaign on consecutive lines from ``first_line``
        (``offsets`` theirs): the same batches, the stale ones flushed at the same rows,
        without a call per row."""
        done: list[Batch] = []
        i, n = 0, len(ids)
        while i < n:
            entry = self._open.get(campaign)
            if entry is None:
                entry = self._open[campaign] = _Open([], offsets[i], self._rows + 1)
            take = min(self._size - len(entry.ids), 1024 - self._rows % 1024, n - i)
            entry.ids.extend(ids[i : i + take])
            entry.lines.extend(range(first_line + i, first_line + i + take))
            self._rows += take
            i += take
            last = offsets[i - 1]
            if len(entry.ids) >= self._size:
                del self._open[campaign]
                done.append(entry.batch(campaign, last))
            if self._rows % 1024 == 0:
                done.extend(self._flush_stale(last))
        return done

    def _flush_stale(self, offset: int) -> Iterator[Batch]:
        stale = [c for c, e in self._open.items() if self._rows - e.first_row >= self._stale]
        for campaign in stale:
            yield self._open.pop(campaign).batch(campaign, offset)

    def oldest_open(self) -> int | None:
        """Byte offset of the first row still waiting in a partial batch: the first entry's,
        since entries are opened in input order (a campaign's next one at its next row)."""
        return next((e.first_offset for e in self._open.values()), None)

    def open_ids(self) -> Iterator[tuple[int, int]]:
        for campaign, entry in self._open.items():
            for audience in entry.ids:
                yield campaign, audience

    def flush(self, last_offset: int = 0) -> Iterator[Batch]:
        """The partial batches left when the input ended."""
        for campaign_id, entry in self._open.items():
            yield entry.batch(campaign_id, last_offset)
        self._open.clear()
