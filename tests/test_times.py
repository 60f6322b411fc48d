"""The one grammar of durations and times (worker/times.py), as a table: what each input
means, or why it is refused."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from worker.commands.redrive import parse_since
from worker.errors import ConfigError, UsageError
from worker.input.selecting import parse_age
from worker.settings import load_settings
from worker.settings.units import deadline
from worker.times import (
    MAX_DURATION,
    Unreadable,
    parse_duration,
    parse_duration_or_time,
    parse_timestamp,
    shifted,
    unix_ms,
    utc_text,
)

H, M = 3600, 60
NOT_A_DURATION = "expected a duration such as 90s"
MONTHS = "months vary in length: give days, e.g. 180d"
TOO_LONG = r"is more than 100 years \(36500d\)"
NOT_A_TIME = r"expected a date \(2026-06-01\) or an RFC 3339 time"
OUT_OF_RANGE = "between the years 1 and 9999 once in UTC"
NEITHER = r"expected a duration \(90s, .*\) or an RFC 3339 time with its offset"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("90m", 90 * M),
        ("36h", 36 * H),
        ("1h30m", 90 * M),
        ("180d", 180 * 86400),
        ("12w", 12 * 7 * 86400),
        ("1w2d3h4m5s", 7 * 86400 + 2 * 86400 + 3 * H + 4 * M + 5),
        ("2d12h", 60 * H),
        ("  45m\n", 45 * M),  # the text around it is not part of it
        ("007m", 7 * M),
        ("36500d", 36500 * 86400),  # 100 years: the longest
        ("5214w2d", 36500 * 86400),
    ],
)
def test_durations_accepted(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", NOT_A_DURATION),
        ("180", NOT_A_DURATION),  # a unit is needed
        ("d", NOT_A_DURATION),
        ("1h1h", NOT_A_DURATION),  # each unit once
        ("30m1h", NOT_A_DURATION),  # largest first
        ("1s1m", NOT_A_DURATION),
        ("1h 30m", NOT_A_DURATION),  # no space inside
        ("2 hours", NOT_A_DURATION),
        ("180D", NOT_A_DURATION),  # lower case only
        ("36H", NOT_A_DURATION),
        ("1.5h", NOT_A_DURATION),
        ("-5m", NOT_A_DURATION),
        ("+5m", NOT_A_DURATION),
        ("1y", NOT_A_DURATION),
        ("\u0663\u0660m", NOT_A_DURATION),  # Arabic-Indic 30
        ("\uff19\uff10s", NOT_A_DURATION),  # full-width 90
        ("6M", MONTHS),
        ("1h6M", MONTHS),
        ("6mo", MONTHS),
        ("6 months", MONTHS),
        ("0d", "expected a duration above zero"),
        ("0h0m", "expected a duration above zero"),
        ("36500d1s", TOO_LONG),
        ("99999999h", TOO_LONG),
        ("9" * 5000 + "d", TOO_LONG),  # not int()'s own digit limit
    ],
)
def test_durations_refused(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as refused:
        parse_duration(text)
    assert "\n" not in str(refused.value)
    assert repr(text) in str(refused.value)  # names what was given


def test_zero_is_a_duration_only_where_the_caller_allows_it() -> None:
    assert parse_duration("0s", allow_zero=True) == timedelta(0)
    with pytest.raises(ValueError, match="above zero"):
        parse_duration("0s")


def test_only_unreadable_text_is_unreadable() -> None:
    """A caller that also takes numbers of seconds names both only for text that is no
    duration at all: months, zero and too long keep their own reason."""
    with pytest.raises(Unreadable):
        parse_duration("soon")
    for refused, reason in (("6M", MONTHS), ("0s", "above zero"), ("99999999h", TOO_LONG)):
        with pytest.raises(ValueError, match=reason) as info:
            parse_duration(refused)
        assert not isinstance(info.value, Unreadable)


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "when"),
    [
        ("2026-06-01", utc(2026, 6, 1)),  # a date is midnight
        ("2026-06-01T00:00:00Z", utc(2026, 6, 1)),
        ("2026-06-01t00:00:00z", utc(2026, 6, 1)),
        ("2026-06-01T02:00:00+02:00", utc(2026, 6, 1)),
        ("2026-05-31T22:30:00-01:30", utc(2026, 6, 1)),
        ("2026-06-01 00:00:00", utc(2026, 6, 1)),  # the API's last_attempt, read as UTC
        ("2026-06-01T00:00:00", utc(2026, 6, 1)),
        ("2026-06-01T00:00:00.25Z", utc(2026, 6, 1, 0, 0, 0, 250000)),
        ("2026-06-01T00:00:00.000001Z", utc(2026, 6, 1, 0, 0, 0, 1)),
        ("2026-06-01T00:00:00.1234567Z", utc(2026, 6, 1, 0, 0, 0, 123456)),  # truncated
        ("0001-01-01", utc(1, 1, 1)),
        ("0001-01-01T01:00:00+01:00", utc(1, 1, 1)),
        ("9999-12-31T23:59:59.999999Z", utc(9999, 12, 31, 23, 59, 59, 999999)),
        ("2028-02-29", utc(2028, 2, 29)),
        (" 2026-06-01 ", utc(2026, 6, 1)),
    ],
)
def test_times_accepted(text: str, when: datetime) -> None:
    got = parse_timestamp(text)
    assert got == when
    assert got.tzinfo is UTC


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", NOT_A_TIME),
        ("June 1st", NOT_A_TIME),
        ("20260601", NOT_A_TIME),  # ISO 8601 basic form: not RFC 3339
        ("2026-W01-1", NOT_A_TIME),
        ("2026-06-01T00:00Z", NOT_A_TIME),  # RFC 3339 has seconds
        ("2026-06-01T00:00:00+0200", NOT_A_TIME),
        ("2026-06-01Z", NOT_A_TIME),
        ("2026-02-30", NOT_A_TIME),
        ("2027-02-29", NOT_A_TIME),
        ("2026-06-01T24:00:00Z", NOT_A_TIME),
        ("2026-06-01T23:59:60Z", NOT_A_TIME),  # datetime has no leap second
        ("2026-06-01T00:00:00+24:00", NOT_A_TIME),
        ("0000-00-00 00:00:00", NOT_A_TIME),  # the API's "never"; the caller knows it
        ("\u0662\u0660\u0662\u0666-01-01", NOT_A_TIME),  # Arabic-Indic digits
        ("2026-06-01T00:00:00\u00b2Z", NOT_A_TIME),
        ("9999-12-31T23:59:59-23:59", OUT_OF_RANGE),  # the year 10000 in UTC
        ("0001-01-01T00:00:00+00:01", OUT_OF_RANGE),  # the year 0 in UTC
    ],
)
def test_times_refused(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as refused:
        parse_timestamp(text)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("text", ["2026-06-01", "2026-06-01T00:00:00", "2026-06-01 00:00:00"])
def test_a_time_without_an_offset_is_refused_where_the_caller_needs_one(text: str) -> None:
    with pytest.raises(ValueError, match=r"give the time's offset \(Z or \+01:00, say\)"):
        parse_timestamp(text, assume_utc=False)


@pytest.mark.parametrize(
    ("text", "meant"),
    [
        ("2h", timedelta(hours=2)),
        ("1h30m", timedelta(minutes=90)),
        ("2w", timedelta(weeks=2)),
        ("2026-06-01T00:00:00Z", utc(2026, 6, 1)),
        ("2026-06-01T02:00:00+02:00", utc(2026, 6, 1)),
    ],
)
def test_a_duration_or_a_time(text: str, meant: timedelta | datetime) -> None:
    assert parse_duration_or_time(text) == meant


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("soon", NEITHER),
        ("1h1h", NEITHER),
        ("2026-06-01", NEITHER + r".*give the time's offset"),
        ("2026-06-01T00:00:00", NEITHER + r".*give the time's offset"),
        ("6M", MONTHS),
        ("0h", "above zero"),
        ("99999999h", TOO_LONG),
        ("9999-12-31T23:59:59-23:59", OUT_OF_RANGE),
    ],
)
def test_neither_a_duration_nor_a_time(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_duration_or_time(text)


@pytest.mark.parametrize(
    ("when", "timespec", "text"),
    [
        (utc(2026, 6, 1), "auto", "2026-06-01T00:00:00Z"),
        (utc(2026, 6, 1, 0, 0, 0, 250000), "auto", "2026-06-01T00:00:00.250000Z"),
        (utc(2026, 6, 1, 0, 0, 0, 1), "auto", "2026-06-01T00:00:00.000001Z"),
        (utc(2026, 6, 1, 0, 0, 0, 250000), "seconds", "2026-06-01T00:00:00Z"),
        (utc(2026, 6, 1, 0, 0, 0, 250000), "milliseconds", "2026-06-01T00:00:00.250Z"),
        (utc(1, 1, 1), "auto", "0001-01-01T00:00:00Z"),
        (utc(9999, 12, 31, 23, 59, 59, 999999), "auto", "9999-12-31T23:59:59.999999Z"),
        (
            datetime(2026, 6, 1, 2, tzinfo=timezone(timedelta(hours=2))),
            "auto",
            "2026-06-01T00:00:00Z",
        ),
    ],
)
def test_utc_times_are_written_one_way(when: datetime, timespec: str, text: str) -> None:
    assert utc_text(when, timespec) == text


def test_what_is_written_reads_back_as_the_same_time() -> None:
    for when in (utc(1, 1, 1), utc(2026, 6, 1, 0, 0, 0, 250000), utc(9999, 12, 31, 23, 59, 59)):
        assert parse_timestamp(utc_text(when)) == when


def test_a_naive_time_is_not_written_as_utc() -> None:
    with pytest.raises(ValueError, match="without a zone"):
        utc_text(datetime(2026, 6, 1))


def test_shifting_beyond_datetime_is_a_value_error_not_an_overflow() -> None:
    assert shifted(utc(2026, 6, 1), timedelta(days=1)) == utc(2026, 6, 2)
    with pytest.raises(ValueError, match="beyond the years 1 to 9999"):
        shifted(utc(9999, 12, 31), MAX_DURATION)
    with pytest.raises(ValueError, match="beyond the years 1 to 9999"):
        shifted(utc(1, 1, 1), -timedelta(days=1))


def test_unix_milliseconds_are_counted_without_float_rounding() -> None:
    assert unix_ms(parse_timestamp("2026-11-26T06:00:00.250Z")) == 1_795_672_800_250
    assert unix_ms(parse_timestamp("2026-11-26T06:00:00.999999Z")) == 1_795_672_800_999
    assert unix_ms(utc(1970, 1, 1)) == 0


def test_the_module_is_on_the_ground_floor() -> None:
    """worker.times imports nothing of the project, so every floor may use it."""
    import worker.times

    source = Path(worker.times.__file__).read_text(encoding="utf-8")
    assert re.findall(r"^(?:from|import) worker\b", source, re.MULTILINE) == []


# -- every flag and setting reads the same grammar --------------------------------------------

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
NOW_MS = unix_ms(NOW)


def as_deadline(text: str) -> timedelta:
    return deadline(text, now=NOW) - NOW


def as_since(text: str) -> timedelta:
    return timedelta(milliseconds=NOW_MS - parse_since(text, NOW_MS))


def as_claim_idle(text: str) -> timedelta:
    return timedelta(seconds=load_settings({"claim_idle": text}, {}).claim_idle)


FLAGS = {
    "--deadline": as_deadline,
    "--since": as_since,
    "--older-than": parse_age,
    "--claim-idle": as_claim_idle,
}


@pytest.mark.parametrize("flag", FLAGS)
@pytest.mark.parametrize(
    ("text", "meant"), [("1h30m", timedelta(minutes=90)), ("1w", timedelta(weeks=1))]
)
def test_a_duration_means_the_same_to_every_flag(flag: str, text: str, meant: timedelta) -> None:
    assert FLAGS[flag](text) == meant


@pytest.mark.parametrize("flag", FLAGS)
@pytest.mark.parametrize(
    ("text", "reason"), [("1h1h", "expected a .*duration"), ("6M", f"{MONTHS}, got '6M'$")]
)
def test_a_duration_is_refused_by_every_flag(flag: str, text: str, reason: str) -> None:
    with pytest.raises((ValueError, UsageError, ConfigError), match=reason):
        FLAGS[flag](text)
