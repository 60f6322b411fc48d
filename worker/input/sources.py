"""Input stage: stream a CSV of audience ids (file or stdin) into validated rows.

The input is never loaded whole: bytes are read in blocks off the event loop and cut into
records, so line numbers are the ones an editor shows and every row knows the byte offset
of its first line. The digest hashes exactly the bytes consumed and keeps marks at block
boundaries, from which a checkpoint takes a verifiable prefix; a resumed run re-reads that
prefix, checks its hash, and drops the rows before the watermark.

What is read, and how:

- A regular file, also stdin redirected from one (``--input - < ids.csv``), is read in a
  worker thread, through the descriptor opened at the start, up to the size it had then: a
  file that grows while the run reads it is read as it was when the run began (the rows
  appended later are not read; run again for them). Its SHA-256 and line count
  (:meth:`ByteSource.survey`) are read through the same descriptor, never by opening the
  path again.
- Anything else (stdin fed by a program, a FIFO, ``<(cmd)``, ``/dev/fd/N``, a character
  device such as ``/dev/null``) is read exactly once, as it streams, and has no size and no
  survey: through the event loop when the kernel can poll it (pipes, sockets, terminals),
  so a stalled producer never pins a thread; in a worker thread when it cannot
  (``/dev/null``: epoll refuses it).
- A directory is refused (InputError).

CSV is read as Python's csv module reads it with its default dialect (RFC 4180): a field
that *starts* with a quote is quoted and may hold commas, doubled quotes and line breaks
(CRLF too); a quote anywhere else, a space before a quote included, is literal text. A
record is one line, or several when a quoted field spans lines; it keeps the number and
byte offset of its first line, and reading only ever resumes at the start of a record, so
an id inside a quoted field of another column is never read as an id.

Records are bounded: one longer than :data:`MAX_RECORD` (1 MiB) is rejected (``line too
long``, or ``record too long`` when it spans lines), hashed as it streams past without
being held; a quoted field still open at the end of the input makes its record rejected
whole. Every rejected record carries the SHA-256 of its bytes
(:func:`~worker.input.validate.record_sha256`); its text is held in memory only, and never
written. The text is UTF-8 (a UTF-8 byte order mark is skipped): an input that starts
with a UTF-16 or UTF-32 byte order mark, or has a NUL byte in its first block, is refused
(InputError, before anything is sent); a later record with a NUL byte is rejected, since
by then batches may have been sent and the run cannot be refused any more.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import selectors
import stat
import sys
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from itertools import accumulate, chain, repeat
from operator import add
from typing import BinaryIO

from worker.errors import InputError, StateError
from worker.input.validate import (
    MAX_RECORD,
    Chunk,
    Layout,
    Rejected,
    Row,
    detect_layout,
    parse_line,
    record_sha256,
    split_cells,
)

BLOCK = 1 << 16
BOM = b"\xef\xbb\xbf"
KEEP_BYTES = 8 << 20
RAW_HEAD = 200  # bytes of a rejected oversized record kept in memory (never written)
SURVEY_BLOCK = 1 << 20

LINE_TOO_LONG = "line too long"
RECORD_TOO_LONG = "record too long"
UNTERMINATED = "quoted field not closed before the end of the input"
NUL_BYTE = "contains a NUL byte"

_WIDE_BOMS = (
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe", "UTF-16"),
    (b"\xfe\xff", "UTF-16"),
)
# One CSV field (quoted, maybe with text after the closing quote; unquoted; or empty) and a
# whole record ending in a newline. Possessive, so a match is the csv module's one parse.
_FIELD = rb'(?:"[^"]*+(?:""[^"]*+)*+"[^,\n]*+|[^,"\n][^,\n]*+)?+'
_RECORD = re.compile(_FIELD + rb"(?:," + _FIELD + rb")*+\n")
_QUOTED_BODY = re.compile(rb'[^"]*+(?:""[^"]*+)*+')
_END_OR_QUOTE = re.compile(rb'\n|(?<=,)"')
_QUOTE, _COMMA, _NEWLINE = ord('"'), ord(","), ord("\n")
_ZERO = ord("0")


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
    open_record: int | None = None  # offset of an oversized record being streamed past
    _hash: hashlib._Hash = field(default_factory=hashlib.sha256)
    _blocks: deque[tuple[int, int, hashlib._Hash, bytes]] = field(default_factory=deque)
    _kept: int = 0

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def safe_offset(self) -> int:
        """Where reading may resume: the start of a record, never inside one."""
        return self.open_record if self.open_record is not None else self.bytes_read

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
    """Reads an input once, in blocks, without blocking the event loop.

    ``size`` is known for a regular file only: it is read in a worker thread with pread
    from ``start`` (stdin may arrive part-read) up to the size it had when it was opened.
    Anything else is a stream read once: through the event loop when the kernel can poll
    it, so a stalled producer never pins a thread that would keep the process from
    exiting; in a worker thread when it cannot (epoll refuses /dev/null).
    """

    def __init__(self, handle: BinaryIO, name: str, *, owned: bool) -> None:
        info = os.fstat(handle.fileno())
        if stat.S_ISDIR(info.st_mode):
            raise InputError(f"input {name} is a directory, not a CSV file")
        self._handle = handle
        self._owned = owned
        self._reader: asyncio.StreamReader | None = None
        self._pushback = b""
        self.name = name
        self.size: int | None = None
        self._start = self._pos = 0
        if stat.S_ISREG(info.st_mode):
            self._start = self._pos = os.lseek(handle.fileno(), 0, os.SEEK_CUR)
            self.size = max(info.st_size - self._start, 0)

    async def start(self) -> None:
        """Attach a pollable stream to the event loop (a regular file needs nothing)."""
        if self.size is None and _pollable(self._handle.fileno()):
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
        if self.size is None:
            return await asyncio.to_thread(os.read, self._handle.fileno(), BLOCK)
        return await self._read_file()

    async def _read_file(self) -> bytes:
        assert self.size is not None
        want = min(BLOCK, self._start + self.size - self._pos)
        if want <= 0:
            return b""
        data = await asyncio.to_thread(os.pread, self._handle.fileno(), want, self._pos)
        self._pos += len(data)
        return data

    def unread(self, data: bytes) -> None:
        self._pushback = data + self._pushback

    async def survey(self) -> tuple[str | None, int | None]:
        """SHA-256 and line count of the bytes a regular file will give, through the open
        descriptor (the path may be a FIFO or replaced since); (None, None) for a stream,
        which can be read only once."""
        if self.size is None:
            return None, None
        return await asyncio.to_thread(
            _survey, self._handle.fileno(), self._start, self._start + self.size
        )

    def close(self) -> None:
        if self._owned:
            self._handle.close()


def _survey(fd: int, start: int, end: int) -> tuple[str, int]:
    digest, lines = hashlib.sha256(), 0
    while start < end and (block := os.pread(fd, min(SURVEY_BLOCK, end - start), start)):
        digest.update(block)
        lines += block.count(b"\n")
        start += len(block)
    return digest.hexdigest(), lines


def _pollable(fd: int) -> bool:
    """Whether the event loop can wait on ``fd``: epoll refuses regular files and some
    devices with EPERM, which asyncio would only report later, from a callback."""
    with selectors.DefaultSelector() as selector:
        try:
            selector.register(fd, selectors.EVENT_READ)
        except (OSError, ValueError):
            return False
    return True


def _open(path: str) -> BinaryIO:
    """The file at ``path`` (a FIFO: once a writer has opened it too)."""
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise InputError(f"input file {path} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"input {path} is a directory, not a CSV file") from None
    except PermissionError:
        raise InputError(f"input file {path} is not readable (permission denied)") from None
    except OSError as exc:
        raise InputError(f"cannot open input file {path}: {exc.strerror}") from None


async def open_input(path: str) -> ByteSource:
    """Open a file path, or stdin for ``-``; errors are InputErrors naming the path."""
    if path == "-":
        if sys.stdin is None:
            raise InputError("input - (stdin) is closed")
        handle, name, owned = sys.stdin.buffer, "<stdin>", False
    else:
        handle, name, owned = _open(path), path, True
    try:
        source = ByteSource(handle, name, owned=owned)
        await source.start()
    except BaseException:
        if owned:
            handle.close()
        raise
    return source


async def skip_prefix(source: ByteSource, digest: InputDigest, prefix: Prefix) -> None:
    """Consume the first ``prefix.size`` bytes, checking they are the ones a checkpoint saw.

    Raises:
        StateError: the input is shorter, or its prefix hashes differently.
    """
    hashed = hashlib.sha256()
    remaining = prefix.size
    last = b"\n"
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
        last = take[-1:]
        if len(take) < len(block):
            source.unread(block[len(take) :])
    if hashed.hexdigest() != prefix.sha256:
        raise StateError(
            f"input {source.name} changed since the state was written (its first "
            f"{prefix.size} bytes differ): re-run with --fresh to start over"
        )
    if last != b"\n" and (ending := await _ending_of_last_line(source)):
        # The newline that ends the finished input's last line belongs to that line (which
        # was counted already): taken here, it does not start an empty one.
        hashed.update(ending)
        prefix = replace(prefix, size=prefix.size + len(ending))
    digest.restart(prefix, hashed)


async def _ending_of_last_line(source: ByteSource) -> bytes:
    """The prefix ends inside a line: the finished input's last line had no newline. Bytes
    after it that do not start with one continue that line (``1\n2`` + ``3\n`` is
    ``1\n23\n``): the row that was sent as ``2`` is now ``23``, a changed row, not an
    added one. (``1\n2`` + ``\n3\n`` ends line 2 as it was, then adds a row.)

    Returns the newline that ends it now, if one was added (taken from ``source``).

    Raises:
        StateError: bytes that continue the last line follow the prefix.
    """
    block = await source.read()
    ending = next((nl for nl in (b"\n", b"\r\n") if block.startswith(nl)), b"")
    source.unread(block[len(ending) :])
    if block and not ending:
        raise StateError(
            f"input {source.name} changed since the state was written: its last line had "
            "no newline at its end, and the bytes added since continue that line (a row "
            "that was sent is now another): re-run with --fresh to start over, or restore "
            "the file and add the rows after a newline"
        )
    return ending


# -- cutting the bytes into records --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Lines:
    """Physical lines without quotes (each a record) from byte ``start``, after line ``line0``."""

    start: int
    line0: int
    lines: list[bytes]


_Raw = tuple[int, int, bytes]  # offset, first line number, bytes without the last newline
_Frame = _Lines | list[_Raw | Rejected]


@dataclass(slots=True)
class _Scan:
    """Where an unfinished record, read in pieces, stands in the CSV grammar, so that the
    next piece is scanned once (not the whole record again) to learn whether it ends."""

    skip: int = 0  # bytes to pass over first: the UTF-8 BOM before the first record
    quoted: bool = False  # inside a quoted field
    quote_last: bool = False  # ... and the last piece ended on a quote (closing or doubled?)
    field_start: bool = True

    def feed(self, data: bytes) -> int:
        """The index just past the newline that ends the record in ``data``, or -1."""
        i, self.skip = self.skip, 0
        if self.quote_last and i < len(data):
            self.quote_last = False
            if data[i] == _QUOTE:
                i += 1
            else:
                self.quoted = self.field_start = False
        while i < len(data):
            if self.quoted:
                i = self._quoted(data, i)
            elif self.field_start and data[i] == _QUOTE:
                self.quoted, i = True, i + 1
            elif (found := _END_OR_QUOTE.search(data, i)) is None:
                self.field_start = data[-1] == _COMMA
                return -1
            elif data[found.start()] == _NEWLINE:
                return found.end()
            else:
                self.quoted, i = True, found.end()
        return -1

    def _quoted(self, data: bytes, i: int) -> int:
        body = _QUOTED_BODY.match(data, i)  # always matches, maybe nothing
        end = body.end() if body else i
        if end >= len(data) - 1:
            self.quote_last = end == len(data) - 1
            return len(data)
        self.quoted = self.field_start = False
        return end + 1

    def open_at_end(self) -> bool:
        """At the end of the input: still inside a quoted field."""
        return self.quoted and not self.quote_last


@dataclass(slots=True)
class _Oversized:
    """A record longer than MAX_RECORD: where it began, its first bytes, how far it came,
    and the SHA-256 of its bytes so far (its ending newline excluded)."""

    offset: int
    line: int
    head: bytes
    scan: _Scan
    newlines: int
    sha256: hashlib._Hash = field(default_factory=hashlib.sha256)

    def rejected(self, *, at_end: bool) -> Rejected:
        if at_end and self.scan.open_at_end():
            reason = UNTERMINATED
        else:
            reason = RECORD_TOO_LONG if self.newlines > (0 if at_end else 1) else LINE_TOO_LONG
        return _rejected(self.line, self.head, reason, self.offset, self.sha256.hexdigest())


def _rejected(
    line: int, raw: bytes, reason: str, offset: int, sha256: str | None = None
) -> Rejected:
    """A record the reader rejects whole, by its bytes (or their head and their digest)."""
    digest = record_sha256(raw) if sha256 is None else sha256
    return Rejected(line, _shown(raw), reason, offset, raw_sha256=digest)


def _shown(raw: bytes) -> str:
    """The text of a rejected record, cut short: held in memory only, never written."""
    text = raw[:RAW_HEAD].decode("utf-8", "replace")
    return text + "…" if len(raw) > RAW_HEAD else text


def _check_opening(data: bytes, name: str) -> None:
    """Refuse an input that is not UTF-8 text, by its first block.

    Raises:
        InputError: a UTF-16 or UTF-32 byte order mark, or a NUL byte.
    """
    for bom, encoding in _WIDE_BOMS:
        if data.startswith(bom):
            raise InputError(
                f"input {name} looks like {encoding} (it starts with a {encoding} byte order "
                "mark): save it as UTF-8"
            )
    if b"\0" in data:
        raise InputError(
            f"input {name} contains NUL bytes: this looks like a binary file (or UTF-16 "
            "without a byte order mark), not a CSV"
        )


class _Framer:
    """Cuts the bytes read into records, consuming them into the digest as they are cut.

    Data without a quote or a NUL byte is split at newlines (the fast path); other data is
    cut record by record. The unfinished record at the end waits, in pieces, for the block
    in which it ends; one already too long is streamed past instead.
    """

    def __init__(self, source: ByteSource, digest: InputDigest) -> None:
        self._source = source
        self._digest = digest
        self._parts: list[bytes] = []  # the unfinished record
        self._size = 0
        self._scan = _Scan()  # ... and where it stands
        self._oversized: _Oversized | None = None

    async def frames(self) -> AsyncIterator[_Frame]:
        opening = self._digest.bytes_read == 0
        while True:
            block = await self._source.read()
            if opening:
                block, opening = await self._first(block), False
            at_end = not block
            if self._oversized is not None:
                done, block = self._pass(block, at_end=at_end)
                if done is None:
                    continue
                yield [done]
            if not at_end and self._scan.feed(block) < 0:
                self._wait(block)
                continue
            frame = self._frame(b"".join([*self._parts, block]), at_end=at_end)
            if frame:
                yield frame
            if at_end:
                return

    async def _first(self, block: bytes) -> bytes:
        """The first block, read on to the length of the longest byte order mark, checked."""
        while block and len(block) < len(_WIDE_BOMS[0][0]):
            more = await self._source.read()
            if not more:
                break
            block += more
        _check_opening(block, self._source.name)
        self._scan.skip = len(BOM) if block.startswith(BOM) else 0
        return block

    def _wait(self, block: bytes) -> None:
        """Keep a piece of the unfinished record; stream past it once it is too long."""
        self._parts.append(block)
        self._size += len(block)
        if self._size > MAX_RECORD:
            self._stream_past()

    def _hold(self, rest: bytes, skip: int) -> None:
        """``rest``, the start of a record, waits for the block where it ends."""
        self._parts, self._size, self._scan = [rest] if rest else [], len(rest), _Scan(skip)
        self._scan.feed(rest)  # -1: no record ends in it

    def _frame(self, data: bytes, *, at_end: bool) -> _Frame | None:
        if len(data) <= MAX_RECORD and b'"' not in data and b"\0" not in data:
            return self._lines(data, at_end=at_end)
        return self._records(data, at_end=at_end)

    def _lines(self, data: bytes, *, at_end: bool) -> _Lines | None:
        cut = len(data) if at_end else data.rfind(b"\n") + 1
        self._hold(data[cut:], self._bom(data) if not cut else 0)
        data = data[:cut]
        if not data:
            return None
        digest = self._digest
        start, line0 = digest.bytes_read, digest.lines
        lines = data.split(b"\n")
        if not at_end:
            lines.pop()  # the empty string after the last newline
        digest.consume(data, len(lines))
        return _Lines(start, line0, lines)

    def _records(self, data: bytes, *, at_end: bool) -> list[_Raw | Rejected]:
        digest = self._digest
        offset, line = digest.bytes_read, digest.lines + 1
        check = len(data) > MAX_RECORD or b"\0" in data
        out: list[_Raw | Rejected] = []
        pos, skip = 0, self._bom(data)
        while (found := _RECORD.match(data, pos + skip)) is not None:
            raw = data[pos : found.end() - 1]
            out.append(_checked(offset + pos, line, raw) if check else (offset + pos, line, raw))
            line += 1 + raw.count(b"\n")
            pos, skip = found.end(), 0
        if at_end and pos < len(data):
            out.append(self._last(data[pos:], offset + pos, line, skip))
            line += 1 + data.count(b"\n", pos)
            pos = len(data)
        if pos:
            digest.consume(data[:pos], line - 1 - digest.lines)
        self._hold(data[pos:], skip)
        if self._size > MAX_RECORD:
            self._stream_past()
        return out

    def _bom(self, data: bytes) -> int:
        """Bytes of the UTF-8 BOM that ``data`` starts with, at the start of the input."""
        return len(BOM) if self._digest.bytes_read == 0 and data.startswith(BOM) else 0

    @staticmethod
    def _last(raw: bytes, offset: int, line: int, skip: int) -> _Raw | Rejected:
        """The last record, without a newline: whole, or cut off inside a quoted field."""
        if _RECORD.fullmatch(raw + b"\n", skip) is None:
            return _rejected(line, raw, UNTERMINATED, offset)
        return _checked(offset, line, raw)

    def _stream_past(self) -> None:
        """Make the unfinished record, already too long, an oversized one read past."""
        digest, parts = self._digest, self._parts
        head = b"".join(parts)[:RAW_HEAD]
        oversized = _Oversized(digest.bytes_read, digest.lines + 1, head, self._scan, 0)
        digest.open_record = digest.bytes_read
        for part in parts:
            newlines = part.count(b"\n")
            oversized.newlines += newlines
            oversized.sha256.update(part)
            digest.consume(part, newlines)
        self._parts, self._size, self._scan = [], 0, _Scan()
        self._oversized = oversized

    def _pass(self, block: bytes, *, at_end: bool) -> tuple[Rejected | None, bytes]:
        """Stream ``block`` past the oversized record: its rejection once it has ended, and
        what follows it in the block."""
        oversized = self._oversized
        assert oversized is not None
        end = oversized.scan.feed(block)
        part = block if end < 0 else block[:end]
        if part:
            newlines = part.count(b"\n")
            oversized.newlines += newlines
            oversized.sha256.update(part if end < 0 else part[:-1])  # not its ending newline
            self._digest.consume(part, newlines)
        if end < 0 and not at_end:
            return None, b""
        self._oversized = self._digest.open_record = None
        return oversized.rejected(at_end=end < 0), block[len(part) :]


def _checked(offset: int, line: int, raw: bytes) -> _Raw | Rejected:
    if len(raw) > MAX_RECORD:
        reason = RECORD_TOO_LONG if b"\n" in raw else LINE_TOO_LONG
        return _rejected(line, raw, reason, offset)
    if b"\0" in raw:
        return _rejected(line, raw, NUL_BYTE, offset)
    return offset, line, raw


# -- records into rows -----------------------------------------------------------------------


class _Rows:
    """Turns records into validated rows, dropping the ones before the watermark."""

    def __init__(
        self,
        digest: InputDigest,
        default_campaign: int | None,
        watermark: int,
        *,
        chunks: bool = False,
    ) -> None:
        self._digest = digest
        self._default = default_campaign
        self._watermark = watermark
        self._chunks = chunks

    def of(self, frame: _Frame) -> Block:
        if not isinstance(frame, _Lines):
            return self._records(frame)
        if self._chunks and frame.start >= self._watermark:
            chunk = _chunk(frame, self._digest.layout, self._default)
            if chunk is not None:
                return chunk
        return self._lines(frame)

    def _lines(self, frame: _Lines) -> list[Row | Rejected]:
        out: list[Row | Rejected] = []
        offset, watermark = frame.start, self._watermark
        fast = _fast_path(self._digest.layout, self._default)
        for number, raw in enumerate(frame.lines, start=frame.line0 + 1):
            here, offset = offset, offset + len(raw) + 1
            if here < watermark:
                continue
            if fast is not None and (row := fast(raw, number, here)) is not None:
                out.append(row)
                continue
            item = self._item(here, number, raw)
            if item is not None:
                out.append(item)
            if fast is None:  # the header may just have been read
                fast = _fast_path(self._digest.layout, self._default)
        return out

    def _records(self, records: list[_Raw | Rejected]) -> list[Row | Rejected]:
        out: list[Row | Rejected] = []
        watermark = self._watermark
        for record in records:
            if isinstance(record, Rejected):
                if record.offset >= watermark:
                    out.append(record)
            elif record[0] >= watermark and (item := self._item(*record)) is not None:
                out.append(item)
        return out

    def _item(self, offset: int, number: int, record: bytes) -> Row | Rejected | None:
        """``record``: the record's bytes as in the input, without the newline ending it."""
        raw = record[len(BOM) :] if offset == 0 and record.startswith(BOM) else record
        line = raw.decode("utf-8", "replace")
        cells = split_cells(line)
        if cells is None:
            return Rejected(number, line, "not valid CSV", offset, None, record_sha256(record))
        if not any(map(str.strip, cells)):
            return None
        digest = self._digest
        if digest.layout is None:
            digest.layout = detect_layout(cells, default_campaign=self._default)
            if digest.layout.has_header:
                return None
        item = parse_line(cells, number, digest.layout, self._default, offset)
        if isinstance(item, Rejected):  # the record's hash, as the reader read it (rare)
            return replace(item, raw_sha256=record_sha256(record))
        return item


_Fast = Callable[[bytes, int, int], Row | None]
Block = list[Row | Rejected] | Chunk


def _shape(layout: Layout | None, default: int | None) -> int | None:
    """The common shape the fast paths take: 1, one column of ids (the campaign given by
    ``--campaign-id``); 2, ``campaign_id,audience_id`` in either order; None for any other."""
    if layout is None:
        return None
    if layout.campaign_col is None and layout.id_col == 0 and default is not None:
        return 1
    return 2 if {layout.campaign_col, layout.id_col} == {0, 1} else None


def _plain_cell(cell: bytes) -> bool:
    """ASCII digits, 1 to 18 of them, without a leading zero: always a valid id, which the
    exact path would parse the same. (:func:`_plain` is the same rule over many cells.)"""
    return cell.isdigit() and cell[0] != _ZERO and len(cell) < 19


def _fast_path(layout: Layout | None, default: int | None) -> _Fast | None:
    """For the common shapes (:func:`_shape`), a parser of a line that is plainly valid
    (:func:`_plain_cell`): a Row, or None to hand the line to the exact path
    (:meth:`_Rows._item`), which decides everything else."""
    shape = _shape(layout, default)
    if shape == 1:
        assert default is not None
        campaign = default

        def one_column(raw: bytes, number: int, offset: int) -> Row | None:
            return Row(number, campaign, int(raw), offset) if _plain_cell(raw) else None

        return one_column
    if shape == 2:
        assert layout is not None
        id_col = layout.id_col

        def two_columns(raw: bytes, number: int, offset: int) -> Row | None:
            cells = raw.split(b",")
            if len(cells) != 2:
                return None
            campaign, audience = cells[1 - id_col], cells[id_col]
            if _plain_cell(campaign) and _plain_cell(audience):
                return Row(number, int(campaign), int(audience), offset)
            return None

        return two_columns
    return None


def _chunk(frame: _Lines, layout: Layout | None, default: int | None) -> Chunk | None:
    """The frame's lines as one Chunk when every one of them is a plainly valid row of one
    campaign in a common shape (see :func:`_fast_path`); None otherwise (the lines then go
    one by one). Every test runs over the whole block at C speed."""
    lines = frame.lines
    shape = _shape(layout, default) if lines else None
    if shape == 1:
        assert default is not None
        if not _plain(lines):
            return None
        campaign, ids = default, list(map(int, lines))
    elif shape == 2:
        assert layout is not None
        parts = list(map(bytes.split, lines, repeat(b",")))
        if set(map(len, parts)) != {2}:
            return None
        cells = list(chain.from_iterable(parts))
        campaigns = cells[1 - layout.id_col :: 2]
        if len(set(campaigns)) != 1 or not _plain(cells):
            return None
        campaign, ids = int(campaigns[0]), list(map(int, cells[layout.id_col :: 2]))
    else:
        return None
    starts = accumulate(map(len, lines), initial=frame.start)
    offsets = list(map(add, starts, range(len(lines))))  # + the newlines before each
    return Chunk(campaign, ids, frame.line0 + 1, offsets)


def _plain(cells: list[bytes]) -> bool:
    """:func:`_plain_cell` for every cell, tested over them all at once."""
    return (
        min(map(len, cells)) > 0
        and max(map(len, cells)) < 19
        and b"".join(cells).isdigit()
        and min(cells)[0] != _ZERO  # digits only: the smallest starts with 0 if any does
    )


async def read_rows(
    source: ByteSource,
    digest: InputDigest,
    *,
    default_campaign: int | None,
    watermark: int = 0,
) -> AsyncIterator[list[Row | Rejected]]:
    """:func:`read_blocks`, each block as a list of rows."""
    blocks = read_blocks(source, digest, default_campaign=default_campaign, watermark=watermark)
    async for block in blocks:
        yield [*block.rows()] if isinstance(block, Chunk) else block


async def read_blocks(
    source: ByteSource,
    digest: InputDigest,
    *,
    default_campaign: int | None,
    watermark: int = 0,
    chunks: bool = False,
) -> AsyncIterator[Block]:
    """Validated rows, one list per block read; a blank record is skipped, every other
    record (a line, or the lines of a quoted field that spans them) yields one item, with
    the number and offset of its first line; records before ``watermark`` (finished by an
    earlier run) are dropped. After each list, :meth:`InputDigest.safe_offset` is where
    reading may resume. With ``chunks``, a block of plain lines of one campaign comes as a
    :class:`Chunk` instead: the same rows, as columns.

    Raises:
        InputError: the input is empty, is not UTF-8 text, or its first line does not tell
            where the ids are (see detect_layout).
    """
    rows = _Rows(digest, default_campaign, watermark, chunks=chunks)
    async for frame in _Framer(source, digest).frames():
        yield rows.of(frame)
    if digest.layout is None:
        raise InputError("the input is empty: no header and no audience ids")


async def start_resume(source: ByteSource, digest: InputDigest, resume: ResumeFrom) -> None:
    """Re-read and check the prefix a checkpoint saw, before anything is sent.

    Raises:
        StateError: the input is not the one the checkpoint saw.
    """
    await skip_prefix(source, digest, resume.prefix)
    digest.layout = resume.layout
