"""Everything a running sandbox remembers: campaigns, faults, limiter, and what it was sent.

The bookkeeping exists for tests and benchmarks, which ask the sandbox afterwards what the client
actually did: which ids arrived, how often an id was resent, how large batches were, and when
the API requests the rate limit admitted came in, reads and update-campaign as well as deletes
(``accepted_times``, to prove a client never outran its rate). It also says what the
sandbox did wrong on purpose that a client cannot see in the answers: the deletes it acknowledged
without applying (``acked_not_applied``), which a read-back must find.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterable
from itertools import chain

from aiohttp import web

from worker.sandbox.bitmap import Bitmap
from worker.sandbox.faults import FaultConfig, FaultInjector, SlidingWindowLimiter
from worker.sandbox.listing_faults import applies
from worker.sandbox.model import Campaign, CampaignSpec

MAX_OUTSIDE_IDS = 10_000
MAX_ACCEPTED_TIMES = 100_000


class Receipts:
    """Distinct ids received for one campaign id: a bitmap over its range plus a bounded set."""

    __slots__ = ("_in_range", "count", "first", "outside", "resent")

    def __init__(self, first: int, size: int) -> None:
        self.first = first
        self._in_range = Bitmap(size)
        self.outside: set[int] = set()
        self.count = 0
        self.resent = 0

    def record(self, ids: Iterable[int]) -> None:
        """Note ids as received; ids beyond the outside cap count as received but are not kept."""
        for audience_id in ids:
            offset = audience_id - self.first
            if 0 <= offset < self._in_range.size:
                fresh = self._in_range.set(offset)
            elif audience_id in self.outside:
                fresh = False
            else:
                fresh = True
                if len(self.outside) < MAX_OUTSIDE_IDS:
                    self.outside.add(audience_id)
            if fresh:
                self.count += 1
            else:
                self.resent += 1

    def received_ids(self) -> list[int]:
        in_range = (self.first + offset for offset in self._in_range.iter_set())
        return sorted(chain(in_range, self.outside))


class SandboxState:
    """Mutable state of one sandbox app; handlers reach it through the app, never a global."""

    def __init__(
        self,
        campaigns: Iterable[CampaignSpec],
        faults: FaultConfig,
        clock: Callable[[], float],
        *,
        records_seed: int = 0,
    ) -> None:
        self.campaigns = {spec.id: Campaign(spec, records_seed) for spec in campaigns}
        self.receipts: dict[int, Receipts] = {}
        self.injector = FaultInjector(faults)
        self.limiter = SlidingWindowLimiter(clock)
        self.clock = clock
        self.started = clock()
        self.requests_total = 0
        self.by_status: Counter[int] = Counter()
        self.dropped = 0
        self.max_audience_len = 0
        self.accepted_times: deque[float] = deque(maxlen=MAX_ACCEPTED_TIMES)
        self.acked_requests = 0
        self.acked_ids = 0
        self.acked_by_campaign: dict[int, Bitmap] = {}
        self.listing_faults_left = faults.listing_fault_times
        self.listing_faults_served = 0

    @property
    def faults(self) -> FaultConfig:
        return self.injector.config

    def replace_faults(self, config: FaultConfig) -> None:
        """Swap the fault config and reseed; the rate windows keep their history."""
        self.injector = FaultInjector(config)
        self.listing_faults_left = config.listing_fault_times

    def listing_fault(self, page: int) -> str | None:
        """The listing fault to serve page ``page`` with, if any (counted)."""
        mode = self.faults.listing_fault
        if mode is None or not applies(mode, page) or self.listing_faults_left == 0:
            return None
        if self.listing_faults_left is not None:
            self.listing_faults_left -= 1
        self.listing_faults_served += 1
        return mode

    def admit_delete(self) -> int | None:
        """Pass an API request, of any route, through the rate limit: None if admitted (its
        time goes to ``accepted_times``), else Retry-After in whole seconds.

        Named when only deletes were limited; the name stays because tests wrap it.
        """
        wait = self.limiter.acquire(self.faults.limit_per_second, self.faults.limit_per_minute)
        if wait is None:
            self.accepted_times.append(self.clock() - self.started)
        return wait

    def record_received(self, campaign_id: int, ids: list[int]) -> None:
        receipts = self.receipts.get(campaign_id)
        if receipts is None:
            campaign = self.campaigns.get(campaign_id)
            receipts = Receipts(campaign.first, campaign.total) if campaign else Receipts(0, 0)
            self.receipts[campaign_id] = receipts
        receipts.record(ids)

    def record_acked_not_applied(self, campaign_id: int, ids: list[int]) -> None:
        """Note a delete answered as a success but not applied (``ack_without_delete``)."""
        self.acked_requests += 1
        self.acked_ids += len(ids)
        campaign = self.campaigns[campaign_id]
        skipped = self.acked_by_campaign.get(campaign_id)
        if skipped is None:
            skipped = self.acked_by_campaign[campaign_id] = Bitmap(campaign.total)
        for audience_id in ids:
            if campaign.contains(audience_id):
                skipped.set(audience_id - campaign.first)

    def snapshot(self, *, ids: bool = False, times: bool = False) -> dict[str, object]:
        """The ``/_sandbox/state`` document; ``ids`` and ``times`` add the bulky parts.

        ``acked_not_applied`` counts the requests acknowledged without being applied and the ids
        they carried (as sent); with ``ids``, each campaign lists those ids that are in its range
        (distinct, ascending) as ``acked_not_applied_ids``, deleted since by another request or not.
        """
        campaigns: dict[str, object] = {}
        for campaign in self.campaigns.values():
            entry: dict[str, object] = {
                "status": campaign.status,
                "first": campaign.first,
                "last": campaign.last,
                "total": campaign.total,
                "deleted_count": campaign.deleted_count,
            }
            if ids:
                entry["deleted_ids"] = list(campaign.deleted_ids())
                receipts = self.receipts.get(campaign.id)
                entry["received_ids"] = receipts.received_ids() if receipts else []
                skipped = self.acked_by_campaign.get(campaign.id)
                entry["acked_not_applied_ids"] = (
                    [campaign.first + offset for offset in skipped.iter_set()] if skipped else []
                )
            campaigns[str(campaign.id)] = entry
        doc: dict[str, object] = {
            "campaigns": campaigns,
            "requests": {
                "total": self.requests_total,
                "by_status": {str(code): n for code, n in sorted(self.by_status.items())},
                "dropped": self.dropped,
            },
            "received": {
                str(cid): {"count": r.count, "resent": r.resent, "outside": sorted(r.outside)}
                for cid, r in sorted(self.receipts.items())
            },
            "max_audience_len": self.max_audience_len,
            "acked_not_applied": {"requests": self.acked_requests, "ids": self.acked_ids},
            "listing_faults_served": self.listing_faults_served,
        }
        if times:
            doc["accepted_times"] = list(self.accepted_times)
        return doc


STATE_KEY = web.AppKey("sandbox_state", SandboxState)
