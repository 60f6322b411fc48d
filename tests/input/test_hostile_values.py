"""Hostile values are user errors or rejected records, never an internal error (exit 70):
only ASCII digits are numbers, dates and durations beyond datetime's range are refused with
a clear message, and a cutoff is printed and recorded to the microsecond it has."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

import pytest

from worker.cli import main
from worker.commands.parsers import build_parser
from worker.errors import UsageError
from worker.input.selecting import SelectionError, rule_from
from worker.sending.classify import parse_retry_after
from worker.settings.units import deadline

NOW = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)
FAR = "9999-12-31T23:59:59-23:59"  # a valid time, but in the year 10000 once in UTC
# Two as superscript, Arabic-Indic, fullwidth and NKo: digits to str.isdigit(), and to int()
# all but the first.
UNICODE_DIGITS = ["\u00b2", "\u0662", "\uff12", "\u07c2"]


def args(*flags: str) -> argparse.Namespace:
    return build_parser().parse_args(["run", "--select", *flags])


def record(**fields: object) -> dict[str, object]:
    return {"id": 7, "status": "Completed", "attempt": 2, "last_attempt": "2026-01-01"} | fields


@pytest.mark.parametrize("attempt", UNICODE_DIGITS)
def test_an_api_attempt_in_other_digits_is_no_number_of_attempts(attempt: str) -> None:
    rule = rule_from(args("--attempt", "2"), 42, NOW)

    assert rule.why_not(record(attempt=attempt)) == "attempt"
    assert rule.why_not(record(attempt=" 2 ")) is None


@pytest.mark.parametrize("attempt", UNICODE_DIGITS)
def test_attempt_on_the_command_line_takes_ascii_digits_only(
    attempt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as refused:
        args("--attempt", attempt)

    assert refused.value.code == 2
    assert "--attempt: expected a number of attempts (digits 0-9)" in capsys.readouterr().err


def test_an_api_last_attempt_beyond_the_year_9999_in_utc_refuses_the_selection() -> None:
    rule = rule_from(args("--older-than", "30d"), 42, NOW)

    with pytest.raises(SelectionError, match=r"record 7: last_attempt .* is not a time"):
        rule.why_not(record(last_attempt="9999-12-31 23:59:59-23:59"))


@pytest.mark.parametrize("when", [FAR, "0001-01-01T00:00:00+23:59", "٢٠٢٦-01-01"])
def test_last_attempt_before_out_of_range_is_a_usage_error(when: str) -> None:
    with pytest.raises(UsageError, match=r"--last-attempt-before: expected a date .* between"):
        rule_from(args("--last-attempt-before", when), 42, NOW)


@pytest.mark.parametrize(
    ("given", "recorded"),
    [
        ("2026-06-01T00:00:00.25Z", "2026-06-01T00:00:00.250000Z"),
        ("2026-06-01T02:00:00.000001+02:00", "2026-06-01T00:00:00.000001Z"),
        ("0001-01-01", "0001-01-01T00:00:00Z"),
        ("2026-06-01", "2026-06-01T00:00:00Z"),
    ],
)
def test_the_cutoff_is_recorded_with_full_precision(given: str, recorded: str) -> None:
    rule = rule_from(args("--last-attempt-before", given), 42, NOW)

    assert rule.describe()["last_attempt_before"] == recorded


@pytest.mark.parametrize(
    ("text", "refusal"),
    [
        ("99999999h", "is more than 100 years"),
        ("999999999999999999999d", "is more than 100 years"),
        (FAR, "between the years 1 and 9999 once in UTC"),
    ],
)
def test_a_deadline_beyond_a_century_or_the_year_9999_is_refused(text: str, refusal: str) -> None:
    with pytest.raises(ValueError, match=refusal):
        deadline(text, now=NOW)


@pytest.mark.parametrize(
    "flags",
    [
        ["--input", "ids.csv", "--deadline", "99999999h"],
        ["--input", "ids.csv", "--deadline", FAR],
        ["--select", "--campaign-id", "42", "--last-attempt-before", FAR],
        ["--select", "--campaign-id", "42", "--attempt", "\u0662"],
        ["--input", "ids.csv", "--deadline", "6M"],
        ["--select", "--campaign-id", "42", "--older-than", "6M"],
        ["--input", "ids.csv", "--grace", "6M"],
        ["--input", "ids.csv", "--deadline", "1h1h"],
        ["--select", "--campaign-id", "42", "--older-than", "0d"],
        ["--input", "ids.csv", "--grace", "soon"],
    ],
    ids=[
        "deadline-duration",
        "deadline-time",
        "last-attempt-before",
        "attempt",
        "deadline-months",
        "older-than-months",
        "grace-months",
        "deadline-repeated-unit",
        "older-than-zero",
        "grace-unreadable",
    ],
)
def test_hostile_flags_exit_2_with_one_line(
    flags: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UNLEASHX_TOKEN", "t")
    try:
        # Refused before anything is read: nothing listens at that address.
        code = main(["run", *flags, "--base-url", "http://127.0.0.1:9/api"])
    except SystemExit as exited:  # argparse's own refusal
        code = int(str(exited.code))
    err = capsys.readouterr().err

    assert code == 2, err
    assert "Traceback" not in err
    # One line (after argparse's usage, for a flag argparse itself reads), naming the flag.
    last = err.strip().splitlines()[-1]
    assert last.startswith("audience-purge")
    assert f"{flags[-2]}: " in last, last


@pytest.mark.parametrize("header", UNICODE_DIGITS)
def test_a_retry_after_in_other_digits_is_ignored(header: str) -> None:
    assert parse_retry_after(header) is None
    assert parse_retry_after("2") == 2.0
