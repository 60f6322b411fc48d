"""A rate as the user writes it (``100/minute``): its parser and its value.

Apart from :mod:`worker.sending.ratelimit` so that reading flags and settings (``--help``,
``--version``, a config error) does not import asyncio.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

UNITS = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
}
_SPEC = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*/\s*([a-z]+)\s*$")


@dataclass(frozen=True, slots=True)
class RateSpec:
    """``requests`` per ``period`` seconds."""

    requests: float
    period: float

    @property
    def per_second(self) -> float:
        return self.requests / self.period

    def scaled(self, factor: float) -> RateSpec:
        return RateSpec(self.requests * factor, self.period)

    def __str__(self) -> str:
        unit = {1.0: "second", 60.0: "minute", 3600.0: "hour"}.get(self.period)
        count = f"{self.requests:g}"
        return f"{count}/{unit}" if unit else f"{count}/{self.period:g}s"


def parse_rate(text: str) -> RateSpec:
    """Parse ``N/s``, ``N/second``, ``N/minute``, ``N/hour`` (case-insensitive).

    Raises:
        ValueError: the text is not such a spec, or N is not positive.
    """
    match = _SPEC.match(text.lower())
    if not match or match.group(2) not in UNITS:
        raise ValueError(f"invalid rate {text!r}: expected N/second, N/minute or N/hour")
    requests = float(match.group(1))
    if requests <= 0:
        raise ValueError(f"invalid rate {text!r}: the number of requests must be positive")
    return RateSpec(requests, UNITS[match.group(2)])
