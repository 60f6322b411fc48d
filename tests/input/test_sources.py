"""Specification of worker.input.sources: ids, layouts, and reading real files and pipes."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.errors import InputError
from worker.input.sources import ByteSource, InputDigest, open_input, read_rows
from worker.input.validate import MAX_ID, Layout, Rejected, Row, detect_layout, parse_id

CAMPAIGN = 42

# -- parse_id -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", 1),
        ("101", 101),
        (" 42 ", 42),
        ("\t7\r", 7),
        ("9223372036854775807", MAX_ID),
        ("abc", "not an integer"),
        ("1.5", "not an integer"),
        ("1e3", "not an integer"),
        ("+5", "not an integer"),
        ("0x10", "not an integer"),
        ("1 2", "not an integer"),
        ("١٢٣", "not an integer"),
        ("-5", "not a positive integer"),
        ("0", "not a positive integer"),
        ("-0", "not a positive integer"),
        ("9223372036854775808", "out of 64-bit range"),
        ("99999999999999999999999", "out of 64-bit range"),
        ("0021", "has leading zeros"),
        (" 007 ", "has leading zeros"),
        ("0000000000000000000000021", "has leading zeros"),
        ("09223372036854775808", "has leading zeros"),
        ("00", "not a positive integer"),
        ("-0021", "not a positive integer"),
        ("-", "not an integer"),
        ("²", "not an integer"),
        ("", "empty value"),
        ("   ", "empty value"),
    ],
)
def test_parse_id(text: str, expected: int | str) -> None:
    assert parse_id(text) == expected


# -- detect_layout --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cells", "default", "expected"),
    [
        (["audience_id"], CAMPAIGN, Layout(0, None, has_header=True)),
        (["id"], CAMPAIGN, Layout(0, None, has_header=True)),
        (["campaign_id", "audience_id"], None, Layout(1, 0, has_header=True)),
        (["audience_id", "campaign_id"], None, Layout(0, 1, has_header=True)),
        (["name", "ID", "Campaign_ID"], None, Layout(1, 2, has_header=True)),
        ([" AUDIENCE_ID ", "mobile_no"], CAMPAIGN, Layout(0, None, has_header=True)),
        (["id", "audience_id"], CAMPAIGN, Layout(1, None, has_header=True)),
        (["\ufeffaudience_id"], CAMPAIGN, Layout(0, None, has_header=True)),
        (["101"], CAMPAIGN, Layout(0, None, has_header=False)),
        ([" 101 "], CAMPAIGN, Layout(0, None, has_header=False)),
    ],
)
def test_detect_layout(cells: list[str], default: int | None, expected: Layout) -> None:
    assert detect_layout(cells, default_campaign=default) == expected


@pytest.mark.parametrize(
    ("cells", "default", "match"),
    [
        (["name", "mobile_no"], CAMPAIGN, "no recognisable id column"),
        (["campaign_id"], CAMPAIGN, "no recognisable id column"),
        (["101", "42"], CAMPAIGN, "2 columns but no header"),
        (["101", "42", "7"], CAMPAIGN, "3 columns but no header"),
        (["audience_id"], None, "no campaign_id column"),
        (["101"], None, "no campaign_id column"),
    ],
)
def test_detect_layout_refuses(cells: list[str], default: int | None, match: str) -> None:
    with pytest.raises(InputError, match=match):
        detect_layout(cells, default_campaign=default)


# -- read_rows on real files ------------------------------------------------------------------


async def read_all(
    path: str | Path, default_campaign: int | None = CAMPAIGN
) -> tuple[list[Row | Rejected], InputDigest]:
    source = await open_input(str(path))
    digest = InputDigest()
    try:
        items = [
            item
            async for block in read_rows(source, digest, default_campaign=default_campaign)
            for item in block
        ]
    finally:
        source.close()
    return items, digest


CsvFile = Callable[[str | bytes], Path]


@pytest.fixture
def csv_file(tmp_path: Path) -> CsvFile:
    def write(data: str | bytes) -> Path:
        path = tmp_path / "ids.csv"
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return path

    return write


async def test_header_and_ids_with_default_campaign(csv_file: CsvFile) -> None:
    items, _ = await read_all(csv_file("audience_id\n101\n102\n"))

    assert items == [Row(2, CAMPAIGN, 101), Row(3, CAMPAIGN, 102)]


async def test_headerless_single_column(csv_file: CsvFile) -> None:
    items, _ = await read_all(csv_file("101\n102\n"))

    assert items == [Row(1, CAMPAIGN, 101), Row(2, CAMPAIGN, 102)]


async def test_campaign_column_is_used_per_row(csv_file: CsvFile) -> None:
    items, _ = await read_all(csv_file("ID,Campaign_ID\n101,7\n102,8\n"), default_campaign=None)

    assert items == [Row(2, 7, 101), Row(3, 8, 102)]


async def test_byte_order_mark_is_ignored(csv_file: CsvFile) -> None:
    items, _ = await read_all(csv_file("\ufeffaudience_id,campaign_id\n101,7\n"))

    assert items == [Row(2, 7, 101)]


async def test_byte_order_mark_before_a_headerless_id(csv_file: CsvFile) -> None:
    items, _ = await read_all(csv_file("\ufeff101\n102\n"))

    assert items == [Row(1, CAMPAIGN, 101), Row(2, CAMPAIGN, 102)]


async def test_crlf_line_ends(csv_file: CsvFile) -> None:
    items, _ = await read_all(csv_file("audience_id,campaign_id\r\n101,7\r\n102,7\r\n"))

    assert items == [Row(2, 7, 101), Row(3, 7, 102)]


async def test_blank_lines_are_skipped_but_counted(csv_file: CsvFile) -> None:
    items, digest = await read_all(csv_file("\n\naudience_id\n\n101\n   \n,\r\n102\n\n"))

    assert (items, digest.lines) == ([Row(5, CAMPAIGN, 101), Row(8, CAMPAIGN, 102)], 9)


async def test_quoted_cells(csv_file: CsvFile) -> None:
    data = '"audience_id","campaign_id"\n"101","7"\n"1,02",7\n'

    items, _ = await read_all(csv_file(data))

    assert items == [Row(2, 7, 101), Rejected(3, "1,02,7", "audience_id not an integer")]


async def test_last_line_without_newline(csv_file: CsvFile) -> None:
    items, digest = await read_all(csv_file("audience_id\n101\n102"))

    assert (items, digest.lines) == ([Row(2, CAMPAIGN, 101), Row(3, CAMPAIGN, 102)], 3)


@pytest.mark.parametrize("data", ["", "\n", "\n  \n\r\n"])
async def test_empty_input_is_refused(csv_file: CsvFile, data: str) -> None:
    with pytest.raises(InputError, match="the input is empty"):
        await read_all(csv_file(data))


@pytest.mark.parametrize("data", ["audience_id\n", "audience_id", "audience_id,campaign_id\r\n\n"])
async def test_header_only_gives_no_rows(csv_file: CsvFile, data: str) -> None:
    items, _ = await read_all(csv_file(data))

    assert items == []


async def test_empty_campaign_cell_falls_back_to_the_default(csv_file: CsvFile) -> None:
    items, _ = await read_all(csv_file("audience_id,campaign_id\n101,\n102, \n103,9\n"))

    assert items == [Row(2, CAMPAIGN, 101), Row(3, CAMPAIGN, 102), Row(4, 9, 103)]


async def test_short_row_falls_back_to_the_default_campaign(csv_file: CsvFile) -> None:
    items, _ = await read_all(csv_file("audience_id,campaign_id\n101\n"))

    assert items == [Row(2, CAMPAIGN, 101)]


async def test_empty_campaign_cell_without_default_is_rejected(csv_file: CsvFile) -> None:
    items, _ = await read_all(csv_file("audience_id,campaign_id\n101,\n"), default_campaign=None)

    assert items == [Rejected(2, "101,", "campaign_id missing and no --campaign-id given")]


async def test_bad_rows_are_rejected_with_their_reason(csv_file: CsvFile) -> None:
    data = "5\nabc\n-5\n0\n1.5\n1e3\n9223372036854775808\n9223372036854775807\n"

    items, _ = await read_all(csv_file(data))

    assert items == [
        Row(1, CAMPAIGN, 5),
        Rejected(2, "abc", "audience_id not an integer"),
        Rejected(3, "-5", "audience_id not a positive integer"),
        Rejected(4, "0", "audience_id not a positive integer"),
        Rejected(5, "1.5", "audience_id not an integer"),
        Rejected(6, "1e3", "audience_id not an integer"),
        Rejected(7, "9223372036854775808", "audience_id out of 64-bit range"),
        Row(8, CAMPAIGN, MAX_ID),
    ]


async def test_bad_campaign_cell_is_rejected(csv_file: CsvFile) -> None:
    items, _ = await read_all(csv_file("audience_id,campaign_id\n101,x\n102,-1\n103,007\n"))

    assert items == [
        Rejected(2, "101,x", "campaign_id not an integer"),
        Rejected(3, "102,-1", "campaign_id not a positive integer"),
        Rejected(4, "103,007", "campaign_id has leading zeros"),
    ]


async def test_ids_with_leading_zeros_are_rejected_not_guessed(csv_file: CsvFile) -> None:
    items, _ = await read_all(csv_file("audience_id\n0021\n02095257564\n21\n"))

    assert items == [
        Rejected(2, "0021", "audience_id has leading zeros"),
        Rejected(3, "02095257564", "audience_id has leading zeros"),
        Row(4, CAMPAIGN, 21),
    ]


async def test_row_without_the_id_cell_is_rejected(csv_file: CsvFile) -> None:
    items, _ = await read_all(csv_file("campaign_id,audience_id\n7\n7,\n"))

    assert items == [
        Rejected(2, "7", "missing audience_id"),
        Rejected(3, "7,", "audience_id empty value"),
    ]


async def test_no_id_column_in_header_is_refused(csv_file: CsvFile) -> None:
    with pytest.raises(InputError, match="no recognisable id column"):
        await read_all(csv_file("mobile_no,status\n+12025550123,1\n"))


async def test_lines_straddling_read_blocks_keep_their_numbers(csv_file: CsvFile) -> None:
    ids = list(range(10**17, 10**17 + 30_000))
    data = "audience_id\r\n" + "".join(f"{i}\r\n" for i in ids)

    items, digest = await read_all(csv_file(data))

    assert items == [Row(n + 2, CAMPAIGN, i) for n, i in enumerate(ids)]
    assert (digest.lines, digest.bytes_read) == (len(ids) + 1, len(data))


async def test_digest_counts_bytes_and_hashes_the_file(csv_file: CsvFile) -> None:
    data = "\ufeffaudience_id\r\n101\n\n102".encode()
    path = csv_file(data)

    _, digest = await read_all(path)

    assert (digest.bytes_read, digest.lines, digest.sha256) == (
        len(data),
        4,
        hashlib.sha256(data).hexdigest(),
    )


async def test_byte_source_of_a_file_knows_its_size_hash_and_line_count(csv_file: CsvFile) -> None:
    data = b"audience_id\r\n101\n\n102\n"
    source = await open_input(str(csv_file(data)))
    try:
        assert (source.size, await source.survey()) == (
            len(data),
            (hashlib.sha256(data).hexdigest(), 4),
        )
    finally:
        source.close()


# -- inputs that cannot be read --------------------------------------------------------------


async def test_missing_file_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.csv"

    with pytest.raises(InputError) as info:
        await open_input(str(path))

    assert str(info.value) == f"input file {path} does not exist"


async def test_directory_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError) as info:
        await open_input(str(tmp_path))

    assert str(info.value) == f"input {tmp_path} is a directory, not a CSV file"


async def test_unreadable_file_is_an_input_error(csv_file: CsvFile) -> None:
    path = csv_file("101\n")
    path.chmod(0)
    if os.access(path, os.R_OK):
        pytest.skip("running with privileges that read the file regardless of its mode")

    with pytest.raises(InputError, match="not readable"):
        await open_input(str(path))


# -- stdin fed by a pipe ----------------------------------------------------------------------


async def test_stdin_pipe_is_read_and_hashed_as_it_streams(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ids = list(range(1, 25_001))
    data = ("audience_id\n" + "".join(f"{i}\n" for i in ids)).encode()
    read_end, write_end = os.pipe()

    def produce() -> None:
        with os.fdopen(write_end, "wb") as pipe, contextlib.suppress(BrokenPipeError):
            pipe.write(data)

    producer = threading.Thread(target=produce)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(os.fdopen(read_end, "rb")))
    producer.start()
    try:
        source = await open_input("-")
        assert (source.name, source.size, await source.survey()) == ("<stdin>", None, (None, None))
        items, digest = await read_all_from(source)
    finally:
        sys.stdin.close()
        producer.join()

    assert items == [Row(n + 2, CAMPAIGN, i) for n, i in enumerate(ids)]
    assert (digest.bytes_read, digest.sha256) == (len(data), hashlib.sha256(data).hexdigest())


async def read_all_from(source: ByteSource) -> tuple[list[Row | Rejected], InputDigest]:
    digest = InputDigest()
    items = [
        item
        async for block in read_rows(source, digest, default_campaign=CAMPAIGN)
        for item in block
    ]
    return items, digest


# -- property ----------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    ids=st.lists(st.integers(min_value=1, max_value=MAX_ID), min_size=1, max_size=40),
    newline=st.sampled_from(["\n", "\r\n"]),
    final_newline=st.booleans(),
)
def test_any_ids_one_per_line_come_back_in_order_with_their_line_numbers(
    ids: list[int], newline: str, final_newline: bool
) -> None:
    text = newline.join(map(str, ids)) + (newline if final_newline else "")
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "ids.csv"
        path.write_text(text, encoding="ascii", newline="")

        items, _ = asyncio.run(read_all(path))

    assert items == [Row(n + 1, CAMPAIGN, i) for n, i in enumerate(ids)]


async def test_a_quoted_field_spanning_lines_is_one_record_and_its_lines_are_not_ids(
    csv_file: CsvFile,
) -> None:
    data = 'audience_id,note\n101,"call back\n202,then\n303,close"\n404,"one ""line"""\n505,ok\n'
    path = csv_file(data)

    items, digest = await read_all(path)

    assert items == [Row(2, CAMPAIGN, 101), Row(5, CAMPAIGN, 404), Row(6, CAMPAIGN, 505)]
    assert [i.offset for i in items] == [data.index(f"{i}") for i in (101, 404, 505)]
    assert digest.safe_offset() == digest.bytes_read == path.stat().st_size


async def test_an_unclosed_quoted_field_at_the_end_rejects_its_record_and_every_line_after(
    csv_file: CsvFile,
) -> None:
    path = csv_file('audience_id\n1\n2,"open\n3\n4\n')

    items, digest = await read_all(path)

    assert items == [
        Row(2, CAMPAIGN, 1),
        Rejected(3, '2,"open\n3\n4\n', "quoted field not closed before the end of the input"),
    ]
    assert items[1].offset == len(b"audience_id\n1\n")
    assert (digest.lines, digest.safe_offset()) == (6, path.stat().st_size)
