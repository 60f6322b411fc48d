"""The human summary (``print_summary``): what its lines say, for the counts a run ends with."""

from __future__ import annotations

import io
from pathlib import Path

from worker.records.report import RunResult, print_summary
from worker.records.tally import Tally


def summary(tally: Tally, failed_left: int) -> str:
    result = RunResult(
        run_id="20261130T000000Z-abcdef",
        exit_code=1,
        tally=tally,
        duration_s=1.0,
        audit_log=Path("audit.jsonl"),
        report=None,
        failed_out=None,
        interrupted=False,
        fatal_reason=None,
        dry_run=False,
        failed_left=failed_left,
    )
    out = io.StringIO()
    print_summary(result, out)
    return out.getvalue()


def test_ids_a_read_back_found_still_present_are_not_called_earlier_failures() -> None:
    # A fresh run with --verify: 1,500 ids acknowledged, then found still there.
    tally = Tally(deleted=3000, verified=3000, still_present=1500)

    text = summary(tally, failed_left=1500)

    assert "earlier runs" not in text
    assert "still present    1500" in text


def test_failures_carried_over_from_earlier_runs_are_counted_apart_from_this_runs() -> None:
    tally = Tally(deleted=3000, failed=7, verified=3000, still_present=1500)

    text = summary(tally, failed_left=1500 + 7 + 20)

    assert "  failed in earlier runs, not retried: 20 ids" in text
