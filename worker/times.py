"""One grammar for time: durations, timestamps, and how a UTC time is written.

Every flag and setting that takes a duration or a time reads it here, so ``1h30m`` means the
same to ``--deadline``, ``--since``, ``--older-than`` and ``--claim-idle``. On the ground
floor: it imports nothing of the project.

- A **duration** is one or more parts of ASCII digits and a lower-case unit, largest unit
  first, each unit at most once: ``w`` (weeks), ``d``, ``h``, ``m`` (minutes), ``s``
  (``90s``, ``90m``, ``36h``, ``1h30m``, ``180d``, ``12w``, ``1w2d``). Months are refused
  (``6M`` is six months to many a reader and would be six minutes to a lower-case grammar);
  so are fractions, signs and anything above :data:`MAX_DURATION`.
- A **timestamp** is a date (``2026-06-01``, midnight) or an RFC 3339 time
  (``2026-06-01T00:00:00Z``, ``2026-06-01T02:00:00.5+02:00``; ``T`` or a space between date
  and time, the fraction kept to the microsecond). One without an offset (a date, or the
  API's ``2026-06-01 00:00:00``) is UTC where the caller allows it. It must lie within the
  years 1 to 9999 once in UTC.
- A **UTC time is written** RFC 3339 with ``Z``: ``2026-06-01T00:00:00Z``, its microseconds
  kept when it has some, the year 1 as ``0001``.

Every refusal is a :class:`ValueError` whose message is one line naming what was given;
text that is not written in the grammar at all is an :class:`Unreadable` one, so that a
caller taking something else too (a number of seconds) can name both.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

MAX_DURATION = timedelta(days=36_500)  # 100 years: beyond is a typo, and near datetime's ends
MONTHS = "months vary in length: give days, e.g. 180d"
_EXAMPLES = "90s, 90m, 36h, 1h30m, 180d or 12w"

_UNITS = (("w", 604_800), ("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1))
_DURATION = re.compile("".join(rf"(?:([0-9]+){unit})?" for unit, _ in _UNITS))
_MONTHS = re.compile(r"[0-9]\s*(?:M|[Mm]o(?:n(?:th)?)?s?(?![a-z]))")
_TIMESTAMP = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})"
    r"(?:[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?([Zz]|[+-][0-9]{2}:[0-9]{2})?)?"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Unreadable(ValueError):
    """The text is not a duration (or timestamp) at all, as opposed to one refused for its
    value (months, zero, too long, beyond the year 9999)."""


def parse_duration(text: str, *, allow_zero: bool = False) -> timedelta:
    """A duration (``1h30m``); zero only if ``allow_zero``.

    Raises:
        ValueError: not the grammar (months named with their hint), zero when not allowed, or
            above :data:`MAX_DURATION`.
    """
    found = _read_duration(text, allow_zero=allow_zero)
    if found is None:
        raise Unreadable(
            f"expected a duration such as {_EXAMPLES} (units w d h m s, lower case, largest "
            f"first, each once), got {text!r}"
        )
    return found


def _read_duration(text: str, *, allow_zero: bool) -> timedelta | None:
    """The duration ``text`` writes, None if it is not the grammar at all.

    Raises:
        ValueError: months, zero when not allowed, or above :data:`MAX_DURATION`.
    """
    value = text.strip()
    found = _DURATION.fullmatch(value)
    if not value or found is None:
        if _MONTHS.search(value):
            raise ValueError(f"{MONTHS}, got {text!r}")
        return None
    parts = [(n, size) for n, (_, size) in zip(found.groups(), _UNITS, strict=True) if n]
    if any(len(n) > 12 for n, _ in parts):  # int() of 4300 digits would refuse on its own
        raise _too_long(text)
    seconds = sum(int(n) * size for n, size in parts)
    if seconds == 0 and not allow_zero:
        raise ValueError(f"expected a duration above zero, got {text!r}")
    if seconds > MAX_DURATION.total_seconds():
        raise _too_long(text)
    return timedelta(seconds=seconds)


def _too_long(text: str) -> ValueError:
    return ValueError(f"{text!r} is more than 100 years ({MAX_DURATION.days}d)")


def parse_timestamp(text: str, *, assume_utc: bool = True) -> datetime:
    """A date or an RFC 3339 time, in UTC; one without an offset is UTC if ``assume_utc``.

    Raises:
        ValueError: not the grammar (its digits ASCII, its fields a real date and time), no
            offset when one is needed, or beyond the years 1 to 9999 once in UTC.
    """
    when = _read_timestamp(text)
    if when is None:
        raise Unreadable(
            "expected a date (2026-06-01) or an RFC 3339 time (2026-06-01T00:00:00Z, or with "
            f"an offset such as +02:00) between the years 1 and 9999 in UTC, got {text!r}"
        )
    if when.tzinfo is None and not assume_utc:
        raise ValueError(f"give the time's offset (Z or +01:00, say), got {text!r}")
    return _in_utc(when, text)


def parse_duration_or_time(text: str, *, allow_zero: bool = False) -> timedelta | datetime:
    """A duration (``1h30m``) or an RFC 3339 time with its offset, for the flags that take
    either (``--deadline``, ``--since``).

    Raises:
        ValueError: neither, naming both; or a duration or time refused for its own reason
            (months, zero, too long, beyond the year 9999).
    """
    duration = _read_duration(text, allow_zero=allow_zero)
    if duration is not None:
        return duration
    when = _read_timestamp(text)
    if when is None or when.tzinfo is None:
        offset = "" if when is None else ": give the time's offset (Z or +01:00, say)"
        raise Unreadable(
            "expected a duration (90s, 90m, 36h, 1h30m, 180d, 12w) or an RFC 3339 time with "
            f"its offset (2026-12-01T03:00:00Z), got {text!r}{offset}"
        )
    return _in_utc(when, text)


def shifted(moment: datetime, by: timedelta) -> datetime:
    """``moment + by``, refused (not overflowing) beyond the years 1 to 9999.

    Raises:
        ValueError: the result is outside datetime's range.
    """
    try:
        return moment + by
    except OverflowError:
        raise ValueError(
            f"{utc_text(moment)} {'+' if by >= timedelta(0) else '-'} {abs(by)} is beyond the "
            "years 1 to 9999"
        ) from None


def utc_text(when: datetime, timespec: str = "auto") -> str:
    """``when`` in RFC 3339 UTC with ``Z`` (``timespec`` as :meth:`datetime.isoformat`:
    ``auto`` keeps microseconds when there are some).

    Raises:
        ValueError: ``when`` is naive (its zone unknown).
    """
    if when.utcoffset() is None:
        raise ValueError(f"a time without a zone cannot be written in UTC: {when!r}")
    if when.utcoffset():
        when = when.astimezone(UTC)
    return when.replace(tzinfo=None).isoformat(timespec=timespec) + "Z"


def from_unix(seconds: float) -> datetime:
    """The UTC time of Unix ``seconds``."""
    return datetime.fromtimestamp(seconds, UTC)


def unix_ms(when: datetime) -> int:
    """Whole Unix milliseconds of an aware ``when``, counted without float rounding."""
    return (when - _EPOCH) // timedelta(milliseconds=1)


def _read_timestamp(text: str) -> datetime | None:
    """The time ``text`` writes, naive if it gives no offset; None if it is not one."""
    found = _TIMESTAMP.fullmatch(text.strip())
    if found is None:
        return None
    year, month, day, hour, minute, second, fraction, zone = found.groups()
    micro = int((fraction or "")[:6].ljust(6, "0"))  # finer than datetime keeps: truncated
    try:
        return datetime(
            int(year),
            int(month),
            int(day),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            micro,
            tzinfo=_zone(zone),
        )
    except ValueError:  # the year 0, the 30th of February, an hour 24, an offset of 24:00
        return None


def _zone(zone: str | None) -> timezone | None:
    if zone is None:
        return None
    if zone in ("Z", "z"):
        return UTC
    sign = -1 if zone[0] == "-" else 1
    return timezone(sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))


def _in_utc(when: datetime, text: str) -> datetime:
    try:
        return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:59:59-23:59 is in the year 10000 in UTC
        raise ValueError(
            f"expected a date or time between the years 1 and 9999 once in UTC, got {text!r}"
        ) from None
