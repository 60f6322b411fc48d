"""The query filters of ``GET /audience-list`` and ``GET /campaign-audience-stats``.

As the vendor documents them, and how the sandbox reads them:

- ``status`` (codes 0..3), ``call_status``, ``first_status``, ``last_status`` (one of
  ``records.CALL_STATUSES``, exactly, lower case) and ``attempt`` (a whole number >= 0, exact
  match) take one value or an array: ``status=1``, ``status=1,2``, or the parameter repeated,
  with or without ``[]`` (``status=1&status[]=2``). A record matches when its field equals any of
  the values; a never-attempted record has no call statuses and matches no call-status filter.
- ``mobile_no``: a partial match (SQL ``LIKE '%value%'``) on the number as listed, ``+`` included;
  digits and ``+`` only, given once.
- ``is_new``: ``true``/``false`` (or ``1``/``0``); true answers simplified records. It selects a
  format, not records, so it changes nothing in the stats.

Different filters combine with AND. An empty value (``status=``) is no filter. A value that is
not valid for its filter is a 400 naming the filter; parameters the API does not know are
ignored, as a real API would, which is why a client should check its filters took effect.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from multidict import MultiMapping

from worker.sandbox.records import AUDIENCE_STATUSES, CALL_STATUSES, RecordFigures

_MOBILE = re.compile(r"\+?[0-9]+")
_BOOLEANS = {"true": True, "1": True, "false": False, "0": False}


@dataclass(frozen=True, slots=True)
class AudienceFilter:
    """What a listing or stats request selects; None means "any"."""

    statuses: frozenset[int] | None = None
    call_statuses: frozenset[str] | None = None
    first_statuses: frozenset[str] | None = None
    last_statuses: frozenset[str] | None = None
    attempts: frozenset[int] | None = None
    mobile_no: str | None = None
    is_new: bool = False

    @property
    def by_class(self) -> bool:
        """Whether any part of the filter tests the record class (all but ``mobile_no``)."""
        parts = (self.statuses, self.call_statuses, self.first_statuses, self.last_statuses)
        return any(part is not None for part in (*parts, self.attempts))

    def admits(self, fig: RecordFigures) -> bool:
        """Whether a record of this class passes every filter but ``mobile_no``."""
        return (
            _within(self.statuses, fig.status_code)
            and _within(self.call_statuses, fig.call_status)
            and _within(self.first_statuses, fig.first_status)
            and _within(self.last_statuses, fig.last_status)
            and _within(self.attempts, fig.attempt)
        )

    def admits_mobile(self, number: str) -> bool:
        return self.mobile_no is None or self.mobile_no in number


def _within(allowed: frozenset[int] | frozenset[str] | None, value: int | str | None) -> bool:
    return allowed is None or value in allowed


def parse_filter(query: MultiMapping[str]) -> AudienceFilter:
    """The filters of a request's query string.

    Raises:
        ValueError: a value that is not valid for its filter; the message names the filter.
    """
    return AudienceFilter(
        statuses=_codes(query),
        call_statuses=_call_statuses(query, "call_status"),
        first_statuses=_call_statuses(query, "first_status"),
        last_statuses=_call_statuses(query, "last_status"),
        attempts=_attempts(query),
        mobile_no=_mobile_no(query),
        is_new=_is_new(query),
    )


def _values(query: MultiMapping[str], name: str) -> list[str]:
    """Every value of ``name`` and ``name[]``, comma-separated lists split, blanks dropped."""
    raw = query.getall(name, []) + query.getall(f"{name}[]", [])
    return [part.strip() for value in raw for part in value.split(",") if part.strip()]


def _is_count(value: str) -> bool:
    return value.isascii() and value.isdigit()


def _codes(query: MultiMapping[str]) -> frozenset[int] | None:
    codes = frozenset(range(len(AUDIENCE_STATUSES)))
    values = _values(query, "status")
    for value in values:
        if not _is_count(value) or int(value) not in codes:
            raise ValueError(
                f"status must be 0..3 (0 Fresh, 1 Completed, 2 Halted, 3 Inqueue), got {value!r}"
            )
    return frozenset(map(int, values)) or None


def _call_statuses(query: MultiMapping[str], name: str) -> frozenset[str] | None:
    values = _values(query, name)
    for value in values:
        if value not in CALL_STATUSES:
            raise ValueError(f"{name} must be one of {', '.join(CALL_STATUSES)}, got {value!r}")
    return frozenset(values) or None


def _attempts(query: MultiMapping[str]) -> frozenset[int] | None:
    values = _values(query, "attempt")
    for value in values:
        if not _is_count(value):
            raise ValueError(f"attempt must be a whole number, 0 or more, got {value!r}")
    return frozenset(map(int, values)) or None


def _mobile_no(query: MultiMapping[str]) -> str | None:
    values = [value.strip() for value in query.getall("mobile_no", [])]
    if len(values) > 1:
        raise ValueError("mobile_no must be given once")
    if not values or not values[0]:
        return None
    if not _MOBILE.fullmatch(values[0]):
        raise ValueError(f"mobile_no must be digits, with an optional leading +, got {values[0]!r}")
    return values[0]


def _is_new(query: MultiMapping[str]) -> bool:
    values = query.getall("is_new", [])
    if len(values) > 1:
        raise ValueError("is_new must be given once")
    if not values or not values[0].strip():
        return False
    flag = _BOOLEANS.get(values[0].strip().lower())
    if flag is None:
        raise ValueError(f"is_new must be true or false (or 1 or 0), got {values[0]!r}")
    return flag
