"""Parsers for the guards' values: a share (``5%``) and a deadline (``2h`` or a time).

Kept apart from :mod:`worker.settings.declare` because they read the clock (a duration is
a deadline from now) and know units, not just bounds; the grammar of a duration or a time
is :mod:`worker.times`'s.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from worker.times import parse_duration_or_time, shifted

_PERCENT = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*%")
_FRACTION = re.compile(r"0?\.[0-9]+|0|1(?:\.0+)?")


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
    RFC 3339 time with its offset (``2026-12-01T03:00:00Z``), read by :mod:`worker.times`."""
    start = now or datetime.now(UTC)
    when = parse_duration_or_time(str(value))
    when = shifted(start, when) if isinstance(when, timedelta) else when
    if when <= start:
        raise ValueError(f"a deadline must be in the future, got {value!r}")
    return when
