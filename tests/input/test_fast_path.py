"""The fast path for plain lines (issue #11) gives exactly what the exact path gives: the same
rows, rejections, line numbers and offsets, whatever the lines hold."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.errors import InputError
from worker.input import sources
from worker.input.sources import InputDigest, open_input, read_rows
from worker.input.validate import Rejected, Row

CAMPAIGN = 42

# Cells a fast path could get wrong: plain ids, and what is next to them.
CELLS = st.one_of(
    st.integers(1, 10**18 - 1).map(str),  # plainly valid: taken by the fast path
    st.sampled_from(
        [
            "0",
            "007",
            "-5",
            "+5",
            " 12",
            "12 ",
            "12\r",
            "",
            "abc",
            "1e3",
            "١٢",  # Arabic-Indic digits: str.isdigit says yes, bytes.isdigit no
            "999999999999999999",  # 18 digits
            "1000000000000000000",  # 19 digits, valid
            "9223372036854775807",  # the largest id
            "9223372036854775808",  # one above
            "12345678901234567890",
        ]
    ),
)
LINE = st.one_of(CELLS, st.tuples(CELLS, CELLS).map(",".join), st.just("1,2,3"))


def read(data: bytes) -> list[tuple[object, ...]]:
    async def go() -> list[tuple[object, ...]]:
        with tempfile.TemporaryDirectory() as directory:
            path = Path(directory) / "ids.csv"
            path.write_bytes(data)
            source = await open_input(str(path))
            try:
                rows = read_rows(source, InputDigest(), default_campaign=CAMPAIGN)
                return [described(item) async for block in rows for item in block]
            except InputError as exc:  # no header and no id: the same error both ways
                return [("error", str(exc))]
            finally:
                source.close()

    return asyncio.run(go())


def described(item: Row | Rejected) -> tuple[object, ...]:
    if isinstance(item, Row):
        return ("row", item.line, item.campaign_id, item.audience_id, item.offset)
    return ("rejected", item.line, item.raw, item.reason, item.offset, item.audience_raw)


def both_ways(data: bytes) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    fast = read(data)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sources, "_fast_path", lambda layout, default: None)
        exact = read(data)
    return fast, exact


@pytest.mark.parametrize(
    "header", ["", "audience_id\n", "campaign_id,audience_id\n", "audience_id,campaign_id\n"]
)
@settings(max_examples=60, deadline=None)
@given(lines=st.lists(LINE, min_size=1, max_size=40))
def test_the_fast_path_agrees_with_the_exact_one(header: str, lines: list[str]) -> None:
    if not header and any("," in line for line in lines):
        header = "audience_id,note\n"  # several columns need a header
    data = (header + "\n".join(lines) + "\n").encode()

    fast, exact = both_ways(data)

    assert fast == exact


def test_the_fast_path_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    """The property above is blind if the fast path never runs: count its rows."""
    taken = []
    original = sources._fast_path

    def counting(layout: object, default: int | None) -> object:
        parse = original(layout, default)  # type: ignore[arg-type]
        if parse is None:
            return None

        def spy(raw: bytes, number: int, offset: int) -> Row | None:
            row = parse(raw, number, offset)
            taken.append(row is not None)
            return row

        return spy

    monkeypatch.setattr(sources, "_fast_path", counting)
    rows = read(b"campaign_id,audience_id\n7,1\n7,2\n7,007\n8,3\n")

    assert [r[3] for r in rows if r[0] == "row"] == [1, 2, 3]
    assert taken == [True, True, False, True]
