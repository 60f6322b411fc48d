"""Campaigns as the sandbox models them: a spec, its deletion state, and filtered counts.

A campaign stores no record: records are functions of the id (see ``records``), whose class
(what filters test and statistics add up) depends on the id only through ``id % PERIOD``. So the
campaign keeps a deletion bitmap plus, per block of ``BLOCK`` ids, how many ids of each residue
survive (0.6 MB for 10 million ids, half the bitmap). Any filter on the record class then
counts and sums exactly in O(PERIOD) and finds the n-th match of a page by skipping whole blocks
(O(ids / BLOCK) per page), whatever was deleted. A ``mobile_no`` filter, a partial match on a
per-id value, scans the surviving ids instead, like an unindexed ``LIKE``.

``record``, ``figures`` and ``AUDIENCE_STATUSES`` are re-exported from ``records``, where the
record model now lives.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice

from worker.sandbox.bitmap import Bitmap
from worker.sandbox.filters import AudienceFilter
from worker.sandbox.records import AUDIENCE_STATUSES as AUDIENCE_STATUSES
from worker.sandbox.records import PERIOD, RecordFigures, class_table, mobile_no
from worker.sandbox.records import figures as figures
from worker.sandbox.records import record as record

CAMPAIGN_STATUSES = ("draft", "inprogress", "hold", "pause")
BLOCK = 64 * PERIOD  # ids per block of per-residue counts: whole periods


@dataclass(frozen=True, slots=True)
class CampaignSpec:
    """A campaign to create at start-up, holding audience ids ``first..last`` inclusive."""

    id: int
    status: str
    first: int
    last: int

    def __post_init__(self) -> None:
        if self.id <= 0:
            raise ValueError(f"campaign id must be a positive integer, got {self.id}")
        if self.status not in CAMPAIGN_STATUSES:
            raise ValueError(
                f"campaign status must be one of {', '.join(CAMPAIGN_STATUSES)}, "
                f"got {self.status!r}"
            )
        if self.first <= 0 or self.last <= 0:
            raise ValueError(f"audience ids must be positive, got {self.first}-{self.last}")
        if self.first > self.last:
            raise ValueError(f"first audience id {self.first} is greater than last {self.last}")


def parse_campaign_spec(text: str) -> CampaignSpec:
    """Parse ``"ID:STATUS:FIRST-LAST"``, e.g. ``"42:draft:1-5000"``.

    Raises:
        ValueError: the text is malformed; the message names the part at fault.
    """
    parts = text.strip().split(":")
    if len(parts) != 3:
        raise ValueError(f"campaign spec {text!r} must look like ID:STATUS:FIRST-LAST")
    raw_id, status, raw_range = parts
    first, sep, last = raw_range.partition("-")
    if not sep:
        raise ValueError(f"campaign spec {text!r}: id range {raw_range!r} must be FIRST-LAST")
    try:
        numbers = [int(raw_id), int(first), int(last)]
    except ValueError:
        raise ValueError(f"campaign spec {text!r}: id and range must be integers") from None
    try:
        return CampaignSpec(id=numbers[0], status=status, first=numbers[1], last=numbers[2])
    except ValueError as exc:
        raise ValueError(f"campaign spec {text!r}: {exc}") from None


@dataclass(slots=True)
class Totals:
    """Sums over some surviving records: what campaign-audience-stats reports."""

    count: int = 0
    attempts: int = 0
    duration: int = 0
    attempted: int = 0
    successful: int = 0

    def add(self, fig: RecordFigures, times: int) -> None:
        self.count += times
        self.attempts += fig.attempt * times
        self.duration += fig.duration * times
        self.attempted += int(fig.attempted) * times
        self.successful += fig.answered * times


def residue_counts(start: int, size: int) -> list[int]:
    """How many of the ids ``start .. start+size-1`` have each residue modulo PERIOD."""
    counts = [size // PERIOD] * PERIOD
    for k in range(size % PERIOD):
        counts[(start + k) % PERIOD] += 1
    return counts


class Campaign:
    """Mutable state of one campaign: its status, which ids are deleted, what survives."""

    __slots__ = (
        "_added",
        "_alive",
        "_classes",
        "_deleted",
        "first",
        "id",
        "last",
        "seed",
        "status",
    )

    def __init__(self, spec: CampaignSpec, seed: int = 0) -> None:
        self.id = spec.id
        self.status = spec.status
        self.first = spec.first
        self.last = spec.last
        self.seed = seed
        self._classes = class_table(seed, spec.id)
        self._deleted = Bitmap(spec.last - spec.first + 1)
        full, tail = divmod(self.total, BLOCK)
        # Surviving ids per (block, residue), at [block * PERIOD + residue].
        self._alive = array("i", [BLOCK // PERIOD]) * (full * PERIOD)
        if tail:
            self._alive.extend(residue_counts(self.first + full * BLOCK, tail))
        # Records added since start-up (the ``churn`` listing fault), ids past ``last``,
        # ascending: they list after the range's.
        self._added: list[int] = []

    @property
    def total(self) -> int:
        """Number of ids the campaign started with."""
        return self._deleted.size

    @property
    def deleted_count(self) -> int:
        return self._deleted.set_count

    @property
    def alive_count(self) -> int:
        return self._deleted.clear_count + len(self._added)

    def add(self, audience_id: int) -> None:
        """Add a record (as a CRM or a dialler adds leads): an id past every other."""
        if audience_id <= max([self.last, *self._added[-1:]]):
            raise ValueError(f"an added id must be past every other, got {audience_id}")
        self._added.append(audience_id)

    def next_id(self) -> int:
        """The id a record added now would get."""
        return max([self.last, *self._added[-1:]]) + 1

    def contains(self, audience_id: int) -> bool:
        """Whether the id is in the campaign's range (deleted or not)."""
        return self.first <= audience_id <= self.last

    def alive(self, audience_id: int) -> bool:
        """Whether the id belongs to the campaign and has not been deleted."""
        if audience_id > self.last:
            return audience_id in self._added
        return self.contains(audience_id) and not self._deleted.test(audience_id - self.first)

    def delete(self, ids: Iterable[int]) -> int:
        """Delete the ids that are in range and alive, or added; return how many were
        removed."""
        first, last, mark, alive = self.first, self.last, self._deleted.set, self._alive
        removed = 0
        for audience_id in ids:
            offset = audience_id - first
            if first <= audience_id <= last and mark(offset):
                alive[offset // BLOCK * PERIOD + audience_id % PERIOD] -= 1
                removed += 1
            elif audience_id > last and audience_id in self._added:
                self._added.remove(audience_id)
                removed += 1
        return removed

    def delete_all(self) -> int:
        """Delete every remaining id; return how many were removed."""
        removed = self.alive_count
        self._deleted.set_all()
        self._alive = array("i", [0]) * len(self._alive)
        self._added.clear()
        return removed

    def admits(self, where: AudienceFilter | None, audience_id: int) -> bool:
        """Whether the record ``audience_id`` matches ``where``."""
        if where is None:
            return True
        if where.by_class and not where.admits(self._classes[audience_id % PERIOD]):
            return False
        if where.mobile_no is None:
            return True
        return where.admits_mobile(mobile_no(self.seed, self.id, audience_id))

    def nth_alive(self, n: int) -> int | None:
        """The ``n``-th (0-based) surviving id, found without walking the ids before it."""
        offset = self._deleted.nth_clear(n)
        return None if offset is None else self.first + offset

    def alive_from(self, audience_id: int) -> Iterator[int]:
        """Surviving ids ``>= audience_id`` in ascending order."""
        for offset in self._deleted.iter_clear(audience_id - self.first):
            yield self.first + offset

    def alive_ids(self, statuses: frozenset[int] | None = None) -> Iterator[int]:
        """Surviving ids in ascending order, optionally only those with the given status codes."""
        return self.matching(AudienceFilter(statuses=statuses))

    def deleted_ids(self) -> Iterator[int]:
        for offset in self._deleted.iter_set():
            yield self.first + offset

    def count(self, where: AudienceFilter | None = None) -> int:
        """Surviving records that match ``where``."""
        if where is not None and where.mobile_no is not None:
            return sum(1 for _ in self.matching(where))
        added = sum(1 for i in self._added if self.admits(where, i))
        return self._in_range(self._passes(where)) + added

    def _in_range(self, passes: list[bool] | None) -> int:
        """Surviving ids of the range whose class passes."""
        if passes is None:
            return self._deleted.clear_count
        return sum(n for n, ok in zip(self._by_residue(), passes, strict=True) if ok)

    def totals(self, where: AudienceFilter | None = None) -> Totals:
        """Exact sums over the surviving records that match ``where``."""
        out = Totals()
        if where is not None and where.mobile_no is not None:
            for audience_id in self.matching(where):
                out.add(self._classes[audience_id % PERIOD], 1)
            return out
        passes = self._passes(where)
        for residue, alive in enumerate(self._by_residue()):
            if passes is None or passes[residue]:
                out.add(self._classes[residue], alive)
        for audience_id in self._added:
            if self.admits(where, audience_id):
                out.add(self._classes[audience_id % PERIOD], 1)
        return out

    def page(self, where: AudienceFilter | None, skip: int, limit: int) -> tuple[list[int], int]:
        """Up to ``limit`` matching surviving ids after the first ``skip``, and how many match."""
        if where is None or where.mobile_no is None:
            return list(islice(self.matching(where, skip), limit)), self.count(where)
        ids: list[int] = []
        total = 0
        for audience_id in self.matching(where):  # one scan both pages and counts
            if skip <= total < skip + limit:
                ids.append(audience_id)
            total += 1
        return ids, total

    def matching(self, where: AudienceFilter | None = None, skip: int = 0) -> Iterator[int]:
        """Surviving ids that match ``where``, ascending, from the ``skip``-th (0-based) on."""
        passes = self._passes(where)
        if where is None or where.mobile_no is None:
            yield from self._by_class(passes, skip)
            skip = max(0, skip - self._in_range(passes))
        else:
            seed, campaign_id = self.seed, self.id
            found = (
                audience_id
                for audience_id in self._by_class(passes, 0)
                if where.admits_mobile(mobile_no(seed, campaign_id, audience_id))
            )
            for audience_id in found:
                if skip:
                    skip -= 1
                else:
                    yield audience_id
        added = (i for i in self._added if self.admits(where, i))
        yield from islice(added, skip, None)

    def _by_residue(self) -> list[int]:
        """Surviving ids per residue (a strided sum per residue, in C)."""
        return [sum(self._alive[residue::PERIOD]) for residue in range(PERIOD)]

    def _passes(self, where: AudienceFilter | None) -> list[bool] | None:
        """Per residue, whether its class passes ``where``; None when every class does."""
        if where is None or not where.by_class:
            return None
        return [where.admits(fig) for fig in self._classes]

    def _by_class(self, passes: list[bool] | None, skip: int) -> Iterator[int]:
        """Surviving ids whose class passes, from the ``skip``-th on, skipping whole blocks."""
        if passes is None:
            start = self.nth_alive(skip)
            if start is not None:
                yield from self.alive_from(start)
            return
        wanted = [residue for residue, ok in enumerate(passes) if ok]
        alive = self._alive
        for block in range(len(alive) // PERIOD):
            base = block * PERIOD
            here = sum(alive[base + residue] for residue in wanted)
            if skip >= here:
                skip -= here
                continue
            yield from islice(self._in_block(block, passes, wanted), skip, None)
            skip = 0

    def _in_block(self, block: int, passes: list[bool], wanted: list[int]) -> Iterator[int]:
        """Surviving ids of one block whose class passes, ascending."""
        low = block * BLOCK
        high = min(low + BLOCK, self.total)
        if sum(self._alive[block * PERIOD : (block + 1) * PERIOD]) == high - low:  # by arithmetic
            start, end = self.first + low, self.first + high
            for cycle in range(start - start % PERIOD, end, PERIOD):
                for residue in wanted:
                    if start <= cycle + residue < end:
                        yield cycle + residue
            return
        for offset in self._deleted.iter_clear(low):
            if offset >= high:
                return
            if passes[(self.first + offset) % PERIOD]:
                yield self.first + offset
