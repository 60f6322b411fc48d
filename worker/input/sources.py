"""Input stage: stream a CSV of audience ids (file or stdin) into validated rows.

The input is never loaded whole: bytes are read in blocks off the event loop and split into
physical lines, so line numbers are the ones an editor shows and every row knows its byte
offset. The digest hashes exactly the bytes consumed and keeps marks at block boundaries,
from which a checkpoint takes a verifiable prefix; a resumed run re-reads that prefix,
checks its hash, and drops the rows before the watermark.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
import sys
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from worker.errors import InputError, StateError
from worker.input.validate import (
    Layout,
    Rejected,
    Row,
    detect_layout,
    parse_line,
    split_cells,
)

BLOCK = 1 << 16
BOM = b"\xef\xbb\xbf"
KEEP_BYTES = 8 << 20


@dataclass(frozen=True, slots=True)
class Prefix:
    """The first ``size`` bytes of the input: ``lines`` newlines, SHA-256 ``sha256``."""

    size: int
    lines: int
    sha256: str


@dataclass(slots=True)
class InputDigest:
    """What was consumed: size, line count and SHA-256.

    It keeps, for recent blocks, the hash state before each block and the block's bytes
    (up to ``KEEP_BYTES``), so that a checkpoint can hash *exactly* the input before its
    watermark; for older positions it falls back to the last block boundary before it.
    """

    bytes_read: int = 0
    lines: int = 0
    layout: Layout | None = None
    quote_open: tuple[int, int] | None = None  # (offset, line) of an unclosed quoted field
    _hash: hashlib._Hash = field(default_factory=hashlib.sha256)
    _blocks: deque[tuple[int, int, hashlib._Hash, bytes]] = field(default_factory=deque)
    _kept: int = 0

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def safe_offset(self) -> int:
        """Where reading may resume: never inside a quoted field that spans lines."""
        return self.quote_open[0] if self.quote_open is not None else self.bytes_read

    def consume(self, data: bytes, lines: int) -> None:
        self._remember(data)
        self._hash.update(data)
        self.bytes_read += len(data)
        self.lines += lines

    def _remember(self, data: bytes) -> None:
        self._blocks.append((self.bytes_read, self.lines, self._hash.copy(), data))
        self._kept += len(data)
        while self._kept > KEEP_BYTES and len(self._blocks) > 1:
            self._kept -= len(self._blocks.popleft()[3])

    def restart(self, prefix: Prefix, hashed: hashlib._Hash) -> None:
        self.bytes_read, self.lines, self._hash = prefix.size, prefix.lines, hashed
        self._blocks.clear()
        self._kept = 0

    def prefix_before(self, offset: int) -> Prefix:
        """The prefix ending exactly at ``offset`` when it is recent, else the longest one
        that ends at a remembered block boundary before it."""
        if offset >= self.bytes_read:
            return Prefix(self.bytes_read, self.lines, self._hash.hexdigest())
        best = Prefix(0, 0, hashlib.sha256().hexdigest())
        for start, lines, hashed, data in self._blocks:
            if start > offset:
                break
            part = data[: offset - start]
            exact = hashed.copy()
            exact.update(part)
            best = Prefix(start + len(part), lines + part.count(b"\n"), exact.hexdigest())
        return best


@dataclass(frozen=True, slots=True)
class ResumeFrom:
    """Where a resumed run picks the input up: re-read ``prefix``, then skip to ``watermark``."""

    prefix: Prefix
    watermark: int
    layout: Layout


class ByteSource:
    """Reads an input in blocks without blocking the event loop.

    Regular files are read in a worker thread; pipes and terminals (stdin fed by another
    program) through the event loop, so a stalled producer never pins a thread that would
    keep the process from exiting.
    """

    def __init__(self, handle: BinaryIO, name: str, size: int | None) -> None:
        self._handle = handle
        self._reader: asyncio.StreamReader | None = None
        self._pushback = b""
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
        if self._pushback:
            data, self._pushback = self._pushback, b""
            return data
        if self._reader is not None:
            return await self._reader.read(BLOCK)
        return await asyncio.to_thread(self._handle.read1, BLOCK)  # type: ignore[attr-defined]

    def unread(self, data: bytes) -> None:
        self._pushback = data + self._pushback

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


async def skip_prefix(source: ByteSource, digest: InputDigest, prefix: Prefix) -> None:
    """Consume the first ``prefix.size`` bytes, checking they are the ones a checkpoint saw.

    Raises:
        StateError: the input is shorter, or its prefix hashes differently.
    """
    hashed = hashlib.sha256()
    remaining = prefix.size
    while remaining:
        block = await source.read()
        if not block:
            raise StateError(
                f"input {source.name} changed since the state was written (it is shorter "
                "now): re-run with --fresh to start over"
            )
        take = block[:remaining]
        hashed.update(take)
        remaining -= len(take)
        if len(take) < len(block):
            source.unread(block[len(take) :])
    if hashed.hexdigest() != prefix.sha256:
        raise StateError(
            f"input {source.name} changed since the state was written (its first "
            f"{prefix.size} bytes differ): re-run with --fresh to start over"
        )
    digest.restart(prefix, hashed)


async def _blocks(
    source: ByteSource, digest: InputDigest
) -> AsyncIterator[tuple[int, int, list[bytes]]]:
    """(offset, line number before it, complete raw lines) for each block read."""
    rest = b""
    while True:
        block = await source.read()
        data = rest + block
        cut = data.rfind(b"\n") + 1 if block else len(data)
        data, rest = data[:cut], data[cut:]
        if data:
            start, line0 = digest.bytes_read, digest.lines
            lines = data.split(b"\n")
            if block:
                lines.pop()  # the empty string after the block's last newline
            digest.consume(data, len(lines))
            yield start, line0, lines
        if not block:
            return


async def read_rows(
    source: ByteSource,
    digest: InputDigest,
    *,
    default_campaign: int | None,
    watermark: int = 0,
) -> AsyncIterator[list[Row | Rejected]]:
    """Validated rows, one list per block read; a blank line is skipped, every other line
    yields one item; lines before ``watermark`` (finished by an earlier run) are dropped.
    After each list, :meth:`InputDigest.safe_offset` is where reading may resume.

    A quoted field may not span lines: a line that opens one, and every line up to the one
    that closes it, is rejected whole, so an id inside a quoted note is never sent.

    Raises:
        InputError: the input is empty, or its first line does not tell where the ids
            are (see detect_layout).
    """
    async for start, line0, lines in _blocks(source, digest):
        out: list[Row | Rejected] = []
        offset = start
        for number, raw in enumerate(lines, start=line0 + 1):
            here, offset = offset, offset + len(raw) + 1
            if here < watermark:
                continue
            if here == 0 and raw.startswith(BOM):
                raw = raw[len(BOM) :]
            item = _item(raw, number, here, digest, default_campaign)
            if item is not None:
                out.append(item)
        yield out
    if digest.layout is None:
        raise InputError("the input is empty: no header and no audience ids")


async def start_resume(source: ByteSource, digest: InputDigest, resume: ResumeFrom) -> None:
    """Re-read and check the prefix a checkpoint saw, before anything is sent.

    Raises:
        StateError: the input is not the one the checkpoint saw.
    """
    await skip_prefix(source, digest, resume.prefix)
    digest.layout = resume.layout


def _item(
    raw: bytes, number: int, offset: int, digest: InputDigest, default_campaign: int | None
) -> Row | Rejected | None:
    text = raw.decode("utf-8", "replace")
    odd_quotes = raw.count(b'"') % 2 == 1
    if digest.quote_open is not None:
        opened = digest.quote_open[1]
        if odd_quotes:
            digest.quote_open = None
        return Rejected(number, text, f"inside a quoted field spanning lines from {opened}", offset)
    if odd_quotes:
        digest.quote_open = (offset, number)
        return Rejected(number, text, "opens a quoted field that spans lines", offset)
    return _parse(text, number, offset, digest, default_campaign)


def _parse(
    line: str, number: int, offset: int, digest: InputDigest, default_campaign: int | None
) -> Row | Rejected | None:
    cells = split_cells(line)
    if cells is None:
        return Rejected(number, line, "not valid CSV", offset)
    if all(not cell.strip() for cell in cells):
        return None
    if digest.layout is None:
        digest.layout = detect_layout(cells, default_campaign=default_campaign)
        if digest.layout.has_header:
            return None
    return parse_line(cells, number, digest.layout, default_campaign, offset)
