"""The audit writer's own promises, in process: its key file, its run ids, a log deleted or
replaced under the run, records held back until a sync, and a torn tail of any length
(issue #25: the audit module's mutation pass)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from structlog.testing import capture_logs

from worker.errors import ConfigError, OutputError
from worker.records.audit import (
    AuditLog,
    default_audit_path,
    last_record,
    new_run_id,
    read_key_file,
)
from worker.records.audit_query import verify


def lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.endswith(b"}")]


def test_a_key_file_is_read_stripped_and_refused_empty_or_missing(tmp_path: Path) -> None:
    assert read_key_file(None) is None
    (tmp_path / "key").write_bytes(b"  secret key\n")
    assert read_key_file(tmp_path / "key") == b"secret key"
    (tmp_path / "empty").write_bytes(b" \n")
    with pytest.raises(ConfigError) as empty:
        read_key_file(tmp_path / "empty")
    assert (str(empty.value), empty.value.key) == (
        f"audit_key_file: {tmp_path / 'empty'} is empty",
        "audit_key_file",
    )
    with pytest.raises(ConfigError) as missing:
        read_key_file(tmp_path / "missing")
    assert str(missing.value) == (
        f"audit_key_file: cannot read {tmp_path / 'missing'}: No such file or directory"
    )


def test_run_ids_sort_by_time_and_name_their_file() -> None:
    first, second = new_run_id(), new_run_id()
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{6}", first)
    assert first[:16] <= second[:16]
    assert first != second
    assert default_audit_path(Path("/a"), first) == Path(f"/a/audit-{first}.jsonl")


def test_a_log_deleted_under_the_run_fails_its_next_sync_and_every_write_after(
    tmp_path: Path,
) -> None:
    log = AuditLog(tmp_path / "a.jsonl", "r1")
    log.write("run_started")
    log.sync()
    log.path.unlink()

    with pytest.raises(OutputError) as lost:
        log.sync()
    assert str(lost.value) == (
        f"cannot write the audit log {log.path}: deleted or replaced during the run (ENOENT)"
    )
    with pytest.raises(OutputError) as again:
        log.write("batch")
    assert again.value is lost.value
    log.close()  # a broken log closes without another error


def test_a_log_replaced_under_the_run_fails_its_next_sync(tmp_path: Path) -> None:
    """Replaced by another file, while a second link keeps the run's own alive."""
    log = AuditLog(tmp_path / "a.jsonl", "r1")
    log.write("run_started")
    os.link(log.path, tmp_path / "kept")
    (tmp_path / "other").write_bytes(b"{}\n")
    os.replace(tmp_path / "other", log.path)

    with pytest.raises(OutputError, match="deleted or replaced during the run"):
        log.sync_later()()


def test_a_log_that_wrote_nothing_leaves_no_file_and_syncs_without_error(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "sub" / "a.jsonl", "r1")
    log.sync()
    log.close()
    assert not (tmp_path / "sub").exists()
    assert not log.written


def test_records_held_back_are_written_at_each_sync_before_it_returns(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a.jsonl", "r1")
    held: list[str] = ["duplicate"]

    def write_held() -> None:
        while held:
            log.write(held.pop(), audience_id=7)

    log.before_sync(write_held)
    log.write("run_started")
    assert [r["event"] for r in lines(log.path)] == ["run_started"]
    durable = log.sync_later()
    assert [r["event"] for r in lines(log.path)] == ["run_started", "duplicate"]
    durable()
    held.append("duplicate")
    log.sync()
    log.close()
    assert [(r["event"], r["seq"]) for r in lines(log.path)] == [
        ("run_started", 0),
        ("duplicate", 1),
        ("duplicate", 2),
    ]


PREFIX = b'{"event": "batch", "ids": "'


@pytest.mark.parametrize(
    ("torn", "before"),
    [(100, 0), (65_535, 0), (70_000, 0), (200_000, 0), (70_000, 2_000)],
    ids=["short", "newline-opens-the-last-64k", "over-64k", "over-128k", "after-records"],
)
def test_a_torn_tail_of_any_length_is_closed_and_the_chain_goes_on_after_it(
    tmp_path: Path, torn: int, before: int
) -> None:
    """The torn line is looked for back from the end, 64 KiB at a time (65,535 bytes: the
    newline before it is the first byte of the last 64 KiB); the warning names its byte."""
    path = tmp_path / "a.jsonl"
    first = AuditLog(path, "r1")
    first.write("run_started")
    for number in range(before):  # 200 KiB of records before the tear
        first.write("batch", ids=[number] * 10)
    first.close()
    at = path.stat().st_size
    with path.open("ab") as handle:
        handle.write((PREFIX + b"9" * torn)[:torn])

    with capture_logs() as logs:
        again = AuditLog(path, "r2")  # a run that tore a record never writes again
        again.write("run_started")
        again.close()

    [warned] = [log for log in logs if log["log_level"] == "warning"]
    assert (warned["torn_at_byte"], warned["continues_after_seq"]) == (at, before)
    raw = path.read_bytes().splitlines()
    assert (len(raw), len(raw[1 + before])) == (3 + before, torn)
    assert [(r["event"], r["seq"]) for r in lines(path)][-1] == ("run_started", before + 1)
    assert verify([path], None)[1] is None


def test_a_file_that_is_one_torn_line_is_continued_on_the_next(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"event": "run_sta')

    with capture_logs() as logs:
        log = AuditLog(path, "r1")
        log.write("run_started")
        log.close()

    assert [log["torn_at_byte"] for log in logs if log["log_level"] == "warning"] == [0]

    assert path.read_bytes().startswith(b'{"event": "run_sta\n{')
    assert [(r["event"], r["seq"]) for r in lines(path)] == [("run_started", 0)]


def test_the_last_record_is_found_behind_lines_that_are_not_records(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    assert last_record(path) is None
    path.write_bytes(b'{"seq": 1}\n{"seq": 2}\n[3]\n{"seq": 4, "tor')
    assert last_record(path) == {"seq": 2}
    path.write_bytes(b"[1]\nnot json\n")
    assert last_record(path) is None


def test_a_file_whose_last_record_has_no_seq_is_continued_from_seq_0_after_its_hash(
    tmp_path: Path,
) -> None:
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"event": "run_started", "hash": "abc"}\n')

    log = AuditLog(path, "r1")
    log.write("batch")
    log.close()

    assert {k: lines(path)[1][k] for k in ("seq", "prev_hash")} == {"seq": 0, "prev_hash": "abc"}


def test_the_writer_imports_no_cryptography_until_a_key_is_given() -> None:
    """signing (and cryptography) are imported only for --sign-key: not by the writer."""
    code = "import sys, worker.records.audit; print('cryptography' in sys.modules)"
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True)
    assert shown.stdout == b"False\n"
