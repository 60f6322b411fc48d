"""select and run --select against the real sandbox: what a rule selects, paging while another
purge deletes, and a retention purge from a rule end to end."""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from conftest import read_audit

from worker.commands.parsers import build_parser
from worker.commands.run import run_purge
from worker.commands.select import select
from worker.errors import FatalError, StateError
from worker.input.selecting import Rule, Selecting, rule_from
from worker.records.audit_query import check
from worker.records.report import RunResult
from worker.sandbox.runner import SandboxHandle
from worker.settings import Settings

LIVE = 77  # conftest's campaign 77: ids 1-5000, in progress
NOW = datetime(2026, 11, 30, tzinfo=UTC)


async def listing(sandbox: SandboxHandle, token: str, campaign: int) -> list[dict[str, Any]]:
    """Every surviving record of the campaign, unfiltered, in one page."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{sandbox.url}/audience-list",
            params={"campaign_id": campaign, "page": 1, "limit": 10_000},
            headers={"token": token},
        ) as response,
    ):
        assert response.status == 200
        body = await response.json()
    records: list[dict[str, Any]] = body["datalist"]
    return records


def rule(*flags: str) -> Rule:
    args = build_parser().parse_args(["select", "--campaign-id", str(LIVE), *flags])
    return rule_from(args, LIVE, NOW)


def selected(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def when(record: dict[str, Any]) -> datetime | None:
    stamp = record.get("last_attempt")
    return None if not stamp else datetime.fromisoformat(stamp).replace(tzinfo=UTC)


async def test_select_by_status_takes_exactly_the_matching_records(
    sandbox: SandboxHandle, token: str, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    everything = await listing(sandbox, token, LIVE)
    expected = sorted(r["id"] for r in everything if r["status"] in ("Completed", "Halted"))
    out = tmp_path / "selection.csv"
    chosen = rule("--status", "completed", "--status", "halted")
    result = await select(make_settings(page_size=333), chosen, str(out))
    rows = selected(out)
    assert sorted(int(r["audience_id"]) for r in rows) == expected
    assert {r["campaign_id"] for r in rows} == {str(LIVE)}
    assert {r["status"] for r in rows} == {"Completed", "Halted"}
    assert result.selected == len(expected)
    assert (result.passes, result.pages) == (2, 2 * -(-len(expected) // 333))
    assert result.sha256 == hashlib.sha256(out.read_bytes()).hexdigest()
    assert out.stat().st_mode & 0o777 == 0o600


async def test_select_by_age_is_strict_at_its_boundary(
    sandbox: SandboxHandle, token: str, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    everything = await listing(sandbox, token, LIVE)
    attempted = sorted((r for r in everything if when(r)), key=lambda r: when(r) or NOW)
    pivot = attempted[len(attempted) // 2]
    cutoff = when(pivot)
    assert cutoff is not None
    stamp = cutoff.strftime("%Y-%m-%dT%H:%M:%SZ")
    out = tmp_path / "old.csv"
    await select(make_settings(), rule("--last-attempt-before", stamp), str(out))
    ids = {int(r["audience_id"]) for r in selected(out)}
    older = {r["id"] for r in everything if (w := when(r)) is not None and w < cutoff}
    assert ids == older
    assert pivot["id"] not in ids
    # One second later, the pivot is older than the cutoff.
    later = (cutoff + timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    await select(make_settings(), rule("--last-attempt-before", later), str(out))
    assert pivot["id"] in {int(r["audience_id"]) for r in selected(out)}
    never = {r["id"] for r in everything if when(r) is None}
    assert never
    assert not never & ids
    await select(
        make_settings(),
        rule("--last-attempt-before", stamp, "--include-never-attempted"),
        str(out),
    )
    assert {int(r["audience_id"]) for r in selected(out)} == older | never


async def test_paging_while_another_purge_deletes_selects_what_is_left_once_each(
    sandbox: SandboxHandle,
    token: str,
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    everything = await listing(sandbox, token, LIVE)
    matching = {r["id"] for r in everything if r["status"] == "Completed"}
    doomed = sorted(matching)[::3][:60]  # another purge deletes these, early ids first
    batches = [doomed[start : start + 20] for start in range(0, len(doomed), 20)]
    served = sandbox.state.listing_fault

    def other_purge(page: int) -> str | None:  # a batch goes before each page but the first
        if page >= 2 and batches:
            sandbox.state.campaigns[LIVE].delete(batches.pop(0))
        return served(page)

    monkeypatch.setattr(sandbox.state, "listing_fault", other_purge)
    out = tmp_path / "selection.csv"
    result = await select(make_settings(page_size=50), rule("--status", "completed"), str(out))
    ids = [int(r["audience_id"]) for r in selected(out)]
    assert not batches
    assert sorted(ids) == ids == sorted(matching - set(doomed))
    assert result.passes == 2 + 3  # three ended at a change, two agreed


async def test_an_unknown_campaign_or_a_bad_token_writes_nothing(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    out = tmp_path / "selection.csv"
    missing = Rule(campaign_id=4040, statuses=("fresh",))
    with pytest.raises(FatalError, match="cannot list campaign 4040: unknown campaign"):
        await select(make_settings(), missing, str(out))
    from worker.sending.credentials import Secret

    with pytest.raises(FatalError, match="authentication refused"):
        await select(make_settings(token=Secret("wrong")), rule("--status", "fresh"), str(out))
    assert list(tmp_path.iterdir()) == []


async def test_a_retention_purge_from_a_rule_deletes_the_selection_and_audits_the_rule(
    sandbox: SandboxHandle, token: str, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    everything = await listing(sandbox, token, LIVE)
    cutoff = NOW - timedelta(days=180)
    expected = {
        r["id"]
        for r in everything
        if r["status"] == "Completed" and (w := when(r)) is not None and w < cutoff
    }
    assert 0 < len(expected) < len(everything)
    chosen = rule("--status", "completed", "--older-than", "180d")
    selecting = Selecting.of(chosen, tmp_path / "selection.csv")
    settings = make_settings(campaign_id=LIVE, page_size=400, batch_size=50)
    result = await run_purge(settings, str(selecting.path), selecting=selecting)
    assert result.exit_code == 0
    assert result.tally.deleted == len(expected)
    remaining = {r["id"] for r in await listing(sandbox, token, LIVE)}
    assert not remaining & expected
    assert remaining == {r["id"] for r in everything} - expected
    records = read_audit(settings.audit_log)
    started = records[0]
    assert started["event"] == "run_started"
    selection = started["selection"]
    assert selection["rule"]["status"] == ["completed"]
    assert selection["rule"]["older_than"] == "180d"
    assert selection["rule"]["last_attempt_before"] == "2026-06-03T00:00:00Z"
    digest = hashlib.sha256(selecting.path.read_bytes()).hexdigest()
    assert selection["collected"]["sha256"] == digest == started["input_sha256"]
    assert selection["collected"]["selected"] == len(expected)
    assert check([settings.audit_log]).errors == []
    stats = [r for r in records if r["event"] == "audience_stats"]
    assert [(r["moment"], r["stats"]["total_audience"]) for r in stats] == [
        ("before", len(everything)),
        ("after", len(everything) - len(expected)),
    ]


async def test_a_finished_selection_purge_run_again_selects_anew(
    sandbox: SandboxHandle, token: str, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    chosen = rule("--status", "halted")
    selecting = Selecting.of(chosen, tmp_path / "selection.csv")
    settings = make_settings(campaign_id=LIVE)
    first = await run_purge(settings, str(selecting.path), selecting=selecting)
    assert first.exit_code == 0
    assert first.tally.deleted > 0
    again = await run_purge(
        make_settings(campaign_id=LIVE, audit_log=tmp_path / "again.jsonl"),
        str(selecting.path),
        selecting=selecting,
    )
    assert again.exit_code == 0
    assert again.tally.deleted == 0
    assert selected(selecting.path) == []  # collected anew: nothing halted is left
    # The new purge's file continues the finished one's chain: they verify as one.
    verdict = check([settings.audit_log, tmp_path / "again.jsonl"])
    assert verdict.errors == []
    assert [end.path for end in verdict.files] == [settings.audit_log, tmp_path / "again.jsonl"]


async def stopped_purge(
    make_settings: Callable[..., Settings], selecting: Selecting, tmp_path: Path
) -> None:
    """A ``run --select`` that collected its selection and stopped before sending (its
    deadline had passed): an unfinished purge, to be resumed."""
    past = datetime.now(UTC) - timedelta(seconds=1)
    settings = make_settings(campaign_id=LIVE, deadline=past, audit_log=tmp_path / "a.jsonl")
    stopped = await run_purge(settings, str(selecting.path), selecting=selecting)
    assert stopped.exit_code == 75
    assert stopped.tally.deleted == 0


async def resume(
    make_settings: Callable[..., Settings], selecting: Selecting, tmp_path: Path
) -> RunResult:
    settings = make_settings(campaign_id=LIVE, audit_log=tmp_path / "b.jsonl")
    return await run_purge(settings, str(selecting.path), selecting=selecting)


async def test_an_unfinished_selection_purge_resumes_from_what_it_collected(
    sandbox: SandboxHandle, token: str, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    selecting = Selecting.of(rule("--status", "fresh"), tmp_path / "selection.csv")
    await stopped_purge(make_settings, selecting, tmp_path)
    collected = selecting.path.read_bytes()
    resumed = await resume(make_settings, selecting, tmp_path)
    assert resumed.exit_code == 0
    assert resumed.tally.deleted == len(collected.splitlines()) - 1
    assert selecting.path.read_bytes() == collected  # not collected again
    started = read_audit(tmp_path / "b.jsonl")[0]
    first = read_audit(tmp_path / "a.jsonl")[0]
    assert started["selection"]["resumed"] is True
    assert started["selection"]["collected"] == first["selection"]["collected"]
    assert started["selection"]["rule"] == first["selection"]["rule"]


async def test_an_unfinished_purge_whose_selection_is_gone_is_refused(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    selecting = Selecting.of(rule("--status", "fresh"), tmp_path / "selection.csv")
    await stopped_purge(make_settings, selecting, tmp_path)
    selecting.path.unlink()
    with pytest.raises(StateError, match="is gone"):
        await resume(make_settings, selecting, tmp_path)


async def test_an_unfinished_purge_refuses_rows_added_to_its_selection(
    sandbox: SandboxHandle, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    selecting = Selecting.of(rule("--status", "fresh"), tmp_path / "selection.csv")
    await stopped_purge(make_settings, selecting, tmp_path)
    with selecting.path.open("a") as handle:
        handle.write(f"{LIVE},2,Completed,1,,\n")
    with pytest.raises(StateError, match="changed since it was collected"):
        await resume(make_settings, selecting, tmp_path)
    assert sandbox.state.campaigns[LIVE].alive(2)


async def test_an_unfinished_purge_refuses_another_rule_on_its_selection(
    sandbox: SandboxHandle, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    fresh = Selecting.of(rule("--status", "fresh"), tmp_path / "selection.csv")
    await stopped_purge(make_settings, fresh, tmp_path)
    halted = Selecting.of(rule("--status", "halted"), fresh.path)
    with pytest.raises(StateError, match="selected by another rule"):
        await resume(make_settings, halted, tmp_path)
    assert sandbox.state.campaigns[LIVE].deleted_count == 0


async def test_a_dry_run_selects_aside_and_leaves_the_selection_file_alone(
    sandbox: SandboxHandle, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    precious = tmp_path / "precious.csv"
    precious.write_text("campaign_id,audience_id\n77,1\n")
    selecting = Selecting.of(rule("--status", "completed"), precious)
    settings = make_settings(campaign_id=LIVE, dry_run=True, failed_out=None, report=None)
    out = io.StringIO()
    planned = await run_purge(settings, str(precious), selecting=selecting, out=out)
    assert planned.exit_code == 0
    assert "campaign 77:" in out.getvalue()
    assert precious.read_text() == "campaign_id,audience_id\n77,1\n"
    assert sandbox.state.campaigns[LIVE].deleted_count == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.jsonl", "precious.csv"]


async def test_a_reviewed_selection_is_an_input_run_takes_as_it_is(
    sandbox: SandboxHandle, token: str, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    out = tmp_path / "review.csv"
    result = await select(make_settings(), rule("--status", "inqueue", "--attempt", "0"), str(out))
    chosen = {int(r["audience_id"]) for r in selected(out)}
    assert len(chosen) == result.selected > 0
    purged = await run_purge(make_settings(), str(out))  # no --campaign-id: the file names it
    assert purged.exit_code == 0
    assert purged.tally.deleted == len(chosen)
    assert purged.tally.rejected == 0
    remaining = {r["id"] for r in await listing(sandbox, token, LIVE)}
    assert not remaining & chosen


@pytest.mark.parametrize(
    ("flags", "keep"),
    [
        (("--status", "fresh"), lambda r: r["status"] == "Fresh"),
        (("--status", "inqueue"), lambda r: r["status"] == "Inqueue"),
        (("--call-status", "busy"), lambda r: r["call_status"] == "busy"),
        (
            ("--call-status", "voicemail", "--call-status", "failed"),
            lambda r: r["call_status"] in ("voicemail", "failed"),
        ),
        (("--attempt", "2"), lambda r: r["attempt"] == 2),
        (("--attempt", "0", "--attempt", "5"), lambda r: r["attempt"] in (0, 5)),
        (
            ("--status", "completed", "--call-status", "answered", "--attempt", "1"),
            lambda r: (r["status"], r["call_status"], r["attempt"]) == ("Completed", "answered", 1),
        ),
    ],
)
async def test_each_filter_selects_what_a_scan_of_every_record_would(
    sandbox: SandboxHandle,
    token: str,
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    flags: tuple[str, ...],
    keep: Callable[[dict[str, Any]], bool],
) -> None:
    expected = {r["id"] for r in await listing(sandbox, token, LIVE) if keep(r)}
    assert expected
    out = tmp_path / "selection.csv"
    await select(make_settings(page_size=500), rule(*flags), str(out))
    assert {int(r["audience_id"]) for r in selected(out)} == expected


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["run", "--campaign-id", "77"], "say what to delete"),
        (["run", "--input", "ids.csv", "--select", "--status", "fresh"], "choose one"),
        (["run", "--input", "ids.csv", "--status", "fresh"], "only with --select"),
        (["run", "--input", "ids.csv", "--selection", "s.csv"], "only with --select"),
        (["run", "--select", "--campaign-id", "77"], "needs a rule"),
        (["run", "--select", "--status", "fresh"], "needs --campaign-id"),
        (
            ["run", "--select", "--campaign-id", "77", "--status", "fresh", "--selection", "-"],
            "cannot be stdout",
        ),
        (["select", "--campaign-id", "77", "--older-than", "3y"], "--older-than"),
    ],
)
def test_what_to_delete_is_said_once_and_clearly(
    argv: list[str],
    said: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from worker.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("UNLEASHX_TOKEN", "t")
    assert main([*argv, "--base-url", "http://127.0.0.1:9/api"]) == 2
    err = capsys.readouterr().err
    assert said in err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


async def test_a_selection_that_fails_is_audited_and_reported(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """Listing requests went out: the audit log and the report say what was asked and how
    it ended, though nothing was deleted."""
    from worker.sending.credentials import Secret

    selecting = Selecting.of(rule("--status", "fresh"), tmp_path / "selection.csv")
    settings = make_settings(campaign_id=LIVE, token=Secret("wrong"))
    with pytest.raises(FatalError, match="authentication refused"):
        await run_purge(settings, str(selecting.path), selecting=selecting)
    records = read_audit(settings.audit_log)
    assert [r["event"] for r in records] == ["run_started", "run_finished"]
    assert records[0]["selection"]["rule"]["status"] == ["fresh"]
    assert records[0]["selection"]["collected"] is None
    assert records[1]["exit_code"] == 3
    assert "authentication refused" in records[1]["error"]
    assert settings.report is not None
    assert orjson.loads(settings.report.read_bytes())["exit_code"] == 3
    assert not selecting.path.exists()
