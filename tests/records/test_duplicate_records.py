"""Duplicate rows in the audit log (issue #11): grouped in ``duplicates`` records at about
20 bytes a row instead of a ~300-byte record each, and still every row accounted for:
``audit find`` shows each row as the per-row ``duplicate`` record of older logs, ``audit
summary`` counts each row, and logs written before, one ``duplicate`` record per row, read
the same."""

from __future__ import annotations

import asyncio
import io
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import duplicate_rows, read_audit, write_csv

from worker.cli import main
from worker.commands.run import run_purge
from worker.records.audit import AuditLog
from worker.records.audit_query import find, summarize, verify
from worker.records.recorder import DUPLICATES_PER_RECORD
from worker.settings import Settings
from worker.settings.rate import RateSpec

MakeSettings = Callable[..., Settings]

FIRST_ID = 100_000_000  # sequential nine-digit ids: what a database export holds


def of(path: Path, event: str) -> list[dict[str, Any]]:
    return [r for r in read_audit(path, chain=True) if r["event"] == event]


async def test_a_duplicate_row_costs_at_most_32_bytes_of_audit_log(
    make_settings: MakeSettings, tmp_path: Path
) -> None:
    ids = [FIRST_ID + i for i in range(1_000)]
    repeats = 10_000
    inputs = {"once": ids, "repeated": ids + [ids[i % len(ids)] for i in range(repeats)]}
    sizes = {}
    for name, rows in inputs.items():
        path = write_csv(tmp_path / f"{name}.csv", [str(i) for i in rows])
        settings = make_settings(
            campaign_id=42,
            batch_size=1_000,
            audit_log=tmp_path / f"{name}.jsonl",
            state_dir=tmp_path / f"state-{name}",
        )
        result = await run_purge(settings, str(path), out=io.StringIO())
        assert (result.exit_code, result.tally.duplicates) == (0, len(rows) - len(ids))
        sizes[name] = (tmp_path / f"{name}.jsonl").stat().st_size

    per_row = (sizes["repeated"] - sizes["once"]) / repeats
    print(f"\naudit bytes per duplicate row: {per_row:.1f}")
    assert per_row <= 32


@pytest.fixture
async def repeated(make_settings: MakeSettings, tmp_path: Path) -> tuple[Path, int, str]:
    """1,500 ids, then each again (lines 1501-3000), then the 701st a third time (line
    3001): two ``duplicates`` records, of 1,000 rows and 501. Returns the log, that id
    and the run id."""
    ids = [FIRST_ID + i for i in range(1_500)]
    path = write_csv(tmp_path / "ids.csv", [str(i) for i in [*ids, *ids, ids[700]]])
    settings = make_settings(campaign_id=42, batch_size=500)
    result = await run_purge(settings, str(path), out=io.StringIO())
    assert result.exit_code == 0
    assert settings.audit_log is not None
    return settings.audit_log, ids[700], result.run_id


def test_find_shows_a_row_inside_a_duplicates_record_with_its_line_campaign_and_id(
    repeated: tuple[Path, int, str],
) -> None:
    path, audience, run_id = repeated
    records = read_audit(path, chain=True)

    hits = [(line, r) for _, line, r in find([path], audience) if r["event"] == "duplicate"]

    assert [len(r["lines"]) for r in of(path, "duplicates")] == [DUPLICATES_PER_RECORD, 501]
    assert [(r["line"], r["campaign_id"], r["audience_id"]) for _, r in hits] == [
        (2201, 42, audience),
        (3001, 42, audience),
    ]
    for line, row in hits:
        holder = records[line - 1]
        assert holder["event"] == "duplicates"
        assert holder["lines"][holder["audience_ids"].index(audience)] == row["line"]
        assert (row["run_id"], row["ts"], row["seq"]) == (run_id, holder["ts"], holder["seq"])


def test_cli_find_prints_each_duplicate_row_as_the_per_row_record_did(
    repeated: tuple[Path, int, str], capsys: pytest.CaptureFixture[str]
) -> None:
    path, audience, run_id = repeated
    records = read_audit(path, chain=True)
    holders = [n for n, r in enumerate(records, start=1) if r["event"] == "duplicates"]

    code = main(["audit", "find", str(audience), str(path)])

    out = capsys.readouterr().out.splitlines()
    assert code == 0
    duplicates = [line for line in out if "  duplicate  " in line]
    assert duplicates == [
        f"{path}:{holder}  {records[holder - 1]['ts']}  run {run_id}  duplicate  campaign 42  "
        f"input line {line}"
        for holder, line in zip(holders, (2201, 3001), strict=True)
    ]
    assert out[-1].startswith(f"=> audience id {audience} was erased: ")


def test_find_does_not_take_a_line_number_for_an_id(repeated: tuple[Path, int, str]) -> None:
    path, _, _ = repeated

    assert list(find([path], 2201)) == []


async def test_summary_counts_every_duplicate_row_as_the_tally_does(
    make_settings: MakeSettings, tmp_path: Path
) -> None:
    pairs = [(campaign, FIRST_ID + i) for i in range(600) for campaign in (42, 77)]
    lines = [f"{c},{a}" for c, a in pairs]
    path = write_csv(tmp_path / "ids.csv", ["campaign_id,audience_id", *lines, *lines])
    settings = make_settings(batch_size=500)

    result = await run_purge(settings, str(path), out=io.StringIO())

    assert settings.audit_log is not None
    summary = summarize([settings.audit_log])
    finished = of(settings.audit_log, "run_finished")[0]
    assert result.tally.duplicates == finished["duplicates"] == 1_200
    assert summary["events"]["duplicate"] == result.tally.duplicates
    assert "duplicates" not in summary["events"]
    assert {c: counts["duplicate"] for c, counts in summary["campaigns"].items()} == {
        "42": 600,
        "77": 600,
    }
    # Two campaigns met in turn: each flush writes one record per campaign.
    assert [(r["campaign_id"], len(r["lines"])) for r in of(settings.audit_log, "duplicates")] == [
        (42, 500),
        (77, 500),
        (42, 100),
        (77, 100),
    ]


async def test_a_stopped_run_audits_and_counts_every_duplicate_row_it_read(
    make_settings: MakeSettings, tmp_path: Path
) -> None:
    ids = [FIRST_ID + i for i in range(400)]
    path = write_csv(tmp_path / "ids.csv", [str(i) for i in ids for _ in range(2)])
    # No checkpoint during the run: only the stop itself can write the rows held back.
    settings = make_settings(
        campaign_id=42,
        batch_size=5,
        concurrency=2,
        rate=RateSpec(20, 1.0),
        checkpoint_interval=3600,
    )
    asyncio.get_running_loop().call_later(0.5, os.kill, os.getpid(), signal.SIGTERM)

    result = await run_purge(settings, str(path), out=io.StringIO())

    assert result.exit_code == 75
    assert settings.audit_log is not None
    rows = duplicate_rows(read_audit(settings.audit_log))
    finished = of(settings.audit_log, "run_finished")[0]
    assert 0 < len(rows) < len(ids)
    assert finished["duplicates"] == result.tally.duplicates == len(rows)
    assert of(settings.audit_log, "run_finished") == [
        read_audit(settings.audit_log, chain=True)[-1]
    ]


# -- logs written before: one ``duplicate`` record per row --------------------------------------


def write_both_formats(tmp_path: Path) -> tuple[Path, Path]:
    """The same three duplicate rows, as an older version audited them and as this one does."""
    old, new = tmp_path / "old.jsonl", tmp_path / "new.jsonl"
    log = AuditLog(old, "run-old")
    log.write("run_started", command="run", input="ids.csv")
    log.write("duplicate", line=4, campaign_id=42, audience_id=7)
    log.write("duplicate", line=6, campaign_id=77, audience_id=8)
    log.write("duplicate", line=9, campaign_id=42, audience_id=7)
    log.write("run_finished", exit_code=0, duplicates=3)
    log.close()
    log = AuditLog(new, "run-new")
    log.write("run_started", command="run", input="ids.csv")
    log.write("duplicates", campaign_id=42, lines=[4, 9], audience_ids=[7, 7])
    log.write("duplicates", campaign_id=77, lines=[6], audience_ids=[8])
    log.write("run_finished", exit_code=0, duplicates=3)
    log.close()
    return old, new


def test_a_log_of_per_row_duplicate_records_still_verifies_finds_and_summarises(
    tmp_path: Path,
) -> None:
    old, _ = write_both_formats(tmp_path)
    records = read_audit(old, chain=True)

    hits = list(find([old], 7))

    assert verify([old])[1] is None
    assert hits == [(old, 2, records[1]), (old, 4, records[3])]
    assert [r["line"] for _, _, r in find([old], 8, campaign_id=77)] == [6]
    assert summarize([old])["events"] == {"duplicate": 3, "run_finished": 1, "run_started": 1}
    assert summarize([old])["campaigns"] == {"42": {"duplicate": 2}, "77": {"duplicate": 1}}


def test_find_and_summary_read_both_formats_alike(tmp_path: Path) -> None:
    old, new = write_both_formats(tmp_path)
    shown = ("event", "line", "campaign_id", "audience_id")

    def rows(path: Path, audience: int) -> list[dict[str, object]]:
        return [{k: r[k] for k in shown} for _, _, r in find([path], audience)]

    assert verify([new])[1] is None
    assert (
        rows(new, 7)
        == rows(old, 7)
        == [
            {"event": "duplicate", "line": 4, "campaign_id": 42, "audience_id": 7},
            {"event": "duplicate", "line": 9, "campaign_id": 42, "audience_id": 7},
        ]
    )
    assert rows(new, 8) == rows(old, 8)
    assert list(find([new], 7, campaign_id=77)) == list(find([old], 7, campaign_id=77)) == []
    old_summary, new_summary = summarize([old]), summarize([new])
    assert new_summary["events"] == old_summary["events"]
    assert new_summary["campaigns"] == old_summary["campaigns"]
