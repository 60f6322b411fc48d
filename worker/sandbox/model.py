"""Campaigns as the sandbox models them: a spec, deterministic synthetic records, deletion state.

Records are pure functions of ``(campaign id, audience id)`` so that 10-million-id campaigns cost
two bitmaps and nothing else. Every per-record figure repeats with period ``PERIOD`` along the id
axis, which lets the campaign derive its initial statistics arithmetically and keep them exact by
subtracting each record as it is deleted.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from worker.sandbox.bitmap import Bitmap

CAMPAIGN_STATUSES = ("draft", "inprogress", "hold", "pause")
AUDIENCE_STATUSES = ("Fresh", "Completed", "Halted", "Inqueue")
PERIOD = 12
_EPOCH_2025 = 1_735_689_600
_YEAR_SECONDS = 365 * 86_400


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


@dataclass(frozen=True, slots=True)
class RecordFigures:
    """The per-record numbers that statistics add up."""

    status_code: int
    attempt: int
    duration: int

    @property
    def attempted(self) -> bool:
        return self.attempt > 0

    @property
    def successful(self) -> bool:
        return self.status_code == 1


def figures(campaign_id: int, audience_id: int) -> RecordFigures:
    """Status code (0 Fresh, 1 Completed, 2 Halted, 3 Inqueue), attempts and call seconds."""
    key = (audience_id * 5 + campaign_id * 7) % PERIOD
    code, tier = key % 4, key // 4
    if code == 1:
        return RecordFigures(code, 1 + tier, 30 + 45 * tier)
    if code == 2:
        return RecordFigures(code, 3, 0)
    if code == 3:
        return RecordFigures(code, tier, 0)
    return RecordFigures(code, 0, 0)


def record(campaign_id: int, audience_id: int) -> dict[str, object]:
    """The audience-list row for one id."""
    fig = figures(campaign_id, audience_id)
    seconds = (audience_id * 2_654_435_761 + campaign_id * 40_503) % _YEAR_SECONDS
    stamp = datetime.fromtimestamp(_EPOCH_2025 + seconds, UTC)
    return {
        "id": audience_id,
        "mobile_no": f"+1202555{(audience_id * 7 + campaign_id) % 10_000:04d}",
        "status": AUDIENCE_STATUSES[fig.status_code],
        "attempt": fig.attempt,
        "last_attempt": stamp.strftime("%Y-%m-%d %H:%M:%S"),
    }


@dataclass(slots=True)
class StatusTotals:
    """Running sums over the surviving records of one audience status."""

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
        self.successful += int(fig.successful) * times


class Campaign:
    """Mutable state of one campaign: its status and which of its ids are deleted."""

    __slots__ = ("_by_residue", "_deleted", "_totals", "first", "id", "last", "status")

    def __init__(self, spec: CampaignSpec) -> None:
        self.id = spec.id
        self.status = spec.status
        self.first = spec.first
        self.last = spec.last
        self._deleted = Bitmap(spec.last - spec.first + 1)
        # Figures depend on the audience id only through ``id % PERIOD``.
        self._by_residue = [figures(self.id, residue) for residue in range(PERIOD)]
        self._totals = [StatusTotals() for _ in AUDIENCE_STATUSES]
        for offset in range(min(PERIOD, self.total)):
            fig = self._by_residue[(self.first + offset) % PERIOD]
            self._totals[fig.status_code].add(fig, (self.total - 1 - offset) // PERIOD + 1)

    @property
    def total(self) -> int:
        """Number of ids the campaign started with."""
        return self._deleted.size

    @property
    def deleted_count(self) -> int:
        return self._deleted.set_count

    @property
    def alive_count(self) -> int:
        return self._deleted.clear_count

    def contains(self, audience_id: int) -> bool:
        """Whether the id is in the campaign's range (deleted or not)."""
        return self.first <= audience_id <= self.last

    def alive(self, audience_id: int) -> bool:
        """Whether the id belongs to the campaign and has not been deleted."""
        return self.contains(audience_id) and not self._deleted.test(audience_id - self.first)

    def delete(self, ids: Iterable[int]) -> int:
        """Delete the ids that are in range and alive; return how many were removed."""
        first, last, mark = self.first, self.last, self._deleted.set
        removed = [0] * PERIOD
        for audience_id in ids:
            if first <= audience_id <= last and mark(audience_id - first):
                removed[audience_id % PERIOD] += 1
        for residue, count in enumerate(removed):
            fig = self._by_residue[residue]
            self._totals[fig.status_code].add(fig, -count)
        return sum(removed)

    def delete_all(self) -> int:
        """Delete every remaining id; return how many were removed."""
        removed = self.alive_count
        self._deleted.set_all()
        self._totals = [StatusTotals() for _ in AUDIENCE_STATUSES]
        return removed

    def alive_ids(self, statuses: frozenset[int] | None = None) -> Iterator[int]:
        """Surviving ids in ascending order, optionally only those with the given status codes."""
        for offset in self._deleted.iter_clear():
            audience_id = self.first + offset
            if statuses is None or self._by_residue[audience_id % PERIOD].status_code in statuses:
                yield audience_id

    def nth_alive(self, n: int) -> int | None:
        """The ``n``-th (0-based) surviving id, found without walking the ids before it."""
        offset = self._deleted.nth_clear(n)
        return None if offset is None else self.first + offset

    def alive_from(self, audience_id: int) -> Iterator[int]:
        """Surviving ids ``>= audience_id`` in ascending order."""
        for offset in self._deleted.iter_clear(audience_id - self.first):
            yield self.first + offset

    def deleted_ids(self) -> Iterator[int]:
        for offset in self._deleted.iter_set():
            yield self.first + offset

    def totals(self, statuses: frozenset[int] | None = None) -> StatusTotals:
        """Exact sums over surviving records, optionally restricted to some status codes."""
        out = StatusTotals()
        for code, part in enumerate(self._totals):
            if statuses is None or code in statuses:
                out.count += part.count
                out.attempts += part.attempts
                out.duration += part.duration
                out.attempted += part.attempted
                out.successful += part.successful
        return out
