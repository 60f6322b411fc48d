"""Input stage: stream a CSV of audience ids (file or stdin) into validated rows.

The input is never loaded whole: bytes are read in blocks off the event loop, split into
physical lines (so line numbers in the audit log are the ones an editor shows), and parsed
with :mod:`csv`. Each data line becomes exactly one :class:`Row` or :class:`Rejected`.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import os
import re
import stat
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from worker.errors import InputError

MAX_ID = 2**63 - 1
BLOCK = 1 << 16
ID_COLUMNS = ("audience_id", "id")
CAMPAIGN_COLUMN = "campaign_id"
_DIGITS = re.compile(r"[0-9]+")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_ .-]*")


@dataclass(frozen=True, slots=True)
class Row:
    line: int
    campaign_id: int
    audience_id: int


@dataclass(frozen=True, slots=True)
class Rejected:
    line: int
    raw: str
    reason: str


@dataclass(slots=True)
class InputDigest:
    """What was read: its size and SHA-256, for the audit log and resume checks."""

    bytes_read: int = 0
    lines: int = 0
    _hash: hashlib._Hash = field(default_factory=hashlib.sha256)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


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
    cells: Sequence[str], line: int, layout: Layout, default_campaign: int | None
) -> Row | Rejected:
    raw = ",".join(cells)
    if layout.id_col >= len(cells):
        return Rejected(line, raw, "missing audience_id")
    audience = parse_id(cells[layout.id_col])
    if isinstance(audience, str):
        return Rejected(line, raw, f"audience_id {audience}")
    campaign: int | str | None = default_campaign
    if (
        layout.campaign_col is not None
        and layout.campaign_col < len(cells)
        and cells[layout.campaign_col].strip()
    ):
        campaign = parse_id(cells[layout.campaign_col])
    if campaign is None:
        return Rejected(line, raw, "campaign_id missing and no --campaign-id given")
    if isinstance(campaign, str):
        return Rejected(line, raw, f"campaign_id {campaign}")
    return Row(line, campaign, audience)


class ByteSource:
    """Reads an input in blocks without blocking the event loop.

    Regular files are read in a worker thread; pipes and terminals (stdin fed by another
    program) through the event loop, so a stalled producer never pins a thread that would
    keep the process from exiting.
    """

    def __init__(self, handle: BinaryIO, name: str, size: int | None) -> None:
        self._handle = handle
        self._reader: asyncio.StreamReader | None = None
        self.name = name
        self.size = size

    async def start(self) -> None:
        if self.size is None:
            loop = asyncio.get_running_loop()
            self._reader = asyncio.StreamReader(limit=BLOCK, loop=loop)
            protocol = asyncio.StreamReaderProtocol(self._reader, loop=loop)
            await loop.connect_read_pipe(lambda: protocol, self._handle)

    async def read(self) -> bytes:
        """The next block; empty at the end of the input."""
        if self._reader is not None:
            return await self._reader.read(BLOCK)
        return await asyncio.to_thread(self._handle.read1, BLOCK)  # type: ignore[attr-defined]

    async def survey(self) -> tuple[str | None, int | None]:
        """SHA-256 and line count of a file before it is read; (None, None) for stdin."""
        if self._handle is sys.stdin.buffer:
            return None, None
        return await asyncio.to_thread(_survey, Path(self.name))

    def close(self) -> None:
        if self._handle is not sys.stdin.buffer:
            self._handle.close()


def _survey(path: Path) -> tuple[str, int]:
    digest, lines = hashlib.sha256(), 0
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
            lines += block.count(b"\n")
    return digest.hexdigest(), lines


async def open_input(path: str) -> ByteSource:
    """Open a file path, or stdin for ``-``; errors are InputErrors naming the path."""
    if path == "-":
        handle = sys.stdin.buffer
    else:
        target = Path(path)
        if target.is_dir():
            raise InputError(f"input {path} is a directory, not a CSV file")
        try:
            handle = target.open("rb")
        except FileNotFoundError:
            raise InputError(f"input file {path} does not exist") from None
        except PermissionError:
            raise InputError(f"input file {path} is not readable (permission denied)") from None
        except OSError as exc:
            raise InputError(f"cannot open input file {path}: {exc.strerror}") from None
    info = os.fstat(handle.fileno())
    size = info.st_size if stat.S_ISREG(info.st_mode) else None
    source = ByteSource(handle, "<stdin>" if path == "-" else path, size)
    await source.start()
    return source


async def _lines(source: ByteSource, digest: InputDigest) -> AsyncIterator[list[str]]:
    """Blocks of complete decoded lines."""
    rest = b""
    first = True
    while True:
        block = await source.read()
        digest.bytes_read += len(block)
        digest._hash.update(block)
        data = rest + block
        cut = data.rfind(b"\n") + 1 if block else len(data)
        data, rest = data[:cut], data[cut:]
        if data:
            text = data.decode("utf-8", "replace")
            if first:
                text, first = text.removeprefix("\ufeff"), False
            lines = text.split("\n")
            yield lines[:-1] if block else lines
        if not block:
            return


def split_cells(line: str) -> list[str] | None:
    """CSV cells of one physical line; None if the line is not valid CSV."""
    line = line.removesuffix("\r")
    if '"' not in line and "\0" not in line:
        return line.split(",")
    try:
        return next(csv.reader([line]), [])
    except csv.Error:
        return None


async def read_rows(
    source: ByteSource, digest: InputDigest, *, default_campaign: int | None
) -> AsyncIterator[list[Row | Rejected]]:
    """Validated rows in blocks; a blank line is skipped, every other line yields one item.

    Raises:
        InputError: the input is empty, or its first line does not tell where the ids
            are (see detect_layout).
    """
    layout: Layout | None = None
    async for lines in _lines(source, digest):
        out: list[Row | Rejected] = []
        for number, line in enumerate(lines, start=digest.lines + 1):
            cells = split_cells(line)
            if cells is None:
                out.append(Rejected(number, line, "not valid CSV"))
                continue
            if all(not cell.strip() for cell in cells):
                continue
            if layout is None:
                layout = detect_layout(cells, default_campaign=default_campaign)
                if layout.has_header:
                    continue
            out.append(parse_line(cells, number, layout, default_campaign))
        digest.lines += len(lines)
        if out:
            yield out
    if layout is None:
        raise InputError("the input is empty: no header and no audience ids")
