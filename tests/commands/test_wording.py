"""Counts and durations as a person reads them, in the human summary and the dry-run plan:
"1 request", "about 2 h 24 min", never "1 requests" or "about 8640.0s"."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
from processes import child_env

from worker.records.report import duration, plural, print_plan
from worker.settings.rate import RateSpec


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0.0, "0.0 s"),
        (0.6, "0.6 s"),
        (59.94, "59.9 s"),
        (59.96, "1 min"),  # not "60.0 s"
        (90, "1 min 30 s"),
        (3599.4, "59 min 59 s"),
        (3599.6, "1 h"),
        (8640, "2 h 24 min"),
        (86399, "1 d"),
        (90000, "1 d 1 h"),
        (1_000_000, "11 d 14 h"),
    ],
)
def test_a_duration_is_in_its_two_largest_units(seconds: float, shown: str) -> None:
    assert duration(seconds) == shown


@pytest.mark.parametrize(
    ("count", "shown"), [(0, "0 requests"), (1, "1 request"), (2, "2 requests")]
)
def test_a_count_agrees_with_its_noun(count: int, shown: str) -> None:
    assert plural(count, "request") == shown


def test_an_irregular_plural_is_given() -> None:
    assert (plural(1, "retry", "retries"), plural(3, "retry", "retries")) == (
        "1 retry",
        "3 retries",
    )


def test_the_plan_says_1_id_1_request_1_campaign_and_hours() -> None:
    out = io.StringIO()

    print_plan({42: 1}, {42: 1}, RateSpec(100, 60.0), 100, out)
    one = out.getvalue().splitlines()
    out = io.StringIO()
    print_plan({42: 864_000, 77: 5}, {42: 8639, 77: 1}, RateSpec(1, 1.0), 100, out)
    many = out.getvalue().splitlines()

    assert one == [
        "dry run: nothing was sent. Plan at 100/minute (batch size 100):",
        "  campaign 42: 1 id in 1 request",
        "  total: 1 id in 1 campaign, 1 request, about 0.6 s at the configured rate",
    ]
    assert many[1:] == [
        "  campaign 42: 864000 ids in 8639 requests",
        "  campaign 77: 5 ids in 1 request",
        "  total: 864005 ids in 2 campaigns, 8640 requests, about 2 h 24 min at the configured "
        "rate",
    ]


def test_the_dry_run_plan_of_run_says_1_request(tmp_path: Path) -> None:
    ids = tmp_path / "ids.csv"
    ids.write_text("1\n", encoding="utf-8")
    argv = ["run", "--input", str(ids), "--campaign-id", "42", "--dry-run"]

    done = subprocess.run(
        [sys.executable, "-m", "worker", *argv],
        cwd=tmp_path,
        env=child_env(None),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert "  campaign 42: 1 id in 1 request\n" in done.stdout
    assert "about 0.6 s at the configured rate" in done.stdout
