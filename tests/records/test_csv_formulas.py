"""Every CSV the tool writes is safe to open in a spreadsheet (OWASP's rule): a cell that
starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets a single quote in
front; ids (digits) are untouched, so a failed-out file or a selection is still an input
``run --input`` takes as it is."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import write_csv
from pyroaring import BitMap64

from tests.listing_model import OffsetCampaign
from worker.commands.run import run_purge
from worker.files import csv_safe
from worker.input.selecting import Rule, collect
from worker.records.failed_out import HEADER, FailedOut
from worker.sandbox.runner import SandboxHandle
from worker.settings import Settings

MakeSettings = Callable[..., Settings]
FORMULAS = ["=cmd|'/C calc'!A0", "+1+1", "-2+3", "@SUM(A1)", "\t=1", "\r=1"]


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("text", [*FORMULAS, "1", "plain", "a=b", "", "'=already"])
def test_a_cell_is_quoted_exactly_when_a_spreadsheet_would_run_it(text: str) -> None:
    expected = "'" + text if text in FORMULAS else text
    assert csv_safe(text) == expected
    assert csv_safe(-5) == -5  # a number is written as it is


async def test_results_quote_a_rejected_cell_and_leave_the_ids_alone(
    sandbox: SandboxHandle, make_settings: MakeSettings, tmp_path: Path
) -> None:
    path = write_csv(tmp_path / "ids.csv", ["1", *(f'"{f}"' for f in FORMULAS), "2"])
    results = tmp_path / "results.csv"

    done = await run_purge(
        make_settings(campaign_id=42, results=results), str(path), out=io.StringIO()
    )

    assert done.tally.deleted == 2
    written = rows(results)
    rejected = [r["audience_id"] for r in written if r["outcome"] == "rejected"]
    # The input's reader strips a cell's white space first: "\t=1" is rejected as "=1".
    assert sorted(rejected) == sorted("'" + f.strip() for f in FORMULAS)
    assert sorted(r["audience_id"] for r in written if r["outcome"] == "deleted") == ["1", "2"]


async def test_a_failed_out_reason_is_quoted_and_the_file_is_still_an_input(
    sandbox: SandboxHandle, make_settings: MakeSettings, tmp_path: Path
) -> None:
    failed = tmp_path / "earlier-failed.csv"
    observer = FailedOut(failed, {42: BitMap64([7, 8])})  # the recorder's failed pairs
    fields: dict[str, Any] = {"campaign_id": 42, "audience_ids": [7, 8], "reason": "=1+1"}
    observer.on_event("failed", fields)
    observer.settle()
    assert failed.read_text(encoding="utf-8").splitlines() == [
        ",".join(HEADER),
        "42,7,'=1+1",
        "42,8,'=1+1",
    ]

    done = await run_purge(make_settings(), str(failed), out=io.StringIO())

    assert (done.tally.deleted, done.tally.rejected) == (2, 0)


async def test_a_selection_quotes_the_apis_fields_and_is_still_an_input(
    sandbox: SandboxHandle, make_settings: MakeSettings, tmp_path: Path
) -> None:
    def record(audience_id: int) -> dict[str, Any]:
        return {
            "id": audience_id,
            "status": "Completed",
            "attempt": 2,
            "last_attempt": "@2026",
            "call_status": '=HYPERLINK("http://x")',
        }

    campaign = OffsetCampaign([9], make=record)
    out = io.BytesIO()
    await collect(Rule(campaign_id=42, statuses=("completed",)), campaign, out, page_size=10)
    selection = tmp_path / "selection.csv"
    selection.write_bytes(out.getvalue())

    [row] = rows(selection)
    assert row == {
        "campaign_id": "42",
        "audience_id": "9",
        "status": "Completed",
        "attempt": "2",
        "last_attempt": "'@2026",
        "call_status": '\'=HYPERLINK("http://x")',
    }
    done = await run_purge(make_settings(), str(selection), out=io.StringIO())
    assert (done.tally.deleted, done.tally.rejected) == (1, 0)
