"""run_purge end to end against the real sandbox on loopback: what was deleted, what was sent,
what the audit log proves, and what the run reports."""

from __future__ import annotations

import asyncio
import hashlib
import io
import math
import re
from collections.abc import Callable
from dataclasses import replace
from itertools import zip_longest
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import (
    assert_nothing_accepted_during_a_pause,
    duplicate_rows,
    read_audit,
    record_refusals,
    write_csv,
)
from processes import eventually

from worker import __version__
from worker.commands.run import run_purge
from worker.errors import UsageError
from worker.input.batching import Batch
from worker.records.report import RunResult
from worker.sandbox import FaultConfig
from worker.sandbox.runner import SandboxHandle
from worker.sending.credentials import Secret
from worker.settings import Settings
from worker.settings.rate import RateSpec

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
DELETED_MESSAGE = "Audience deleted successfully"
NOT_EXIST = "Campaign not exist"
CHAOS = FaultConfig(
    seed=7, error_ratio=0.2, drop_ratio=0.1, limit_per_second=50, retry_after_on_5xx=True
)
CHAOS_SMALL = FaultConfig(
    seed=3, error_ratio=0.2, drop_ratio=0.1, limit_per_second=20, retry_after_on_5xx=True
)

MakeSettings = Callable[..., Settings]


def audit_of(settings: Settings) -> list[dict[str, Any]]:
    assert settings.audit_log is not None
    return read_audit(settings.audit_log)


def of(records: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [r for r in records if r["event"] == event]


def id_csv(path: Path, rows: list[tuple[int, int]]) -> Path:
    return write_csv(path, ["campaign_id,audience_id", *(f"{c},{a}" for c, a in rows)])


def assert_well_formed(records: list[dict[str, Any]], result: RunResult) -> None:
    """Every record opens with ts (RFC 3339 UTC), event and run_id; one start, one end."""
    for record in records:
        assert list(record)[:3] == ["ts", "event", "run_id"], record
        assert RFC3339_UTC.match(record["ts"]), record["ts"]
        assert record["run_id"] == result.run_id
    assert records[0]["event"] == "run_started"
    assert records[-1]["event"] == "run_finished"
    assert [r["event"] for r in records].count("run_finished") == 1


def audited_ids(records: list[dict[str, Any]], event: str) -> list[int]:
    return sorted(i for r in of(records, event) for i in r["audience_ids"])


def failed_out_rows(path: Path) -> tuple[str, list[tuple[int, int]]]:
    """The failed-out file's header, and its (campaign_id, audience_id) pairs, sorted."""
    header, *lines = path.read_text(encoding="utf-8").splitlines()
    rows = [tuple(int(cell) for cell in line.split(",")[:2]) for line in lines]
    return header, sorted(rows)  # type: ignore[arg-type]


async def test_happy_path_deletes_every_id_and_audits_every_batch(
    sandbox: SandboxHandle, make_settings: MakeSettings, tmp_path: Path
) -> None:
    ids = list(range(101, 126))
    path = write_csv(tmp_path / "ids.csv", [str(i) for i in ids])
    settings = make_settings(campaign_id=42)

    result = await run_purge(settings, str(path), out=io.StringIO())

    assert result.exit_code == 0
    campaign = sandbox.state.campaigns[42]
    assert not any(campaign.alive(i) for i in ids)
    assert campaign.alive(100)
    assert campaign.alive(126)
    assert campaign.deleted_count == len(ids)

    records = audit_of(settings)
    assert_well_formed(records, result)
    started = records[0]
    assert started == {
        "ts": started["ts"],
        "event": "run_started",
        "run_id": result.run_id,
        "version": __version__,
        "command": "run",
        "dry_run": False,
        "settings": settings.public(),
        "input": str(path),
        "input_size": path.stat().st_size,
        "input_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "state_dir": str(settings.state_dir),
        "resumed": None,
    }
    assert "token" not in started["settings"]
    assert started["settings"]["base_url"] == sandbox.url

    deleted = sorted(of(records, "deleted"), key=lambda r: r["audience_ids"][0])
    chunks = [ids[0:10], ids[10:20], ids[20:25]]
    assert len(deleted) == len(chunks)
    for record, chunk in zip(deleted, chunks, strict=True):
        assert record == {
            "ts": record["ts"],
            "event": "deleted",
            "run_id": result.run_id,
            "campaign_id": 42,
            "batch_id": Batch(42, tuple(chunk)).batch_id,
            "audience_ids": chunk,
            "http_status": 200,
            "attempts": 1,
            "latency_ms": record["latency_ms"],
            "message": DELETED_MESSAGE,
        }
        assert isinstance(record["latency_ms"], float)
    sending = sorted(of(records, "sending"), key=lambda r: r["audience_ids"][0])
    assert [(r["batch_id"], r["audience_ids"]) for r in sending] == [
        (r["batch_id"], r["audience_ids"]) for r in deleted
    ]
    for record in deleted:
        intent = next(i for i, r in enumerate(records) if r.get("batch_id") == record["batch_id"])
        assert records[intent]["event"] == "sending"
        assert record["latency_ms"] >= 0

    finished = records[-1]
    assert finished == {
        "ts": finished["ts"],
        "event": "run_finished",
        "run_id": result.run_id,
        "exit_code": 0,
        "dry_run": False,
        "interrupted": False,
        "fatal_reason": None,
        "halted": None,
        "stopped_by": None,
        "rows": 25,
        "valid": 25,
        "deleted": 25,
        "failed": 0,
        "rejected": 0,
        "duplicates": 0,
        "requests": 3,
        "retries": 0,
        "already_done": 0,
        "other_shard": 0,
        "unconfirmed": 0,
        "failed_left": 0,
        "duration_s": finished["duration_s"],
        "failure_reasons": {},
        # No --verify, no --select: no read-back, no stats, no selection.
        "verified": 0,
        "still_present": 0,
        "unproven": {},
        "partial": None,
        "total_audience_before": None,
        "total_audience_after": None,
        "audience": {},
        "selection": None,
        "campaigns": {"42": {"deleted": 25, "failed": 0}},
        "input_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "input_bytes": path.stat().st_size,
    }
    assert isinstance(finished["duration_s"], float)

    assert settings.report is not None
    report = orjson.loads(settings.report.read_bytes())
    expected = {
        "deleted": 25,
        "failed": 0,
        "rejected": 0,
        "duplicates": 0,
        "requests": 3,
        "retries": 0,
        "exit_code": 0,
    }
    assert {k: report[k] for k in expected} == expected
    assert isinstance(report["duration_s"], float)
    assert report["audit_log"] == str(settings.audit_log)
    assert settings.failed_out is not None
    assert failed_out_rows(settings.failed_out) == ("campaign_id,audience_id,reason", [])


async def test_requests_never_mix_campaigns(
    sandbox: SandboxHandle, make_settings: MakeSettings, tmp_path: Path
) -> None:
    ids_42 = list(range(1, 31))
    ids_77 = list(range(1001, 1021))
    rows_42 = [(42, i) for i in ids_42]
    rows_77 = [(77, i) for i in ids_77]
    interleaved = [row for pair in zip_longest(rows_42, rows_77) for row in pair if row]
    path = id_csv(tmp_path / "ids.csv", interleaved)
    settings = make_settings(batch_size=7)

    result = await run_purge(settings, str(path), out=io.StringIO())

    assert result.exit_code == 0
    records = audit_of(settings)
    for record in of(records, "deleted"):
        own = ids_42 if record["campaign_id"] == 42 else ids_77
        assert set(record["audience_ids"]) <= set(own), record
    assert sandbox.state.receipts[42].received_ids() == ids_42
    assert sandbox.state.receipts[77].received_ids() == ids_77
    assert not any(sandbox.state.campaigns[42].alive(i) for i in ids_42)
    assert not any(sandbox.state.campaigns[77].alive(i) for i in ids_77)
    assert sandbox.state.campaigns[42].deleted_count == len(ids_42)
    assert sandbox.state.campaigns[77].deleted_count == len(ids_77)
    assert result.tally.deleted_by_campaign == {42: 30, 77: 20}
    assert result.summary()["campaigns"] == {
        "42": {"deleted": 30, "failed": 0},
        "77": {"deleted": 20, "failed": 0},
    }
    assert records[-1]["campaigns"] == result.summary()["campaigns"]


BAD_ROWS = [
    # (line, raw, reason); line 1 is the header, line 2 the one valid id.
    (3, "42,abc", "audience_id not an integer"),
    (4, "42,-5", "audience_id not a positive integer"),
    (5, "42,0", "audience_id not a positive integer"),
    (6, "42,1.5", "audience_id not an integer"),
    (7, "42,1e3", "audience_id not an integer"),
    (8, "42,99999999999999999999999", "audience_id out of 64-bit range"),
    (9, "42,", "audience_id empty value"),
]


async def test_invalid_ids_are_rejected_with_line_id_cell_hash_and_reason_and_never_sent(
    sandbox: SandboxHandle, make_settings: MakeSettings, tmp_path: Path
) -> None:
    path = write_csv(
        tmp_path / "ids.csv", ["campaign_id,audience_id", "42,7", *(raw for _, raw, _ in BAD_ROWS)]
    )
    settings = make_settings()

    result = await run_purge(settings, str(path), out=io.StringIO())

    assert result.exit_code == 0
    records = audit_of(settings)
    assert_well_formed(records, result)
    rejected = of(records, "rejected")
    assert rejected == [
        {
            "ts": r["ts"],
            "event": "rejected",
            "run_id": result.run_id,
            "line": line,
            "audience_raw": raw.split(",")[1],
            "raw_sha256": hashlib.sha256(raw.encode()).hexdigest(),  # the line, never its text
            "reason": reason,
        }
        for r, (line, raw, reason) in zip(rejected, BAD_ROWS, strict=True)
    ]
    assert sandbox.state.receipts[42].received_ids() == [7]
    assert list(sandbox.state.receipts) == [42]
    assert sandbox.state.requests_total == 1
    assert sandbox.state.campaigns[42].deleted_count == 1
    assert (result.tally.rejected, result.tally.deleted) == (len(BAD_ROWS), 1)


async def test_duplicate_ids_are_sent_once_and_audited_as_duplicates(
    sandbox: SandboxHandle, make_settings: MakeSettings, tmp_path: Path
) -> None:
    rows = [(42, 1), (42, 2), (77, 1), (42, 1), (42, 3), (42, 2), (77, 1)]
    path = id_csv(tmp_path / "ids.csv", rows)
    settings = make_settings(batch_size=2)

    result = await run_purge(settings, str(path), out=io.StringIO())

    assert result.exit_code == 0
    records = audit_of(settings)
    duplicates = of(records, "duplicates")
    assert duplicates == [
        {
            "ts": d["ts"],
            "event": "duplicates",
            "run_id": result.run_id,
            "campaign_id": campaign,
            "lines": lines,
            "audience_ids": audiences,
        }
        for d, (campaign, lines, audiences) in zip(
            duplicates, [(42, [5, 7], [1, 2]), (77, [8], [1])], strict=True
        )
    ]
    assert sandbox.state.receipts[42].received_ids() == [1, 2, 3]
    assert sandbox.state.receipts[42].resent == 0
    assert sandbox.state.receipts[77].received_ids() == [1]
    assert sandbox.state.receipts[77].resent == 0
    assert audited_ids(records, "deleted") == [1, 1, 2, 3]
    assert (result.tally.duplicates, result.tally.deleted) == (3, 4)


async def test_every_input_row_is_accounted_for_exactly_once(
    sandbox: SandboxHandle, make_settings: MakeSettings, tmp_path: Path
) -> None:
    lines = [
        "campaign_id,audience_id",
        "42,1",
        "42,2",
        "999,5",
        *(raw for _, raw, _ in BAD_ROWS),
        "42,1",
        "999,5",
        "",
        "77,9",
        "999,6",
    ]
    path = write_csv(tmp_path / "ids.csv", lines)
    data_rows = sum(1 for line in lines[1:] if line.strip())
    settings = make_settings(batch_size=2)

    result = await run_purge(settings, str(path), out=io.StringIO())

    t = result.tally
    assert t.rows == data_rows == t.valid + t.rejected + t.duplicates
    assert t.valid == t.deleted + t.failed
    assert (t.valid, t.rejected, t.duplicates, t.deleted, t.failed) == (5, len(BAD_ROWS), 2, 3, 2)
    records = audit_of(settings)
    audited = (
        len(of(records, "rejected"))
        + len(duplicate_rows(records))
        + len(audited_ids(records, "deleted"))
        + len(audited_ids(records, "failed"))
    )
    assert audited == data_rows
    assert result.exit_code == 1


async def test_batches_respect_batch_size_and_the_partial_batch_is_flushed(
    sandbox: SandboxHandle, make_settings: MakeSettings, tmp_path: Path
) -> None:
    size = 7
    counts = {42: 50, 77: 23}
    rows = [(c, i) for c, n in counts.items() for i in range(1, n + 1)]
    path = id_csv(tmp_path / "ids.csv", rows)
    settings = make_settings(batch_size=size)

    result = await run_purge(settings, str(path), out=io.StringIO())

    assert result.exit_code == 0
    assert sandbox.state.max_audience_len == size
    records = audit_of(settings)
    for campaign, n in counts.items():
        batches = [r for r in of(records, "deleted") if r["campaign_id"] == campaign]
        assert len(batches) == math.ceil(n / size)
        assert sorted(len(b["audience_ids"]) for b in batches) == sorted(
            [size] * (n // size) + ([n % size] if n % size else [])
        )
        assert sandbox.state.receipts[campaign].received_ids() == list(range(1, n + 1))
    expected_requests = sum(math.ceil(n / size) for n in counts.values())
    assert sandbox.state.requests_total == result.tally.requests == expected_requests


@pytest.mark.parametrize("faults", [CHAOS], ids=["chaos"])
async def test_chaos_every_id_is_deleted_and_nothing_outside_the_input_is_sent(
    sandbox: SandboxHandle, make_settings: MakeSettings, tmp_path: Path
) -> None:
    counts = {42: 400, 77: 200}
    rows = [(c, i) for c, n in counts.items() for i in range(1, n + 1)]
    path = id_csv(tmp_path / "ids.csv", rows)
    # 1000 requests/s from 16 senders against a 50/s sliding window: real 429s.
    settings = make_settings(concurrency=16, max_attempts=10, max_retry_time=20.0)

    result = await run_purge(settings, str(path), out=io.StringIO())

    assert result.exit_code == 0, result.summary()
    for campaign, n in counts.items():
        assert not any(sandbox.state.campaigns[campaign].alive(i) for i in range(1, n + 1))
        assert set(sandbox.state.receipts[campaign].received_ids()) <= set(range(1, n + 1))
    assert set(sandbox.state.receipts) == set(counts)
    assert sandbox.state.campaigns[42].deleted_count == 400
    assert sandbox.state.campaigns[77].deleted_count == 200
    assert result.tally.retries > 0
    assert sandbox.state.by_status[429] > 0
    assert sandbox.state.dropped > 0
    assert sum(sandbox.state.by_status[s] for s in (500, 502, 503)) > 0
    records = audit_of(settings)
    assert audited_ids(records, "deleted") == sorted(i for _, i in rows)
    assert of(records, "failed") == []


@pytest.mark.parametrize("faults", [FaultConfig(limit_per_second=5)], ids=["5-per-second"])
async def test_no_request_is_accepted_before_retry_after_elapsed(
    sandbox: SandboxHandle,
    make_settings: MakeSettings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The client paces at 50/s (one request per 20 ms) against a 5/s window: the sixth
    # request is refused about 0.9 s before the window would admit one again, and the
    # sandbox refuses everything in between on its own. Any request it *accepts* before
    # "refusal + Retry-After" is therefore one the client sent during the pause.
    state = sandbox.state
    refusals = record_refusals(sandbox, monkeypatch)
    path = write_csv(tmp_path / "ids.csv", [str(i) for i in range(1, 11)])
    settings = make_settings(campaign_id=42, batch_size=1, concurrency=4, rate=RateSpec(50, 1.0))

    result = await run_purge(settings, str(path), out=io.StringIO())

    assert result.exit_code == 0
    assert state.by_status[429] == len(refusals)
    accepted = list(state.accepted_times)
    assert len(accepted) == 10
    assert_nothing_accepted_during_a_pause(refusals, accepted)


@pytest.mark.parametrize(
    "faults",
    [FaultConfig(error_status=400), FaultConfig(error_status=200)],
    ids=["error-status-400", "error-status-200"],
)
async def test_unknown_campaign_fails_permanently_and_goes_to_failed_out(
    sandbox: SandboxHandle, make_settings: MakeSettings, tmp_path: Path, faults: FaultConfig
) -> None:
    unknown = [(999, i) for i in range(1, 6)]
    path = id_csv(tmp_path / "ids.csv", [(42, 1), *unknown, (42, 2)])
    settings = make_settings(batch_size=10)

    result = await run_purge(settings, str(path), out=io.StringIO())

    assert result.exit_code == 1
    assert not sandbox.state.campaigns[42].alive(1)
    assert not sandbox.state.campaigns[42].alive(2)
    records = audit_of(settings)
    failed = of(records, "failed")
    assert len(failed) == 1
    record = failed[0]
    ids = [i for _, i in unknown]
    assert record == {
        "ts": record["ts"],
        "event": "failed",
        "run_id": result.run_id,
        "campaign_id": 999,
        "batch_id": Batch(999, tuple(ids)).batch_id,
        "audience_ids": ids,
        "http_status": faults.error_status,
        "attempts": 1,
        "latency_ms": record["latency_ms"],
        "message": NOT_EXIST,
        "reason": "unknown campaign",
        "retryable": False,
    }
    assert settings.failed_out is not None
    assert failed_out_rows(settings.failed_out) == ("campaign_id,audience_id,reason", unknown)
    assert result.tally.retries == 0


@pytest.mark.parametrize(
    "faults",
    [FaultConfig(error_status=400), FaultConfig(error_status=200)],
    ids=["error-status-400", "error-status-200"],
)
async def test_failed_out_file_is_accepted_as_input_by_the_next_run(
    sandbox: SandboxHandle, make_settings: MakeSettings, tmp_path: Path
) -> None:
    unknown = [(999, i) for i in range(1, 6)]
    first = make_settings()
    await run_purge(
        first, str(id_csv(tmp_path / "ids.csv", [(42, 1), *unknown])), out=io.StringIO()
    )
    assert first.failed_out is not None
    again = make_settings(
        audit_log=tmp_path / "again.jsonl",
        failed_out=tmp_path / "again-failed.csv",
        report=tmp_path / "again.json",
        state_dir=tmp_path / "again-state",
    )

    result = await run_purge(again, str(first.failed_out), out=io.StringIO())

    assert result.exit_code == 1
    assert (result.tally.valid, result.tally.rejected, result.tally.failed) == (5, 0, 5)
    records = audit_of(again)
    assert [
        (r["campaign_id"], r["reason"], r["message"], r["retryable"]) for r in of(records, "failed")
    ] == [(999, "unknown campaign", NOT_EXIST, False)]
    assert again.failed_out is not None
    assert failed_out_rows(again.failed_out) == ("campaign_id,audience_id,reason", unknown)


async def test_wrong_token_aborts_with_exit_3_without_a_retry_storm_and_a_rerun_finishes(
    sandbox: SandboxHandle, make_settings: MakeSettings, tmp_path: Path, token: str
) -> None:
    ids = list(range(1, 101))
    path = write_csv(tmp_path / "ids.csv", [str(i) for i in ids])
    settings = make_settings(campaign_id=42, token=Secret("wrong-token"), concurrency=4)

    result = await run_purge(settings, str(path), out=io.StringIO())

    assert result.exit_code == 3
    assert result.fatal_reason == "authentication refused (HTTP 401)"
    assert 1 <= sandbox.state.requests_total <= settings.concurrency + 1
    assert set(sandbox.state.by_status) == {401}
    assert sandbox.state.campaigns[42].deleted_count == 0
    records = audit_of(settings)
    assert_well_formed(records, result)
    assert of(records, "deleted") == []
    refused = of(records, "failed")
    assert 1 <= len(refused) <= settings.concurrency
    assert all(r["http_status"] == 401 for r in refused)
    assert all(r["reason"] == "authentication refused (HTTP 401)" for r in refused)
    sent = sorted(i for r in of(records, "sending") for i in r["audience_ids"])
    assert audited_ids(records, "failed") == sent
    assert result.tally.deleted == 0
    assert records[-1]["exit_code"] == 3

    fixed = replace(settings, token=Secret(token), audit_log=tmp_path / "second.jsonl")
    second = await run_purge(fixed, str(path), out=io.StringIO())

    assert second.exit_code == 0
    assert [i for i in ids if sandbox.state.campaigns[42].alive(i)] == []
    assert second.tally.deleted == len(ids)


async def test_wrong_token_in_token_file_aborts_with_exit_3(
    sandbox: SandboxHandle, make_settings: MakeSettings, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("wrong-token\n", encoding="utf-8")
    path = write_csv(tmp_path / "ids.csv", [str(i) for i in range(1, 31)])
    settings = make_settings(campaign_id=42, token=None, token_file=token_file)

    result = await run_purge(settings, str(path), out=io.StringIO())

    assert result.exit_code == 3
    assert 1 <= sandbox.state.requests_total <= settings.concurrency
    assert sandbox.state.campaigns[42].deleted_count == 0
    # Each request that went out (before the 401 came back) failed; no request started
    # after it (tests/runtime/test_stop.py shows that at a slow rate).
    assert result.tally.failed == 10 * sandbox.state.requests_total


async def rotate_while_first_requests_are_held(
    sandbox: SandboxHandle, settings: Settings, token_file: Path, token: str, path: Path
) -> RunResult:
    """Run while the sandbox holds the first requests (sent with the old token) for 300 ms;
    meanwhile rotate the secret and switch the latency off."""
    run = asyncio.create_task(run_purge(settings, str(path), out=io.StringIO()))
    await eventually(
        lambda: sandbox.state.requests_total >= settings.concurrency,
        timeout=5.0,
        what="the first requests held",
        poll=0.005,
    )
    token_file.write_text(token + "\n", encoding="utf-8")
    sandbox.state.replace_faults(FaultConfig())
    return await run


@pytest.mark.parametrize("faults", [FaultConfig(latency_ms=300)], ids=["held"])
@pytest.mark.parametrize("concurrency", [1, 4], ids=["one-in-flight", "four-in-flight"])
async def test_rotated_token_file_rescues_every_request_sent_with_the_old_token(
    sandbox: SandboxHandle,
    make_settings: MakeSettings,
    tmp_path: Path,
    token: str,
    concurrency: int,
) -> None:
    # With four in flight, all leave with the old token before the first 401 comes back:
    # the first re-reads the file; the other three must use the new token too, not abort.
    token_file = tmp_path / "token"
    token_file.write_text("old-token\n", encoding="utf-8")
    ids = list(range(1, 101))
    path = write_csv(tmp_path / "ids.csv", [str(i) for i in ids])
    settings = make_settings(
        campaign_id=42, token=None, token_file=token_file, concurrency=concurrency
    )

    result = await rotate_while_first_requests_are_held(sandbox, settings, token_file, token, path)

    assert sandbox.state.by_status[401] == concurrency
    assert result.exit_code == 0, result.summary()
    assert not any(sandbox.state.campaigns[42].alive(i) for i in ids)


async def test_dry_run_sends_nothing_and_prints_the_plan(
    sandbox: SandboxHandle, make_settings: MakeSettings, tmp_path: Path
) -> None:
    rows = [(42, i) for i in range(1, 26)] + [(77, i) for i in range(1, 6)] + [(42, 3)]
    path = write_csv(
        tmp_path / "ids.csv", ["campaign_id,audience_id", *(f"{c},{a}" for c, a in rows), "42,abc"]
    )
    settings = make_settings(token=None, dry_run=True, rate=RateSpec(2, 1.0), batch_size=10)
    out = io.StringIO()

    result = await run_purge(settings, str(path), out=out)

    assert sandbox.state.requests_total == 0
    assert result.exit_code == 0
    assert result.dry_run
    plan = out.getvalue()
    assert "nothing was sent" in plan
    assert "campaign 42: 25 ids in 3 requests" in plan
    assert "campaign 77: 5 ids in 1 request" in plan
    assert "30 ids in 2 campaigns, 4 requests" in plan
    assert "about 2.0 s at the configured rate" in plan
    records = audit_of(settings)
    assert_well_formed(records, result)
    assert records[0]["dry_run"] is True
    assert [(r["line"], r["audience_raw"]) for r in of(records, "rejected")] == [(33, "abc")]
    assert duplicate_rows(records) == [(32, 42, 3)]
    assert of(records, "deleted") == of(records, "failed") == []
    assert records[-1]["dry_run"] is True
    assert records[-1]["requests"] == 0


@pytest.mark.parametrize("faults", [FaultConfig(max_batch=7)], ids=["max-batch-7"])
async def test_413_splits_the_batch_and_later_batches_are_pre_split(
    sandbox: SandboxHandle, make_settings: MakeSettings, tmp_path: Path
) -> None:
    ids = list(range(1, 201))
    path = write_csv(tmp_path / "ids.csv", [str(i) for i in ids])
    settings = make_settings(campaign_id=42, batch_size=20, concurrency=1)

    result = await run_purge(settings, str(path), out=io.StringIO())

    assert result.exit_code == 0
    assert not any(sandbox.state.campaigns[42].alive(i) for i in ids)
    batches = math.ceil(len(ids) / 20)
    # 20 ids: 413, halves of 10: 413 once, then the cap (5) pre-splits everything else.
    assert sandbox.state.by_status[413] == 2
    assert sandbox.state.by_status[413] < batches
    records = audit_of(settings)
    assert all(len(r["audience_ids"]) <= 7 for r in of(records, "deleted"))
    assert audited_ids(records, "deleted") == ids
    assert of(records, "failed") == []


def assert_token_absent(secrets: list[str], settings: Settings, stdout: str, captured: str) -> None:
    files = [settings.audit_log, settings.report, settings.failed_out]
    texts = [p.read_text(encoding="utf-8") for p in files if p is not None and p.exists()]
    assert len(texts) == 3
    for secret in secrets:
        for text in [*texts, stdout, captured, repr(settings), str(settings)]:
            assert secret not in text


@pytest.mark.parametrize("faults", [CHAOS_SMALL], ids=["chaos"])
async def test_token_never_appears_in_any_output_of_a_chaotic_run(
    sandbox: SandboxHandle,
    make_settings: MakeSettings,
    tmp_path: Path,
    token: str,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = write_csv(tmp_path / "ids.csv", [str(i) for i in range(1, 61)])
    settings = make_settings(
        campaign_id=42,
        concurrency=16,
        batch_size=2,
        max_attempts=10,
        progress="log",
        progress_interval=0.1,
    )
    out = io.StringIO()

    result = await run_purge(settings, str(path), out=out)

    assert sandbox.state.by_status[429] > 0
    assert result.tally.retries > 0
    std = capfd.readouterr()
    assert_token_absent([token], settings, out.getvalue(), std.out + std.err + caplog.text)


async def test_token_never_appears_in_any_output_of_an_auth_failure(
    sandbox: SandboxHandle,
    make_settings: MakeSettings,
    tmp_path: Path,
    token: str,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    wrong = "wrong-" + token
    path = write_csv(tmp_path / "ids.csv", [str(i) for i in range(1, 51)])
    settings = make_settings(campaign_id=42, token=Secret(wrong))
    out = io.StringIO()

    result = await run_purge(settings, str(path), out=out)

    assert result.exit_code == 3
    std = capfd.readouterr()
    assert_token_absent([wrong, token], settings, out.getvalue(), std.out + std.err + caplog.text)


@pytest.mark.parametrize("faults", [FaultConfig(latency_ms=400)], ids=["latency-400ms"])
async def test_requests_slower_than_the_timeout_are_retried_then_failed_as_retryable(
    sandbox: SandboxHandle, make_settings: MakeSettings, tmp_path: Path
) -> None:
    ids = [1, 2, 3]
    path = write_csv(tmp_path / "ids.csv", [str(i) for i in ids])
    settings = make_settings(campaign_id=42, timeout=0.1, max_attempts=3)

    result = await run_purge(settings, str(path), out=io.StringIO())

    assert result.exit_code == 1
    assert (result.tally.requests, result.tally.retries) == (3, 2)
    records = audit_of(settings)
    [record] = of(records, "failed")
    assert record == {
        "ts": record["ts"],
        "event": "failed",
        "run_id": result.run_id,
        "campaign_id": 42,
        "batch_id": Batch(42, tuple(ids)).batch_id,
        "audience_ids": ids,
        "http_status": None,
        "attempts": 3,
        "latency_ms": record["latency_ms"],
        "message": None,
        "reason": "gave up after retries: transport error: TimeoutError",
        "retryable": True,
    }
    assert sandbox.state.requests_total == 3


async def test_an_input_error_leaves_no_state_so_the_corrected_input_runs(
    sandbox: SandboxHandle, make_settings: MakeSettings, tmp_path: Path
) -> None:
    path = write_csv(tmp_path / "ids.csv", ["audience_id", "1", "2"])
    settings = make_settings()  # no --campaign-id and no campaign_id column

    with pytest.raises(UsageError, match="campaign"):
        await run_purge(settings, str(path), out=io.StringIO())
    write_csv(path, ["campaign_id,audience_id", "42,1", "42,2"])
    again = replace(settings, audit_log=tmp_path / "second.jsonl")
    result = await run_purge(again, str(path), out=io.StringIO())

    assert result.exit_code == 0
    assert sandbox.state.requests_total == 1
    assert not sandbox.state.campaigns[42].alive(1)


async def test_an_input_with_rows_and_not_one_valid_id_is_refused_with_2_and_every_row_audited(
    sandbox: SandboxHandle, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    ids = write_csv(tmp_path / "ids.csv", ["audience_id", "alice@example.com", "-4", "bob"])
    settings = make_settings(campaign_id=42)

    with pytest.raises(UsageError, match="not one valid audience id: all 3 rows were rejected"):
        await run_purge(settings, str(ids))

    records = read_audit(settings.audit_log)
    assert [r["line"] for r in records if r["event"] == "rejected"] == [2, 3, 4]
    assert (records[-1]["event"], records[-1]["exit_code"]) == ("run_finished", 2)
    assert sandbox.state.requests_total == 0


async def test_an_input_with_one_valid_id_among_rejected_rows_exits_0(
    sandbox: SandboxHandle, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    ids = write_csv(tmp_path / "ids.csv", ["audience_id", "x", "5", "y"])

    result = await run_purge(make_settings(campaign_id=42), str(ids))

    assert (result.exit_code, result.tally.rejected, result.tally.deleted) == (0, 2, 1)


async def test_a_dry_run_shows_rejected_rows_with_reasons_and_the_duplicates(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    rows = ["audience_id", *map(str, range(1, 11)), "x1", "-2", "3", "4", "", "1.5", "0", "y", "z"]
    settings = make_settings(campaign_id=42, dry_run=True, token=None)
    out = io.StringIO()

    await run_purge(settings, str(write_csv(tmp_path / "ids.csv", rows)), out=out)

    plan = out.getvalue().splitlines()
    start = plan.index("  rejected: 6 rows (a real run audits each):")
    assert plan[start + 1 : start + 8] == [
        "    line 12: audience_id not an integer: 'x1'",
        "    line 13: audience_id not a positive integer: '-2'",
        "    line 17: audience_id not an integer: '1.5'",
        "    line 18: audience_id not a positive integer: '0'",
        "    line 19: audience_id not an integer: 'y'",
        "    ... and 1 more",
        "  duplicates: 2 rows, sent once",
    ]


async def test_a_dry_run_on_saved_progress_plans_what_remains_and_writes_no_state(
    sandbox: SandboxHandle, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    path = write_csv(tmp_path / "ids.csv", [str(i) for i in range(1, 51)])
    done = await run_purge(make_settings(campaign_id=42), str(path))
    assert done.exit_code == 0
    with path.open("a", encoding="utf-8") as handle:
        handle.write("".join(f"{i}\n" for i in range(51, 81)))
    settings = make_settings(campaign_id=42)
    state = sorted((p.name, p.stat().st_mtime_ns) for p in settings.state_dir.iterdir())
    out = io.StringIO()

    planned = await run_purge(
        replace(settings, dry_run=True, token=None, audit_log=tmp_path / "dry.jsonl"),
        str(path),
        out=out,
    )

    assert planned.exit_code == 0
    text = out.getvalue()
    assert "  campaign 42: 30 ids in 3 requests\n" in text
    assert "  saved progress: 50 ids deleted by earlier runs, 0 rows done out of order;" in text
    assert sorted((p.name, p.stat().st_mtime_ns) for p in settings.state_dir.iterdir()) == state
    assert "previous" not in read_audit(tmp_path / "dry.jsonl", chain=True)[0]


async def test_a_dry_run_leaves_the_failed_and_results_files_of_the_real_run_alone(
    make_settings: MakeSettings, tmp_path: Path
) -> None:
    path = write_csv(tmp_path / "ids.csv", ["5", "6"])
    failed = write_csv(tmp_path / "failed.csv", ["campaign_id,audience_id,reason", "42,9,x"])
    results = write_csv(tmp_path / "results.csv", ["line,campaign_id", "2,42"])
    kept = failed.read_bytes(), results.read_bytes()
    settings = make_settings(
        campaign_id=42, dry_run=True, failed_out=failed, results=results, report=None
    )
    await run_purge(settings, str(path), out=io.StringIO())
    assert (failed.read_bytes(), results.read_bytes()) == kept
    # Named as the input, they are not the input's end either.
    await run_purge(
        make_settings(campaign_id=42, dry_run=True, failed_out=path, report=None),
        str(path),
        out=io.StringIO(),
    )
    assert path.read_text() == "5\n6\n"
    with pytest.raises(UsageError, match="--report"):
        await run_purge(
            make_settings(campaign_id=42, dry_run=True, report=path), str(path), out=io.StringIO()
        )
