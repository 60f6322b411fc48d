"""Parsers for the guards' values: a share (``5%``) and a deadline (``2h`` or a time).

Kept apart from :mod:`worker.settings.declare` because they read the clock (a duration is
a deadline from now) and know units, not just bounds.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

_PERCENT = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*%")
_FRACTION = re.compile(r"0?\.[0-9]+|0|1(?:\.0+)?")
_DURATION = re.compile(r"(?:([0-9]+)d)?\s*(?:([0-9]+)h)?\s*(?:([0-9]+)m)?\s*(?:([0-9]+)s)?")
_UNITS = (86400, 3600, 60, 1)


def percentage(value: Any) -> float:
    """A share from 0 to 1, written ``5%`` (or as a fraction, ``0.05``)."""
    text = str(value).strip()
    if (found := _PERCENT.fullmatch(text)) is not None:
        share = float(found[1]) / 100
    elif _FRACTION.fullmatch(text) or _is_number(value):
        share = float(text)
    else:
        raise ValueError(
            f"expected a percentage such as 5% (or a fraction such as 0.05), got {value!r}"
        )
    if not 0 < share < 1:
        raise ValueError(f"must be above 0% and below 100%, got {value!r}")
    return share


def _is_number(value: Any) -> bool:
    return isinstance(value, float | int) and not isinstance(value, bool)


def deadline(value: Any, *, now: datetime | None = None) -> datetime:
    """When a run must stop: a duration from now (``2h``, ``1h30m``, ``45m``, ``1d``) or an
    RFC 3339 time with its offset (``2026-12-01T03:00:00Z``)."""
    text = str(value).strip()
    found = _DURATION.fullmatch(text)
    if text and found is not None and any(found.groups()):
        seconds = sum(int(n) * unit for n, unit in zip(found.groups(), _UNITS, strict=True) if n)
        if seconds <= 0:
            raise ValueError(f"a deadline must be in the future, got {value!r}")
        try:
            return (now or datetime.now(UTC)) + timedelta(seconds=seconds)
        except OverflowError:  # timedelta and datetime end at days 999999999 and year 9999
            raise ValueError(f"a deadline must be before the year 9999, got {value!r}") from None
    try:
        if not text.isascii():
            raise ValueError(text)
        when = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"expected a duration such as 2h or 1h30m, or an RFC 3339 time such as "
            f"2026-12-01T03:00:00Z, got {value!r}"
        ) from None
    if when.tzinfo is None:
        raise ValueError(f"give the time's offset (Z or +01:00, say): {value!r}")
    if when <= (now or datetime.now(UTC)):
        raise ValueError(f"a deadline must be in the future, got {value!r}")
    try:
        return when.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:59:59-23:59 is in the year 10000 in UTC
        raise ValueError(f"a deadline must be before the year 9999, got {value!r}") from None
