"""``audit verify`` on trails that crashes shaped: what a crash leaves is a warning (exit 0),
what only an edit leaves stays an error (exit 1), and files are put in chain order by their
links, whatever the order they are given in (issue #8, section 7)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from audit_trails import (
    errors_of,
    head_of,
    last_hash,
    lines_of,
    rewrite,
    tear_next_record,
    warnings_of,
    write_run,
)
from structlog.testing import capture_logs

from worker.cli import main
from worker.records.audit_query import check, record_hash

Files = tuple[Path, Path, Path]


@pytest.fixture
def files(tmp_path: Path) -> Files:
    """Three per-run audit files, not written yet: A, B, C."""
    return tmp_path / "audit-a.jsonl", tmp_path / "audit-b.jsonl", tmp_path / "audit-c.jsonl"


def verify_cli(paths: list[Path], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    code = main(["audit", "verify", *map(str, paths)])
    return code, capsys.readouterr().out.splitlines()


# --- a run that ended without run_finished -------------------------------------------------


def test_a_run_killed_and_not_resumed_is_a_warning_and_verify_exits_0(
    files: Files, capsys: pytest.CaptureFixture[str]
) -> None:
    a, _, _ = files
    write_run(a, finish=False)

    code, out = verify_cli([a], capsys)

    assert code == 0
    assert out[0].startswith(
        f"WARNING: {a}:4: run run-a ended without run_finished at seq 3: it crashed or was "
        "killed; the run is still going, or it was not resumed yet"
    )
    assert out[1].startswith("OK with warnings: 1 file(s), 4 records, chain intact")
    assert len(out) == 2


def test_a_crashed_run_inside_an_appended_file_is_a_warning_naming_that_run(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.jsonl"
    write_run(path, "run-a", finish=False)
    write_run(path, "run-b", batches=((107,),))

    assert warnings_of([path]) == [
        (
            path,
            4,
            "run run-a ended without run_finished at seq 3: it crashed or was killed; "
            "a later run continued the chain",
        )
    ]


# --- forks ---------------------------------------------------------------------------------


def crashed_fork(files: Files, *, b_finishes: bool = False, c_finishes: bool = True) -> str:
    """A crashed; B continues A and is killed with deletions recorded; the checkpoint still
    names A, so C continues A too. Returns A's head hash."""
    a, b, c = files
    head = write_run(a, finish=False).head()
    write_run(b, "run-b", batches=((107,), (108,)), finish=b_finishes, previous=head)
    write_run(c, "run-c", batches=((107, 108),), finish=c_finishes, previous=head)
    return str(head["last_hash"])


def test_a_crashed_run_the_next_run_did_not_link_to_is_a_warning_not_a_fork(
    files: Files, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b, c = files
    crashed_fork(files)

    verdict = check([a, b, c])
    code, out = verify_cli([a, b, c], capsys)

    assert verdict.errors == []
    assert [(w.path, w.line) for w in verdict.warnings] == [(a, 4), (b, 3)]
    assert verdict.warnings[1].reason == (
        f"run run-b in {b} ended by a crash at seq 2; run run-c in {c} continued from an "
        f"earlier point ({a}:4 (seq 3))"
    )
    assert (verdict.head_path, verdict.head and verdict.head.hash) == (c, last_hash(c))
    assert code == 0
    assert out[-1].startswith("OK with warnings: 3 file(s), 10 records, chain intact")


def test_a_first_run_killed_before_any_checkpoint_and_a_fresh_one_both_starting_is_a_warning(
    files: Files,
) -> None:
    a, _, c = files
    write_run(a, finish=False)
    write_run(c, "run-c")

    assert warnings_of([c, a]) == [
        (
            a,
            4,
            f"run run-a in {a} ended by a crash at seq 3; run run-c in {c} continued from an "
            "earlier point (the start of a new chain)",
        )
    ]


def test_a_fork_of_two_finished_runs_is_tampering(
    files: Files, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b, c = files
    crashed_fork(files, b_finishes=True)

    code, out = verify_cli([a, b, c], capsys)

    assert code == 1
    assert out[-1].startswith(
        f"TAMPERED: {a}:4: fork: {b} (run run-b) and {c} (run run-c) both continue from "
        f"{a}:4 (seq 3), and neither is a crashed run"
    )


def test_a_fork_whose_crashed_branch_was_continued_is_tampering(
    files: Files, tmp_path: Path
) -> None:
    a, b, c = files
    crashed_fork(files)
    d = tmp_path / "audit-d.jsonl"
    write_run(d, "run-d", batches=(), previous=head_of(b))

    (problem,) = errors_of([a, b, c, d])

    assert (problem.path, problem.line) == (a, 4)
    assert problem.reason.startswith("fork: ")


def test_an_edited_record_in_a_crashed_branch_is_still_tampering(files: Files) -> None:
    a, b, c = files
    crashed_fork(files)
    lines = lines_of(b)
    assert lines[1].count(b"[107]") == 1
    lines[1] = lines[1].replace(b"[107]", b"[109]")
    rewrite(b, lines)

    (problem,) = errors_of([a, b, c])

    assert (problem.path, problem.line) == (b, 2)
    assert "hash does not match" in problem.reason


# --- order ---------------------------------------------------------------------------------


def linear(files: Files) -> None:
    """A crashed, B continued it and crashed, C continued B and finished."""
    a, b, c = files
    write_run(a, finish=False)
    write_run(b, "run-b", batches=((107,),), finish=False, previous=head_of(a))
    write_run(c, "run-c", batches=((108,),), previous=head_of(b))


def test_files_given_newest_first_are_verified_in_chain_order_with_the_newest_head(
    files: Files, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b, c = files
    linear(files)

    verdict = check([c, b, a])
    code, out = verify_cli([c, a, b], capsys)

    assert [end.path for end in verdict.files] == [a, b, c]
    assert verdict.head is not None
    assert (verdict.head_path, verdict.head.hash) == (c, last_hash(c))
    assert code == 0
    assert f"files in chain order: {a}, {b}, {c}" in out
    assert f"head {last_hash(c)[:16]}… ({c}:3, seq 2, run run-c)" in out[-1]


def test_the_newest_files_alone_verify_their_first_continuing_one_not_given(
    files: Files,
) -> None:
    _, b, c = files
    linear(files)

    verdict = check([c, b])

    assert verdict.errors == []
    assert [end.path for end in verdict.files] == [b, c]


def test_two_files_that_both_start_a_chain_are_not_one_trail(
    files: Files, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b, _ = files
    write_run(a)
    write_run(b, "run-b")

    code, out = verify_cli([a, b], capsys)

    assert code == 1
    assert out == [
        f"TAMPERED: {b}:1: {a} starts a new chain, and {b} starts a new chain: both claim to "
        "be first, so the files are not one chain (a file between them is missing, or they "
        "are separate purges or shards: verify each chain on its own)"
    ]


def test_a_missing_file_in_the_middle_of_a_trail_is_reported_naming_it(files: Files) -> None:
    a, b, c = files
    linear(files)

    (problem,) = errors_of([a, c])

    assert (problem.path, problem.line) == (c, 1)
    assert problem.reason.startswith(
        f"{a} starts a new chain, and {c} continues run run-b at seq 1 in {b}, which is not "
        "among the files given: both claim to be first"
    )


# --- torn records: a crash mid-write -------------------------------------------------------


def test_a_record_torn_by_a_crash_mid_write_is_a_warning_at_its_byte(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "audit.jsonl"
    write_run(path, finish=False)
    torn_at = tear_next_record(path, "run-a", keep=40)
    assert not path.read_bytes().endswith(b"\n")

    code, out = verify_cli([path], capsys)

    assert code == 0
    assert f"WARNING: {path}:5: {path} ends with a torn record at byte {torn_at}: a crash " in (
        "\n".join(out)
    )
    assert out[-1].startswith("OK with warnings: 1 file(s), 4 records, chain intact")


def test_resuming_onto_a_torn_record_warns_and_goes_on_from_the_last_complete_record(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.jsonl"
    write_run(path, finish=False)
    torn_at = tear_next_record(path, "run-a", keep=40)
    torn = path.read_bytes()[torn_at:]

    with capture_logs() as logs:
        write_run(path, "run-b", batches=((107,),))

    assert [log for log in logs if log["log_level"] == "warning"] == [
        {
            "event": "the audit log ended with a torn record (a crash mid-write): a newline "
            "now closes it, and the chain continues from the last complete record",
            "log_level": "warning",
            "path": str(path),
            "torn_at_byte": torn_at,
            "continues_after_seq": 3,
        }
    ]
    lines = lines_of(path)
    assert lines[4] == torn + b"\n"
    before, after = orjson.loads(lines[3]), orjson.loads(lines[5])
    assert (after["run_id"], after["seq"], after["prev_hash"]) == ("run-b", 4, before["hash"])
    assert warnings_of([path]) == [
        (
            path,
            4,
            "run run-a ended without run_finished at seq 3: it crashed or was killed; "
            "a later run continued the chain",
        ),
        (
            path,
            5,
            f"torn record at byte {torn_at} (a crash mid-write); the chain continues past "
            "it from the record before it",
        ),
    ]


def test_a_torn_record_the_chain_does_not_continue_past_is_tampering(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_run(path, finish=False)
    tear_next_record(path, "run-a", keep=40)
    write_run(path, "run-b", batches=((107,),))
    lines = lines_of(path)
    del lines[3]  # run-a's last record, right before the torn line
    rewrite(path, lines)

    (problem,) = errors_of([path])

    assert (problem.path, problem.line) == (path, 4)
    assert problem.reason == (
        "not a JSON record (changed or corrupt), and the record after it does not continue "
        "the chain from the one before it"
    )


def test_a_record_cut_in_place_in_the_middle_of_a_run_is_tampering(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_run(path)
    lines = lines_of(path)
    lines[2] = lines[2][:40] + b"\n"
    rewrite(path, lines)

    (problem,) = errors_of([path])

    assert (problem.path, problem.line) == (path, 3)
    assert problem.reason.startswith("not a JSON record (changed or corrupt)")


def test_a_torn_looking_line_inserted_inside_one_run_is_tampering(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_run(path)
    lines = lines_of(path)
    lines.insert(2, lines[2][:40] + b"\n")
    rewrite(path, lines)

    (problem,) = errors_of([path])

    assert (problem.path, problem.line) == (path, 3)
    assert problem.reason.startswith("not a JSON record inside run run-a")


def test_with_a_key_a_crashed_head_run_is_said_to_be_covered_by_no_signature(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.jsonl"
    write_run(path, key=b"auditor-key")
    write_run(path, "run-b", finish=False, key=b"auditor-key")

    ((_, line, reason),) = warnings_of([path], b"auditor-key")

    assert line == 9
    assert reason.endswith("(or its last records were removed) (no signed head covers its records)")


# --- files that hold no record, copies, forged links ---------------------------------------


def test_an_empty_file_of_a_run_killed_before_its_first_record_is_a_warning(
    files: Files,
) -> None:
    a, b, _ = files
    write_run(a)
    b.touch()

    verdict = check([a, b])

    assert verdict.errors == []
    assert [(w.path, w.line, w.reason) for w in verdict.warnings] == [
        (b, 1, f"{b} holds no complete record: a run killed before its first record was written")
    ]
    assert [end.path for end in verdict.files] == [a, b]


def test_the_same_records_in_two_files_are_a_copy_not_a_crash(files: Files) -> None:
    a, b, _ = files
    write_run(a, finish=False)
    b.write_bytes(a.read_bytes())

    (problem,) = errors_of([a, b])

    assert (problem.path, problem.line) == (b, 4)
    assert problem.reason == f"the same record as {a}:4 (seq 3): a chain copied into two files"


def test_a_link_naming_another_seq_than_the_record_it_links_to_is_tampering(
    files: Files,
) -> None:
    a, b, _ = files
    write_run(a)
    write_run(b, "run-b", previous=head_of(a))
    records = [orjson.loads(line) for line in lines_of(b)]
    records[0]["previous"]["last_seq"] = 99
    prev_hash = records[0]["prev_hash"]
    for record in records:  # rebuilt without a key: every hash is right again
        record["prev_hash"] = prev_hash
        record["hash"] = record_hash(record)
        prev_hash = record["hash"]
    rewrite(b, [orjson.dumps(record) + b"\n" for record in records])

    (problem,) = errors_of([a, b])

    assert (problem.path, problem.line) == (b, 1)
    assert (
        problem.reason == f"first record names seq 99, but the record it links to is {a}:5 (seq 4)"
    )
