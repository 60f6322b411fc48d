"""CSV as real exports write it: quoted fields that span lines, stray quotes, CRLF, and the
shapes of the public csv-spectrum corpus; records that are too long; what is not UTF-8."""

from __future__ import annotations

import asyncio
import csv
import io
import re
import tempfile
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.errors import InputError
from worker.input import sources
from worker.input.sources import (
    InputDigest,
    Prefix,
    ResumeFrom,
    open_input,
    read_rows,
    start_resume,
)
from worker.input.validate import Layout, Rejected, Row

CAMPAIGN = 42
UNTERMINATED = "quoted field not closed before the end of the input"

CsvFile = Callable[[str | bytes], Path]


@pytest.fixture
def csv_file(tmp_path: Path) -> CsvFile:
    def write(data: str | bytes) -> Path:
        path = tmp_path / "ids.csv"
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return path

    return write


async def read_all(
    path: Path, *, watermark: int = 0, resume: ResumeFrom | None = None
) -> tuple[list[Row | Rejected], InputDigest]:
    source = await open_input(str(path))
    digest = InputDigest()
    try:
        if resume is not None:
            await start_resume(source, digest, resume)
        items = [
            item
            async for block in read_rows(
                source, digest, default_campaign=CAMPAIGN, watermark=watermark
            )
            for item in block
        ]
    finally:
        source.close()
    return items, digest


def ids(items: list[Row | Rejected]) -> list[tuple[int, int]]:
    """(line, audience_id) of every row that would be sent."""
    return [(item.line, item.audience_id) for item in items if isinstance(item, Row)]


# -- the csv-spectrum shapes, an audience_id column in front of each record ------------------

SPECTRUM = {
    "comma_in_quotes": (
        'audience_id,first,last,address,city,zip\n1,John,Doe,120 any st.,"Anytown, WW",08123\n',
        [(2, 1)],
    ),
    "empty": ('audience_id,a,b,c\n1,1,"",""\n2,2,3,4\n', [(2, 1), (3, 2)]),
    "empty_crlf": ('audience_id,a,b,c\r\n1,1,"",""\r\n2,2,3,4\r\n', [(2, 1), (3, 2)]),
    "escaped_quotes": ('audience_id,a,b\n1,1,"ha ""ha"" ha"\n2,3,4\n', [(2, 1), (3, 2)]),
    "json": (
        'audience_id,key,val\n1,1,"{""type"": ""Point"", ""coordinates"": [102.0, 0.5]}"\n',
        [(2, 1)],
    ),
    "newlines": (
        'audience_id,a,b,c\n1,1,2,3\n2,"Once upon \na time",5,6\n3,7,8,9\n',
        [(2, 1), (3, 2), (5, 3)],
    ),
    "newlines_crlf": (
        'audience_id,a,b,c\r\n1,1,2,3\r\n2,"Once upon \r\na time",5,6\r\n3,7,8,9\r\n',
        [(2, 1), (3, 2), (5, 3)],
    ),
    "quotes_and_newlines": (
        'audience_id,a,b\n1,1,"ha \n""ha"" \nha"\n2,3,4\n',
        [(2, 1), (5, 2)],
    ),
    "simple": ("audience_id,a,b,c\n1,1,2,3\n", [(2, 1)]),
    "simple_crlf": ("audience_id,a,b,c\r\n1,1,2,3\r\n", [(2, 1)]),
    "utf8": ("audience_id,a,b,c\n1,1,2,3\n2,4,5,ʤ\n", [(2, 1), (3, 2)]),
    "location_coordinates": (
        "audience_id,Contact Phone Number,Location Coordinates,Cities,Counties\n"
        "1,02095257564,37°36'37.8\"N 121°2'17.9\"W,Modesto,Stanislaus",
        [(2, 1)],
    ),
}


@pytest.mark.parametrize("block", [1, 5, 64, 1 << 16])
@pytest.mark.parametrize("name", sorted(SPECTRUM))
async def test_csv_spectrum_shapes_are_read_whole_with_their_line_numbers(
    csv_file: CsvFile, monkeypatch: pytest.MonkeyPatch, name: str, block: int
) -> None:
    data, expected = SPECTRUM[name]
    monkeypatch.setattr(sources, "BLOCK", block)
    path = csv_file(data)

    items, digest = await read_all(path)

    assert ids(items) == expected
    assert [item for item in items if isinstance(item, Rejected)] == []
    assert [item.offset for item in items] == [
        len(data[: data.index(f"\n{i},")].encode()) + 1 for _, i in expected
    ]
    assert (digest.bytes_read, digest.safe_offset()) == (path.stat().st_size,) * 2


async def test_latin1_text_beside_the_ids_does_not_stop_them(csv_file: CsvFile) -> None:
    """csv-spectrum's location_coordinates.csv is Latin-1: the degree sign is one byte."""
    data = (
        "audience_id,Contact Phone Number,Location Coordinates\n"
        "1,02095257564,37\xb036'37.8\"N 121\xb02'17.9\"W\n2,x,y"
    ).encode("latin-1")

    items, _ = await read_all(csv_file(data))

    assert ids(items) == [(2, 1), (3, 2)]


# -- quotes -----------------------------------------------------------------------------------


async def test_a_stray_quote_inside_a_field_is_text_and_the_rows_after_it_are_read(
    csv_file: CsvFile,
) -> None:
    items, _ = await read_all(csv_file('audience_id,name\n61,O"Brien\n62,Smith\n63,"x"\n'))

    assert ids(items) == [(2, 61), (3, 62), (4, 63)]


async def test_a_quote_after_a_leading_space_is_text_as_in_pythons_csv(csv_file: CsvFile) -> None:
    items, _ = await read_all(csv_file('audience_id,note\n1, "a\n2,b"\n'))

    assert ids(items) == [(2, 1), (3, 2)]


async def test_text_after_a_closing_quote_belongs_to_the_field(csv_file: CsvFile) -> None:
    items, _ = await read_all(csv_file('audience_id,note\n1,"a"b"c\n2,"x"\n'))

    assert ids(items) == [(2, 1), (3, 2)]


async def test_a_quoted_id_cell_may_span_lines_only_to_be_rejected(csv_file: CsvFile) -> None:
    items, _ = await read_all(csv_file('audience_id,note\n"7\n8",x\n9,y\n'))

    assert items == [
        Rejected(2, "7\n8,x", "audience_id not an integer"),
        Row(4, CAMPAIGN, 9),
    ]


async def test_ids_inside_a_multiline_note_are_never_read_whatever_the_block_size(
    csv_file: CsvFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    note = "".join(f"{n},{n}\r\n" for n in range(1000, 1100))
    data = f'audience_id,note\r\n1,"{note}"\r\n2,ok\r\n'
    path = csv_file(data)
    for block in (1, 7, 4096, 1 << 16):
        monkeypatch.setattr(sources, "BLOCK", block)

        items, digest = await read_all(path)

        assert ids(items) == [(2, 1), (103, 2)]
        assert digest.lines == 103


async def test_an_unclosed_quote_at_the_end_is_one_rejected_record_with_no_id_sent(
    csv_file: CsvFile,
) -> None:
    data = 'audience_id,note\n1,ok\n2,"never closed\n3,x\n4,y'

    items, digest = await read_all(csv_file(data))

    assert items == [
        Row(2, CAMPAIGN, 1),
        Rejected(3, '2,"never closed\n3,x\n4,y', UNTERMINATED),
    ]
    assert digest.lines == 5


async def test_reading_stops_only_at_record_boundaries(
    csv_file: CsvFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = 'audience_id,note\n1,"a\nb\nc"\n2,x\n3,"d\r\n\r\ne"\n4,y\n'
    starts = [0, *(data.index(f"\n{i},") + 1 for i in (1, 2, 3, 4)), len(data)]
    monkeypatch.setattr(sources, "BLOCK", 3)
    source = await open_input(str(csv_file(data)))
    digest = InputDigest()
    seen = []
    try:
        async for _ in read_rows(source, digest, default_campaign=CAMPAIGN):
            seen.append(digest.safe_offset())
    finally:
        source.close()

    assert set(seen) <= set(starts)
    assert seen[-1] == len(data)


@pytest.mark.parametrize("record", [1, 2, 3, 4])
async def test_a_resumed_run_restarts_at_a_record_whose_quoted_field_spans_lines(
    csv_file: CsvFile, record: int
) -> None:
    data = 'audience_id,note\n1,"a\n2,b"\n3,x\n4,"c\r\n5,d"\r\n6,y\n'
    path = csv_file(data)
    first, digest = await read_all(path)
    watermark = first[record - 1].offset
    prefix = digest.prefix_before(watermark)
    resume = ResumeFrom(prefix, watermark, Layout(0, None, has_header=True))

    items, _ = await read_all(path, watermark=watermark, resume=resume)

    assert prefix == Prefix(
        watermark, data[:watermark].count("\n"), prefix.sha256
    )  # the prefix ends where the record starts
    assert items == first[record - 1 :]
    assert ids(items) == ids(first)[record - 1 :]


# -- agreement with Python's csv module --------------------------------------------------------


def csv_records(text: str) -> list[tuple[int, list[str], str]]:
    """(first line, cells, text) of each record as Python's csv module reads it."""
    reader = csv.reader(io.StringIO(text, newline=""))
    lines = text.split("\n")
    out, before = [], 0
    for cells in reader:
        out.append((before + 1, cells, "\n".join(lines[before : reader.line_num])))
        before = reader.line_num
    return out


@settings(max_examples=300, deadline=None)
@given(
    body=st.lists(st.sampled_from(["1", "2", "x", " ", ",", '"', '""', "\n", "\r\n"]), max_size=40),
    block=st.sampled_from([1, 2, 3, 7, 1 << 16]),
)
def test_records_are_the_ones_pythons_csv_reads(body: list[str], block: int) -> None:
    text = "id,note\n" + "".join(body) + "\n"
    with tempfile.TemporaryDirectory() as directory, pytest.MonkeyPatch.context() as patch:
        patch.setattr(sources, "BLOCK", block)
        path = Path(directory) / "ids.csv"
        path.write_bytes(text.encode())

        items, _ = asyncio.run(read_all(path))

    records = csv_records(text)
    expected = [
        (line, cells) for line, cells, _ in records[1:] if any(cell.strip() for cell in cells)
    ]
    if items and isinstance(items[-1], Rejected) and items[-1].reason == UNTERMINATED:
        assert items[-1].line == records[-1][0]  # csv returns a partial record
        items = items[:-1]
        expected = [e for e in expected if e[0] < records[-1][0]]
    assert [item.line for item in items] == [line for line, _ in expected]
    for item, (_, cells) in zip(items, expected, strict=True):
        if isinstance(item, Row):
            assert str(item.audience_id) == cells[0].strip()


@settings(max_examples=300, deadline=None)
@given(
    body=st.lists(st.sampled_from(["1", "x", ",", '"', '""', "\n", "\r\n"]), max_size=60),
    block=st.sampled_from([1, 2, 3, 7, 64]),
    cap=st.integers(min_value=1, max_value=12),
)
def test_records_over_the_cap_are_rejected_and_the_others_read_as_csv_reads_them(
    body: list[str], block: int, cap: int
) -> None:
    text = "1\n" + "".join(body) + "\n"
    with tempfile.TemporaryDirectory() as directory, pytest.MonkeyPatch.context() as patch:
        patch.setattr(sources, "BLOCK", block)
        patch.setattr(sources, "MAX_RECORD", cap)
        path = Path(directory) / "ids.csv"
        path.write_bytes(text.encode())

        items, digest = asyncio.run(read_all(path))

    records = csv_records(text)
    got = {item.line: item for item in items}
    assert set(got) <= {line for line, _, _ in records}
    for line, cells, raw in records:
        item = got.get(line)
        if isinstance(item, Rejected) and item.reason == UNTERMINATED:
            assert line == records[-1][0]
        elif len(raw) > cap:
            assert isinstance(item, Rejected), (line, raw)
            assert item.reason == ("record too long" if "\n" in raw else "line too long")
        elif isinstance(item, Row):
            assert str(item.audience_id) == cells[0].strip()
        else:
            assert item is not None or not any(cell.strip() for cell in cells)
    assert (digest.bytes_read, digest.safe_offset()) == (len(text), len(text))


# -- records that are too long -----------------------------------------------------------------


@pytest.fixture
def small_cap(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(sources, "MAX_RECORD", 1000)
    monkeypatch.setattr(sources, "BLOCK", 256)
    return 1000


@pytest.mark.parametrize("quoted", [False, True])
async def test_a_line_over_the_cap_is_rejected_short_and_the_next_ones_are_read(
    csv_file: CsvFile, small_cap: int, quoted: bool
) -> None:
    long = "9" * (small_cap * 7)
    data = (
        f'audience_id,note\n1,a\n2,{long}\n3,"{long}"\n4,b\n'
        if quoted
        else (f"audience_id,note\n1,a\n2,{long}\n3,{long}\n4,b\n")
    )

    items, digest = await read_all(csv_file(data))

    assert ids(items) == [(2, 1), (5, 4)]
    assert [(i.line, i.reason, i.offset) for i in items if isinstance(i, Rejected)] == [
        (3, "line too long", data.index("\n2,") + 1),
        (4, "line too long", data.index("\n3,") + 1),
    ]
    assert all(len(i.raw) <= sources.RAW_HEAD + 1 for i in items if isinstance(i, Rejected))
    assert digest.bytes_read == len(data)


async def test_a_line_just_at_the_cap_is_read(csv_file: CsvFile, small_cap: int) -> None:
    data = f"audience_id,note\n1,{'x' * (small_cap - 2)}\n2,{'x' * (small_cap - 1)}\n3,y\n"

    items, _ = await read_all(csv_file(data))

    assert ids(items) == [(2, 1), (4, 3)]
    assert [(i.line, i.reason) for i in items if isinstance(i, Rejected)] == [(3, "line too long")]


async def test_a_record_over_the_cap_across_lines_is_rejected_with_its_lines(
    csv_file: CsvFile, small_cap: int
) -> None:
    note = "".join(f"{n}\n" for n in range(100_000, 100_000 + small_cap))
    data = f'audience_id,note\n1,"{note}"\n2,ok\n'

    items, digest = await read_all(csv_file(data))

    assert ids(items) == [(small_cap + 3, 2)]
    assert [(i.line, i.reason) for i in items if isinstance(i, Rejected)] == [
        (2, "record too long")
    ]
    assert digest.lines == small_cap + 3


async def test_an_unclosed_quote_over_the_cap_is_rejected_as_unclosed(
    csv_file: CsvFile, small_cap: int
) -> None:
    rest = "".join(f"{n},x\n" for n in range(10, 10 + small_cap))
    data = f'audience_id,note\n1,ok\n2,"open\n{rest}'

    items, digest = await read_all(csv_file(data))

    assert ids(items) == [(2, 1)]
    assert [(i.line, i.reason) for i in items if isinstance(i, Rejected)] == [(3, UNTERMINATED)]
    assert (digest.bytes_read, digest.safe_offset()) == (len(data), len(data))


@pytest.mark.parametrize("block", [1, 2, 3, 4, 5, 7, 11])
async def test_quotes_in_a_record_streamed_past_are_followed_across_every_block_boundary(
    csv_file: CsvFile, monkeypatch: pytest.MonkeyPatch, block: int
) -> None:
    monkeypatch.setattr(sources, "MAX_RECORD", 5)
    monkeypatch.setattr(sources, "BLOCK", block)
    data = 'id,n\n1,"a "" b\n,"" c"\n2,x\n3,"""",y\n4,"\n"\n5,"p\nq"r,"\n"\n6,z\n'

    items, _ = await read_all(csv_file(data))

    assert [(i.line, i.reason) for i in items if isinstance(i, Rejected)] == [
        (2, "record too long"),
        (5, "line too long"),
        (8, "record too long"),
    ]
    assert ids(items) == [(4, 2), (6, 4), (11, 6)]


async def test_a_quoted_field_larger_than_the_csv_modules_default_limit_is_read(
    csv_file: CsvFile,
) -> None:
    data = f'audience_id,note\n1,"{"x" * (200 << 10)}"\n2,ok\n'

    items, _ = await read_all(csv_file(data))

    assert items == [Row(2, CAMPAIGN, 1), Row(3, CAMPAIGN, 2)]


class CountingPattern:
    """A compiled pattern that counts the bytes its ``match`` went through."""

    def __init__(self, pattern: re.Pattern[bytes]) -> None:
        self.pattern = pattern
        self.scanned = 0

    def match(self, data: bytes, pos: int = 0) -> re.Match[bytes] | None:
        found = self.pattern.match(data, pos)
        self.scanned += (found.end() if found else len(data)) - pos
        return found

    def fullmatch(self, data: bytes, pos: int = 0) -> re.Match[bytes] | None:
        return self.pattern.fullmatch(data, pos)


async def test_a_long_quoted_record_in_small_reads_is_scanned_once_not_per_read(
    csv_file: CsvFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    note = "x,123\n" * 40_000
    data = f'audience_id,note\n1,"{note}"\n2,ok\n'
    counting = CountingPattern(sources._RECORD)
    monkeypatch.setattr(sources, "_RECORD", counting)
    monkeypatch.setattr(sources, "BLOCK", 64)

    items, _ = await read_all(csv_file(data))

    assert ids(items) == [(2, 1), (40_003, 2)]
    assert counting.scanned < 2 * len(data)


async def test_a_line_many_times_the_cap_is_streamed_past_not_held(
    csv_file: CsvFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sources, "MAX_RECORD", 64 << 10)
    monkeypatch.setattr(sources, "KEEP_BYTES", 256 << 10)
    size = 32 << 20
    path = csv_file(b"audience_id,note\n1,a\n2," + b"7" * size + b"\n3,b\n")

    tracemalloc.start()
    try:
        items, digest = await read_all(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert ids(items) == [(2, 1), (4, 3)]
    assert [(i.line, i.reason) for i in items if isinstance(i, Rejected)] == [(3, "line too long")]
    assert digest.bytes_read == path.stat().st_size
    assert peak < 4 << 20, f"peak {peak} bytes for a line of {size}"


# -- encodings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "encoding"),
    [
        ("audience_id\n101\n".encode("utf-16"), "UTF-16"),
        (b"\xfe\xff" + "audience_id\n101\n".encode("utf-16-be"), "UTF-16"),
        ("\ufeffaudience_id\n101\n".encode("utf-16-le"), "UTF-16"),
        ("audience_id\n101\n".encode("utf-32"), "UTF-32"),
        ("\ufeffaudience_id\n101\n".encode("utf-32-be"), "UTF-32"),
        (b"\xff\xfe", "UTF-16"),
    ],
)
async def test_utf16_and_utf32_are_refused_with_what_to_do(
    csv_file: CsvFile, data: bytes, encoding: str
) -> None:
    path = csv_file(data)

    with pytest.raises(InputError) as info:
        await read_all(path)

    assert str(info.value) == (
        f"input {path} looks like {encoding} (it starts with a {encoding} byte order mark): "
        "save it as UTF-8"
    )


@pytest.mark.parametrize(
    "data",
    [
        "audience_id\n101\n".encode("utf-16-le"),
        bytes(range(256)) * 4,
        b"audience_id\n101\n\0\n",
        b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR",
    ],
)
async def test_nul_bytes_in_the_first_block_refuse_the_input(
    csv_file: CsvFile, data: bytes
) -> None:
    path = csv_file(data)

    with pytest.raises(InputError) as info:
        await read_all(path)

    assert str(info.value) == (
        f"input {path} contains NUL bytes: this looks like a binary file (or UTF-16 without a "
        "byte order mark), not a CSV"
    )


async def test_a_nul_byte_after_the_first_block_rejects_only_its_record(
    csv_file: CsvFile,
) -> None:
    head = "audience_id,note\n" + "".join(f"{n},x\n" for n in range(1, 20_001))
    data = head.encode() + b"30000,a\0b\n30001,c\n"

    items, _ = await read_all(csv_file(data))

    assert ids(items)[-2:] == [(20_001, 20_000), (20_003, 30_001)]
    assert [(i.line, i.reason) for i in items if isinstance(i, Rejected)] == [
        (20_002, "contains a NUL byte")
    ]


async def test_a_utf8_byte_order_mark_before_a_header_cell_with_a_line_break_is_skipped(
    csv_file: CsvFile,
) -> None:
    """A spreadsheet's wrapped header cell: the quote after the BOM opens the field."""
    items, _ = await read_all(csv_file('\ufeff"audience_id\n",note\n1,x\n2,y\n'))

    assert ids(items) == [(3, 1), (4, 2)]


async def test_a_utf8_byte_order_mark_before_a_quoted_header_is_skipped(
    csv_file: CsvFile,
) -> None:
    items, _ = await read_all(csv_file('\ufeff"audience_id","note"\n"1","a\nb"\n2,c\n'))

    assert ids(items) == [(2, 1), (4, 2)]
