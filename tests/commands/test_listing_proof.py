"""Proof that cannot be fooled by the listing (issue 18): ``run --verify``, ``verify`` and
``select``, run as a user runs them, against the sandbox's listing faults.

Campaign 42 holds ids 1..50 and is read 10 records a page, as in the issue; id 11 is
acknowledged as deleted but not deleted. Every case ends in a correct answer (id 11 found,
the selection as the campaign now is) or a non-zero exit, never in "gone".
"""

from __future__ import annotations

import csv
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from processes import Completed, finish, start

from worker.commands.run import all_selected_settled
from worker.records.report import RunResult
from worker.records.tally import Tally
from worker.sandbox import CampaignSpec, FaultConfig, SandboxConfig, running_sandbox
from worker.sandbox.runner import SandboxHandle

CAMPAIGN = CampaignSpec(42, "inprogress", 1, 50)
ACKED = 11  # acknowledged as deleted, never deleted
RULE = ("--older-than", "1m", "--include-never-attempted")  # every record matches
ERRORS = ("error-200", "bool-totals", "endless", "oversized")


@pytest.fixture
async def api(token: str) -> AsyncIterator[SandboxHandle]:
    config = SandboxConfig(campaigns=(CAMPAIGN,), token=token)
    async with running_sandbox(config) as handle:
        yield handle


def fault(mode: str, times: int | None = None) -> FaultConfig:
    return FaultConfig(listing_fault=mode, listing_fault_times=times)


async def cli(api: SandboxHandle, token: str, cwd: Path, *args: str, size: int = 10) -> Completed:
    """The CLI in a child process, fast settings, against ``api``, ``size`` records a page."""
    fast = ("--base-url", api.url, "--rate", "1000/s", "--page-size", str(size))
    retry = ("--max-attempts", "2")
    return await finish(await start(*args, *fast, *retry, cwd=cwd, token=token), timeout=60)


async def purge_acked(api: SandboxHandle, token: str, cwd: Path, *extra: str) -> Completed:
    """Purge id 11 from a sandbox that acknowledges it without deleting it."""
    ids = cwd / "ids.csv"
    ids.write_text(f"audience_id\n{ACKED}\n")
    api.state.replace_faults(FaultConfig(ack_without_delete=1.0))
    command = ("run", "--input", str(ids), "--campaign-id", "42", "--progress", "off")
    files = ("--audit-log", str(cwd / "purge.jsonl"), "--report", str(cwd / "report.json"))
    return await cli(api, token, cwd, *command, *files, *extra)


def finished(path: Path) -> dict[str, Any]:
    last: dict[str, Any] = orjson.loads(path.read_bytes().splitlines()[-1])
    assert last["event"] == "run_finished"
    return last


def verified(path: Path) -> list[dict[str, Any]]:
    return [
        r
        for line in path.read_bytes().splitlines()
        if (r := orjson.loads(line))["event"] == "verified"
    ]


def selected(path: Path) -> list[int]:
    with path.open(newline="") as handle:
        return [int(row["audience_id"]) for row in csv.DictReader(handle)]


def after_the_ack(api: SandboxHandle, monkeypatch: pytest.MonkeyPatch, then: FaultConfig) -> None:
    """The run's delete of id 11 is acknowledged without being applied; from then on the
    sandbox has the faults ``then`` (for the read-back of the same run)."""
    api.state.replace_faults(FaultConfig(ack_without_delete=1.0))
    acked = api.state.record_acked_not_applied

    def and_then(campaign_id: int, ids: list[int]) -> None:
        acked(campaign_id, ids)
        api.state.replace_faults(then)

    monkeypatch.setattr(api.state, "record_acked_not_applied", and_then)


# -- 1. the campaign changes while it is listed ------------------------------------------


@pytest.mark.parametrize("times", [1, None], ids=["once", "always"])
async def test_run_verify_finds_the_record_a_churning_listing_skipped(
    api: SandboxHandle,
    token: str,
    tmp_path: Path,
    times: int | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    after_the_ack(api, monkeypatch, fault("churn", times))
    ids = tmp_path / "ids.csv"
    ids.write_text(f"audience_id\n{ACKED}\n")
    done = await cli(
        api, token, tmp_path, "run", "--input", str(ids), "--campaign-id", "42",
        "--progress", "off", "--verify", "--audit-log", str(tmp_path / "purge.jsonl"),
    )  # fmt: skip

    assert api.state.listing_faults_served >= 1
    assert done.code == 1, done.err
    [check] = verified(tmp_path / "purge.jsonl")
    assert check["still_present"] == [ACKED]
    if times == 1:  # settled: the third pass agreed with the second
        assert api.state.campaigns[42].alive(ACKED)
        assert (check["unproven"], check["passes"]) == (None, 3)
    else:
        assert "changed while it was listed" in check["unproven"]
    assert "done (exit 0)" not in done.out + done.err


@pytest.mark.parametrize("times", [1, None], ids=["once", "always"])
async def test_verify_finds_the_record_a_churning_listing_skipped(
    api: SandboxHandle, token: str, tmp_path: Path, times: int | None
) -> None:
    assert (await purge_acked(api, token, tmp_path)).code == 0
    api.state.replace_faults(fault("churn", times))  # before page 2: 1 removed, 51 added

    done = await cli(
        api, token, tmp_path, "verify", "--audit", str(tmp_path / "purge.jsonl"),
        "--audit-log", str(tmp_path / "verify.jsonl"), "--failed-out", str(tmp_path / "still.csv"),
    )  # fmt: skip

    assert done.code == 1, done.out + done.err
    assert finished(tmp_path / "verify.jsonl")["exit_code"] == 1
    [check] = verified(tmp_path / "verify.jsonl")
    assert check["still_present"] == [ACKED]
    assert (tmp_path / "still.csv").read_text().splitlines()[1].startswith(f"42,{ACKED},")
    assert "every id recorded as deleted is gone" not in done.out


async def test_select_neither_misses_a_skipped_record_nor_selects_a_removed_one(
    api: SandboxHandle, token: str, tmp_path: Path
) -> None:
    api.state.replace_faults(fault("churn", 1))  # before page 2: 1 removed, 51 added
    out = tmp_path / "sel.csv"

    done = await cli(
        api, token, tmp_path, "select", "--campaign-id", "42", *RULE, "--out", str(out)
    )

    assert done.code == 0, done.err
    assert api.state.listing_faults_served == 1
    assert selected(out) == list(range(2, 52))
    assert "selected 50 records " in done.err
    assert " of 50 listed (15 pages, 3 passes)" in done.err


async def test_select_refuses_a_listing_that_never_settles(
    api: SandboxHandle, token: str, tmp_path: Path
) -> None:
    api.state.replace_faults(fault("churn"))
    out = tmp_path / "sel.csv"

    done = await cli(
        api, token, tmp_path, "select", "--campaign-id", "42", *RULE, "--out", str(out)
    )

    assert done.code == 2
    assert "could not be listed completely" in done.err
    assert "(5 passes); nothing is selected" in done.err
    assert not out.exists()
    assert len(done.err.strip().splitlines()[-1]) < 400


# -- 2. and 5. answers that are not a listing; paging without end --------------------------


@pytest.mark.parametrize("mode", [*ERRORS, "padded"])
async def test_verify_is_unproven_when_the_listing_lies(
    api: SandboxHandle, token: str, tmp_path: Path, mode: str
) -> None:
    assert (await purge_acked(api, token, tmp_path)).code == 0
    api.state.replace_faults(fault(mode))
    size = 7 if mode == "padded" else 10  # the last page has room for the foreign record

    done = await cli(
        api, token, tmp_path, "verify", "--audit", str(tmp_path / "purge.jsonl"),
        "--audit-log", str(tmp_path / "verify.jsonl"), size=size,
    )  # fmt: skip

    assert api.state.listing_faults_served >= 1
    assert done.code == 1, done.out + done.err
    [check] = verified(tmp_path / "verify.jsonl")
    assert check["unproven"]
    assert "NOT PROVEN" in done.out
    assert "every id recorded as deleted is gone" not in done.out


@pytest.mark.parametrize("mode", [*ERRORS, "padded"])
async def test_select_writes_nothing_when_the_listing_lies(
    api: SandboxHandle, token: str, tmp_path: Path, mode: str
) -> None:
    api.state.replace_faults(fault(mode))
    out = tmp_path / "sel.csv"
    size = 7 if mode == "padded" else 10

    done = await cli(
        api, token, tmp_path, "select", "--campaign-id", "42", *RULE, "--out", str(out), size=size
    )

    assert done.code == 2, done.err
    assert "could not be listed completely" in done.err
    assert not out.exists()
    assert list(tmp_path.glob("*.partial")) == []


@pytest.mark.parametrize("mode", ERRORS)
async def test_run_verify_is_unproven_when_the_listing_lies(
    api: SandboxHandle, token: str, tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    after_the_ack(api, monkeypatch, fault(mode))
    ids = tmp_path / "ids.csv"
    ids.write_text(f"audience_id\n{ACKED}\n")

    done = await cli(
        api, token, tmp_path, "run", "--input", str(ids), "--campaign-id", "42",
        "--progress", "off", "--verify", "--audit-log", str(tmp_path / "purge.jsonl"),
    )  # fmt: skip

    assert done.code == 1, done.err
    last = finished(tmp_path / "purge.jsonl")
    assert last["unproven"]["42"]
    assert last["exit_code"] == 1


async def test_an_error_answered_once_is_retried_and_the_listing_proven(
    api: SandboxHandle, token: str, tmp_path: Path
) -> None:
    assert (await purge_acked(api, token, tmp_path)).code == 0
    api.state.replace_faults(fault("error-200", 1))

    done = await cli(
        api, token, tmp_path, "verify", "--audit", str(tmp_path / "purge.jsonl"),
        "--audit-log", str(tmp_path / "verify.jsonl"),
    )  # fmt: skip

    assert api.state.listing_faults_served == 1
    assert done.code == 1  # id 11 is still there, and found
    [check] = verified(tmp_path / "verify.jsonl")
    assert (check["still_present"], check["unproven"]) == ([ACKED], None)


async def test_endless_pages_end_within_the_pass_budget(
    api: SandboxHandle, token: str, tmp_path: Path
) -> None:
    api.state.replace_faults(fault("endless"))
    before = api.state.requests_total

    done = await cli(api, token, tmp_path, "select", "--campaign-id", "42", *RULE, "--out", "-")

    assert done.code == 2
    assert "not a listing" in done.err
    assert api.state.requests_total - before <= 2 * 2  # stats, then page 1 twice (its retry)


# -- 6. select only what run can delete -----------------------------------------------------


async def test_select_and_run_select_refuse_a_record_run_could_not_delete(
    token: str, tmp_path: Path
) -> None:
    huge = CampaignSpec(42, "inprogress", 2**63 - 2, 2**63 + 1)
    config = SandboxConfig(campaigns=(huge,), token=token)
    async with running_sandbox(config) as api:
        selecting = await cli(api, token, tmp_path, "select", "--campaign-id", "42", *RULE)
        running = await cli(
            api, token, tmp_path, "run", "--select", "--campaign-id", "42", *RULE,
            "--progress", "off",
        )  # fmt: skip
        deleted = api.state.campaigns[42].deleted_count

    for done in (selecting, running):
        assert done.code == 2, done.err
        assert (
            "record 9223372036854775808 of campaign 42 matches the rule, but run cannot delete "
            "it (audience_id out of 64-bit range): nothing is selected"
        ) in done.err
    assert deleted == 0
    assert selecting.out == ""


@pytest.mark.parametrize(
    ("selecting", "rejected", "code"), [(True, 1, 1), (True, 0, 0), (False, 1, 0)]
)
def test_a_run_select_that_left_a_selected_row_unsent_does_not_exit_0(
    selecting: bool, rejected: int, code: int, tmp_path: Path
) -> None:
    sent = RunResult(
        "run-1", 0, Tally(rows=2, valid=1, deleted=1, rejected=rejected), 0.1,
        tmp_path / "a.jsonl", None, None, interrupted=False, fatal_reason=None, dry_run=False,
    )  # fmt: skip

    assert all_selected_settled(sent, selecting=selecting).exit_code == code
