"""The selection rule, record by record, and the collection's paging, on pages made here."""

from __future__ import annotations

import argparse
import io
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.listing_model import OffsetCampaign
from worker.commands.parsers import build_parser
from worker.errors import OutputError, UsageError
from worker.input.selecting import (
    HEADER,
    Rule,
    Selecting,
    SelectionError,
    SelectionFile,
    collect,
    parse_age,
    parse_time,
    rule_from,
)
from worker.sending.listing import Filters, Page

NOW = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)


def args(*flags: str) -> argparse.Namespace:
    return build_parser().parse_args(["run", "--select", *flags])


def record(audience_id: int, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": audience_id,
        "status": "Completed",
        "attempt": 2,
        "last_attempt": "2026-01-01 00:00:00",
        "call_status": "answered",
    }
    return base | fields


def test_age_units() -> None:
    assert parse_age("180d") == timedelta(days=180)
    assert parse_age("12w") == timedelta(weeks=12)
    assert parse_age("36h") == timedelta(hours=36)
    assert parse_age("90m") == timedelta(minutes=90)
    for bad in ("", "180", "0d", "1y", "-3d", "1.5d", "d", "6M", "180D"):
        with pytest.raises(UsageError, match="--older-than"):
            parse_age(bad)


def test_times_are_utc_unless_they_say_otherwise() -> None:
    assert parse_time("2026-06-01", "--x") == datetime(2026, 6, 1, tzinfo=UTC)
    assert parse_time("2026-06-01T02:00:00+02:00", "--x") == datetime(2026, 6, 1, tzinfo=UTC)
    assert parse_time("2026-06-01T00:00:00Z", "--x") == datetime(2026, 6, 1, tzinfo=UTC)
    with pytest.raises(UsageError, match="--x"):
        parse_time("June 1st", "--x")


def test_older_than_counts_back_from_now_and_the_boundary_is_not_older() -> None:
    rule = rule_from(args("--older-than", "30d"), 42, NOW)
    cutoff = NOW - timedelta(days=30)
    assert rule.before == cutoff
    just = cutoff.strftime("%Y-%m-%d %H:%M:%S")
    second_before = (cutoff - timedelta(seconds=1)).strftime("%Y-%m-%d %H:%M:%S")
    assert rule.why_not(record(1, last_attempt=just)) == "age"
    assert rule.why_not(record(1, last_attempt=second_before)) is None


def test_records_never_attempted_are_left_out_of_an_age_rule_unless_included() -> None:
    never = [
        record(1, attempt=0, last_attempt=None),
        record(2, attempt=0, last_attempt=""),
        record(3, attempt=0, last_attempt="0000-00-00 00:00:00"),
    ]
    plain = rule_from(args("--older-than", "30d"), 42, NOW)
    included = rule_from(args("--older-than", "30d", "--include-never-attempted"), 42, NOW)
    assert [plain.why_not(r) for r in never] == ["never_attempted"] * 3
    assert [included.why_not(r) for r in never] == [None] * 3


def test_every_part_of_the_rule_is_checked_on_the_record_itself() -> None:
    rule = rule_from(
        args("--status", "completed", "--call-status", "answered", "--attempt", "2"), 42, NOW
    )
    assert rule.why_not(record(1)) is None
    assert rule.why_not(record(1, status=1)) is None  # the code of Completed
    assert rule.why_not(record(1, status="Halted")) == "status"
    assert rule.why_not(record(1, status=2)) == "status"
    assert rule.why_not(record(1, call_status="busy")) == "call_status"
    assert rule.why_not(record(1, attempt=3)) == "attempt"
    assert rule.why_not(record(1, attempt="2")) is None


def test_a_record_without_a_field_the_rule_needs_cannot_be_selected() -> None:
    rule = rule_from(args("--call-status", "answered"), 42, NOW)
    bare = {"id": 5, "status": "Completed"}
    with pytest.raises(SelectionError, match="call_status"):
        rule.why_not(bare)
    with pytest.raises(SelectionError, match="not a time"):
        rule_from(args("--older-than", "1d"), 42, NOW).why_not(record(5, last_attempt="soon"))


def test_the_api_filters_carry_what_the_api_can_filter() -> None:
    rule = rule_from(
        args("--status", "halted", "--status", "completed", "--attempt", "3", "--older-than", "9d"),
        42,
        NOW,
    )
    assert rule.filters() == [("status", "1,2"), ("attempt", "3")]


def test_rules_are_refused_without_a_campaign_a_rule_or_an_age() -> None:
    with pytest.raises(UsageError, match="--campaign-id"):
        rule_from(args("--status", "fresh"), None, NOW)
    with pytest.raises(UsageError, match="needs a rule"):
        rule_from(args(), 42, NOW)
    with pytest.raises(UsageError, match="goes with"):
        rule_from(args("--status", "fresh", "--include-never-attempted"), 42, NOW)
    with pytest.raises(SystemExit):
        args("--older-than", "3d", "--last-attempt-before", "2026-01-01")


def test_the_rule_names_the_same_selection_on_another_day() -> None:
    today = rule_from(args("--older-than", "180d"), 42, NOW)
    tomorrow = rule_from(args("--older-than", "180d"), 42, NOW + timedelta(days=1))
    other = rule_from(args("--older-than", "181d"), 42, NOW)
    assert today.before != tomorrow.before
    assert today.digest() == tomorrow.digest() != other.digest()
    path = Selecting.of(today, None).path
    assert path == Path("purge-selections") / f"select-42-{today.digest()}.csv"
    assert Selecting.of(today, Path("mine.csv")).path == Path("mine.csv")


async def test_a_listing_that_shifts_is_read_again_and_the_proving_pass_is_selected() -> None:
    def another_purge(kind: str, number: int) -> None:
        if kind == "page" and number == 2:  # ids 1-5 vanish once page 1 has been read
            for gone in range(1, 6):
                campaign.remove(gone)

    campaign = OffsetCampaign(range(1, 101), before=another_purge)
    out = io.BytesIO()
    rule = Rule(campaign_id=42, statuses=("completed",))
    selection = await collect(rule, campaign, out, page_size=10)
    ids = [int(line.split(b",")[1]) for line in out.getvalue().splitlines()[1:]]
    # Ids 1-5 were seen on page 1 before they vanished: they are not selected, and
    # every id still there is, once.
    assert ids == list(range(6, 101))
    assert (selection.passes, selection.selected, selection.listed) == (3, 95, 95)


async def test_a_listing_that_never_settles_is_refused() -> None:
    class Restless:
        calls = 0

        async def page(self, campaign_id: int, number: int, limit: int, f: object = ()) -> Page:
            self.calls += 1
            return Page([record(self.calls)], 1000 - self.calls, 2)

        async def stats(self, campaign_id: int, filters: object = ()) -> dict[str, Any]:
            return {"total_audience": 1000 - self.calls - 1}

    refused = r"could not be listed completely: .* \(5 passes\); nothing is selected"
    with pytest.raises(SelectionError, match=refused):
        await collect(Rule(campaign_id=42, statuses=("fresh",)), Restless(), io.BytesIO(), 1)


async def test_what_a_record_fails_on_is_counted() -> None:
    campaign = OffsetCampaign([1, 2, 3])
    campaign.records = {
        1: record(1),
        2: record(2, status="Halted"),
        3: record(3, attempt=0, last_attempt=None),
    }
    out = io.BytesIO()
    rule = Rule(campaign_id=7, statuses=("completed",), before=NOW)
    selection = await collect(rule, campaign, out, page_size=10)
    assert selection.left_out == {"status": 1, "never_attempted": 1}
    assert out.getvalue().decode().splitlines() == [
        "campaign_id,audience_id,status,attempt,last_attempt,call_status",
        "7,1,Completed,2,2026-01-01 00:00:00,answered",
    ]


async def test_a_selected_id_run_would_reject_is_refused_at_selection() -> None:
    campaign = OffsetCampaign([5, 2**63])
    with pytest.raises(
        SelectionError,
        match=r"record 9223372036854775808 of campaign 42 matches the rule, but run cannot "
        r"delete it \(audience_id out of 64-bit range\): nothing is selected",
    ):
        await collect(Rule(campaign_id=42, statuses=("completed",)), campaign, io.BytesIO(), 10)
    # The same id left out by the rule is no reason to refuse the rest.
    campaign.records = {2**63: record(2**63, status="Halted")}
    out = io.BytesIO()
    await collect(Rule(campaign_id=42, statuses=("completed",)), campaign, out, 10)
    assert out.getvalue().decode().splitlines()[1:] == [
        "42,5,Completed,2,2026-01-01 00:00:00,answered"
    ]


async def test_the_selection_file_holds_one_pass_however_many_are_read() -> None:
    """Churn that never settles (10 records out, 10 new ones in, before every page but the
    first) must not grow the selection beyond one pass's pages: 4 pages of 10."""
    rows: list[int] = []
    out = io.BytesIO()

    def churn(kind: str, number: int) -> None:
        rows.append(out.getvalue().count(b"\n") - 1)
        if kind == "page" and number >= 2:
            for gone in campaign.ids[:10]:
                campaign.remove(gone)
            for _ in range(10):
                campaign.add(campaign.ids[-1] + 1)

    campaign = OffsetCampaign(range(1, 41), before=churn)
    with pytest.raises(SelectionError, match="5 passes"):
        await collect(Rule(campaign_id=42, statuses=("completed",)), campaign, out, page_size=10)
    assert campaign.ids[-1] > 100  # the campaign saw many more records than one pass holds
    assert 30 <= max(rows) <= 40


def test_a_selection_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    path = tmp_path / "sel" / "out.csv"
    with SelectionFile(path) as target:
        target.file.write(b"campaign_id,audience_id\n")
        assert not path.exists()
    assert not path.exists()
    assert list(path.parent.iterdir()) == []
    with SelectionFile(path) as target:
        target.file.write(b"campaign_id,audience_id\n42,1\n")
        target.commit()
    assert path.read_bytes() == b"campaign_id,audience_id\n42,1\n"
    assert path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(UsageError, match="directory"), SelectionFile(tmp_path):
        pass


def test_a_selection_that_cannot_be_written_is_an_output_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with (
        pytest.raises(OutputError, match="cannot write the selection"),
        SelectionFile(blocker / "out.csv"),
    ):
        pass


async def test_pages_shorter_than_asked_are_not_taken_for_the_whole_listing() -> None:
    """A server that caps its pages below the limit asked for: trusting its page count
    would end the selection early, with records never seen."""

    class Capped(OffsetCampaign):
        async def page(self, campaign_id: int, number: int, limit: int, f: Filters = ()) -> Page:
            page = await super().page(campaign_id, number, 100)
            return Page(page.records if number <= 2 else [], page.total_records, 2)

    with pytest.raises(SelectionError, match="listed 200 records of the 1,000 it reports"):
        await collect(
            Rule(campaign_id=42, statuses=("completed",)), Capped(range(1, 1001)), io.BytesIO(), 500
        )


def test_an_age_beyond_a_century_is_refused() -> None:
    with pytest.raises(UsageError, match="more than 100 years"):
        parse_age("999999w")


def test_stdout_gets_the_selection_only_once_it_is_complete(
    capfdbinary: pytest.CaptureFixture[bytes],
) -> None:
    with SelectionFile("-") as target:
        target.file.write(b"campaign_id,audience_id\n42,1\n")
    assert capfdbinary.readouterr().out == b""  # cut off: nothing that looks whole
    with SelectionFile("-") as target:
        target.file.write(b"campaign_id,audience_id\n42,1\n")
        target.commit()
    assert capfdbinary.readouterr().out == b"campaign_id,audience_id\n42,1\n"


def test_a_selection_is_a_regular_file_written_through_a_symlink(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(UsageError, match="not a regular file"), SelectionFile(fifo):
        pass
    real = tmp_path / "real.csv"
    real.write_text(",".join(HEADER) + "\n42,7,,,,\n")  # an earlier selection
    link = tmp_path / "link.csv"
    link.symlink_to(real)
    with SelectionFile(link) as target:
        target.file.write(b"campaign_id,audience_id\n")
        target.commit()
    assert link.is_symlink()
    assert real.read_bytes() == b"campaign_id,audience_id\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "link.csv", "real.csv"]


def test_the_selection_is_a_file_and_each_shard_has_its_own() -> None:
    chosen = Rule(campaign_id=42, statuses=("fresh",))
    with pytest.raises(UsageError, match="cannot be stdout"):
        Selecting.of(chosen, Path("-"))
    plain = Selecting.of(chosen, None).path.name
    assert plain == f"select-42-{chosen.digest()}.csv"
    assert (
        Selecting.of(chosen, None, "1/3").path.name
        == f"select-42-{chosen.digest()}-shard-1-of-3.csv"
    )
