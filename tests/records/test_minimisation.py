"""Data minimisation (#12): a rejected row is recorded by its line, its id cell (cut to 64
characters) and the SHA-256 of its bytes as they are in the input, never by its text: no
file the tool writes (audit log, report, failed-out CSV, state directory) and nothing it
prints holds the text of a rejected row, in a real run, a dry run and the CLI.

The hashing rule (README, "Rejected rows: what is kept"): the record's bytes exactly as in
the input, from its first byte to the newline that ends it, that newline excluded; a CR
before it, line breaks inside a quoted field and a BOM before line 1 are kept; a last line
without a newline is hashed as it is. ``sed -n 'N,Mp' FILE | head -c -1 | sha256sum``
gives the same digest, which the tests check with the real commands when they are there.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import read_audit
from processes import finish, start

from worker.cli import main
from worker.commands.run import run_purge
from worker.input import sources
from worker.input.sources import InputDigest, open_input, read_rows
from worker.input.validate import Rejected
from worker.records.recorder import ID_CELL_CHARS
from worker.sandbox.runner import SandboxHandle
from worker.settings import Settings

MakeSettings = Callable[..., Settings]

SECRET = "+44 7700 900123 call after 5"
TAIL = "SECRET-TAIL-beyond-64"  # what an oversized id cell holds past its 64th character
LONG_CELL = "A" * ID_CELL_CHARS + TAIL

# (line, bytes of the record as in the file, without its newline). Line 1 is the header.
ROWS: list[tuple[int, bytes]] = [
    (1, b"campaign_id,audience_id,note"),
    (2, b"42,7,fine"),
    (3, f"42,not-an-id,{SECRET}".encode()),  # rejected: the secret in another cell
    (4, f"42,{LONG_CELL},{SECRET}".encode()),  # rejected: an id cell over 64 characters
    (5, f"42,crlf,{SECRET}\r".encode()),  # rejected, in a CRLF line: the CR is hashed
    (6, f'42,"multi\nline",{SECRET}'.encode()),  # rejected: a quoted record on lines 6-7
    (8, b"42,8,fine"),
    (9, f'42,-9,"{SECRET}\nand more on the next line"'.encode()),  # rejected, lines 9-10
    (11, b"42,10,fine"),
]
REJECTED = {3: "not-an-id", 4: "A" * ID_CELL_CHARS, 5: "crlf", 6: "multi\nline", 9: "-9"}
SPANS = {6: 7, 9: 10}  # a record's first line -> its last


def write_input(path: Path) -> Path:
    path.write_bytes(b"".join(record + b"\n" for _, record in ROWS))
    return path


def record_of(line: int) -> bytes:
    return dict(ROWS)[line]


def documented_hash(path: Path, first: int, last: int) -> str:
    """The README's check: ``sed -n 'N,Mp' FILE | head -c -1 | sha256sum``, as Python does
    it (lines N..M of the file, as bytes, without the last newline)."""
    lines = path.read_bytes().split(b"\n")
    return hashlib.sha256(b"\n".join(lines[first - 1 : last])).hexdigest()


def files_holding(root: Path, needles: list[bytes], *, but: set[Path]) -> list[str]:
    """Every file under ``root`` (but the inputs) whose bytes hold one of ``needles``."""
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and path not in but:
            data = path.read_bytes()
            found += [f"{path}: {needle!r}" for needle in needles if needle in data]
    return found


NEEDLES = [SECRET.encode(), b"7700 900123", TAIL.encode(), b"and more on the next line"]


def assert_rejected_records(records: list[dict[str, Any]], path: Path) -> None:
    rejected = [r for r in records if r["event"] == "rejected"]
    assert [r["line"] for r in rejected] == list(REJECTED)
    for record in rejected:
        line = record["line"]
        assert set(record) == {"ts", "event", "run_id", "line", "audience_raw", "raw_sha256"} | {
            "reason"
        }
        assert record["audience_raw"] == REJECTED[line]
        assert record["raw_sha256"] == hashlib.sha256(record_of(line)).hexdigest()
        assert record["raw_sha256"] == documented_hash(path, line, SPANS.get(line, line))
    assert len(rejected[1]["audience_raw"]) == ID_CELL_CHARS


async def test_a_run_writes_and_prints_no_text_of_a_rejected_row(
    sandbox: SandboxHandle,
    make_settings: MakeSettings,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    path = write_input(tmp_path / "ids.csv")
    settings = make_settings(log_level="debug", log_format="json")

    result = await run_purge(settings, str(path), out=sys.stdout)
    assert settings.audit_log is not None
    code = main(["audit", "find", "--line", "4", str(settings.audit_log)])
    summary = main(["audit", "summary", str(settings.audit_log)])
    json_code = main(["audit", "find", "--json", "--line", "9", str(settings.audit_log)])
    printed = capfd.readouterr()

    assert result.exit_code == 0, result.summary()
    assert (result.tally.rejected, result.tally.deleted) == (len(REJECTED), 3)
    assert sandbox.state.receipts[42].received_ids() == [7, 8, 10]
    records = read_audit(settings.audit_log)
    assert_rejected_records(records, path)
    assert settings.report is not None
    assert settings.report.exists()
    assert files_holding(tmp_path, NEEDLES, but={path}) == []
    assert [n for n in NEEDLES if n.decode() in printed.out + printed.err] == []
    # audit find --line N shows the record: its id cell and hash, not the row.
    assert (code, summary, json_code) == (0, 0, 0)
    sha4 = hashlib.sha256(record_of(4)).hexdigest()
    shown = [line for line in printed.out.splitlines() if "  input line 4  " in line]
    assert len(shown) == 1
    assert shown[0].endswith(
        f"rejected  input line 4  reason: audience_id not an integer  "
        f"id cell {'A' * ID_CELL_CHARS!r}  sha256 {sha4}"
    )
    assert "=> input line 4: 1 record" in printed.out
    assert f'"raw_sha256":"{hashlib.sha256(record_of(9)).hexdigest()}"' in printed.out


async def test_a_dry_run_lists_rejected_rows_by_line_reason_and_id_cell_only(
    make_settings: MakeSettings, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    path = write_input(tmp_path / "ids.csv")
    settings = make_settings(dry_run=True, token=None, log_level="debug")
    out = io.StringIO()

    result = await run_purge(settings, str(path), out=out)
    printed = capfd.readouterr()

    assert result.exit_code == 0
    plan = out.getvalue()
    assert [n for n in NEEDLES if n.decode() in plan + printed.out + printed.err] == []
    assert files_holding(tmp_path, NEEDLES, but={path}) == []
    lines = plan.splitlines()
    start_at = lines.index("  rejected: 5 rows (a real run audits each):")
    assert lines[start_at + 1 : start_at + 6] == [
        "    line 3: audience_id not an integer: 'not-an-id'",
        f"    line 4: audience_id not an integer: {'A' * ID_CELL_CHARS!r}",
        "    line 5: audience_id not an integer: 'crlf'",
        "    line 6: audience_id not an integer: 'multi\\nline'",
        "    line 9: audience_id not a positive integer: '-9'",
    ]
    assert settings.audit_log is not None
    assert_rejected_records(read_audit(settings.audit_log), path)


@pytest.mark.slow
async def test_the_cli_writes_and_prints_no_text_of_a_rejected_row(
    sandbox: SandboxHandle, token: str, tmp_path: Path
) -> None:
    path = write_input(tmp_path / "ids.csv")

    def args(name: str, *extra: str) -> list[str]:
        outputs = tmp_path / name
        return [
            "run",
            "--input",
            str(path),
            "--base-url",
            sandbox.url,
            "--rate",
            "1000/second",
            "--audit-log",
            str(outputs / "audit.jsonl"),
            "--report",
            str(outputs / "report.json"),
            "--failed-out",
            str(outputs / "failed.csv"),
            "--state-dir",
            str(outputs / "state"),
            "--progress",
            "log",
            "--log-level",
            "debug",
            *extra,
        ]

    done = await finish(await start(*args("run"), cwd=tmp_path, token=token))
    dry = await finish(await start(*args("dry", "--dry-run"), cwd=tmp_path, token=None))

    assert (done.code, dry.code) == (0, 0), done.err + dry.err
    assert "line 3: audience_id not an integer: 'not-an-id'" in dry.out
    for printed in (done.out, done.err, dry.out, dry.err):
        assert [n for n in NEEDLES if n.decode() in printed] == []
    assert files_holding(tmp_path, NEEDLES, but={path}) == []
    assert (tmp_path / "run" / "report.json").exists()
    for name in ("run", "dry"):
        assert_rejected_records(read_audit(tmp_path / name / "audit.jsonl"), path)


@pytest.mark.skipif(
    shutil.which("sed") is None or shutil.which("sha256sum") is None, reason="no sed/sha256sum"
)
@pytest.mark.parametrize("line", sorted(REJECTED))
def test_the_documented_command_gives_the_recorded_hash(tmp_path: Path, line: int) -> None:
    path = write_input(tmp_path / "ids.csv")
    last = SPANS.get(line, line)

    done = subprocess.run(
        ["sh", "-c", f"sed -n '{line},{last}p' \"$1\" | head -c -1 | sha256sum", "sh", str(path)],
        capture_output=True,
        check=True,
    )

    assert done.stdout.split()[0].decode() == hashlib.sha256(record_of(line)).hexdigest()


# -- every way the reader rejects a record carries the hash of its bytes ------------------


async def rejected_of(path: Path) -> list[Rejected]:
    source = await open_input(str(path))
    try:
        return [
            item
            async for block in read_rows(source, InputDigest(), default_campaign=42)
            for item in block
            if isinstance(item, Rejected)
        ]
    finally:
        source.close()


@pytest.fixture(params=[256, 1 << 16], ids=["blocks-256", "blocks-64k"])
def small_cap(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> int:
    """Records over 1000 bytes are oversized; read in blocks of 256 bytes (an oversized
    record streams past, hashed piece by piece) or of 64 KiB (one followed by more input is
    read whole, one cut off by the end of the input still streams past)."""
    monkeypatch.setattr(sources, "MAX_RECORD", 1000)
    monkeypatch.setattr(sources, "BLOCK", request.param)
    return 1000


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_a_quoted_record_over_several_lines_is_hashed_with_its_inner_line_breaks(
    tmp_path: Path,
) -> None:
    record = b'42,"x\r\ny",note'  # an inner CRLF, kept as it is
    path = tmp_path / "ids.csv"
    path.write_bytes(b"campaign_id,audience_id,note\r\n" + record + b"\r\n42,5,ok\r\n")

    [item] = await rejected_of(path)

    assert (item.line, item.audience_raw) == (2, "x\r\ny")
    assert item.raw_sha256 == sha(record + b"\r")  # the CR of the ending CRLF is the row's
    assert item.raw_sha256 == documented_hash(path, 2, 3)


async def test_a_bom_before_a_rejected_line_1_and_a_last_line_without_newline_are_hashed(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ids.csv"
    path.write_bytes(b"\xef\xbb\xbf-5\n7\n0021")

    items = await rejected_of(path)

    assert [(i.line, i.audience_raw, i.raw_sha256) for i in items] == [
        (1, "-5", sha(b"\xef\xbb\xbf-5")),
        (3, "0021", sha(b"0021")),
    ]


async def test_a_record_that_is_not_valid_csv_is_hashed_as_it_is(tmp_path: Path) -> None:
    record = b'1,a\rb,"q"'  # a lone CR in an unquoted field: the csv module refuses it
    path = tmp_path / "ids.csv"
    path.write_bytes(b"audience_id,note\n" + record + b"\n2,x\n")

    [item] = await rejected_of(path)

    assert (item.line, item.reason, item.raw_sha256) == (2, "not valid CSV", sha(record))


async def test_bytes_that_are_not_utf8_are_hashed_as_they_are(tmp_path: Path) -> None:
    record = b"42,ab\xff\xfe,note"
    path = tmp_path / "ids.csv"
    path.write_bytes(b"campaign_id,audience_id,note\n" + record + b"\n")

    [item] = await rejected_of(path)

    assert item.raw_sha256 == sha(record)
    assert item.raw_sha256 != sha(record.decode("utf-8", "replace").encode())


@pytest.mark.parametrize("quoted", [False, True], ids=["one-line", "quoted-two-lines"])
@pytest.mark.parametrize("at_end", [False, True], ids=["then-more", "last-without-newline"])
async def test_an_oversized_record_is_hashed_whole_as_it_streams_past(
    tmp_path: Path, small_cap: int, quoted: bool, at_end: bool
) -> None:
    body = f"{SECRET} " * (small_cap // 4)
    record = (f'2,"{body}\n{body}",x' if quoted else f"2,{body}").encode()
    path = tmp_path / "ids.csv"
    path.write_bytes(b"audience_id,note\n1,a\n" + record + (b"" if at_end else b"\n3,b\n"))

    [item] = await rejected_of(path)

    assert item.reason == ("record too long" if quoted else "line too long")
    assert (item.line, item.raw_sha256) == (3, sha(record))


async def test_records_cut_off_or_with_a_nul_are_hashed_whole(tmp_path: Path) -> None:
    nul = b"2,ab\0cd"  # after the first block, which may hold no NUL byte at all
    open_quote = b'3,"never closed\nat all'
    path = tmp_path / "ids.csv"
    path.write_bytes(b"audience_id,note\n" + b"1,a\n" * 20_000 + nul + b"\n" + open_quote)

    items = await rejected_of(path)

    assert [(i.line, i.reason, i.raw_sha256) for i in items] == [
        (20_002, "contains a NUL byte", sha(nul)),
        (20_003, "quoted field not closed before the end of the input", sha(open_quote)),
    ]


def test_the_text_of_a_rejected_row_is_not_in_its_repr() -> None:
    item = Rejected(3, f"42,x,{SECRET}", "audience_id not an integer", 0, "x", "ab")

    assert SECRET not in repr(item)
