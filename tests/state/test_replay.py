"""Resume after kill -9 replays the crashed run's audit: only what was in flight is re-sent.

The checkpoint interval is an hour here, so the state knows nothing the run confirmed after
it started: every deletion the rerun does not repeat was learnt from the audit log.
"""

from __future__ import annotations

import signal

import pytest
from purging import (  # noqa: F401  (the *_fixture names are fixtures)
    BATCH_SIZE,
    CAMPAIGN,
    CONCURRENCY,
    IDS,
    Purge,
    Records,
    Verify,
    assert_every_input_id_deleted_and_nothing_else_sent,
    audit_verify_fixture,
    complete_records,
    events,
    ids_of,
    many_batches_done,
    outcome_written,
    purge_fixture,
)

from worker.sandbox.runner import SandboxHandle
from worker.state.checkpoint import STATE_FILE

pytestmark = pytest.mark.slow

NO_CHECKPOINT_DURING_THE_RUN = "checkpoint_interval = 3600\nbackoff_initial = 0.01\n"


@pytest.fixture
def hourly(purge: Purge) -> Purge:
    (purge.cwd / "purge.toml").write_text(NO_CHECKPOINT_DURING_THE_RUN, encoding="utf-8")
    return purge


def deleted_before_kill(records: Records) -> set[int]:
    return ids_of(records, "deleted")


async def test_rerun_after_kill_9_resends_at_most_the_batches_in_flight(
    hourly: Purge, sandbox: SandboxHandle, audit_verify: Verify
) -> None:
    killed = await hourly.stopped_when(many_batches_done, how=signal.SIGKILL)
    assert killed.code == -signal.SIGKILL
    confirmed = deleted_before_kill(hourly.records())
    assert len(confirmed) >= 30 * BATCH_SIZE

    again = await hourly.run()

    assert again.code == 0, again.err
    assert_every_input_id_deleted_and_nothing_else_sent(sandbox)
    resent = sandbox.state.receipts[CAMPAIGN].resent
    print(f"\nresent after kill -9 with no checkpoint since the start: {resent} ids")
    assert resent <= CONCURRENCY * BATCH_SIZE
    first, second = hourly.audit_files()
    replayed = complete_records(second)[0]["resumed"]["replayed"]
    # Every deletion the first file holds (and only those) was replayed.
    assert replayed["deleted"] == len(ids_of(complete_records(first), "deleted"))
    assert replayed["audit_log"] == str(first)  # absolute: a resume may run elsewhere
    assert ids_of(complete_records(second), "deleted").isdisjoint(confirmed)
    code, report = audit_verify([first, second])
    assert code == 0, report


async def test_a_resumed_run_killed_at_once_is_linked_by_the_next_one_and_verifies(
    hourly: Purge, sandbox: SandboxHandle, audit_verify: Verify
) -> None:
    await hourly.stopped_midway()
    # The second run is killed as soon as it has deleted something: its state still names
    # the first run's chain head.
    second_started = len(hourly.audit_files())
    killed = await hourly.stopped_when(
        lambda records: bool(events(records[_first_of_run(records, second_started) :], "deleted")),
        how=signal.SIGKILL,
    )
    assert killed.code == -signal.SIGKILL

    again = await hourly.run()

    assert again.code == 0, again.err
    assert_every_input_id_deleted_and_nothing_else_sent(sandbox)
    first, second, third = hourly.audit_files()
    assert events(complete_records(second), "deleted")
    link = complete_records(third)[0]["previous"]
    assert (link["audit_log"], link["last_hash"]) == (
        str(second),  # absolute: a resume may run from another directory
        complete_records(second)[-1]["hash"],
    )
    code, report = audit_verify([third, first, second])
    assert code == 0, report
    assert "TAMPERED" not in report
    deleted = [i for f in (first, second, third) for i in ids_of(complete_records(f), "deleted")]
    assert sorted(deleted) == list(IDS)  # every id audited as deleted exactly once


def _first_of_run(records: Records, run: int) -> int:
    """Index of the first record of the ``run``-th run (0-based) in ``records``."""
    starts = [i for i, r in enumerate(records) if r["event"] == "run_started"]
    return starts[run] if run < len(starts) else len(records)


async def test_a_state_saved_by_a_crashed_rerun_keeps_what_it_replayed(
    hourly: Purge, sandbox: SandboxHandle
) -> None:
    killed = await hourly.stopped_when(many_batches_done, how=signal.SIGKILL)
    assert killed.code == -signal.SIGKILL
    confirmed = deleted_before_kill(hourly.records())
    # The rerun is killed before its first answer: all it saved is its first checkpoint.
    await hourly.set_faults(latency_ms=5000)
    second = await hourly.stopped_when(
        lambda records: len(events(records, "run_started")) == 2, how=signal.SIGKILL
    )
    assert second.code == -signal.SIGKILL
    await hourly.set_faults()
    requests = sandbox.state.requests_total

    again = await hourly.run()

    assert again.code == 0, again.err
    assert_every_input_id_deleted_and_nothing_else_sent(sandbox)
    third = complete_records(hourly.audit_files()[-1])
    assert ids_of(third, "deleted").isdisjoint(confirmed)
    assert third[-1]["already_done"] == len(confirmed)
    assert sandbox.state.requests_total - requests <= -(-(len(IDS) - len(confirmed)) // BATCH_SIZE)
    state = (hourly.state_dir() / STATE_FILE).read_bytes()
    assert b'"complete": true' in state


async def test_an_edited_deleted_record_is_not_replayed_and_its_ids_are_sent_again(
    hourly: Purge, sandbox: SandboxHandle
) -> None:
    killed = await hourly.stopped_when(outcome_written, how=signal.SIGKILL)
    assert killed.code == -signal.SIGKILL
    (first,) = hourly.audit_files()
    lines = first.read_bytes().split(b"\n")
    at = next(i for i, line in enumerate(lines) if b'"event":"deleted"' in line)
    claimed = ids_of(complete_records(first), "deleted")
    lines[at] = lines[at].replace(b'"audience_ids":[', b'"audience_ids":[499,', 1)
    first.write_bytes(b"\n".join(lines))

    again = await hourly.run()

    assert again.code == 0, again.err
    second = complete_records(hourly.audit_files()[-1])
    assert second[0]["resumed"]["replayed"]["deleted"] == 0
    assert claimed <= ids_of(second, "deleted") | ids_of(second, "failed")
