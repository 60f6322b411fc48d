"""Guards: a failure-rate halt and a deadline stop a run early, resumably; their values."""

from __future__ import annotations

import io
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import read_audit, write_csv
from processes import finish, start

from worker.commands.run import run_purge
from worker.errors import UsageError
from worker.runtime.guards import FailureRateGuard
from worker.sandbox import FaultConfig
from worker.sandbox.runner import SandboxHandle
from worker.settings import Settings
from worker.settings.rate import RateSpec
from worker.settings.units import deadline, percentage

MakeSettings = Callable[..., Settings]
IDS = [str(i) for i in range(1, 2001)]


@pytest.mark.parametrize("faults", [FaultConfig(error_ratio=1.0)], ids=["every-request-5xx"])
async def test_a_failure_rate_halt_stops_after_one_window_and_the_rerun_completes(
    sandbox: SandboxHandle, make_settings: MakeSettings, tmp_path: Path
) -> None:
    ids = write_csv(tmp_path / "ids.csv", IDS)
    settings = make_settings(
        campaign_id=42, max_attempts=1, halt_on_failure_rate=0.05, concurrency=4
    )

    halted = await run_purge(settings, str(ids))

    assert halted.exit_code == 1
    # One window (100 ids: 10 batches of 10) failed; then only what was in flight.
    assert 10 <= sandbox.state.requests_total <= 10 + settings.concurrency
    finished = read_audit(settings.audit_log)[-1]
    assert finished["event"] == "run_finished"
    assert finished["halted"].startswith("10")  # "10.. of the last 1.. ids failed (..)"
    assert "> --halt-on-failure-rate 5%" in finished["halted"]

    sandbox.state.replace_faults(FaultConfig())
    again = await run_purge(settings, str(ids))

    assert again.exit_code == 0
    assert [i for i in range(1, 2001) if sandbox.state.campaigns[42].alive(i)] == []


@pytest.mark.parametrize("faults", [FaultConfig(error_ratio=0.03, seed=11)], ids=["3%-5xx"])
async def test_failures_below_the_limit_do_not_halt(
    sandbox: SandboxHandle, make_settings: MakeSettings, tmp_path: Path
) -> None:
    ids = write_csv(tmp_path / "ids.csv", IDS)
    settings = make_settings(campaign_id=42, max_attempts=1, halt_on_failure_rate=0.5)

    result = await run_purge(settings, str(ids))

    assert result.exit_code == 1  # some ids failed, and the run went to the end
    assert result.tally.deleted + result.tally.failed == 2000
    assert read_audit(settings.audit_log)[-1]["halted"] is None


@pytest.mark.slow
async def test_a_deadline_stops_the_run_gracefully_with_75_and_the_rerun_completes(
    sandbox: SandboxHandle,
    make_settings: MakeSettings,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ids = write_csv(tmp_path / "ids.csv", [str(i) for i in range(1, 501)])
    settings = make_settings(
        campaign_id=42,
        batch_size=5,
        rate=RateSpec(20, 1.0),  # 100 requests: 5 s
        deadline=datetime.now(UTC) + timedelta(seconds=2),
        progress_interval=0.5,
    )

    stopped = await run_purge(settings, str(ids))

    assert stopped.exit_code == 75
    assert stopped.interrupted
    assert 30 <= stopped.tally.requests <= 50  # about 2 s at 20/s
    finished = read_audit(settings.audit_log)[-1]
    assert (finished["stopped_by"], finished["interrupted"]) == ("deadline", True)
    logged = capsys.readouterr()
    assert "deadline at risk" in logged.out + logged.err

    again = await run_purge(
        make_settings(campaign_id=42, batch_size=5, audit_log=tmp_path / "again.jsonl"),
        str(ids),
    )

    assert again.exit_code == 0
    assert [i for i in range(1, 501) if sandbox.state.campaigns[42].alive(i)] == []
    assert sandbox.state.receipts[42].resent == 0


def test_the_failure_window_holds_at_least_100_ids_and_slides() -> None:
    early: list[str] = []
    young = FailureRateGuard(0.2, early.append, window=10)
    for _ in range(9):
        young.on_event("failed", {"audience_ids": list(range(10))})
    assert early == []  # 90 ids: not a window yet, however bad

    trips: list[str] = []
    guard = FailureRateGuard(0.2, trips.append, window=10)
    for _ in range(40):
        guard.on_event("deleted", {"audience_ids": list(range(10))})
    for _ in range(2):
        guard.on_event("failed", {"audience_ids": list(range(10))})
    assert trips == []  # 20 of the last 100 failed: not more than 20%
    guard.on_event("failed", {"audience_ids": [1]})
    assert trips == ["21 of the last 101 ids failed (21% > --halt-on-failure-rate 20%)"]


@pytest.mark.parametrize(
    ("text", "share"), [("5%", 0.05), ("0.5 %", 0.005), ("12.5%", 0.125), ("0.05", 0.05)]
)
def test_percentages(text: str, share: float) -> None:
    assert percentage(text) == pytest.approx(share)


@pytest.mark.parametrize("text", ["5", "0%", "100%", "150%", "-5%", "\u0665%", "five"])
def test_percentages_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"percentage|above 0%"):
        percentage(text)


NOW = datetime(2026, 11, 30, 1, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "after"),
    [("2h", 7200), ("1h30m", 5400), ("45m", 2700), ("90s", 90), ("1d", 86400)],
)
def test_deadlines_as_durations(text: str, after: int) -> None:
    assert deadline(text, now=NOW) == NOW + timedelta(seconds=after)


def test_deadlines_as_times() -> None:
    assert deadline("2026-11-30T03:00:00Z", now=NOW) == datetime(2026, 11, 30, 3, tzinfo=UTC)
    assert deadline("2026-11-30T04:00:00+01:00", now=NOW) == NOW + timedelta(hours=2)


@pytest.mark.parametrize(
    "text", ["2026-11-30T03:00:00", "2026-11-29T03:00:00Z", "0h", "soon", "", "2 hours"]
)
def test_deadlines_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"duration|offset|future"):
        deadline(text, now=NOW)


def guarded_input(path: Path) -> Path:
    """300 distinct valid ids, a rejected row and two repeats."""
    return write_csv(path, [str(i) for i in range(1, 301)] + ["abc", "7", "8"])


@pytest.mark.parametrize(
    ("guard", "refused"),
    [
        ({"max_deletes": 299}, "holds 300 valid ids, more than --max-deletes 299"),
        ({"expect_count": 301}, "holds 300 valid ids, not the 301 of --expect-count"),
        ({"expect_count": 299}, "holds 300 valid ids, not the 299 of --expect-count"),
    ],
)
async def test_a_count_guard_refuses_before_anything_is_sent_or_written(
    sandbox: SandboxHandle,
    make_settings: MakeSettings,
    tmp_path: Path,
    guard: dict[str, int],
    refused: str,
) -> None:
    settings = make_settings(campaign_id=42, **guard)

    with pytest.raises(UsageError, match=refused):
        await run_purge(settings, str(guarded_input(tmp_path / "ids.csv")))

    assert sandbox.state.requests_total == 0
    assert not settings.audit_log.exists()
    assert settings.state_dir is not None
    assert not settings.state_dir.exists()


@pytest.mark.parametrize("guard", [{"max_deletes": 300}, {"expect_count": 300}])
async def test_a_count_guard_that_holds_lets_the_run_go(
    sandbox: SandboxHandle, make_settings: MakeSettings, tmp_path: Path, guard: dict[str, int]
) -> None:
    result = await run_purge(
        make_settings(campaign_id=42, **guard), str(guarded_input(tmp_path / "ids.csv"))
    )

    assert (result.exit_code, result.tally.deleted) == (0, 300)


async def test_a_count_guard_on_stdin_is_refused_with_what_to_do(
    sandbox: SandboxHandle, token: str, tmp_path: Path
) -> None:
    proc = await start(
        *("run", "--input", "-", "--campaign-id", "42", "--base-url", sandbox.url),
        *("--max-deletes", "10"),
        cwd=tmp_path,
        token=token,
        stdin=True,
    )
    assert proc.stdin is not None
    proc.stdin.write(b"1\n2\n")
    proc.stdin.close()
    done = await finish(proc)

    assert done.code == 2
    assert "save it to a file first" in done.err
    assert sandbox.state.requests_total == 0


async def test_a_dry_run_says_what_the_guards_would_say(
    make_settings: MakeSettings, tmp_path: Path
) -> None:
    out = io.StringIO()
    settings = make_settings(campaign_id=42, dry_run=True, token=None, max_deletes=100)

    result = await run_purge(settings, str(guarded_input(tmp_path / "ids.csv")), out=out)

    assert result.exit_code == 0
    assert (
        "  guards: would refuse: the input holds 300 valid ids, more than --max-deletes 100 "
        "(300 valid ids in the whole input, counted in "
    ) in out.getvalue()
