"""Validation stage: one CSV record → a :class:`Row` to send, or a :class:`Rejected` row.

An id must be a positive integer within 64-bit range, in ASCII digits without leading
zeros; anything else is rejected with the line number, the id cell and the reason, and
never sent. A rejected record's own text stays in memory only: what is written of it is its
SHA-256 (:attr:`Rejected.raw_sha256`, see :func:`record_sha256`), never the text.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from worker.errors import InputError

MAX_ID = 2**63 - 1
MAX_RECORD = 1 << 20  # bytes of one record (its line or lines, without the last newline)
ID_COLUMNS = ("audience_id", "id")
CAMPAIGN_COLUMN = "campaign_id"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_ .-]*")

# The csv module refuses a field over 128 KiB by default; here one may fill a whole record.
# The limit is process-wide: it is only ever raised.
csv.field_size_limit(max(csv.field_size_limit(), MAX_RECORD))


@dataclass(slots=True)
class Row:
    """A valid input row; ``offset`` is the byte offset of its (first) line, for resuming.

    Not frozen, though nothing changes one: a run builds one per input row, and a frozen
    dataclass takes 1.3 µs to build, nine times as long.
    """

    line: int
    campaign_id: int
    audience_id: int
    offset: int = field(default=0, compare=False)


@dataclass(slots=True)
class Chunk:
    """Valid rows of one campaign on consecutive lines, as columns: what a block of plain
    lines becomes on the fast path, so that neither reading nor planning handles a Row per
    line. Row ``i`` is line ``first_line + i`` at byte ``offsets[i]``."""

    campaign_id: int
    audience_ids: list[int]
    first_line: int
    offsets: list[int]

    def rows(self) -> list[Row]:
        """The same rows, one by one (for a consumer that needs them so)."""
        campaign, line, offsets = self.campaign_id, self.first_line, self.offsets
        return [
            Row(line + i, campaign, audience, offsets[i])
            for i, audience in enumerate(self.audience_ids)
        ]


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record that is not sent; ``audience_raw`` is its audience_id cell, when it has one.

    ``raw`` is its text (cut short for an oversized record), for the code that reads it in
    memory: it is never written anywhere (data minimisation, GDPR Art. 5(1)(c)), and kept out
    of the repr so that no log line can carry it. What is written instead is ``raw_sha256``:
    the SHA-256 of the record's bytes as they are in the input (:func:`record_sha256`),
    which the reader sets.
    """

    line: int
    raw: str = field(repr=False)
    reason: str
    offset: int = field(default=0, compare=False)
    audience_raw: str | None = field(default=None, compare=False)
    raw_sha256: str = field(default="", compare=False)


def record_sha256(record: bytes) -> str:
    """The hex SHA-256 that identifies a rejected record in the audit log: of its bytes
    exactly as they are in the input, from its first byte (a UTF-8 BOM before line 1
    included) to the newline that ends it, that newline excluded (a CR before it is part of
    the record, as is every line break inside a quoted field); a last record without a
    newline is hashed whole. For a UTF-8 input these are the UTF-8 bytes of the record's
    text; bytes that are not UTF-8 are hashed as they are, not as the replacement
    characters the text shows them as. ``sed -n 'N,Mp' FILE | head -c -1 | sha256sum``
    gives the same digest for a record on lines N to M (see README, "The audit log").
    """
    return hashlib.sha256(record).hexdigest()


def parse_id(text: str) -> int | str:
    """The id in ``text``, or the reason it is not a positive 64-bit integer.

    Only ASCII digits, without a sign. Leading zeros are refused (``0021``), for campaign_id
    cells as for audience_id ones: such a cell is more likely a phone number or a value a
    spreadsheet padded than the id it would parse to, and an id is never guessed.
    """
    value = text.strip()
    if not (value.isascii() and value.isdigit()):
        return _not_digits(value)
    if value[0] == "0":
        return "has leading zeros" if value.strip("0") else "not a positive integer"
    if len(value) > 19 or int(value) > MAX_ID:
        return "out of 64-bit range"
    return int(value)


def _not_digits(value: str) -> str:
    if not value:
        return "empty value"
    digits = value[1:]
    if value[0] == "-" and digits.isascii() and digits.isdigit():
        return "not a positive integer"
    return "not an integer"


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
    """A record's cells as a Row, or Rejected with the reason (its raw text: the cells)."""
    if layout.id_col >= len(cells):
        return Rejected(line, ",".join(cells), offset=offset, reason="missing audience_id")
    cell = cells[layout.id_col].strip()
    audience = parse_id(cell)
    if isinstance(audience, str):
        return Rejected(line, ",".join(cells), f"audience_id {audience}", offset, cell)
    campaign = _campaign(cells, layout, default_campaign)
    if isinstance(campaign, int):
        return Row(line, campaign, audience, offset)
    reason = (
        "campaign_id missing and no --campaign-id given"
        if campaign is None
        else f"campaign_id {campaign}"
    )
    return Rejected(line, ",".join(cells), reason, offset, cell)


def _campaign(cells: Sequence[str], layout: Layout, default: int | None) -> int | str | None:
    """The row's campaign: its own cell when it has a non-blank one, else the default."""
    column = layout.campaign_col
    if column is not None and column < len(cells) and cells[column].strip():
        return parse_id(cells[column])
    return default


def split_cells(line: str) -> list[str] | None:
    """CSV cells of one record (a line, or lines joined by a quoted field that spans them);
    None if it is not valid CSV."""
    line = line.removesuffix("\r")
    if '"' not in line and "\0" not in line:
        return line.split(",")
    try:
        return next(csv.reader([line]), [])
    except csv.Error:
        return None
