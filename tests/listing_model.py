"""An in-memory campaign listed by offset, as audience-list pages one (no HTTP): what the
listing's unit tests and the randomised model test drive the real read_whole, read-back and
selection logic against.

Records are kept in ascending id order; a page is computed at the moment it is asked for,
so a record removed from before the offset shifts the later ones left, and one added
before it shifts them right, as on any offset-paginated API. ``before`` runs ahead of
every answer (stats and pages): where a test changes the campaign "meanwhile".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from worker.sending.listing import Filters, Page

Record = Callable[[int], dict[str, Any]]


def plain(audience_id: int) -> dict[str, Any]:
    """A record a rule of status ``completed`` selects."""
    return {
        "id": audience_id,
        "status": "Completed",
        "attempt": 2,
        "last_attempt": "2026-01-01 00:00:00",
        "call_status": "answered",
    }


class OffsetCampaign:
    """A campaign of ``ids`` served by offset; ``before(kind, number)`` runs before each
    answer (``kind`` is ``"stats"`` or ``"page"``, ``number`` the page, 0 for stats)."""

    def __init__(
        self,
        ids: Iterable[int],
        *,
        make: Record = plain,
        before: Callable[[str, int], None] | None = None,
    ) -> None:
        self.ids = sorted(set(ids))
        self.make = make
        self.before = before
        self.requests = 0
        self.records: dict[int, dict[str, Any]] = {}

    def remove(self, audience_id: int) -> None:
        if audience_id in self.ids:
            self.ids.remove(audience_id)

    def add(self, audience_id: int) -> None:
        if audience_id not in self.ids:
            self.ids.append(audience_id)
            self.ids.sort()

    def _record(self, audience_id: int) -> Mapping[str, Any]:
        return self.records.get(audience_id) or self.make(audience_id)

    async def page(self, campaign_id: int, number: int, limit: int, filters: Filters = ()) -> Page:
        self.requests += 1
        if self.before is not None:
            self.before("page", number)
        start = (number - 1) * limit
        chunk = self.ids[start : start + limit]
        total = len(self.ids)
        return Page([dict(self._record(i)) for i in chunk], total, -(-total // limit))

    async def stats(self, campaign_id: int, filters: Filters = ()) -> dict[str, Any]:
        self.requests += 1
        if self.before is not None:
            self.before("stats", 0)
        return {"total_audience": len(self.ids)}
