"""Specification of worker.state.resume at its edges (issue #25: its mutants showed what the
kill -9 tests leave open): where a purge keeps its state, what binds a state to its target,
how a saved checkpoint becomes a plan, where the previous audit chain ended, and what a
snapshot claims. In process, no server."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from pyroaring import BitMap64
from structlog.testing import capture_logs

from worker.errors import OutputError, StateError
from worker.input.batching import Batcher, Deduper
from worker.input.planning import Plan
from worker.input.sources import InputDigest, Prefix
from worker.input.validate import Layout, Row
from worker.records.audit import AuditLog
from worker.records.recorder import Recorder
from worker.settings import Settings
from worker.state.checkpoint import Checkpoint, StateStore, default_state_dir
from worker.state.resume import (
    Checkpointer,
    _in_a_thread_to_the_end,
    _union,
    check_target,
    make_plan,
    open_state,
    peek_state,
    previous_link,
    run_target,
    state_directory,
)
from worker.state.watermark import Ledger

URL = "https://api.example"


def lists(pairs: dict[int, BitMap64]) -> dict[int, list[int]]:
    return {campaign: list(ids) for campaign, ids in pairs.items()}


# -- where the state is, and what it belongs to -----------------------------------------------


def test_the_state_directory_is_the_one_given_or_derived_from_the_purge_and_its_shard() -> None:
    given = Path("/tmp/given")
    assert state_directory(Settings(state_dir=given), "ids.csv") == given
    settings = Settings(base_url=URL, campaign_id=7)
    assert state_directory(settings, "ids.csv") == default_state_dir("ids.csv", 7, URL, "")
    shard = Settings(base_url=URL, campaign_id=7, shard_index=1, shard_count=4)
    assert state_directory(shard, "ids.csv") == default_state_dir("ids.csv", 7, URL, "1/4")


def test_the_target_is_the_api_without_credentials_the_campaign_and_the_shard() -> None:
    settings = Settings(base_url="https://user:pw@api.example:8443/v1/?q=1#f", campaign_id=7)
    assert run_target(settings) == {
        "base_url": "https://api.example:8443/v1",
        "campaign_id": 7,
        "shard": None,
    }
    shard = Settings(base_url=URL, shard_index=2, shard_count=3)
    assert run_target(shard) == {"base_url": URL, "campaign_id": None, "shard": "2/3"}


def test_a_state_of_another_target_is_refused_naming_each_difference(tmp_path: Path) -> None:
    point = Checkpoint("ids", target={"base_url": URL, "campaign_id": 7, "shard": None})
    now = {"base_url": URL, "campaign_id": 8, "shard": "0/2"}

    with pytest.raises(StateError) as error:
        check_target(point, now, tmp_path)

    assert str(error.value) == (
        f"state directory {tmp_path} belongs to another purge (--campaign-id 7 there, 8 now; "
        "--shard None there, '0/2' now): give this purge its own --state-dir, or --fresh to "
        "start this one over there"
    )


def test_a_state_of_the_same_target_or_saved_without_one_is_accepted(tmp_path: Path) -> None:
    target = {"base_url": URL, "campaign_id": 7, "shard": None}
    check_target(Checkpoint("ids", target=dict(target)), target, tmp_path)
    check_target(Checkpoint("ids", target={"base_url": URL}), target, tmp_path)
    check_target(Checkpoint("ids"), target, tmp_path)


def saved(directory: Path, **fields: object) -> Checkpoint:
    point = Checkpoint("ids", watermark=12, target={"campaign_id": 7}, **fields)  # type: ignore[arg-type]
    StateStore(directory).save(point)
    return point


def test_open_state_loads_the_checkpoint_or_clears_it_when_fresh(tmp_path: Path) -> None:
    saved(tmp_path / "s")

    store, point = open_state(tmp_path / "s", fresh=False, target={"campaign_id": 7})
    assert point is not None
    assert point.watermark == 12
    store.unlock()
    store, point = open_state(tmp_path / "s", fresh=True)
    assert point is None
    assert not store.exists()
    store.unlock()
    store, point = open_state(tmp_path / "s", fresh=False)
    assert point is None
    store.unlock()


def test_open_state_checks_the_target_only_when_given_and_unlocks_when_it_refuses(
    tmp_path: Path,
) -> None:
    saved(tmp_path / "s")

    store, point = open_state(tmp_path / "s", fresh=False)
    assert point is not None
    store.unlock()
    with pytest.raises(StateError, match="belongs to another purge"):
        open_state(tmp_path / "s", fresh=False, target={"campaign_id": 8})
    store, _ = open_state(tmp_path / "s", fresh=False)  # not left locked
    store.unlock()


def test_peek_state_reads_without_locking_and_still_checks_the_target(tmp_path: Path) -> None:
    assert peek_state(tmp_path / "none", {"campaign_id": 7}) is None
    saved(tmp_path / "s")
    store, _ = open_state(tmp_path / "s", fresh=False)  # a run holds it

    peeked = peek_state(tmp_path / "s", {"campaign_id": 7})
    assert peeked is not None
    assert peeked.watermark == 12
    with pytest.raises(StateError, match="belongs to another purge"):
        peek_state(tmp_path / "s", {"campaign_id": 8})
    store.unlock()


# -- the plan ---------------------------------------------------------------------------------


def test_without_a_checkpoint_the_plan_starts_at_zero_with_the_batch_size() -> None:
    plan = make_plan(None, Settings(batch_size=3))

    assert plan.ledger.watermark(None) == 0
    assert plan.resume is None
    assert (plan.skip, plan.retry, plan.dedupe.seen) == ({}, {}, {})
    assert plan.batcher._size == 3


def test_a_checkpoint_becomes_a_plan_that_continues_it() -> None:
    point = Checkpoint(
        "ids",
        watermark=40,
        prefix_bytes=30,
        prefix_lines=3,
        prefix_sha256="ab" * 32,
        layout=(1, 0, True),
        seen={7: BitMap64([1, 2, 3, 4])},
        pending={7: BitMap64([3])},
        done_above={7: BitMap64([4])},
        failed={7: BitMap64([2])},
    )

    plan = make_plan(point, Settings(batch_size=5, retry_failed=True))

    assert plan.resume is not None
    assert plan.resume.prefix == Prefix(30, 3, "ab" * 32)
    assert (plan.resume.watermark, plan.resume.layout) == (40, Layout(1, 0, True))
    assert plan.ledger.watermark(None) == 40
    assert lists(plan.dedupe.seen) == {7: [1, 2]}
    assert plan.skip is point.done_above
    assert lists(plan.retry) == {7: [2]}
    plan.retry[7].add(9)
    assert lists(point.failed) == {7: [2]}  # a copy: retrying does not edit the checkpoint


def test_without_retry_failed_nothing_is_retried_and_without_a_layout_nothing_is_skipped() -> None:
    point = Checkpoint("ids", watermark=40, failed={7: BitMap64([2])})

    plan = make_plan(point, Settings(retry_failed=False))

    assert (plan.retry, plan.resume) == ({}, None)


# -- where the previous chain ended -----------------------------------------------------------


def audit_file(path: Path, *records: dict[str, object]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return path


def test_the_previous_link_is_the_last_record_of_the_pending_file_first(tmp_path: Path) -> None:
    pending = audit_file(tmp_path / "p.jsonl", {"run_id": "r2", "seq": 4, "hash": "h4"})
    head = audit_file(tmp_path / "h.jsonl", {"run_id": "r1", "seq": 9, "hash": "h9"})
    point = Checkpoint("ids", audit_pending=str(pending), audit={"audit_log": str(head)})

    assert previous_link(point) == {
        "audit_log": str(pending),
        "run_id": "r2",
        "last_seq": 4,
        "last_hash": "h4",
    }


def test_the_previous_link_falls_back_to_the_heads_file(tmp_path: Path) -> None:
    head = audit_file(tmp_path / "h.jsonl", {"run_id": "r1", "seq": 9, "hash": "h9"})
    nohash = audit_file(tmp_path / "n.jsonl", {"run_id": "r2", "seq": 1})
    for pending in (str(tmp_path / "gone.jsonl"), str(nohash), None):
        point = Checkpoint("ids", audit_pending=pending, audit={"audit_log": str(head)})
        link = previous_link(point)
        assert link is not None, pending
        assert link["last_hash"] == "h9", pending


def test_no_previous_link_without_a_file_and_a_warning_when_it_is_gone(tmp_path: Path) -> None:
    assert previous_link(None) is None
    with capture_logs() as logs:
        assert previous_link(Checkpoint("ids")) is None
    assert logs == []
    gone = str(tmp_path / "gone.jsonl")
    with capture_logs() as logs:
        assert previous_link(Checkpoint("ids", audit={"audit_log": gone})) is None
    assert [(e["event"], e["path"]) for e in logs] == [
        ("previous audit log not found: the new chain starts unlinked", gone)
    ]


def test_a_union_of_pairs_copies_and_merges() -> None:
    a = {7: BitMap64([1]), 8: BitMap64([2])}
    b = {7: BitMap64([3]), 9: BitMap64([4])}

    out = _union(a, b)
    out[7].add(99)
    out[9].add(98)

    assert lists(out) == {7: [1, 3, 99], 8: [2], 9: [4, 98]}
    assert (lists(a), lists(b)) == ({7: [1], 8: [2]}, {7: [3], 9: [4]})


# -- what a snapshot claims -------------------------------------------------------------------


def checkpointer(tmp_path: Path, prior: Checkpoint | None, **fields: object) -> Checkpointer:
    recorder = Recorder(AuditLog(tmp_path / "audit.jsonl", "run-2"))
    plan = Plan(Ledger(0), Batcher(10), Deduper())
    store = StateStore(tmp_path / "state")
    return Checkpointer(store, plan, InputDigest(), recorder, "ids", prior, **fields)  # type: ignore[arg-type]


def test_a_first_snapshot_names_this_run_and_the_link_until_it_writes(tmp_path: Path) -> None:
    link = {"audit_log": "old.jsonl", "last_seq": 3}
    prior = Checkpoint(
        "ids",
        run_ids=["run-1"],
        totals={"deleted": 5},
        audit_files=[
            {"run_id": "run-9", "path": "/a"},
            {"run_id": "".join(("run-", "2")), "path": "/old"},
        ],
        layout=(0, None, False),
    )
    # this run's own entry (a state it saved earlier, read back: an equal string, not the same
    # object) is replaced, not repeated
    cp = checkpointer(tmp_path, prior, link=link, target={"campaign_id": 7})

    point = cp.snapshot(complete=False)

    assert point.run_ids == ["run-1", "run-2"]
    assert point.audit == link
    assert point.audit_pending == str((tmp_path / "audit.jsonl").absolute())
    assert point.audit_files == [
        {"run_id": "run-9", "path": "/a"},
        {"run_id": "run-2", "path": str((tmp_path / "audit.jsonl").absolute()), "deleted": 0},
    ]
    assert point.totals == {"deleted": 5, "failed_left": 0}
    assert (point.layout, point.target, point.completed_by) == (
        (0, None, False),
        {"campaign_id": 7},
        None,
    )

    cp.recorder.run_started(command="run")
    assert cp.snapshot(complete=False).audit == cp.recorder.audit.head()


def test_a_complete_snapshot_is_completed_by_this_run_unless_it_had_nothing_to_do(
    tmp_path: Path,
) -> None:
    earlier = {"run_id": "run-1", "at": "then"}
    prior = Checkpoint("ids", completed_by=earlier, run_ids=["run-1"])
    cp = checkpointer(tmp_path, prior)

    assert cp.snapshot(complete=True).completed_by == earlier
    cp.recorder.tally.rows += 1
    mine = cp.snapshot(complete=True).completed_by
    assert mine is not None
    assert mine["run_id"] == "run-2"
    assert checkpointer(tmp_path, None).snapshot(complete=True).completed_by["run_id"] == "run-2"  # type: ignore[index]


def test_a_snapshot_counts_this_runs_deletions_on_top_of_the_earlier_ones(tmp_path: Path) -> None:
    cp = checkpointer(tmp_path, Checkpoint("ids", totals={"deleted": 5}))
    cp.recorder.tally.deleted = 3

    assert cp.snapshot(complete=False).totals == {"deleted": 8, "failed_left": 0}
    cp.prior = Checkpoint("ids")  # saved before any deletion
    assert cp.snapshot(complete=False).totals["deleted"] == 3
    cp.prior = None  # the first run
    assert cp.snapshot(complete=False).totals["deleted"] == 3


def test_a_snapshot_keeps_the_priors_verified_prefix_until_it_is_read_that_far(
    tmp_path: Path,
) -> None:
    """A resumed run retrying failures, or still skipping, has not re-read the input up to
    the prior's prefix: its shorter one would throw a verified prefix away."""
    prior = Checkpoint(
        "ids", watermark=40, prefix_bytes=30, prefix_lines=3, prefix_sha256="ab" * 32
    )
    cp = checkpointer(tmp_path, prior)
    cp.plan = Plan(Ledger(40), Batcher(10), Deduper())

    point = cp.snapshot(complete=False)
    assert (point.watermark, point.prefix_bytes, point.prefix_lines) == (40, 30, 3)
    assert point.prefix_sha256 == "ab" * 32

    prior.prefix_bytes = 40  # up to the watermark: still the prior's
    assert cp.snapshot(complete=False).prefix_bytes == 40
    prior.prefix_bytes = 41  # past the watermark: never claimed
    assert cp.snapshot(complete=False).prefix_bytes == 0

    prior.prefix_bytes = 30
    cp.digest.bytes_read, cp.digest.lines = 40, 4  # read further than the prior: its own
    assert cp.snapshot(complete=False).prefix_bytes == 40


def test_a_run_is_finished_once_its_input_is_read_and_nothing_is_open(tmp_path: Path) -> None:
    cp = checkpointer(tmp_path, None)
    assert not cp.finished()  # nothing open, but the input not read yet
    cp.recorder.tally.input_read = True
    assert cp.finished()
    cp.plan.batcher.add(Row(1, 7, 5))
    assert not cp.finished()


def test_a_save_claims_completion_only_at_the_end_of_a_run_not_stopped(tmp_path: Path) -> None:
    cp = checkpointer(tmp_path, None)
    cp.recorder.tally.input_read = True
    store = cp.store
    store.lock()

    cp.save()
    assert not store.load().complete
    cp.last_words()
    assert not store.load().complete
    cp.final(stopped=True)
    assert not store.load().complete
    cp.final(stopped=False)
    assert store.load().complete
    store.unlock()


async def test_a_step_that_fails_after_a_cancellation_is_logged_not_lost() -> None:
    started, release = threading.Event(), threading.Event()

    def step() -> None:
        started.set()
        release.wait(5)
        raise OSError("disk full")

    task = asyncio.create_task(_in_a_thread_to_the_end(step))
    await asyncio.to_thread(started.wait, 5)
    with capture_logs() as logs:
        task.cancel()
        await asyncio.sleep(0)
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert [(e["event"], e["error"]) for e in logs] == [
        ("a checkpoint failed as the run stopped", "disk full")
    ]


def test_last_words_that_cannot_be_saved_are_logged_and_the_error_ends_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cp = checkpointer(tmp_path, None)

    def broken(point: Checkpoint) -> None:
        raise OutputError("the state", "state.json", OSError(28, "No space left on device"))

    monkeypatch.setattr(cp.store, "save", broken)
    with capture_logs() as logs:
        cp.last_words()
    assert [(e["event"], e["error"]) for e in logs] == [
        (
            "the progress could not be saved at the end",
            "cannot write the state state.json: No space left on device (ENOSPC)",
        )
    ]


async def test_a_periodic_checkpoint_never_claims_completion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cp = checkpointer(tmp_path, None)
    cp.recorder.tally.input_read = True  # finished, as far as the plan knows
    prepared: list[Checkpoint] = []
    taken = asyncio.Event()

    def prepare(point: Checkpoint) -> Callable[[], None]:
        prepared.append(point)
        taken.set()
        return lambda: None

    monkeypatch.setattr(cp.store, "prepare", prepare)
    task = asyncio.create_task(cp.every(0.001))
    await asyncio.wait_for(taken.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert [point.complete for point in prepared] == [False] * len(prepared)
