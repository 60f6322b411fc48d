"""run --verify against the real sandbox: a clean purge proven, deletes acknowledged but not
applied caught, retried by a re-run, and the evidence page showing what the report says."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from conftest import LIVE, read_audit, write_csv
from processes import eventually, finish, start

from worker.commands.parsers import build_parser
from worker.commands.run import run_purge
from worker.input.selecting import Selecting, rule_from
from worker.records.audit_query import check, read_records
from worker.records.evidence import render
from worker.runtime import runtime as runtime_module
from worker.sandbox import FaultConfig
from worker.sandbox.runner import SandboxHandle
from worker.sending.ratelimit import LocalRateGate, rate_gate
from worker.settings import Settings

IDS = range(1, 1001)


def ids_file(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "ids.csv", ["audience_id", *map(str, IDS)])


def report(settings: Settings) -> dict[str, object]:
    assert settings.report is not None
    data = orjson.loads(settings.report.read_bytes())
    assert isinstance(data, dict)
    return data


async def test_a_clean_purge_is_proven_gone_with_its_campaign_sizes(
    sandbox: SandboxHandle, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(campaign_id=LIVE.id, verify=True, page_size=300)
    result = await run_purge(settings, str(ids_file(tmp_path)))
    assert result.exit_code == 0
    records = read_audit(settings.audit_log)
    verified = [r for r in records if r["event"] == "verified"]
    assert len(verified) == 1
    assert verified[0]["campaign_id"] == LIVE.id
    assert verified[0]["checked"] == len(IDS)
    assert verified[0]["still_present"] == []
    left = LIVE.last - LIVE.first + 1 - len(IDS)
    assert verified[0]["listed"] == left
    assert (verified[0]["passes"], verified[0]["pages"]) == (2, 2 * -(-left // 300))
    finished = records[-1]
    assert finished["event"] == "run_finished"
    assert finished["verified"] == len(IDS)
    assert finished["still_present"] == 0
    assert finished["total_audience_before"] == LIVE.last - LIVE.first + 1
    assert finished["total_audience_after"] == left
    audience = finished["audience"][str(LIVE.id)]
    assert audience["expected_after"] == left
    assert audience["difference"] == 0
    assert report(settings)["total_audience_after"] == left
    assert check([settings.audit_log]).errors == []


@pytest.mark.parametrize("faults", [FaultConfig(ack_without_delete=0.3, seed=7)])
async def test_deletes_acknowledged_but_not_applied_are_caught_and_retried(
    sandbox: SandboxHandle, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(campaign_id=LIVE.id, verify=True, batch_size=20)
    source = ids_file(tmp_path)
    first = await run_purge(settings, str(source))
    acked = sandbox.state.snapshot()["acked_not_applied"]
    assert isinstance(acked, dict)
    assert acked["ids"] > 0
    assert first.exit_code == 1
    assert first.tally.deleted == len(IDS)  # the API said so for every id
    assert first.tally.still_present == acked["ids"]
    assert first.failed_left == acked["ids"]
    verified = [r for r in read_audit(settings.audit_log) if r["event"] == "verified"]
    still = verified[0]["still_present"]
    alive = {i for i in IDS if sandbox.state.campaigns[LIVE.id].alive(i)}
    assert set(still) == alive
    assert len(alive) == acked["ids"]
    assert settings.failed_out is not None
    failed_rows = settings.failed_out.read_text().splitlines()[1:]
    assert sorted(int(row.split(",")[1]) for row in failed_rows) == sorted(alive)
    assert all(row.endswith(",still_present") for row in failed_rows)
    audience = report(settings)["audience"]
    assert isinstance(audience, dict)
    assert audience[str(LIVE.id)]["difference"] == 0  # still present ids explain the gap

    # The evidence page shows the report's figures.
    page = render(
        (r for _, _, r in read_records([settings.audit_log])),
        check([settings.audit_log]),
        paths=[settings.audit_log],
        generated="now",
    )
    row = f'<tr id="proof-{LIVE.id}">'
    assert row in page
    cells = page.split(row, 1)[1].split("</tr>", 1)[0]
    assert f">{len(IDS)}<" in cells
    assert f">{acked['ids']}<" in cells
    assert "ids still present" in cells

    # The same command again, once the API applies deletes: the ids still present are
    # retried, and proven gone.
    sandbox.state.replace_faults(FaultConfig())
    again = await run_purge(
        make_settings(
            campaign_id=LIVE.id,
            verify=True,
            batch_size=20,
            audit_log=tmp_path / "again.jsonl",
            report=tmp_path / "again.json",
        ),
        str(source),
    )
    assert again.exit_code == 0
    assert again.tally.deleted == len(alive)
    assert again.tally.still_present == 0
    assert not any(sandbox.state.campaigns[LIVE.id].alive(i) for i in IDS)


async def test_every_request_of_a_run_select_verify_passes_its_one_rate_gate(
    sandbox: SandboxHandle,
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Listing (the selection, the read-back), stats and deletions spend one budget: the
    run makes one gate, and it granted exactly as many slots as the API got requests."""
    gates: list[LocalRateGate] = []
    slots: list[float] = []

    @asynccontextmanager
    async def counted(settings: Settings) -> AsyncIterator[LocalRateGate]:
        async with rate_gate(settings) as gate:
            assert isinstance(gate, LocalRateGate)
            gates.append(gate)
            take = gate._take

            def taking(arrival: float, now: float) -> None:
                slots.append(now)
                take(arrival, now)

            monkeypatch.setattr(gate, "_take", taking)
            yield gate

    monkeypatch.setattr(runtime_module, "rate_gate", counted)
    args = build_parser().parse_args(["run", "--select", "--status", "completed"])
    selecting = Selecting.of(rule_from(args, LIVE.id, datetime.now(UTC)), tmp_path / "s.csv")
    settings = make_settings(campaign_id=LIVE.id, verify=True, page_size=250, batch_size=50)
    result = await run_purge(settings, str(selecting.path), selecting=selecting)
    assert result.exit_code == 0
    assert len(gates) == 1
    requests = sandbox.state.requests_total
    deletes = result.tally.requests
    assert deletes < requests  # listing and stats requests came too
    assert len(slots) == requests


async def test_a_signal_while_a_read_waits_at_the_gate_ends_the_run_at_once(
    sandbox: SandboxHandle, token: str, tmp_path: Path
) -> None:
    """At 1 request a minute, the selection's first page waits a minute for its slot
    (after the stats it is checked against): a SIGTERM then ends the run at once (exit 75,
    nothing selected, nothing sent), not a minute later."""
    proc = await start(
        "run",
        "--select",
        "--campaign-id",
        str(LIVE.id),
        "--status",
        "fresh",
        "--page-size",
        "10000",
        "--base-url",
        sandbox.url,
        "--rate",
        "1/minute",
        "--audit-log",
        str(tmp_path / "audit.jsonl"),
        "--state-dir",
        str(tmp_path / "state"),
        "--selection",
        str(tmp_path / "selection.csv"),
        cwd=tmp_path,
        token=token,
    )
    await eventually(lambda: sandbox.state.requests_total >= 1, what="the selection's stats")
    await asyncio.sleep(0.3)  # now waiting at the gate for page 1's slot
    proc.send_signal(signal.SIGTERM)
    done = await finish(proc, timeout=15)
    assert done.code == 75, done.err
    assert sandbox.state.requests_total == 1
    assert not (tmp_path / "selection.csv").exists()
    assert sandbox.state.campaigns[LIVE.id].deleted_count == 0


@pytest.mark.parametrize("faults", [FaultConfig(ack_without_delete=0.3, seed=11)])
async def test_verify_on_a_rerun_reads_back_what_every_run_of_the_purge_deleted(
    sandbox: SandboxHandle, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """The purge ran without --verify; the same command with --verify afterwards sends
    nothing, and reads back the ids the first run deleted (through its audit file)."""
    source = ids_file(tmp_path)
    first = await run_purge(make_settings(campaign_id=LIVE.id, batch_size=20), str(source))
    assert first.exit_code == 0  # the API acknowledged every batch
    alive = {i for i in IDS if sandbox.state.campaigns[LIVE.id].alive(i)}
    assert alive
    settings = make_settings(
        campaign_id=LIVE.id, batch_size=20, verify=True, audit_log=tmp_path / "again.jsonl"
    )
    again = await run_purge(settings, str(source))
    assert again.tally.requests == 0
    assert again.exit_code == 1
    assert again.tally.verified == len(IDS)
    assert again.tally.still_present == len(alive)
    assert settings.failed_out is not None
    rows = settings.failed_out.read_text().splitlines()[1:]
    assert sorted(int(row.split(",")[1]) for row in rows) == sorted(alive)


@pytest.mark.parametrize("faults", [FaultConfig(ack_without_delete=0.3, seed=5)])
async def test_a_selection_purge_that_left_ids_still_present_retries_them_on_the_same_command(
    sandbox: SandboxHandle, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    args = build_parser().parse_args(["run", "--select", "--status", "completed"])
    selecting = Selecting.of(rule_from(args, LIVE.id, datetime.now(UTC)), tmp_path / "s.csv")
    first_log, second_log = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    first = await run_purge(
        make_settings(campaign_id=LIVE.id, verify=True, batch_size=25, audit_log=first_log),
        str(selecting.path),
        selecting=selecting,
    )
    assert first.exit_code == 1
    assert first.tally.still_present > 0
    collected = selecting.path.read_bytes()
    sandbox.state.replace_faults(FaultConfig())
    second = await run_purge(
        make_settings(campaign_id=LIVE.id, verify=True, batch_size=25, audit_log=second_log),
        str(selecting.path),
        selecting=selecting,
    )
    assert second.exit_code == 0
    assert second.tally.deleted == first.tally.still_present  # only those, retried
    assert selecting.path.read_bytes() == collected  # not collected again
    chosen = [int(line.split(b",")[1]) for line in collected.splitlines()[1:]]
    assert not any(sandbox.state.campaigns[LIVE.id].alive(i) for i in chosen)
    assert check([first_log, second_log]).errors == []


async def test_the_evidence_page_states_the_rule_a_purge_selected_by(
    sandbox: SandboxHandle, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    args = build_parser().parse_args(
        ["run", "--select", "--status", "halted", "--older-than", "30d"]
    )
    now = datetime(2026, 11, 30, 12, tzinfo=UTC)
    selecting = Selecting.of(rule_from(args, LIVE.id, now), tmp_path / "s.csv")
    settings = make_settings(campaign_id=LIVE.id, verify=True)
    result = await run_purge(settings, str(selecting.path), selecting=selecting)
    assert result.exit_code == 0
    page = render(
        (r for _, _, r in read_records([settings.audit_log])),
        check([settings.audit_log]),
        paths=[settings.audit_log],
        generated="now",
    )
    collected = result.selection["collected"] if result.selection else {}
    assert (
        f"records of campaign {LIVE.id}, whose status is halted, last attempted before "
        "2026-10-31T12:00:00Z (older than 30d); records never attempted left out. Collected "
        f"{collected['selected']} of {collected['listed']} records listed"
    ) in page
    assert f"<code>{collected['sha256']}</code>" in page


def test_dry_runs_and_verify_runs_keep_their_audit_logs_apart(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """Each is a chain of its own: beside a purge's files, audit verify would call two
    chains in one set tampering."""
    from worker.runtime.runtime import Runtime

    audit_dir = tmp_path / "purge-audit"
    settings = make_settings(audit_log=None, audit_dir=audit_dir)
    assert Runtime(settings, "run").audit_path.parent == audit_dir
    dry = make_settings(audit_log=None, audit_dir=audit_dir, dry_run=True)
    assert Runtime(dry, "run", needs_token=False).audit_path.parent == audit_dir / "dry-run"
    assert Runtime(settings, "verify").audit_path.parent == audit_dir / "verify"
    given = make_settings(audit_log=tmp_path / "mine.jsonl", dry_run=True)
    assert Runtime(given, "run", needs_token=False).audit_path == tmp_path / "mine.jsonl"
