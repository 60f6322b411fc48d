"""Reading campaigns back: proof that the ids an audit log records as deleted are gone.

A ``deleted`` record means the API accepted the batch, not that every id went: the API
ignores ids that do not belong and does not say which it removed, and a broken server can
acknowledge and do nothing. So each campaign is listed whole through audience-list, and
the ids recorded as deleted that it still holds failed after all (``still_present``).
Only that intersection is kept, never the listing: memory is the deleted ids' bitmap.

The listing is read whole as a selection's is (:func:`worker.sending.listing.read_whole`:
from page 1 until two consecutive consistent passes list the same ids). A campaign whose
listing is not proven so (it kept changing, its answers were not a listing, its counts
disagree with campaign-audience-stats) is *unproven*: the ids seen in any pass are
recorded as still present, "none left" is not claimed.

Which ids to look for comes from the audit files (:mod:`worker.records.purge_logs`: a
resumed purge's files are found through their links, so that a read-back covers every id
the purge deleted, not only the last run's).

The campaigns' sizes before and after are :mod:`worker.sending.audience_stats`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import structlog
from pyroaring import BitMap64

from worker.errors import ApiError
from worker.records.purge_logs import Deleted
from worker.records.recorder import Recorder
from worker.sending.listing import AudienceReader, NotAListing, Page, read_whole, refused

log = structlog.get_logger("audience_purge.readback")


@dataclass(frozen=True, slots=True)
class CampaignCheck:
    """One campaign read back: ``checked`` ids looked for among ``listed`` records."""

    campaign_id: int
    checked: int
    still_present: BitMap64
    listed: int
    pages: int
    passes: int
    emptied: bool = False
    unproven: str | None = None  # why "none left" cannot be claimed, beyond still_present

    def fields(self) -> dict[str, Any]:
        """Per campaign, for ``run_finished`` and the report."""
        return {
            "checked": self.checked,
            "still_present": len(self.still_present),
            "listed": self.listed,
            "pages": self.pages,
            "passes": self.passes,
            "emptied": self.emptied,
            "unproven": self.unproven,
        }


@dataclass(frozen=True, slots=True)
class ReadBack:
    """Every campaign read back, by id."""

    campaigns: dict[int, CampaignCheck] = field(default_factory=dict)

    @property
    def still_present(self) -> int:
        return sum(len(check.still_present) for check in self.campaigns.values())

    @property
    def unproven(self) -> dict[int, str]:
        return {c: check.unproven for c, check in self.campaigns.items() if check.unproven}

    @property
    def proven(self) -> bool:
        """Nothing still present, and every campaign read completely."""
        return not self.still_present and not self.unproven

    def fields(self) -> dict[str, Any]:
        """The totals ``run_finished`` and the report carry (``verified`` counts ids)."""
        return {
            "verified": sum(check.checked for check in self.campaigns.values()),
            "still_present": self.still_present,
            "unproven": {str(c): why for c, why in sorted(self.unproven.items())},
        }


async def read_back(
    reader: AudienceReader, recorder: Recorder, deleted: Deleted, page_size: int
) -> ReadBack:
    """List each campaign of ``deleted`` whole and record what it still holds of its
    deleted ids (one ``verified`` record per campaign; the ids still present join the
    recorder's failed pairs, so the failed-out file lists them and the exit code is 1).

    Raises:
        FatalError: a listing was refused (bad token, unknown campaign) or kept failing;
            the campaigns read before it are recorded.
        Abandoned: the run is stopping; nothing is recorded for the campaign being read.
    """
    checks: dict[int, CampaignCheck] = {}
    for campaign in deleted.campaigns:
        wanted = deleted.ids.get(campaign, BitMap64())
        try:
            check = await _read_campaign(
                reader, campaign, wanted, page_size, emptied=campaign in deleted.emptied
            )
        except ApiError as exc:
            raise refused(exc, f"cannot list campaign {campaign}") from None
        recorder.verified(
            campaign,
            checked=check.checked,
            still_present=list(check.still_present),
            listed=check.listed,
            pages=check.pages,
            passes=check.passes,
            unproven=check.unproven,
        )
        _log_check(check)
        checks[campaign] = check
    return ReadBack(checks)


async def _read_campaign(
    reader: AudienceReader, campaign: int, wanted: BitMap64, page_size: int, *, emptied: bool
) -> CampaignCheck:
    if not wanted:  # only emptied by delete-all: its total is the whole answer
        try:
            return await _emptied_check(reader, campaign)
        except NotAListing as exc:
            why = exc.reason + (f": {exc.message}" if exc.message else "")
            return CampaignCheck(campaign, 0, BitMap64(), 0, 1, 1, True, why)
    found = BitMap64()

    def take(_pass: int, page: Page) -> None:
        found.update(i for record in page.records if (i := record["id"]) in wanted)

    listing = await read_whole(reader, campaign, page_size, take)
    unproven = listing.why
    if emptied and listing.listed and unproven is None:
        unproven = _still_holds(listing.listed)
    return CampaignCheck(
        campaign,
        len(wanted),
        found,
        listing.listed,
        listing.pages,
        listing.passes,
        emptied,
        unproven,
    )


async def _emptied_check(reader: AudienceReader, campaign: int) -> CampaignCheck:
    """A campaign emptied by delete-all: proven when its stats and its listing both count
    no record."""
    count = (await reader.stats(campaign))["total_audience"]
    total = (await reader.page(campaign, 1, 1)).total_records
    unproven = None
    if total != count:
        unproven = f"campaign-audience-stats counts {count:,} records and audience-list {total:,}"
    elif total:
        unproven = _still_holds(total)
    return CampaignCheck(campaign, 0, BitMap64(), total, 1, 1, True, unproven)


def _still_holds(records: int) -> str:
    return (
        f"emptied by delete-all, yet it holds {records:,} records: added since, or the "
        "delete-all did not apply (not listed as failed: they may be new records)"
    )


def _log_check(check: CampaignCheck) -> None:
    log.info("campaign read back", campaign_id=check.campaign_id, **check.fields())
