"""Validation stage: one CSV line → a :class:`Row` to send, or a :class:`Rejected` row.

An id must be a positive integer within 64-bit range; anything else is rejected with the
line number, the raw text and the reason, and never sent.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from worker.errors import InputError

MAX_ID = 2**63 - 1
ID_COLUMNS = ("audience_id", "id")
CAMPAIGN_COLUMN = "campaign_id"
_DIGITS = re.compile(r"[0-9]+")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_ .-]*")


@dataclass(frozen=True, slots=True)
class Row:
    """A valid input row; ``offset`` is the byte offset of its line (for resuming)."""

    line: int
    campaign_id: int
    audience_id: int
    offset: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class Rejected:
    """A line that is not sent; ``audience_raw`` is its audience_id cell, when it has one."""

    line: int
    raw: str
    reason: str
    offset: int = field(default=0, compare=False)
    audience_raw: str | None = field(default=None, compare=False)


def parse_id(text: str) -> int | str:
    """The id in ``text``, or the reason it is not a positive 64-bit integer."""
    value = text.strip()
    if not value:
        return "empty value"
    if not _DIGITS.fullmatch(value):
        if value.startswith("-") and _DIGITS.fullmatch(value[1:]):
            return "not a positive integer"
        return "not an integer"
    if len(value) > 19 or int(value) > MAX_ID:
        return "out of 64-bit range"
    number = int(value)
    return number if number > 0 else "not a positive integer"


@dataclass(frozen=True, slots=True)
class Layout:
    """Where the ids are: column indexes decided from the first line."""

    id_col: int
    campaign_col: int | None
    has_header: bool


def detect_layout(cells: Sequence[str], *, default_campaign: int | None) -> Layout:
    """Decide from the first non-blank line whether it is a header and where the columns are.

    A first line whose cells look like names is a header; without one, the file must be a
    single column of audience ids.

    Raises:
        InputError: no recognisable id column, or several unnamed columns.
    """
    names = [cell.strip().lower().lstrip("\ufeff") for cell in cells]
    if any(_NAME.fullmatch(name) for name in names):
        id_col = next((names.index(n) for n in ID_COLUMNS if n in names), None)
        if id_col is None:
            raise InputError(
                f"no recognisable id column in header {','.join(names)!r}: "
                "expected audience_id (or id)"
            )
        campaign_col = names.index(CAMPAIGN_COLUMN) if CAMPAIGN_COLUMN in names else None
        layout = Layout(id_col, campaign_col, has_header=True)
    elif len(cells) == 1:
        layout = Layout(0, None, has_header=False)
    else:
        raise InputError(
            f"{len(cells)} columns but no header line: add a header naming audience_id "
            "(and campaign_id)"
        )
    if layout.campaign_col is None and default_campaign is None:
        raise InputError("the input has no campaign_id column: give --campaign-id N")
    return layout


def parse_line(
    cells: Sequence[str],
    line: int,
    layout: Layout,
    default_campaign: int | None,
    offset: int = 0,
) -> Row | Rejected:
    raw = ",".join(cells)
    if layout.id_col >= len(cells):
        return Rejected(line, raw, offset=offset, reason="missing audience_id")
    cell = cells[layout.id_col].strip()
    audience = parse_id(cell)
    if isinstance(audience, str):
        return Rejected(line, raw, f"audience_id {audience}", offset, cell)
    campaign: int | str | None = default_campaign
    if (
        layout.campaign_col is not None
        and layout.campaign_col < len(cells)
        and cells[layout.campaign_col].strip()
    ):
        campaign = parse_id(cells[layout.campaign_col])
    if campaign is None:
        return Rejected(line, raw, "campaign_id missing and no --campaign-id given", offset, cell)
    if isinstance(campaign, str):
        return Rejected(line, raw, f"campaign_id {campaign}", offset, cell)
    return Row(line, campaign, audience, offset)


def split_cells(line: str) -> list[str] | None:
    """CSV cells of one physical line; None if the line is not valid CSV."""
    line = line.removesuffix("\r")
    if '"' not in line and "\0" not in line:
        return line.split(",")
    try:
        return next(csv.reader([line]), [])
    except csv.Error:
        return None
