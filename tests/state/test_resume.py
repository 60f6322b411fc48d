"""Crash-safe resume end to end: ``python -m worker run`` killed, stopped, or given bad state.

See purging.py for how each purge is run.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from processes import finish
from purging import (  # noqa: F401  (the *_fixture names are fixtures)
    CAMPAIGN,
    IDS,
    RESENT_BOUND,
    Purge,
    Records,
    Verify,
    assert_every_input_id_deleted_and_nothing_else_sent,
    audit_verify_fixture,
    audit_verify_in,
    batch_ids,
    complete_records,
    csv_bytes,
    events,
    ids_of,
    many_batches_done,
    outcome_written,
    purge_fixture,
    request_in_flight,
    run_started,
    signal_handled,
    stdin_purge_fixture,
    ten_batches_done,
)

from worker.sandbox import FaultConfig
from worker.sandbox.runner import SandboxHandle
from worker.state.checkpoint import PARTS, STATE_FILE

pytestmark = pytest.mark.slow

# -- kill -9 ------------------------------------------------------------------------------


KILL_POINTS = [
    # The sandbox holds every request for 2 s: the kill lands before any answer.
    pytest.param(FaultConfig(latency_ms=2000), run_started, False, id="before-the-first-answer"),
    pytest.param(FaultConfig(latency_ms=200), request_in_flight, False, id="requests-in-flight"),
    pytest.param(FaultConfig(), outcome_written, True, id="right-after-the-first-outcome"),
    pytest.param(FaultConfig(), many_batches_done, True, id="after-30-of-100-batches"),
]


@pytest.mark.parametrize(("faults", "reached", "deletions_expected"), KILL_POINTS)
async def test_rerun_after_kill_9_deletes_every_input_id_with_a_bounded_number_resent(
    purge: Purge,
    sandbox: SandboxHandle,
    audit_verify: Verify,
    reached: Callable[[Records], bool],
    deletions_expected: bool,
) -> None:
    killed = await purge.stopped_when(reached, how=signal.SIGKILL)
    assert killed.code == -signal.SIGKILL
    (first,) = purge.audit_files()
    assert not events(complete_records(first), "run_finished")
    assert bool(events(complete_records(first), "deleted")) is deletions_expected

    await purge.set_faults()
    again = await purge.run()

    assert again.code == 0, again.err
    assert "Traceback" not in again.err
    assert_every_input_id_deleted_and_nothing_else_sent(sandbox)
    first_again, second = purge.audit_files()
    assert first_again == first
    audited = ids_of(complete_records(first) + complete_records(second), "deleted")
    assert audited == set(IDS)
    resent = sandbox.state.receipts[CAMPAIGN].resent
    print(f"\nresent after kill -9 ({reached.__name__}): {resent} ids")
    assert resent <= RESENT_BOUND, f"{resent} ids were sent twice"
    code, report = audit_verify([first, second])
    assert code == 0, report


@pytest.mark.parametrize("faults", [FaultConfig(error_ratio=1.0)], ids=["every-request-5xx"])
async def test_rerun_after_kill_9_while_retrying_failed_ids_audits_no_false_duplicates(
    purge: Purge, sandbox: SandboxHandle, audit_verify: Verify
) -> None:
    failed = await purge.run("--max-attempts", "1")
    assert failed.code == 1, failed.err
    await purge.set_faults()
    killed = await purge.stopped_when(ten_batches_done, "--max-attempts", "1", how=signal.SIGKILL)
    assert killed.code == -signal.SIGKILL

    again = await purge.run("--max-attempts", "1")

    assert again.code == 0, again.err
    assert_every_input_id_deleted_and_nothing_else_sent(sandbox)
    third = complete_records(purge.audit_files()[-1])
    assert events(third, "duplicates") == []
    assert third[-1]["duplicates"] == 0
    code, report = audit_verify(purge.audit_files())
    assert code == 0, report


async def test_audit_verify_accepts_a_crashed_and_resumed_runs_files_from_another_directory(
    purge: Purge, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    killed = await purge.stopped_when(many_batches_done, how=signal.SIGKILL)
    assert killed.code == -signal.SIGKILL
    again = await purge.run()
    assert again.code == 0, again.err
    files = purge.audit_files()
    assert len(files) == 2
    # An auditor checks the files where they were collected, not where the purge ran.
    auditor = tmp_path_factory.mktemp("auditor")

    code, report = audit_verify_in(auditor, files, monkeypatch)

    assert code == 0, report


# -- changed input ------------------------------------------------------------------------


async def state_of_a_completed_run(purge: Purge) -> None:
    done = await purge.run()
    assert done.code == 0, done.err


async def state_of_an_interrupted_run(purge: Purge) -> None:
    await purge.stopped_midway()


@pytest.mark.parametrize(
    "make_state",
    [state_of_a_completed_run, state_of_an_interrupted_run],
    ids=["after-a-completed-run", "after-an-interrupted-run"],
)
async def test_input_changed_since_the_state_was_written_exits_2_and_sends_nothing(
    purge: Purge, sandbox: SandboxHandle, make_state: Callable[[Purge], Any]
) -> None:
    await make_state(purge)
    requests = sandbox.state.requests_total
    # The export was regenerated: its first ten ids differ (and so do the later offsets).
    (purge.cwd / "ids.csv").write_bytes(csv_bytes([*range(1001, 1011), *IDS[10:]]))

    refused = await purge.run()

    assert refused.code == 2, refused.err
    assert "Traceback" not in refused.err
    assert "changed" in refused.err
    assert "--fresh" in refused.err
    assert sandbox.state.requests_total == requests


async def test_fresh_starts_a_changed_input_over_and_completes(
    purge: Purge, sandbox: SandboxHandle
) -> None:
    await purge.stopped_midway()
    changed = [*range(1001, 1011), *IDS[10:]]
    (purge.cwd / "ids.csv").write_bytes(csv_bytes(changed))

    again = await purge.run("--fresh")

    assert again.code == 0, again.err
    campaign = sandbox.state.campaigns[CAMPAIGN]
    assert [i for i in changed if campaign.alive(i)] == []
    second = complete_records(purge.audit_files()[-1])
    assert second[0]["resumed"] is None
    assert ids_of(second, "deleted") == set(changed)


# -- corrupt state --------------------------------------------------------------------------


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def overwrite_with_garbage(path: Path) -> None:
    path.write_bytes(b"\x00\xffnot json at all\n")


@pytest.mark.parametrize("damage", [truncate, overwrite_with_garbage], ids=["truncated", "garbage"])
async def test_unreadable_state_json_exits_2_naming_it_and_sends_nothing(
    purge: Purge, sandbox: SandboxHandle, damage: Callable[[Path], None]
) -> None:
    await purge.stopped_midway()
    state = purge.state_dir() / STATE_FILE
    damage(state)
    requests = sandbox.state.requests_total

    refused = await purge.run()

    assert refused.code == 2, refused.err
    assert "Traceback" not in refused.err
    assert str(state.relative_to(purge.cwd)) in refused.err
    assert "--fresh" in refused.err
    assert sandbox.state.requests_total == requests


@pytest.mark.parametrize("part", PARTS)
async def test_modified_bitmap_file_exits_2_naming_it_and_sends_nothing(
    purge: Purge, sandbox: SandboxHandle, part: str
) -> None:
    await purge.stopped_midway()
    (blob,) = purge.state_dir().glob(f"{part}.*.bin")
    blob.write_bytes(blob.read_bytes() + b"\x01")
    requests = sandbox.state.requests_total

    refused = await purge.run()

    assert refused.code == 2, refused.err
    assert "Traceback" not in refused.err
    assert str(blob.relative_to(purge.cwd)) in refused.err
    assert sandbox.state.requests_total == requests


async def test_fresh_recovers_from_a_corrupt_state_and_completes(
    purge: Purge, sandbox: SandboxHandle
) -> None:
    await purge.stopped_midway()
    overwrite_with_garbage(purge.state_dir() / STATE_FILE)

    again = await purge.run("--fresh")

    assert again.code == 0, again.err
    assert_every_input_id_deleted_and_nothing_else_sent(sandbox)
    state = orjson.loads((purge.state_dir() / STATE_FILE).read_bytes())
    assert state["complete"] is True


# -- failed ids -----------------------------------------------------------------------------


@pytest.mark.parametrize("faults", [FaultConfig(error_ratio=1.0)], ids=["every-request-5xx"])
async def test_ids_that_failed_are_retried_and_deleted_by_the_rerun(
    purge: Purge, sandbox: SandboxHandle
) -> None:
    failed = await purge.run("--max-attempts", "1")
    assert failed.code == 1, failed.err
    assert ids_of(purge.records(), "failed") == set(IDS)
    await purge.set_faults()

    again = await purge.run("--max-attempts", "1")

    assert again.code == 0, again.err
    assert_every_input_id_deleted_and_nothing_else_sent(sandbox)
    second = complete_records(purge.audit_files()[-1])
    assert second[0]["resumed"]["failed"] == len(IDS)
    assert ids_of(second, "deleted") == set(IDS)
    assert events(second, "failed") == []
    assert second[-1]["failed_left"] == 0


@pytest.mark.parametrize("faults", [FaultConfig(error_ratio=1.0)], ids=["every-request-5xx"])
async def test_no_retry_failed_sends_nothing_and_exits_1_naming_the_ids_left(
    purge: Purge, sandbox: SandboxHandle
) -> None:
    failed = await purge.run("--max-attempts", "1")
    assert failed.code == 1, failed.err
    await purge.set_faults()
    requests = sandbox.state.requests_total

    again = await purge.run("--max-attempts", "1", "--no-retry-failed")

    assert again.code == 1, again.err
    assert sandbox.state.requests_total == requests
    assert f"failed in earlier runs, not retried: {len(IDS)}" in again.out
    assert sandbox.state.campaigns[CAMPAIGN].deleted_count == 0


# -- completed run --------------------------------------------------------------------------


async def test_rerun_of_a_completed_purge_sends_nothing_and_exits_0(
    purge: Purge, sandbox: SandboxHandle, audit_verify: Verify
) -> None:
    done = await purge.run()
    assert done.code == 0, done.err
    requests = sandbox.state.requests_total

    again = await purge.run()

    assert again.code == 0, again.err
    assert sandbox.state.requests_total == requests
    first, second = purge.audit_files()
    records = complete_records(second)
    assert records[0]["resumed"]["complete"] is True
    assert (records[-1]["deleted"], records[-1]["requests"]) == (0, 0)
    code, report = audit_verify([first, second])
    assert code == 0, report
    finisher = complete_records(first)[0]["run_id"]
    said = f"audience-purge run: already complete: 500 ids deleted by run {finisher} at "
    assert again.out.startswith(said), again.out
    third = await purge.run()
    assert third.out.startswith(said), third.out  # still the run that did the work


# -- SIGTERM --------------------------------------------------------------------------------


@pytest.mark.parametrize("faults", [FaultConfig(latency_ms=300)], ids=["latency-300ms"])
async def test_sigterm_lets_in_flight_batches_finish_within_grace_and_exits_75(
    purge: Purge, sandbox: SandboxHandle
) -> None:
    grace = 5.0
    proc = await purge.start("--grace", str(grace))
    await purge.wait_for(request_in_flight)
    loop = asyncio.get_running_loop()
    signalled = loop.time()
    proc.send_signal(signal.SIGTERM)
    done = await finish(proc)
    elapsed = loop.time() - signalled

    assert done.code == 75, done.err
    assert elapsed < grace + 2
    records = purge.records()
    assert batch_ids(records, "sending")
    assert batch_ids(records, "deleted") == batch_ids(records, "sending")
    assert events(records, "unconfirmed") == []
    assert (records[-1]["event"], records[-1]["interrupted"]) == ("run_finished", True)
    assert sandbox.state.campaigns[CAMPAIGN].deleted_count == len(ids_of(records, "deleted"))


@pytest.mark.parametrize("faults", [FaultConfig(latency_ms=5000)], ids=["latency-5s"])
async def test_second_sigterm_cuts_requests_off_as_unconfirmed_and_a_rerun_completes(
    purge: Purge, sandbox: SandboxHandle, audit_verify: Verify
) -> None:
    proc = await purge.start("--grace", "20")
    await purge.wait_for(request_in_flight)
    loop = asyncio.get_running_loop()
    signalled = loop.time()
    proc.send_signal(signal.SIGTERM)
    # Standard signals do not queue: a second SIGTERM sent before the first is delivered
    # would merge with it, so it goes out once the child has handled the first.
    await signal_handled(proc)
    proc.send_signal(signal.SIGTERM)
    done = await finish(proc)
    elapsed = loop.time() - signalled

    assert done.code == 75, done.err
    assert elapsed < 3
    records = purge.records()
    assert batch_ids(records, "sending")
    assert batch_ids(records, "unconfirmed") == batch_ids(records, "sending")
    assert events(records, "deleted") == []
    assert (records[-1]["event"], records[-1]["interrupted"]) == ("run_finished", True)

    await purge.set_faults()
    again = await purge.run()

    assert again.code == 0, again.err
    assert_every_input_id_deleted_and_nothing_else_sent(sandbox)
    code, report = audit_verify(purge.audit_files())
    assert code == 0, report


# -- stdin ----------------------------------------------------------------------------------


async def test_stdin_input_fed_the_same_bytes_again_resumes_and_completes(
    stdin_purge: Purge, sandbox: SandboxHandle, audit_verify: Verify
) -> None:
    data = csv_bytes(IDS)
    await stdin_purge.stopped_midway(stdin=data)

    again = await stdin_purge.run(stdin=data)

    assert again.code == 0, again.err
    assert_every_input_id_deleted_and_nothing_else_sent(sandbox)
    first, second = stdin_purge.audit_files()
    assert complete_records(second)[0]["resumed"]["runs"] == [complete_records(first)[0]["run_id"]]
    assert ids_of(complete_records(first) + complete_records(second), "deleted") == set(IDS)
    code, report = audit_verify([first, second])
    assert code == 0, report
    resent = sandbox.state.receipts[CAMPAIGN].resent
    print(f"\nresent after SIGTERM on stdin: {resent} ids")
    assert resent == 0


async def test_stdin_input_fed_different_bytes_exits_2_and_sends_nothing(
    stdin_purge: Purge, sandbox: SandboxHandle
) -> None:
    await stdin_purge.stopped_midway(stdin=csv_bytes(IDS))
    requests = sandbox.state.requests_total

    refused = await stdin_purge.run(stdin=csv_bytes([*range(1001, 1011), *IDS[10:]]))

    assert refused.code == 2, refused.err
    assert "Traceback" not in refused.err
    assert "changed" in refused.err
    assert "--fresh" in refused.err
    assert sandbox.state.requests_total == requests


async def test_stdin_resume_checks_the_input_before_retrying_earlier_failures(
    stdin_purge: Purge, sandbox: SandboxHandle
) -> None:
    data = csv_bytes(IDS)
    await stdin_purge.set_faults(error_ratio=1.0)
    failed = await stdin_purge.run("--max-attempts", "1", stdin=data)
    assert failed.code == 1, failed.err
    await stdin_purge.set_faults()
    requests = sandbox.state.requests_total

    refused = await stdin_purge.run(stdin=csv_bytes([*range(1001, 1011)]))

    assert refused.code == 2, refused.err
    assert "changed" in refused.err
    assert sandbox.state.requests_total == requests
