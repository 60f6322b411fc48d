"""Reading campaigns back against the real sandbox: every page is read, a shifting listing
is read again, what is still there is recorded; and the stats and their explanation."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import pytest
from conftest import read_audit
from pyroaring import BitMap64

from tests.listing_model import OffsetCampaign
from worker.errors import FatalError
from worker.records.audit import AuditLog
from worker.records.purge_logs import Deleted, deleted_by_campaign
from worker.records.recorder import Recorder
from worker.sandbox.runner import SandboxHandle
from worker.sending.audience_stats import compare_stats, explain, take_stats
from worker.sending.client import UnleashXClient, http_session
from worker.sending.credentials import Secret, TokenSource
from worker.sending.listing import MAX_PASSES, Filters, NotAListing, Page, Reader
from worker.sending.ratelimit import rate_gate
from worker.sending.readback import read_back
from worker.sending.retry import RetryPolicy
from worker.settings import Settings

MakeSettings = Callable[..., Settings]


@dataclass
class Reading:
    reader: Reader
    recorder: Recorder
    audit: Path


@pytest.fixture
async def reading(make_settings: MakeSettings, tmp_path: Path) -> AsyncIterator[Reading]:
    """A real Reader on the sandbox and a recorder writing a real audit log."""
    settings = make_settings()
    audit = AuditLog(tmp_path / "verify.jsonl", "run-verify")
    async with http_session(5.0, 2) as session, rate_gate(settings) as gate:
        client = UnleashXClient(session, settings.base_url, TokenSource(settings.token, None))
        reader = Reader(client, gate, RetryPolicy.from_settings(settings))
        yield Reading(reader, Recorder(audit), audit.path)
    audit.close()


def deleted(ids: dict[int, Iterable[int]], emptied: Iterable[int] = ()) -> Deleted:
    return Deleted({c: BitMap64(list(i)) for c, i in ids.items()}, frozenset(emptied))


def events(path: Path, event: str) -> list[dict[str, Any]]:
    return [
        {k: v for k, v in r.items() if k not in ("ts", "run_id")}
        for r in read_audit(path)
        if r["event"] == event
    ]


class Meddling:
    """A Reader beside which someone else deletes records: ``meddle(page number)`` runs
    after each page is read, before the next."""

    def __init__(self, reader: Reader, meddle: Callable[[int], None]) -> None:
        self._reader = reader
        self._meddle = meddle

    async def page(self, campaign_id: int, number: int, limit: int, filters: Filters = ()) -> Page:
        page = await self._reader.page(campaign_id, number, limit, filters)
        self._meddle(number)
        return page

    async def stats(self, campaign_id: int, filters: Filters = ()) -> dict[str, Any]:
        return await self._reader.stats(campaign_id, filters)


class ShortPages:
    """A server whose last page comes back empty: a listing that ends early."""

    def __init__(self, reader: Reader) -> None:
        self._reader = reader

    async def page(self, campaign_id: int, number: int, limit: int, filters: Filters = ()) -> Page:
        page = await self._reader.page(campaign_id, number, limit, filters)
        last = number == page.total_pages
        return replace(page, records=[] if last else page.records)

    async def stats(self, campaign_id: int, filters: Filters = ()) -> dict[str, Any]:
        return await self._reader.stats(campaign_id, filters)


# -- read_back --------------------------------------------------------------------------


async def test_a_purged_range_reads_back_with_nothing_present_in_one_verified_record(
    sandbox: SandboxHandle, reading: Reading
) -> None:
    sandbox.state.campaigns[42].delete(range(1, 2501))

    checked = await read_back(
        reading.reader, reading.recorder, deleted({42: range(1, 2501)}), page_size=1000
    )

    assert checked.proven
    assert events(reading.audit, "verified") == [
        {
            "event": "verified",
            "campaign_id": 42,
            "checked": 2500,
            "listed": 7500,
            "pages": 16,  # two passes of 8 pages that list the same ids
            "passes": 2,
            "unproven": None,
            "still_present": [],
        }
    ]
    assert checked.fields() == {"verified": 2500, "still_present": 0, "unproven": {}}
    assert reading.recorder.failed_left == 0


async def test_every_id_still_present_is_found_however_small_the_pages(
    sandbox: SandboxHandle, reading: Reading
) -> None:
    scattered = range(4, 10_001, 4)  # 2,500 ids on every one of the 100 pages

    checked = await read_back(
        reading.reader, reading.recorder, deleted({42: scattered}), page_size=100
    )

    check = checked.campaigns[42]
    assert list(check.still_present) == list(scattered)
    assert (check.listed, check.pages, check.passes) == (10_000, 200, 2)
    assert not checked.proven
    [verified] = events(reading.audit, "verified")
    assert verified["still_present"] == list(scattered)
    assert list(reading.recorder.failed_pairs[42]) == list(scattered)
    assert reading.recorder.tally.still_present == 2500


async def test_a_listing_whose_total_changes_is_read_again_from_page_1(
    sandbox: SandboxHandle, reading: Reading
) -> None:
    campaign = sandbox.state.campaigns[42]
    done: list[int] = []

    def another_purge(number: int) -> None:
        # After page 1 (ids 1-100), ids 1-60 go: page 2 now starts at 161, past id 150.
        if number == 1 and not done:
            done.append(campaign.delete(range(1, 61)))

    checked = await read_back(
        Meddling(reading.reader, another_purge),
        reading.recorder,
        deleted({42: [150, 5000]}),
        page_size=100,
    )

    check = checked.campaigns[42]
    assert list(check.still_present) == [150, 5000]
    assert check.passes == 3
    assert check.pages == 2 + 100 + 100  # the first pass ended at the page that showed it
    assert check.listed == 10_000 - 60
    assert check.unproven is None


async def test_a_campaign_that_keeps_changing_is_unproven_and_every_id_seen_is_recorded(
    sandbox: SandboxHandle, reading: Reading
) -> None:
    campaign = sandbox.state.campaigns[42]
    front = iter(range(1, 10_001))

    def busy(number: int) -> None:
        campaign.delete([next(front)])  # one record goes after every page: 1, 2, 3, ...

    checked = await read_back(
        Meddling(reading.reader, busy), reading.recorder, deleted({42: [2, 7]}), page_size=1000
    )

    check = checked.campaigns[42]
    assert check.passes == MAX_PASSES
    assert check.unproven is not None
    assert "changed while it was listed" in check.unproven
    # 2 was seen in the first pass and 7 up to the third, both gone by the last one: each
    # was still there after its deletion was acknowledged.
    assert list(check.still_present) == [2, 7]
    assert checked.unproven == {42: check.unproven}
    assert [r["still_present"] for r in events(reading.audit, "verified")] == [[2, 7]]


async def test_a_listing_shorter_than_the_total_it_reports_is_unproven(
    sandbox: SandboxHandle, reading: Reading
) -> None:
    sandbox.state.campaigns[42].delete(range(1, 101))

    checked = await read_back(
        ShortPages(reading.reader), reading.recorder, deleted({42: [10_000]}), page_size=1000
    )

    check = checked.campaigns[42]
    assert check.unproven == f"listed 9,000 records of the 9,900 it reports ({MAX_PASSES} passes)"
    assert check.passes == MAX_PASSES
    assert list(check.still_present) == []  # 10,000 is on the page never read


async def test_an_emptied_campaign_that_lists_nothing_is_proven(
    sandbox: SandboxHandle, reading: Reading
) -> None:
    sandbox.state.campaigns[42].delete_all()

    checked = await read_back(
        reading.reader, reading.recorder, deleted({}, emptied=[42]), page_size=1000
    )

    assert checked.proven
    assert checked.campaigns[42].emptied
    assert events(reading.audit, "verified") == [
        {
            "event": "verified",
            "campaign_id": 42,
            "checked": 0,
            "listed": 0,
            "pages": 1,
            "passes": 1,
            "unproven": None,
            "still_present": [],
        }
    ]


async def test_an_emptied_campaign_still_holding_records_is_unproven_and_lists_none_as_failed(
    sandbox: SandboxHandle, reading: Reading
) -> None:
    checked = await read_back(
        reading.reader, reading.recorder, deleted({}, emptied=[42]), page_size=1000
    )

    check = checked.campaigns[42]
    assert check.unproven is not None
    assert "emptied by delete-all, yet it holds 10,000 records" in check.unproven
    assert reading.recorder.failed_left == 0  # they may be records added since


async def test_a_refused_listing_is_fatal_after_the_campaigns_read_before_it_are_recorded(
    sandbox: SandboxHandle, reading: Reading
) -> None:
    with pytest.raises(FatalError, match=r"cannot list campaign 999: .*Campaign not exist"):
        await read_back(
            reading.reader, reading.recorder, deleted({42: [1], 999: [1]}), page_size=1000
        )

    assert [r["campaign_id"] for r in events(reading.audit, "verified")] == [42]


# -- take_stats ---------------------------------------------------------------------------


async def test_take_stats_records_the_campaigns_stats_before_and_after(
    sandbox: SandboxHandle, reading: Reading
) -> None:
    before = await take_stats(reading.reader, reading.recorder, [42, 77], "before")
    sandbox.state.campaigns[42].delete(range(1, 1001))
    after = await take_stats(reading.reader, reading.recorder, [42], "after")

    assert before[42] is not None
    assert after[42] is not None
    assert (before[42]["total_audience"], after[42]["total_audience"]) == (10_000, 9000)
    records = events(reading.audit, "audience_stats")
    assert [(r["campaign_id"], r["moment"], r["error"]) for r in records] == [
        (42, "before", None),
        (77, "before", None),
        (42, "after", None),
    ]
    assert records[2]["stats"] == after[42]
    assert set(after[42]) == {
        "total_audience",
        "coverage",
        "total_attempt",
        "total_duration",
        "successful_calls",
    }
    assert reading.recorder.tally.audience_stats[42] == {"before": before[42], "after": after[42]}


async def test_a_stats_read_that_fails_is_recorded_with_its_reason_not_raised(
    sandbox: SandboxHandle, reading: Reading
) -> None:
    taken = await take_stats(reading.reader, reading.recorder, [999, 42], "after")

    assert taken[999] is None
    assert taken[42] is not None
    [unknown, known] = events(reading.audit, "audience_stats")
    assert unknown["stats"] is None
    assert "Campaign not exist" in unknown["error"]
    assert known["error"] is None


async def test_a_stats_read_refused_for_a_bad_token_is_recorded_not_raised(
    sandbox: SandboxHandle, make_settings: MakeSettings, tmp_path: Path
) -> None:
    settings = make_settings(token=Secret("tok-wrong-0123456789"))
    audit = AuditLog(tmp_path / "stats.jsonl", "run-stats")
    async with http_session(5.0, 1) as session, rate_gate(settings) as gate:
        client = UnleashXClient(session, settings.base_url, TokenSource(settings.token, None))
        reader = Reader(client, gate, RetryPolicy.from_settings(settings))
        taken = await take_stats(reader, Recorder(audit), [42], "before")
    audit.close()

    assert taken == {42: None}
    [record] = events(audit.path, "audience_stats")
    assert record["error"] is not None
    assert "tok-wrong" not in audit.path.read_text()


# -- deleted_by_campaign -------------------------------------------------------------------


def purge_log(path: Path) -> Path:
    """A purge's audit log as the recorder writes it, across the events that matter."""
    log = AuditLog(path, "run-purge")
    log.write("run_started", command="run")
    log.write("audience_stats", campaign_id=42, moment="before", stats={"total_audience": 90})
    log.write("deleted", campaign_id=42, batch_id="b1", audience_ids=[1, 2, 3])
    log.write("failed", campaign_id=42, batch_id="b2", audience_ids=[4], reason="x")
    log.write("deleted", campaign_id=77, batch_id="b3", audience_ids=[5])
    log.write("failed", campaign_id=42, batch_id="b1", audience_ids=[2], reason="retried")
    log.write("deleted_all", campaign_id=13, http_status=200)
    log.write("verified", campaign_id=42, checked=3, still_present=[9], listed=1, pages=1)
    log.write("audience_stats", campaign_id=42, moment="after", stats={"total_audience": 80})
    log.write("run_finished", exit_code=0)
    log.close()
    return path


def test_deleted_by_campaign_counts_only_acknowledged_deletions(tmp_path: Path) -> None:
    found = deleted_by_campaign([purge_log(tmp_path / "a.jsonl")])

    assert {c: list(ids) for c, ids in found.ids.items()} == {42: [1, 2, 3], 77: [5]}
    assert found.emptied == frozenset({13})
    assert found.campaigns == [13, 42, 77]
    assert found.before == {42: {"total_audience": 90}}


def test_deleted_by_campaign_keeps_one_campaign_when_asked(tmp_path: Path) -> None:
    found = deleted_by_campaign([purge_log(tmp_path / "a.jsonl")], campaign_id=77)

    assert {c: list(ids) for c, ids in found.ids.items()} == {77: [5]}
    assert found.emptied == frozenset()
    assert found.before == {}


def test_deleted_by_campaign_takes_the_earliest_stats_before_of_a_resumed_purge(
    tmp_path: Path,
) -> None:
    first = AuditLog(tmp_path / "1.jsonl", "run-1")
    first.write("audience_stats", campaign_id=42, moment="before", stats={"total_audience": 90})
    first.close()
    second = AuditLog(tmp_path / "2.jsonl", "run-2")
    second.write("audience_stats", campaign_id=42, moment="before", stats={"total_audience": 60})
    second.write("deleted", campaign_id=42, batch_id="b", audience_ids=[1])
    second.close()

    found = deleted_by_campaign([second.path, first.path])

    assert found.before == {42: {"total_audience": 90}}


# -- explain ------------------------------------------------------------------------------


def stats(total: int) -> dict[str, Any]:
    return {"total_audience": total}


def test_explain_a_total_that_fell_by_exactly_the_ids_acknowledged() -> None:
    said = explain(stats(10_000), stats(7000), deleted=3000, still_present=0)

    assert said == {
        "total_audience_before": 10_000,
        "total_audience_after": 7000,
        "acknowledged": 3000,
        "still_present": 0,
        "emptied": False,
        "expected_after": 7000,
        "difference": 0,
        "explanation": "as expected: 3,000 removed",
    }


def test_explain_fewer_removed_names_ids_not_in_the_campaign() -> None:
    said = explain(stats(10_000), stats(7200), deleted=3000, still_present=0)

    assert (said["expected_after"], said["difference"]) == (7000, 200)
    assert said["explanation"].startswith("200 fewer removed than acknowledged: ids that were not")
    assert "already deleted" in said["explanation"]


def test_explain_more_removed_names_other_activity() -> None:
    said = explain(stats(10_000), stats(6500), deleted=3000, still_present=0)

    assert said["difference"] == -500
    assert said["explanation"].startswith(
        "500 more removed than acknowledged: other activity on the campaign"
    )


def test_explain_does_not_expect_ids_still_present_to_be_removed() -> None:
    said = explain(stats(10_000), stats(7100), deleted=3000, still_present=100)

    assert (said["expected_after"], said["difference"]) == (7100, 0)
    assert said["explanation"] == (
        "as expected: 2,900 removed; 100 acknowledged ids are still present (not counted "
        "as removed)"
    )


def test_explain_an_emptied_campaign_expects_nothing_left() -> None:
    assert explain(stats(500), stats(0), 0, 0, emptied=True)["explanation"] == (
        "as expected: 500 removed"
    )
    left = explain(stats(500), stats(20), 0, 0, emptied=True)
    assert (left["expected_after"], left["difference"]) == (0, 20)
    assert left["explanation"].startswith("20 records in a campaign emptied by delete-all")


@pytest.mark.parametrize(
    ("before", "after", "missing"),
    [(None, stats(1), "before"), (stats(1), None, "after"), (None, None, "before and after")],
)
def test_explain_without_stats_says_which_could_not_be_read(
    before: dict[str, Any] | None, after: dict[str, Any] | None, missing: str
) -> None:
    said = explain(before, after, deleted=10, still_present=0)

    assert (said["expected_after"], said["difference"]) == (None, None)
    assert said["explanation"] == f"not compared: no stats {missing} (not taken, or not readable)"


def test_compare_stats_sums_the_campaigns_read_at_both_moments_and_explains_each() -> None:
    compared = compare_stats(
        {42: stats(100), 77: stats(50)}, {42: stats(90), 77: None}, {42: 10, 77: 5}, {}
    )

    assert (compared["total_audience_before"], compared["total_audience_after"]) == (100, 90)
    assert compared["audience"]["42"]["explanation"] == "as expected: 10 removed"
    assert compared["audience"]["77"]["explanation"].startswith("not compared")


def test_compare_stats_without_a_campaign_read_at_both_moments_has_no_totals() -> None:
    compared = compare_stats({42: stats(100)}, {42: None}, {42: 10}, {})

    assert (compared["total_audience_before"], compared["total_audience_after"]) == (None, None)


# -- the stats cross-check ------------------------------------------------------------------


class EmptyListing(OffsetCampaign):
    """A listing that says "no records" (no error message, whole totals of 0) while the
    campaign's stats count them."""

    async def page(self, campaign_id: int, number: int, limit: int, filters: Filters = ()) -> Page:
        self.requests += 1
        return Page([], 0, 0)


class NoRecorder:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def verified(self, campaign_id: int, **fields: Any) -> None:
        self.records.append({"campaign_id": campaign_id, **fields})


async def test_a_listing_of_nothing_while_the_stats_count_records_is_unproven() -> None:
    campaign = EmptyListing(range(1, 51))
    recorder = NoRecorder()

    checked = await read_back(campaign, cast(Recorder, recorder), deleted({42: [11]}), page_size=10)

    check = checked.campaigns[42]
    assert not checked.proven
    assert check.unproven == (
        f"campaign-audience-stats counts 50 records and audience-list 0 ({MAX_PASSES} passes)"
    )
    assert campaign.requests == 2 * MAX_PASSES  # a stats read and page 1, each pass
    assert recorder.records[0]["unproven"] == check.unproven


async def test_an_emptied_campaign_listed_empty_while_its_stats_count_records_is_unproven() -> None:
    checked = await read_back(
        EmptyListing(range(1, 51)), cast(Recorder, NoRecorder()), deleted({}, [42]), 10
    )

    assert checked.campaigns[42].unproven == (
        "campaign-audience-stats counts 50 records and audience-list 0"
    )


class NoListing(OffsetCampaign):
    """Page 1 answers what is no listing, however often it is asked for."""

    async def page(self, campaign_id: int, number: int, limit: int, filters: Filters = ()) -> Page:
        self.requests += 1
        raise NotAListing("not_a_listing", message="an error with a 200")


async def test_an_emptied_campaign_answering_no_listing_is_unproven_with_its_reason() -> None:
    recorder = NoRecorder()
    checked = await read_back(NoListing([]), cast(Recorder, recorder), deleted({}, [42]), 10)

    check = checked.campaigns[42]
    assert check.fields() == {
        "checked": 0,
        "still_present": 0,
        "listed": 0,
        "pages": 1,
        "passes": 1,
        "emptied": True,
        "unproven": "not_a_listing: an error with a 200",
    }
    assert recorder.records == [
        {
            "campaign_id": 42,
            "checked": 0,
            "still_present": [],
            "listed": 0,
            "pages": 1,
            "passes": 1,
            "unproven": "not_a_listing: an error with a 200",
        }
    ]
    assert not checked.proven
    assert checked.fields() == {
        "verified": 0,
        "still_present": 0,
        "unproven": {"42": "not_a_listing: an error with a 200"},
    }


class StatsSayEmpty(OffsetCampaign):
    """Stats that count no record beside a listing of ``ids``; every page asked for is
    noted as (page, limit)."""

    def __init__(self, ids: Iterable[int]) -> None:
        super().__init__(ids)
        self.asked: list[tuple[int, int]] = []

    async def page(self, campaign_id: int, number: int, limit: int, filters: Filters = ()) -> Page:
        self.asked.append((number, limit))
        return await super().page(campaign_id, number, limit, filters)

    async def stats(self, campaign_id: int, filters: Filters = ()) -> dict[str, Any]:
        return {"total_audience": 0}


async def test_an_emptied_campaign_is_checked_by_page_1_of_one_record_against_its_stats() -> None:
    """Page 1 (the page classify_listing checks for "an empty first page of records") of
    one record: its total is the whole answer. A total above the stats' is a disagreement
    of the two counts, not records added since."""
    campaign = StatsSayEmpty(range(1, 6))
    checked = await read_back(campaign, cast(Recorder, NoRecorder()), deleted({}, [42]), 10)

    assert campaign.asked == [(1, 1)]
    assert checked.campaigns[42].unproven == (
        "campaign-audience-stats counts 0 records and audience-list 5"
    )
    assert checked.campaigns[42].listed == 5


async def test_a_campaign_emptied_after_deletions_and_still_listing_records_is_unproven() -> None:
    """Ids deleted, then delete-all: a proven listing that still holds records (none of
    the deleted ids) does not prove the campaign emptied; a listing that is not proven
    keeps its own reason."""
    checked = await read_back(
        OffsetCampaign([7, 8]), cast(Recorder, NoRecorder()), deleted({42: [1]}, [42]), 10
    )

    check = checked.campaigns[42]
    assert (len(check.still_present), check.listed, check.passes, check.emptied) == (0, 2, 2, True)
    assert check.unproven == (
        "emptied by delete-all, yet it holds 2 records: added since, or the delete-all did "
        "not apply (not listed as failed: they may be new records)"
    )
    assert not checked.proven
    lagging = StatsSayEmpty([7, 8])
    again = await read_back(lagging, cast(Recorder, NoRecorder()), deleted({42: [1]}, [42]), 10)
    assert again.campaigns[42].unproven == (
        f"campaign-audience-stats counts 0 records and audience-list 2 ({MAX_PASSES} passes)"
    )
