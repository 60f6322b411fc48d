"""A state directory belongs to one purge: its target, and its input by content.

A rehearsal against the sandbox and the production run must not share progress; rows
appended to a finished input are picked up; earlier failures stay listed in --failed-out.
"""

from __future__ import annotations

import csv
import signal
from pathlib import Path

import pytest
from purging import (  # noqa: F401  (the *_fixture names are fixtures)
    CAMPAIGN,
    IDS,
    Purge,
    complete_records,
    csv_bytes,
    ids_of,
    purge_fixture,
)

from worker.sandbox import FaultConfig
from worker.sandbox.runner import SandboxHandle

pytestmark = pytest.mark.slow

STATE = ("--state-dir", "shared-state")


def other_target(purge: Purge, what: str) -> tuple[str, ...]:
    """Arguments that point the same command at another target (later flags win)."""
    if what == "base-url":
        return ("--base-url", purge.sandbox.url.replace("127.0.0.1", "localhost"))
    if what == "campaign":
        return ("--campaign-id", "77")
    return ("--shard", "0/2")


@pytest.mark.parametrize("what", ["base-url", "campaign", "shard"])
async def test_a_state_directory_reused_for_another_target_exits_2_and_sends_nothing(
    purge: Purge, sandbox: SandboxHandle, what: str
) -> None:
    done = await purge.run(*STATE)
    assert done.code == 0, done.err
    requests = sandbox.state.requests_total

    refused = await purge.run(*STATE, *other_target(purge, what))

    assert refused.code == 2, refused.err
    assert "Traceback" not in refused.err
    flag = {"base-url": "--base-url", "campaign": "--campaign-id", "shard": "--shard"}[what]
    assert f"belongs to another purge ({flag} " in refused.err
    assert "--fresh" in refused.err
    assert sandbox.state.requests_total == requests


async def test_fresh_takes_a_state_directory_over_for_another_campaign(
    purge: Purge, sandbox: SandboxHandle
) -> None:
    done = await purge.run(*STATE)
    assert done.code == 0, done.err

    again = await purge.run(*STATE, "--campaign-id", "77", "--fresh")

    assert again.code == 0, again.err
    assert [i for i in IDS if sandbox.state.campaigns[77].alive(i)] == []


async def test_the_base_urls_credentials_do_not_bind_the_state(
    purge: Purge, sandbox: SandboxHandle
) -> None:
    await purge.stopped_midway(*STATE)
    with_user = purge.sandbox.url.replace("http://", "http://ops:rotated@")

    again = await purge.run(*STATE, "--base-url", with_user)

    assert again.code == 0, again.err
    assert [i for i in IDS if sandbox.state.campaigns[CAMPAIGN].alive(i)] == []


@pytest.mark.parametrize("interrupted", [False, True], ids=["finished", "interrupted"])
async def test_rows_appended_to_the_input_are_purged_by_the_rerun_and_nothing_is_resent(
    purge: Purge, sandbox: SandboxHandle, interrupted: bool
) -> None:
    if interrupted:
        await purge.stopped_midway()
    else:
        done = await purge.run()
        assert done.code == 0, done.err
    appended = range(501, 561)
    with (purge.cwd / "ids.csv").open("ab") as handle:
        handle.write(csv_bytes(appended))

    again = await purge.run()

    assert again.code == 0, again.err
    campaign = sandbox.state.campaigns[CAMPAIGN]
    assert [i for i in [*IDS, *appended] if campaign.alive(i)] == []
    assert sandbox.state.receipts[CAMPAIGN].resent == 0
    last = complete_records(purge.audit_files()[-1])
    assert set(appended) <= ids_of(last, "deleted")
    if not interrupted:
        assert ids_of(last, "deleted") == set(appended)


def listed(path: Path) -> set[int]:
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return {int(row["audience_id"]) for row in rows}


@pytest.mark.parametrize("faults", [FaultConfig(error_ratio=1.0)], ids=["every-request-5xx"])
async def test_no_retry_failed_keeps_the_earlier_failures_in_the_same_failed_out(
    purge: Purge, sandbox: SandboxHandle
) -> None:
    failed = await purge.run("--max-attempts", "1", "--failed-out", "failed.csv")
    assert failed.code == 1, failed.err
    assert listed(purge.cwd / "failed.csv") == set(IDS)

    again = await purge.run("--no-retry-failed", "--failed-out", "failed.csv")

    assert again.code == 1, again.err
    assert listed(purge.cwd / "failed.csv") == set(IDS)
    assert "failed.csv" in again.out


@pytest.mark.parametrize("faults", [FaultConfig(error_ratio=1.0)], ids=["every-request-5xx"])
async def test_failed_out_lists_only_the_ids_still_failed_after_a_retrying_rerun(
    purge: Purge, sandbox: SandboxHandle
) -> None:
    failed = await purge.run("--max-attempts", "1", "--failed-out", "failed.csv")
    assert failed.code == 1, failed.err
    await purge.set_faults(error_ratio=0.5, seed=7)

    again = await purge.run("--max-attempts", "1", "--failed-out", "failed.csv")

    assert again.code == 1, again.err
    still = {i for i in IDS if sandbox.state.campaigns[CAMPAIGN].alive(i)}
    assert still
    assert still != set(IDS)
    assert listed(purge.cwd / "failed.csv") == still


@pytest.mark.parametrize("faults", [FaultConfig(error_ratio=1.0)], ids=["every-request-5xx"])
async def test_earlier_failures_are_in_failed_out_from_the_start_of_a_rerun_killed_midway(
    purge: Purge, sandbox: SandboxHandle
) -> None:
    failed = await purge.run("--max-attempts", "1", "--failed-out", "failed.csv")
    assert failed.code == 1, failed.err
    await purge.set_faults()
    with (purge.cwd / "ids.csv").open("ab") as handle:
        handle.write(csv_bytes(range(501, 1001)))

    killed = await purge.stopped_when(
        lambda records: len(records) > 0 and records[-1]["event"] == "deleted",
        "--no-retry-failed",
        "--failed-out",
        "failed.csv",
        how=signal.SIGKILL,
    )

    assert killed.code == -signal.SIGKILL
    assert listed(purge.cwd / "failed.csv") == set(IDS)
