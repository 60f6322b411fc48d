"""The audit log's hash chain: how records are linked, what ``audit verify`` catches (and
where), what a signed head adds, and what an auditor reads back with ``find`` and ``summary``."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from audit_trails import (
    DELETED_MESSAGE,
    lines_of,
    rewrite,
    warnings_of,
    write_records,
    write_run,
)
from conftest import read_audit, write_csv

from worker.cli import main
from worker.commands.run import run_purge
from worker.exit_codes import ExitCode
from worker.records.audit import AuditLog
from worker.records.audit_query import (
    ZERO_HASH,
    Problem,
    canonical,
    check,
    find,
    record_hash,
    summarize,
    verify,
)
from worker.records.report import RunResult
from worker.settings import Settings
from worker.settings.rate import RateSpec

KEY = b"auditor-key-0123456789"


def rehash(records: list[dict[str, Any]]) -> None:
    """What an attacker without the key can do: relink and rehash every record."""
    prev_hash = records[0]["prev_hash"]
    for record in records:
        record["prev_hash"] = prev_hash
        record["hash"] = record_hash(record)
        prev_hash = record["hash"]


def problem_of(paths: list[Path], key: bytes | None = None) -> Problem:
    _, problem = verify(paths, key)
    assert problem is not None, "verify found nothing wrong"
    return problem


def where(problem: Problem) -> tuple[Path, int]:
    return problem.path, problem.line


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    """A finished run: 5 records (run_started, 3 deleted, run_finished) on lines 1-5."""
    path = tmp_path / "audit.jsonl"
    write_run(path)
    return path


# --- chain structure -------------------------------------------------------------------------


def test_records_are_numbered_from_zero_and_each_links_to_the_previous_hash(
    log_path: Path,
) -> None:
    records = read_audit(log_path, chain=True)

    assert [r["seq"] for r in records] == [0, 1, 2, 3, 4]
    assert records[0]["prev_hash"] == ZERO_HASH == "0" * 64
    for before, record in itertools.pairwise(records):
        assert record["prev_hash"] == before["hash"]
    assert records[2] == {
        "ts": records[2]["ts"],
        "event": "deleted",
        "run_id": "run-a",
        "campaign_id": 42,
        "batch_id": "batch-1",
        "audience_ids": [104, 105],
        "http_status": 200,
        "message": DELETED_MESSAGE,
        "seq": 2,
        "prev_hash": records[1]["hash"],
        "hash": records[2]["hash"],
    }


def test_each_hash_is_the_sha256_of_the_sorted_compact_json_without_hash(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, "run-a")
    log.write(
        "rejected",
        line=3,
        audience_raw="abc",
        raw_sha256=hashlib.sha256(b"abc").hexdigest(),
        reason="audience_id not an integer",
    )
    log.write("duplicates", campaign_id=42, lines=[4, 9], audience_ids=[7, 7])
    log.close()

    records = read_audit(path, chain=True)
    assert len(records) == 2
    for record in records:
        body = {key: value for key, value in record.items() if key != "hash"}
        independent = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        assert canonical(record) == independent
        assert record["hash"] == hashlib.sha256(independent).hexdigest()


def test_values_json_has_no_type_for_are_hashed_as_they_are_written(tmp_path: Path) -> None:
    """The hash covers the line as a reader parses it back, whatever the writer was given:
    tuples, paths, enums, big ints, nested dicts in any order, a dataclass (its fields as a
    dict, sorted like any dict), non-ASCII text."""
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, "run-a")
    log.write(
        "mixed",
        ids=(3, 2, 1),
        where=tmp_path / "ids.csv",
        code=ExitCode.FAILED,
        big=2**64 - 1,
        nested={"z": {"b": 1, "a": [1.5, None]}, "a": "é ✓"},
        spec=RateSpec(100, 60.0),
    )
    log.close()

    (record,) = read_audit(path, chain=True)
    assert record["hash"] == record_hash(record)
    assert record["spec"] == {"requests": 100, "period": 60.0}
    assert check([path]).errors == []


# --- continuing and resuming -----------------------------------------------------------------


def test_a_second_writer_on_the_same_file_continues_its_seq_and_hashes(log_path: Path) -> None:
    first = read_audit(log_path, chain=True)

    write_run(log_path, "run-b", batches=((107,),))

    records = read_audit(log_path, chain=True)
    assert records[:5] == first
    assert [r["seq"] for r in records] == list(range(8))
    assert records[5]["run_id"] == "run-b"
    assert records[5]["prev_hash"] == first[-1]["hash"]
    assert "previous" not in records[5]
    ends, problem = verify([log_path])
    assert problem is None
    assert [(e.records, e.last_seq, e.last_hash) for e in ends] == [(8, 7, records[-1]["hash"])]


def test_a_resumed_file_starts_at_seq_zero_from_the_previous_files_head(tmp_path: Path) -> None:
    first_path, second_path = tmp_path / "audit-1.jsonl", tmp_path / "audit-2.jsonl"
    head = write_run(first_path, finish=False).head()

    write_run(second_path, "run-b", batches=((107,),), previous=head)

    first, second = read_audit(first_path, chain=True), read_audit(second_path, chain=True)
    assert head == {
        "audit_log": str(first_path),
        "run_id": "run-a",
        "last_seq": 3,
        "last_hash": first[-1]["hash"],
    }
    assert [r["seq"] for r in second] == [0, 1, 2]
    assert second[0]["prev_hash"] == first[-1]["hash"]
    assert second[0]["previous"] == head
    assert ["previous" in r for r in second] == [True, False, False]


def test_a_crashed_file_continued_by_a_resumed_one_verifies(tmp_path: Path) -> None:
    first_path, second_path = tmp_path / "audit-1.jsonl", tmp_path / "audit-2.jsonl"
    head = write_run(first_path, finish=False).head()
    write_run(second_path, "run-b", batches=((107,),), previous=head)

    ends, problem = verify([first_path, second_path])

    assert problem is None
    assert [(e.path, e.records, e.finished) for e in ends] == [
        (first_path, 4, False),
        (second_path, 3, True),
    ]


def test_a_crashed_file_verified_alone_is_a_warning_naming_the_run_and_its_last_seq(
    tmp_path: Path,
) -> None:
    first_path, second_path = tmp_path / "audit-1.jsonl", tmp_path / "audit-2.jsonl"
    head = write_run(first_path, finish=False).head()
    write_run(second_path, "run-b", batches=((107,),), previous=head)

    warnings = warnings_of([first_path])

    assert [(path, line) for path, line, _ in warnings] == [(first_path, 4)]
    assert warnings[0][2].startswith("run run-a ended without run_finished at seq 3: it crashed")


def test_a_resumed_files_predecessor_that_lost_its_tail_is_detected(tmp_path: Path) -> None:
    first_path, second_path = tmp_path / "audit-1.jsonl", tmp_path / "audit-2.jsonl"
    head = write_run(first_path, finish=False).head()
    write_run(second_path, "run-b", batches=((107,),), previous=head)

    rewrite(first_path, lines_of(first_path)[:-1])

    problem = problem_of([first_path, second_path])
    assert where(problem) == (first_path, 3)
    assert f"chain continued by {second_path} does not end here" in problem.reason


# --- what verify detects ---------------------------------------------------------------------


def test_an_intact_chain_has_no_problem(log_path: Path) -> None:
    ends, problem = verify([log_path])

    assert problem is None
    assert [(e.records, e.last_seq, e.finished, e.signed) for e in ends] == [(5, 4, True, 0)]


def test_a_changed_digit_inside_a_record_is_detected_on_its_line(log_path: Path) -> None:
    lines = lines_of(log_path)
    # Inside the id array: the random run id or timestamp may hold "104" too.
    assert lines[2].count(b"[104,") == 1
    lines[2] = lines[2].replace(b"[104,", b"[194,")
    rewrite(log_path, lines)

    problem = problem_of([log_path])

    assert where(problem) == (log_path, 3)
    assert "hash does not match the record's content" in problem.reason


def test_a_record_deleted_from_the_middle_is_detected_where_it_was(log_path: Path) -> None:
    lines = lines_of(log_path)
    del lines[2]
    rewrite(log_path, lines)

    problem = problem_of([log_path])

    assert where(problem) == (log_path, 3)
    assert problem.reason.startswith("seq is 3, expected 2")


def test_an_inserted_copy_of_a_record_is_detected_on_its_line(log_path: Path) -> None:
    lines = lines_of(log_path)
    lines.insert(3, lines[1])
    rewrite(log_path, lines)

    problem = problem_of([log_path])

    assert where(problem) == (log_path, 4)
    assert problem.reason.startswith("seq is 1, expected 3")


def test_two_swapped_records_are_detected_at_the_first_of_them(log_path: Path) -> None:
    lines = lines_of(log_path)
    lines[1], lines[2] = lines[2], lines[1]
    rewrite(log_path, lines)

    problem = problem_of([log_path])

    assert where(problem) == (log_path, 2)
    assert problem.reason.startswith("seq is 2, expected 1")


def test_a_removed_last_record_looks_like_a_crash_a_warning_on_the_new_last_line(
    log_path: Path,
) -> None:
    """A truncated tail and a run killed before run_finished leave the same file."""
    rewrite(log_path, lines_of(log_path)[:-1])

    warnings = warnings_of([log_path])

    assert [(path, line) for path, line, _ in warnings] == [(log_path, 4)]
    assert "ended without run_finished at seq 3" in warnings[0][2]
    assert "or its last records were removed" in warnings[0][2]


def test_a_partially_written_last_line_is_a_warning_naming_its_byte(log_path: Path) -> None:
    lines = lines_of(log_path)
    torn_at = sum(map(len, lines[:-1]))
    lines[-1] = lines[-1][: len(lines[-1]) // 2]
    rewrite(log_path, lines)

    warnings = warnings_of([log_path])

    assert (
        log_path,
        5,
        f"{log_path} ends with a torn record at byte {torn_at}: a crash mid-write; "
        "the records before it verify",
    ) in warnings


def test_a_non_json_line_is_reported_on_its_line(log_path: Path) -> None:
    lines = lines_of(log_path)
    lines[1] = b"this is not json\n"
    rewrite(log_path, lines)

    problem = problem_of([log_path])

    assert where(problem) == (log_path, 2)
    assert "not a JSON record" in problem.reason


def test_records_written_after_a_torn_last_line_stay_readable(tmp_path: Path) -> None:
    """A crash mid-write leaves a line without its newline; the next run appends after it."""
    path = tmp_path / "audit.jsonl"
    write_run(path, finish=False)
    lines = lines_of(path)
    rewrite(path, [*lines, lines[-1][:40]])

    write_run(path, "run-b", batches=((107,),))

    run_b = [line for line in path.read_bytes().splitlines() if b'"run-b"' in line]
    assert [orjson.loads(line)["event"] for line in run_b] == [
        "run_started",
        "deleted",
        "run_finished",
    ]


# --- signed chain heads ----------------------------------------------------------------------


def test_run_finished_carries_an_hmac_of_itself_and_so_of_the_chain_head(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.jsonl"
    write_run(path, key=KEY)

    records = read_audit(path, chain=True)
    finished = records[-1]
    body = {k: v for k, v in finished.items() if k not in ("hash", "head_hmac")}
    signed = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    expected = hmac.new(KEY, signed, hashlib.sha256).hexdigest()
    assert finished["prev_hash"] == records[-2]["hash"]
    assert finished["event"] == "run_finished"
    assert finished["head_hmac"] == expected
    assert ["head_hmac" in r for r in records] == [False, False, False, False, True]


def test_a_signed_chain_verifies_with_the_right_key(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_run(path, key=KEY)

    ends, problem = verify([path], KEY)

    assert problem is None
    assert [(e.records, e.signed) for e in ends] == [(5, 1)]


def test_a_signed_chain_fails_with_a_wrong_key_naming_head_hmac(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_run(path, key=KEY)

    problem = problem_of([path], b"not-the-key")

    assert where(problem) == (path, 5)
    assert "head_hmac does not match" in problem.reason


def test_a_rebuilt_chain_passes_without_the_key_but_fails_with_it(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_run(path, key=KEY)
    records = read_audit(path, chain=True)
    records[2]["audience_ids"] = [104, 105, 999]
    rehash(records)
    write_records(path, records)

    _, unkeyed = verify([path])
    assert unkeyed is None
    problem = problem_of([path], KEY)
    assert where(problem) == (path, 5)
    assert "head_hmac does not match" in problem.reason


def test_a_rebuilt_chain_stripped_of_its_signature_fails_with_the_key(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_run(path, key=KEY)
    records = read_audit(path, chain=True)
    records[2]["audience_ids"] = [104, 105, 999]
    del records[-1]["head_hmac"]
    rehash(records)
    write_records(path, records)

    problem = problem_of([path], KEY)

    assert problem.path == path
    assert "head_hmac" in problem.reason


def test_an_edited_signed_run_finished_fails_with_the_key(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_run(path, key=KEY)
    records = read_audit(path, chain=True)
    records[-1]["exit_code"] = 3
    rehash(records)
    write_records(path, records)

    problem = problem_of([path], KEY)

    assert where(problem) == (path, 5)


# --- a real purge, read back -----------------------------------------------------------------

PurgeRun = tuple[Path, Path, RunResult]


@pytest.fixture
async def purge(make_settings: Callable[..., Settings], tmp_path: Path) -> PurgeRun:
    """Ids 5, 6, 7 of campaign 42 deleted; "-5" rejected (line 4); 6 repeated (line 5)."""
    ids = write_csv(tmp_path / "ids.csv", ["audience_id", "5", "6", "-5", "6", "7"])
    settings = make_settings(campaign_id=42)
    result = await run_purge(settings, str(ids))
    assert result.exit_code == 0
    assert settings.audit_log is not None
    return settings.audit_log, ids, result


def test_a_real_purge_leaves_a_chain_that_verifies(purge: PurgeRun) -> None:
    path, _, _ = purge

    ends, problem = verify([path])

    assert problem is None
    assert [(e.records, e.finished) for e in ends] == [(len(read_audit(path)), True)]


def test_find_returns_the_deleted_record_of_an_id(purge: PurgeRun) -> None:
    path, _, result = purge
    records = read_audit(path, chain=True)

    hits = list(find([path], 5))

    assert [r["event"] for _, _, r in hits] == ["sending", "deleted"]
    assert hits[0][2]["batch_id"] == hits[1][2]["batch_id"]
    hit_path, line, record = hits[1]
    assert (hit_path, record) == (path, records[line - 1])
    assert record["event"] == "deleted"
    assert record["run_id"] == result.run_id
    assert (record["campaign_id"], record["http_status"]) == (42, 200)
    assert 5 in record["audience_ids"]


def test_find_returns_both_the_duplicate_and_the_deleted_record_of_a_repeated_id(
    purge: PurgeRun,
) -> None:
    path, _, result = purge
    records = read_audit(path, chain=True)

    hits = list(find([path], 6))

    by_event = {record["event"]: (line, record) for _, line, record in hits}
    assert sorted(by_event) == ["deleted", "duplicate", "sending"]
    assert len(hits) == 3
    for event in ("sending", "deleted"):
        line, record = by_event[event]
        assert record == records[line - 1]
    assert 6 in by_event["deleted"][1]["audience_ids"]
    # The row, out of the ``duplicates`` record that holds it, as a per-row record.
    line, duplicate = by_event["duplicate"]
    holder = records[line - 1]
    assert (holder["event"], holder["lines"], holder["audience_ids"]) == ("duplicates", [5], [6])
    assert duplicate == {
        "ts": holder["ts"],
        "event": "duplicate",
        "run_id": result.run_id,
        "line": 5,
        "campaign_id": 42,
        "audience_id": 6,
        "seq": holder["seq"],
        "prev_hash": holder["prev_hash"],
        "hash": holder["hash"],
    }


def test_find_matches_a_rejected_row_by_its_id_cell(purge: PurgeRun) -> None:
    path, _, result = purge

    hits = list(find([path], -5))

    assert [{k: v for k, v in r.items() if k not in CHAIN} for _, _, r in hits] == [
        {
            "event": "rejected",
            "run_id": result.run_id,
            "line": 4,
            "audience_raw": "-5",
            "raw_sha256": hashlib.sha256(b"-5").hexdigest(),
            "reason": "audience_id not a positive integer",
        }
    ]


CHAIN = ("ts", "seq", "prev_hash", "hash")


@pytest.mark.parametrize("absent", [4, 42, 10_000])
def test_find_yields_nothing_for_an_id_never_in_the_input(purge: PurgeRun, absent: int) -> None:
    path, _, _ = purge

    assert list(find([path], absent)) == []


async def test_find_with_a_campaign_id_leaves_out_other_campaigns_records(
    purge: PurgeRun, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    path, _, _ = purge
    other = write_csv(tmp_path / "other.csv", ["audience_id", "6"])
    await run_purge(make_settings(campaign_id=77, state_dir=tmp_path / "other-state"), str(other))

    every = {(r["event"], r.get("campaign_id")) for _, _, r in find([path], 6)}
    in_42 = {(r["event"], r["campaign_id"]) for _, _, r in find([path], 6, campaign_id=42)}
    in_77 = {r["campaign_id"] for _, _, r in find([path], 6, campaign_id=77)}

    assert {campaign for _, campaign in every} == {42, 77}
    assert in_42 == {("sending", 42), ("deleted", 42), ("duplicate", 42)}
    assert in_77 == {77}


def test_summary_counts_events_deleted_ids_per_campaign_and_the_run(purge: PurgeRun) -> None:
    path, ids, result = purge
    records = read_audit(path)

    summary = summarize([path])

    assert summary["events"] == {
        "deleted": 1,
        "duplicate": 1,
        "rejected": 1,
        "run_finished": 1,
        "run_started": 1,
        "sending": 1,
    }
    assert summary["campaigns"] == {"42": {"deleted_ids": 3, "duplicate": 1, "sending_ids": 3}}
    assert summary["runs"] == [
        {
            "run_id": result.run_id,
            "started": records[0]["ts"],
            "command": "run",
            "input": str(ids),
            "finished": records[-1]["ts"],
            "exit_code": 0,
            "interrupted": False,
        }
    ]


# --- the audit commands ----------------------------------------------------------------------


def test_cli_verify_of_an_intact_log_exits_0_with_an_ok_line(
    log_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["audit", "verify", str(log_path)])

    out = capsys.readouterr().out
    assert code == 0
    assert out.splitlines()[0].startswith("OK: 1 file(s), 5 records, chain intact")


def test_cli_verify_of_a_tampered_log_exits_1_naming_file_and_line(
    log_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = lines_of(log_path)
    lines[2] = lines[2].replace(b"[104,", b"[194,")
    rewrite(log_path, lines)

    code = main(["audit", "verify", str(log_path)])

    out = capsys.readouterr().out
    assert code == 1
    assert f"TAMPERED: {log_path}:3: hash does not match" in out


def test_cli_verify_of_a_missing_file_exits_2_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.jsonl"

    code = main(["audit", "verify", str(missing)])

    captured = capsys.readouterr()
    assert code == 2
    assert f"audit file {missing} does not exist" in captured.err
    assert "Traceback" not in captured.err + captured.out


def test_cli_find_of_a_deleted_id_exits_0_saying_it_was_erased(
    log_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["audit", "find", "104", str(log_path)])

    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[0].startswith(f"{log_path}:3  ")
    assert re.fullmatch(
        rf"=> audience id 104 was erased: \S+ in run run-a \(HTTP 200, '{DELETED_MESSAGE}'\)",
        out[-1],
    )


def test_cli_find_of_an_absent_id_exits_1(
    log_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["audit", "find", "107", str(log_path)])

    assert code == 1
    assert capsys.readouterr().out == "=> audience id 107 appears in no audit record\n"


def test_cli_summary_json_prints_events_campaigns_and_runs(
    log_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["audit", "summary", str(log_path), "--json"])

    data = json.loads(capsys.readouterr().out)
    assert code == 0
    assert data["events"] == {"deleted": 3, "run_finished": 1, "run_started": 1}
    assert data["campaigns"] == {"42": {"deleted_ids": 6}}
    assert [(r["run_id"], r["exit_code"]) for r in data["runs"]] == [("run-a", 0)]


def test_cli_verify_with_an_empty_key_file_exits_2(
    log_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = tmp_path / "audit.key"
    key_file.write_bytes(b"\n")

    code = main(["audit", "verify", str(log_path), "--audit-key-file", str(key_file)])

    assert code == 2
    assert f"{key_file} is empty" in capsys.readouterr().err


def test_find_matches_a_rejected_row_by_its_id_cell_not_by_its_campaign(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, "run-1")  # records as older logs had them, with the row's text
    log.write("rejected", line=3, raw="42,abc", audience_raw="abc", reason="not an integer")
    log.write("rejected", line=4, raw="42,-7", audience_raw="-7", reason="not positive")
    log.close()

    assert list(find([path], 42)) == []
    assert [r["line"] for _, _, r in find([path], 7)] == []
    assert [r["line"] for _, _, r in find([path], -7)] == [4]


# --- a record changed and re-hashed alone --------------------------------------------------


def rehashed_alone(path: Path, index: int, change: Callable[[dict[str, Any]], None]) -> None:
    """Record ``index`` changed and given a valid hash of its own; nothing else touched."""
    records = [orjson.loads(line) for line in lines_of(path)]
    change(records[index])
    records[index]["hash"] = record_hash(records[index])
    write_records(path, records)


def test_a_deleted_record_changed_and_rehashed_alone_is_caught_by_the_next_line(
    purge: PurgeRun,
) -> None:
    """Its own hash is valid: only the next record's prev_hash, which still names the old
    hash, tells. An id never sent, claimed as erased, is tampering."""
    path, _, _ = purge
    records = read_audit(path)
    index = next(n for n, r in enumerate(records) if r["event"] == "deleted")
    assert index < len(records) - 1

    rehashed_alone(path, index, lambda r: r["audience_ids"].append(424242))

    problem = problem_of([path])
    assert where(problem) == (path, index + 2)
    assert "prev_hash does not match the previous record" in problem.reason


def test_any_record_changed_and_rehashed_alone_is_caught_by_the_next_line(
    purge: PurgeRun,
) -> None:
    path, _, _ = purge
    original = path.read_bytes()
    events = [r["event"] for r in read_audit(path)]

    for index, event in enumerate(events[:-1]):
        path.write_bytes(original)
        rehashed_alone(path, index, lambda r: r.update(ts="2020-01-01T00:00:00.000000Z"))

        problem = problem_of([path])
        assert where(problem) == (path, index + 2), event
        assert "prev_hash does not match the previous record" in problem.reason, event
