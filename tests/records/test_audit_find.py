"""``audit find --line N``: every record about one input line (a rejected row, a duplicate
row, grouped or not), of every run; ``find --json`` says where a record stands under
``file`` and ``file_line``, so a record's own ``line`` (the input line) survives; and a
malformed ``duplicates`` record is counted as far as it pairs, with a warning.

Through the real CLI, on audit logs a real run against the sandbox wrote."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import read_audit, write_csv

from worker.cli import main
from worker.commands.run import run_purge
from worker.records import audit_query
from worker.records.audit import AuditLog
from worker.settings import Settings

MakeSettings = Callable[..., Settings]
Capsys = pytest.CaptureFixture[str]

# Two runs into one log. Run 1 (ids.csv): line 3 rejected, lines 5 and 7 repeat lines 2
# and 4. Run 2 (more.csv): line 3 rejected too, line 4 repeats line 2.
FIRST = ["audience_id", "101", "abc", "102", "101", "103", "102"]
SECOND = ["audience_id", "201", "x1", "201", "202"]


@dataclass(frozen=True)
class Purged:
    log: Path
    first: str  # run ids
    second: str

    def records(self) -> list[dict[str, Any]]:
        return read_audit(self.log, chain=True)

    def file_line(self, event: str, run_id: str, n: int = 0) -> int:
        """Where the n-th ``event`` record of a run stands in the log (from 1)."""
        at = [
            number
            for number, r in enumerate(self.records(), start=1)
            if r["event"] == event and r["run_id"] == run_id
        ]
        return at[n]


@pytest.fixture
async def purged(make_settings: MakeSettings, tmp_path: Path) -> Purged:
    runs = []
    for name, lines in (("ids", FIRST), ("more", SECOND)):
        path = write_csv(tmp_path / f"{name}.csv", lines)
        settings = make_settings(campaign_id=42, state_dir=tmp_path / f"state-{name}")
        result = await run_purge(settings, str(path), out=io.StringIO())
        assert (result.exit_code, result.tally.rejected, result.tally.duplicates) == (
            0,
            1,
            2 if name == "ids" else 1,
        )
        runs.append(result.run_id)
    log = tmp_path / "audit.jsonl"
    assert main(["audit", "verify", str(log)]) == 0  # one chain, two runs
    return Purged(log, runs[0], runs[1])


def find(capsys: Capsys, *args: str) -> tuple[int, list[str], str]:
    """Exit code, stdout lines and stderr of ``audit find ARGS``."""
    capsys.readouterr()
    code = main(["audit", "find", *args])
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err


def find_json(capsys: Capsys, *args: str) -> tuple[int, list[dict[str, Any]]]:
    code, out, _ = find(capsys, "--json", *args)
    return code, [json.loads(line) for line in out]


def test_line_finds_the_rejected_row_of_that_line(purged: Purged, capsys: Capsys) -> None:
    at = purged.file_line("rejected", purged.first)
    rejected = purged.records()[at - 1]

    code, out, _ = find(capsys, "--line", "3", str(purged.log))

    assert code == 0
    assert out[0] == (
        f"{purged.log}:{at}  {rejected['ts']}  run {purged.first}  rejected  input line 3  "
        f"reason: {rejected['reason']}  id cell 'abc'  sha256 {rejected['raw_sha256']}"
    )
    assert rejected["audience_raw"] == "abc"
    assert "raw" not in rejected


def test_line_shows_a_rejected_row_of_an_older_log_with_its_text(
    purged: Purged, tmp_path: Path, capsys: Capsys
) -> None:
    old = tmp_path / "old.jsonl"
    log = AuditLog(old, "run-old")  # as logs had them before raw_sha256: the row's text
    log.write("run_started", command="run", input="ids.csv")
    log.write("rejected", line=3, raw="42,abc", audience_raw="abc", reason="not an integer")
    log.write("rejected", line=4, raw="x,y", reason="no audience_raw either")
    log.write("run_finished", exit_code=0, rejected=2)
    log.close()
    written = read_audit(old, chain=True)

    code, out, _ = find(capsys, "--line", "3", str(old))
    _, older, _ = find(capsys, "--line", "4", str(old))
    _, records = find_json(capsys, "--line", "3", str(purged.log), str(old))
    summary = main(["audit", "summary", str(purged.log), str(old)])

    assert code == 0
    assert out[0] == (
        f"{old}:2  {written[1]['ts']}  run run-old  rejected  input line 3  "
        "reason: not an integer  id cell 'abc'  raw '42,abc'"
    )
    assert older[0].endswith("input line 4  reason: no audience_raw either  raw 'x,y'")
    assert [(r["run_id"], "raw" in r, "raw_sha256" in r) for r in records] == [
        (purged.first, False, True),
        (purged.second, False, True),
        ("run-old", True, False),
    ]
    assert {k: v for k, v in records[2].items() if k not in ("file", "file_line")} == written[1]
    assert summary == 0
    assert "  rejected       4" in capsys.readouterr().out.splitlines()


def test_line_finds_the_row_of_a_duplicates_record_as_find_shows_an_id(
    purged: Purged, capsys: Capsys
) -> None:
    at = purged.file_line("duplicates", purged.first)
    holder = purged.records()[at - 1]
    assert (holder["lines"], holder["audience_ids"]) == ([5, 7], [101, 102])

    code, out, _ = find(capsys, "--line", "7", str(purged.log))
    _, by_id, _ = find(capsys, "102", str(purged.log))

    assert code == 0
    row = (
        f"{purged.log}:{at}  {holder['ts']}  run {purged.first}  duplicate  campaign 42  "
        "input line 7"
    )
    assert out == [row, f"=> input line 7: 1 record, of run {purged.first}"]
    assert row in by_id


def test_line_finds_a_per_row_duplicate_record_of_an_older_log(
    purged: Purged, tmp_path: Path, capsys: Capsys
) -> None:
    old = tmp_path / "old.jsonl"
    log = AuditLog(old, "run-old")
    log.write("run_started", command="run", input="ids.csv")
    log.write("duplicate", line=5, campaign_id=42, audience_id=7)
    log.write("duplicate", line=6, campaign_id=42, audience_id=7)
    log.write("run_finished", exit_code=0, duplicates=2)
    log.close()
    written = read_audit(old, chain=True)

    code, records = find_json(capsys, "--line", "5", str(purged.log), str(old))

    assert code == 0
    assert [(r["run_id"], r["event"], r["line"], r["audience_id"]) for r in records] == [
        (purged.first, "duplicate", 5, 101),
        ("run-old", "duplicate", 5, 7),
    ]
    old_hit = records[1]
    assert (old_hit["file"], old_hit["file_line"]) == (str(old), 2)
    assert {k: v for k, v in old_hit.items() if k not in ("file", "file_line")} == written[1]


def test_a_line_number_of_several_runs_finds_each_with_its_run(
    purged: Purged, capsys: Capsys
) -> None:
    code, out, _ = find(capsys, "--line", "3", str(purged.log))
    _, records = find_json(capsys, "--line", "3", str(purged.log))

    assert code == 0
    assert [(r["run_id"], r["event"], r["audience_raw"]) for r in records] == [
        (purged.first, "rejected", "abc"),
        (purged.second, "rejected", "x1"),
    ]
    assert [f"run {purged.first}" in out[0], f"run {purged.second}" in out[1]] == [True, True]
    assert out[2].startswith("=> input line 3: 2 records, of 2 runs (a line number is per input")


def test_a_line_that_was_sent_is_in_no_record_exit_1(purged: Purged, capsys: Capsys) -> None:
    code, out, _ = find(capsys, "--line", "2", str(purged.log))

    assert code == 1
    assert out == [
        "=> input line 2 is in no rejected or duplicate record (a row that was sent leaves no "
        "record of its line: find it by its id)"
    ]
    assert find(capsys, "--line", "99", str(purged.log))[0] == 1


def test_campaign_id_filters_line_hits_as_it_filters_id_hits(
    purged: Purged, capsys: Capsys
) -> None:
    in_42 = find_json(capsys, "--line", "5", "--campaign-id", "42", str(purged.log))
    in_77 = find_json(capsys, "--line", "5", "--campaign-id", "77", str(purged.log))
    # A rejected row has no campaign (it may be its campaign cell that was refused).
    rejected_in_77 = find_json(capsys, "--line", "3", "--campaign-id", "77", str(purged.log))

    assert [(r["event"], r["line"]) for r in in_42[1]] == [("duplicate", 5)]
    assert in_77 == (1, [])
    assert [r["event"] for r in rejected_in_77[1]] == ["rejected", "rejected"]


def test_line_decodes_only_records_that_can_name_an_input_line(
    purged: Purged, capsys: Capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded: list[object] = []
    parse = audit_query.parse_line

    def counting(line: bytes) -> object:
        value = parse(line)
        decoded.append(value)
        return value

    monkeypatch.setattr(audit_query, "parse_line", counting)
    sent = [r for r in purged.records() if r["event"] in ("sending", "deleted")]
    assert all("2" in json.dumps(r) for r in sent)  # the number alone lets them through

    code, _, _ = find(capsys, "--line", "2", str(purged.log))

    assert code == 1
    events = {r["event"] for r in decoded if isinstance(r, dict)}
    # run_started: whether the run signs its heads (which records no signature covers).
    assert events <= {"rejected", "duplicates", "run_finished", "run_started"}, events
    assert "rejected" in events


def test_json_says_where_a_record_stands_in_file_and_file_line_and_keeps_its_line(
    purged: Purged, capsys: Capsys
) -> None:
    records = purged.records()
    rejected_at = purged.file_line("rejected", purged.first)
    holder_at = purged.file_line("duplicates", purged.first)
    deleted_at = purged.file_line("deleted", purged.first)

    _, by_line = find_json(capsys, "--line", "3", str(purged.log))
    _, by_id = find_json(capsys, "101", str(purged.log))

    rejected = by_line[0]
    assert (rejected["file"], rejected["file_line"], rejected["line"]) == (
        str(purged.log),
        rejected_at,
        3,
    )
    assert {k: v for k, v in rejected.items() if k not in ("file", "file_line")} == records[
        rejected_at - 1
    ]
    deleted = next(r for r in by_id if r["event"] == "deleted")
    duplicate = next(r for r in by_id if r["event"] == "duplicate")
    assert (deleted["file_line"], "line" in deleted) == (deleted_at, False)
    assert (duplicate["file_line"], duplicate["line"]) == (holder_at, 5)


def test_an_id_before_the_options_and_files_after_them_still_parses(
    purged: Purged, tmp_path: Path, capsys: Capsys
) -> None:
    copy = tmp_path / "archived.jsonl"
    copy.write_bytes(purged.log.read_bytes())

    code, out, _ = find(capsys, "101", "--campaign-id", "42", str(purged.log))
    # With --line, the first of two files lands where AUDIENCE_ID would.
    two_files = find(capsys, "--line", "7", str(purged.log), str(copy))

    assert code == 0
    assert out[-1].startswith("=> audience id 101 was erased: ")
    assert two_files[0] == 0
    assert [line.split(":")[0] for line in two_files[1][:-1]] == [str(purged.log), str(copy)]


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["101", "--line", "3"], "give AUDIENCE_ID (101) or --line 3, not both"),
        (["--line", "3", "101"], "give AUDIENCE_ID (101) or --line 3, not both"),
        ([], "give an AUDIENCE_ID or --line N, then the audit files"),
        (["--line", "0"], "--line takes an input line number (1 or more), got 0"),
        (["abc"], "AUDIENCE_ID must be an integer, got 'abc'"),
    ],
)
def test_an_id_and_line_both_or_neither_is_a_usage_error_exit_2(
    purged: Purged, capsys: Capsys, args: list[str], said: str
) -> None:
    code, out, err = find(capsys, *args, str(purged.log))

    assert code == 2
    assert out == []
    assert err == f"audience-purge: error: audit find: {said}" + (
        " (a file named 101 is given as ./101)\n" if "not both" in said else "\n"
    )


# -- a malformed ``duplicates`` record ---------------------------------------------------------


@pytest.fixture
def malformed(tmp_path: Path) -> Path:
    """A chain that verifies, holding a ``duplicates`` record with 3 lines but 2 ids."""
    path = tmp_path / "malformed.jsonl"
    log = AuditLog(path, "run-m")
    log.write("run_started", command="run", input="ids.csv")
    log.write("duplicates", campaign_id=42, lines=[4, 9, 11], audience_ids=[7, 8])
    log.write("duplicates", campaign_id=77, lines=[5], audience_ids=[6])
    log.write("run_finished", exit_code=0, duplicates=3)
    log.close()
    return path


def test_summary_warns_of_a_duplicates_record_it_cannot_pair_and_counts_what_pairs(
    malformed: Path, capsys: Capsys
) -> None:
    assert main(["audit", "verify", str(malformed)]) == 0  # verify checks the chain only
    capsys.readouterr()

    code = main(["audit", "summary", str(malformed)])
    out = capsys.readouterr().out.splitlines()
    main(["audit", "summary", "--json", str(malformed)])
    data = json.loads(capsys.readouterr().out)

    reason = (
        "duplicates record with 3 lines but 2 audience_ids: only its first 2 rows are "
        "counted and found"
    )
    assert code == 0
    assert out[0] == f"WARNING: {malformed}:2: {reason}"
    assert out[1] == "events:"
    assert data["warnings"] == [{"file": str(malformed), "line": 2, "reason": reason}]
    assert data["campaigns"] == {"42": {"duplicate": 2}, "77": {"duplicate": 1}}


def test_summary_of_well_formed_records_has_no_warning(purged: Purged, capsys: Capsys) -> None:
    main(["audit", "summary", "--json", str(purged.log)])

    assert json.loads(capsys.readouterr().out)["warnings"] == []


def test_find_pairs_what_a_malformed_duplicates_record_holds(
    malformed: Path, capsys: Capsys
) -> None:
    _, nine = find_json(capsys, "--line", "9", str(malformed))
    eleven = find(capsys, "--line", "11", str(malformed))
    _, by_id = find_json(capsys, "8", str(malformed))

    assert [(r["line"], r["audience_id"], r["file_line"]) for r in nine] == [(9, 8, 2)]
    assert eleven[0] == 1
    assert by_id == nine
