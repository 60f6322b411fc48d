"""How :func:`~worker.sending.listing.read_whole` judges its passes, case by case, against
the in-memory campaign of tests/listing_model.py: when a pass is consistent, when two
passes agree, and what a listing that is not proven reports (issue #25: the survivors of
the mutation pass over worker/sending/listing.py)."""

from __future__ import annotations

from typing import Any

import orjson
from pyroaring import BitMap64

from tests.listing_model import OffsetCampaign
from worker.errors import PermanentError, RetryableError
from worker.sending.listing import Filters, Listing, NotAListing, Page, read_whole, refused


class Passes:
    """The ``take`` of a listing: the ids of each pass, by pass number."""

    def __init__(self) -> None:
        self.ids: dict[int, list[int]] = {}

    def __call__(self, number: int, page: Page) -> None:
        self.ids.setdefault(number, []).extend(record["id"] for record in page.records)

    def last(self) -> list[int]:
        return sorted(self.ids[max(self.ids)])


async def listed(campaign: Any, limit: int, passes: int = 5) -> tuple[Listing, Passes]:
    taken = Passes()
    listing = await read_whole(campaign, 42, limit, taken, passes=passes)
    return listing, taken


Change = tuple[tuple[int, str, int], list[int], list[int]]


def campaign_changing(ids: range, *changes: Change) -> OffsetCampaign:
    """A campaign of ``ids`` to which ``((pass, kind, page), removed, added)`` happens just
    before that answer of that pass (a pass begins with its stats read)."""
    passes = 0

    def meddle(kind: str, number: int) -> None:
        nonlocal passes
        passes += kind == "stats"
        for when, removed, added in changes:
            if when == (passes, kind, number):
                for gone in removed:
                    campaign.remove(gone)
                for new in added:
                    campaign.add(new)

    campaign = OffsetCampaign(ids, before=meddle)
    return campaign


class OneFalseTotal(OffsetCampaign):
    """A campaign whose stats and pages report ``total`` records in one page, whatever
    they list."""

    def __init__(self, ids: range, *, total: int) -> None:
        super().__init__(ids)
        self.total = total

    async def page(self, campaign_id: int, number: int, limit: int, filters: Filters = ()) -> Page:
        page = await super().page(campaign_id, number, limit, filters)
        return Page(page.records, self.total, 1)

    async def stats(self, campaign_id: int, filters: Filters = ()) -> dict[str, Any]:
        return {"total_audience": self.total}


async def test_a_second_pass_listing_more_than_the_first_does_not_prove_it() -> None:
    """Record 55 is added between passes 1 and 2, at the start of page 2; during pass 2,
    record 10 (on page 1, read) goes and record 200 comes: pass 2 skips 55, yet lists every
    id of pass 1 and as many ids as it reports. Only equal passes prove a listing."""
    campaign = campaign_changing(
        range(10, 101, 10), ((2, "stats", 0), [], [55]), ((2, "page", 2), [10], [200])
    )
    listing, taken = await listed(campaign, limit=5)

    assert sorted(taken.ids[2]) == [10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 200]  # no 55
    assert (listing.passes, listing.listed, listing.why) == (4, 11, None)
    assert taken.last() == [20, 30, 40, 50, 55, 60, 70, 80, 90, 100, 200]


async def test_stats_counting_fewer_records_than_the_pages_never_prove_a_listing() -> None:
    """Stats that lag one record behind audience-list: reading only the pages the stats
    make would miss the last record, in every pass alike."""

    class Lagging(OffsetCampaign):
        async def stats(self, campaign_id: int, filters: Filters = ()) -> dict[str, Any]:
            return {"total_audience": len(self.ids) - 1}

    listing, _ = await listed(Lagging(range(1, 12)), limit=5, passes=2)

    assert listing.why == (
        "campaign-audience-stats counts 10 records and audience-list 11 (2 passes)"
    )
    assert (listing.passes, listing.pages) == (2, 2)


async def test_a_page_repeating_a_record_of_its_pass_ends_the_pass_there() -> None:
    """Record 5 added before the pages read and record 200 removed after them (the total
    unchanged) shifts page 2 right: it repeats 50, and the pass ends at once, its last
    two pages unread."""
    campaign = campaign_changing(range(10, 201, 10), ((1, "page", 2), [200], [5]))
    listing, taken = await listed(campaign, limit=5, passes=1)

    assert listing.why == "page 2 repeats a record of its pass (the pages shifted) (1 passes)"
    assert (listing.pages, taken.ids[1][5]) == (2, 50)
    assert campaign.requests == 3  # stats, page 1, page 2


async def test_a_page_listing_one_record_twice_ends_the_pass_there() -> None:
    class Doubled(OffsetCampaign):
        async def page(
            self, campaign_id: int, number: int, limit: int, filters: Filters = ()
        ) -> Page:
            page = await super().page(campaign_id, number, limit, filters)
            return Page([*page.records[:-1], page.records[0]], page.total_records, 1)

    listing, _ = await listed(Doubled(range(1, 21)), limit=5, passes=1)

    assert listing.why == "page 1 repeats a record of its pass (the pages shifted) (1 passes)"
    assert listing.pages == 1


async def test_a_pass_of_many_pages_reads_exactly_the_pages_its_total_makes() -> None:
    """300 records a page each: 300 pages a pass, not one more (no empty page asked)."""
    campaign = OffsetCampaign(range(1, 301))
    listing, _ = await listed(campaign, limit=1)

    assert (listing.passes, listing.pages, listing.listed, listing.why) == (2, 600, 300, None)
    assert campaign.requests == 602  # and a stats read a pass


async def test_pages_read_before_answers_that_are_no_listing_are_all_counted() -> None:
    """Pass 1 reads its 3 pages; pass 2 reads page 1, then its page 2 is no listing."""

    class Breaking(OffsetCampaign):
        async def page(
            self, campaign_id: int, number: int, limit: int, filters: Filters = ()
        ) -> Page:
            if self.requests >= 6:  # stats and 3 pages, stats and 1 page
                raise NotAListing("not_a_listing", message="an error with a 200")
            return await super().page(campaign_id, number, limit, filters)

    listing, taken = await listed(Breaking(range(1, 12)), limit=5)

    assert listing == Listing(2, 4, 5, "not_a_listing: an error with a 200 (kept answering so)")
    assert BitMap64(taken.ids[2]) == BitMap64(range(1, 6))
    bare, _ = await listed(Breaking(range(1, 12)), limit=5, passes=1)
    assert bare.why == "a consistent pass, not yet confirmed by a second (1 passes)"


async def test_a_record_removed_between_two_passes_takes_a_third_to_prove_the_listing() -> None:
    """Pass 2 lists a subset of pass 1 (record 30 went between them): the two passes
    differ, so a third must agree with the second."""
    campaign = campaign_changing(range(10, 101, 10), ((2, "stats", 0), [30], []))
    listing, taken = await listed(campaign, limit=5)

    assert (listing.passes, listing.pages, listing.listed, listing.why) == (3, 6, 9, None)
    assert taken.last() == [10, 20, 40, 50, 60, 70, 80, 90, 100]


async def test_a_listing_reporting_no_records_while_listing_some_reads_one_page_a_pass() -> None:
    """totalRecords 0 (with totalPages 1, as classify_listing allows) and three records on
    page 1: the pass ends after the pages its total makes (one), not at an empty page."""

    campaign = OneFalseTotal(range(1, 4), total=0)
    listing, _ = await listed(campaign, limit=5, passes=2)

    assert listing == Listing(2, 2, 3, "listed 3 records of the 0 it reports (2 passes)")
    assert campaign.requests == 2  # a page a pass (the stats are not counted here)


def test_a_refusal_whose_message_is_its_reason_says_it_once() -> None:
    """The reason and the message of an answer are two strings parsed from it, equal but
    not the same object."""
    said = orjson.loads(b'{"reason": "Campaign not exist", "message": "Campaign not exist"}')
    failed = refused(
        PermanentError(said["reason"], status=400, message=said["message"]), "cannot list"
    )
    assert str(failed) == "cannot list: Campaign not exist"
    assert (failed.status, failed.message) == (400, "Campaign not exist")
    again = refused(RetryableError("HTTP 503", message="busy"), "cannot list")
    assert str(again) == "cannot list: still failing after its retries: HTTP 503: busy"
    silent = refused(RetryableError("timeout"), "cannot list")
    assert str(silent) == "cannot list: still failing after its retries: timeout"


async def test_a_page_listing_more_records_than_the_total_it_reports_is_no_proof() -> None:
    """Totals of 3 on a page of 5 records (no more than the limit of 5, one page as 3
    make): every pass alike, and still not a listing of 3 records."""

    listing, _ = await listed(OneFalseTotal(range(1, 6), total=3), limit=5, passes=2)

    assert listing == Listing(2, 2, 5, "listed 5 records of the 3 it reports (2 passes)")


async def test_passes_that_keep_differing_say_so() -> None:
    """A record goes before every pass: no two passes agree."""
    campaign = campaign_changing(range(1, 11), *(((n, "stats", 0), [n], []) for n in range(2, 4)))
    listing, _ = await listed(campaign, limit=5, passes=3)

    assert listing.why == (
        "two passes in a row listed different records: the campaign changed while it was "
        "listed (3 passes)"
    )
