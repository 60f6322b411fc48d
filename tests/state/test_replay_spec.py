"""Specification of worker.state.replay at its edges (issue #25: its mutants showed what the
kill -9 tests leave open): which records of the pending audit file are replayed (this run's,
after the checkpoint's seq, ``deleted`` only, each verified and linked), where replay stops,
and how the replayed ids fold into the checkpoint. Hand-written audit files, no process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from pyroaring import BitMap64

from worker.records.audit_query import record_hash
from worker.state.checkpoint import Checkpoint
from worker.state.replay import Replayed, apply, replay

RUN = "run-2"


def chained(*bodies: dict[str, Any], prev: str = "0" * 64) -> list[dict[str, Any]]:
    """Records as the recorder writes them: each hashed and linked to the one before."""
    records = []
    for body in bodies:
        record = {**body, "prev_hash": prev}
        record["hash"] = record_hash(record)
        prev = record["hash"]
        records.append(record)
    return records


def deleted(seq: int, *ids: int, campaign: int = 7, run: str = RUN) -> dict[str, Any]:
    return {"event": "deleted", "run_id": run, "seq": seq, "campaign_id": campaign,
            "audience_ids": list(ids)}  # fmt: skip


def event(name: str, seq: int, run: str = RUN) -> dict[str, Any]:
    return {"event": name, "run_id": run, "seq": seq}


def write(path: Path, records: list[dict[str, Any]], tail: bytes = b"") -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records) + tail)
    return path


def point_for(path: Path, **fields: Any) -> Checkpoint:
    return Checkpoint("ids.csv", run_ids=["run-0", "run-1", RUN], audit_pending=str(path), **fields)


def ids(replayed: Replayed) -> dict[int, list[int]]:
    return {campaign: list(bitmap) for campaign, bitmap in replayed.deleted.items()}


# -- what is replayed -------------------------------------------------------------------------


def test_nothing_is_replayed_without_a_pending_file_or_a_run(tmp_path: Path) -> None:
    path = write(tmp_path / "audit.jsonl", chained(deleted(1, 5)))

    for point in (
        Checkpoint("ids.csv", run_ids=[RUN]),
        Checkpoint("ids.csv", audit_pending=str(path)),
    ):
        nothing = replay(point)
        assert (nothing.deleted, nothing.records, nothing.path, nothing.ids) == ({}, 0, None, 0)


def test_the_deleted_ids_of_the_last_run_are_replayed_and_every_record_counted(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path / "audit.jsonl",
        chained(
            event("run_started", 0),
            event("sending", 1),
            deleted(2, 5, 6),
            {**event("failed", 3), "campaign_id": 7, "audience_ids": [8]},
            deleted(4, 9, campaign=3),
        ),
    )

    replayed = replay(point_for(path))

    assert ids(replayed) == {7: [5, 6], 3: [9]}
    assert (replayed.records, replayed.ids, replayed.path) == (5, 3, str(path))


def test_records_of_another_run_are_not_replayed(tmp_path: Path) -> None:
    records = chained(deleted(1, 5, run="run-1"), deleted(2, 6), deleted(3, 7, run="run-3"))
    path = write(tmp_path / "audit.jsonl", records[:2])
    assert ids(replay(point_for(path))) == {7: [6]}

    other = chained(deleted(3, 7, run="run-3"), prev=records[1]["hash"])
    path = write(tmp_path / "audit.jsonl", [*records[:2], *other])
    assert ids(replay(point_for(path))) == {7: [6]}


def test_a_record_of_another_event_naming_ids_is_not_replayed(tmp_path: Path) -> None:
    other = {**event("audience_stats", 1), "campaign_id": 7, "audience_ids": [5]}
    path = write(tmp_path / "audit.jsonl", chained(other, deleted(2, 6)))

    assert ids(replay(point_for(path))) == {7: [6]}


def test_a_record_without_a_seq_is_not_replayed(tmp_path: Path) -> None:
    unnumbered = deleted(0, 5)
    del unnumbered["seq"]
    path = write(tmp_path / "audit.jsonl", chained(unnumbered, deleted(2, 6)))

    assert ids(replay(point_for(path))) == {7: [6]}


def test_only_records_after_the_checkpoints_seq_are_replayed_when_its_head_is_that_file(
    tmp_path: Path,
) -> None:
    path = write(tmp_path / "audit.jsonl", chained(deleted(1, 5), deleted(2, 6), deleted(3, 7)))

    at_2 = point_for(path, audit={"audit_log": str(path), "last_seq": 2})
    assert (ids(replay(at_2)), replay(at_2).records) == ({7: [7]}, 1)
    before_any = point_for(path, audit={"audit_log": str(path), "last_seq": 0})
    assert ids(replay(before_any)) == {7: [5, 6, 7]}
    no_seq = point_for(path, audit={"audit_log": str(path)})
    assert ids(replay(no_seq)) == {7: [5, 6, 7]}
    path = write(tmp_path / "audit.jsonl", chained(deleted(0, 4), deleted(1, 5)))
    assert ids(replay(no_seq)) == {7: [4, 5]}  # a head without a seq: from the first record


def test_a_head_in_another_file_replays_the_whole_pending_file(tmp_path: Path) -> None:
    path = write(tmp_path / "audit.jsonl", chained(deleted(1, 5), deleted(2, 6)))
    older = write(tmp_path / "older.jsonl", [])

    point = point_for(path, audit={"audit_log": str(older), "last_seq": 1})
    assert ids(replay(point)) == {7: [5, 6]}
    gone = point_for(path, audit={"audit_log": str(tmp_path / "gone.jsonl"), "last_seq": 1})
    assert ids(replay(gone)) == {7: [5, 6]}


def test_a_head_naming_the_pending_file_by_another_path_is_that_file(tmp_path: Path) -> None:
    path = write(tmp_path / "audit.jsonl", chained(deleted(1, 5), deleted(2, 6)))
    (tmp_path / "link.jsonl").symlink_to(path)

    point = point_for(path, audit={"audit_log": str(tmp_path / "link.jsonl"), "last_seq": 1})
    assert ids(replay(point)) == {7: [6]}


def test_a_pending_file_gone_replays_nothing(tmp_path: Path) -> None:
    path = tmp_path / "gone.jsonl"
    point = point_for(path, audit={"audit_log": str(path), "last_seq": 1})

    assert replay(point) == Replayed({}, 0, str(path))


# -- where replay stops -----------------------------------------------------------------------


@pytest.mark.parametrize("wrong", ["0" * 64, "f" * 64])
def test_replay_stops_at_a_record_whose_hash_does_not_verify(tmp_path: Path, wrong: str) -> None:
    records = chained(deleted(1, 5), deleted(2, 6), deleted(3, 7))
    records[1]["hash"] = wrong
    path = write(tmp_path / "audit.jsonl", records)

    replayed = replay(point_for(path))

    assert (ids(replayed), replayed.records) == ({7: [5]}, 1)


@pytest.mark.parametrize("wrong", ["0" * 64, "f" * 64])
def test_replay_stops_at_a_record_whose_link_is_broken(tmp_path: Path, wrong: str) -> None:
    records = chained(deleted(1, 5), deleted(2, 6), deleted(3, 7))
    records[2]["prev_hash"] = wrong
    records[2]["hash"] = record_hash(records[2])  # its own hash valid: its link is not
    path = write(tmp_path / "audit.jsonl", records)

    assert ids(replay(point_for(path))) == {7: [5, 6]}


def test_the_first_record_replayed_may_link_to_one_before_the_checkpoint(tmp_path: Path) -> None:
    records = chained(deleted(1, 5), deleted(2, 6), prev="f" * 64)
    path = write(tmp_path / "audit.jsonl", records)

    assert ids(replay(point_for(path))) == {7: [5, 6]}


def test_replay_stops_at_a_torn_last_line_and_skips_a_line_that_is_not_a_record(
    tmp_path: Path,
) -> None:
    records = chained(deleted(1, 5), deleted(2, 6))
    path = tmp_path / "audit.jsonl"
    lines = [orjson.dumps(records[0]), b"[1, 2]", orjson.dumps(records[1]), b'{"event": "del']
    path.write_bytes(b"\n".join(lines))

    assert ids(replay(point_for(path))) == {7: [5, 6]}
    path.write_bytes(b"\n".join([orjson.dumps(records[0]), b'{"torn', orjson.dumps(records[1])]))
    assert ids(replay(point_for(path))) == {7: [5]}


# -- folding into the checkpoint --------------------------------------------------------------


def test_apply_marks_replayed_ids_done_no_longer_failed_and_counted() -> None:
    point = Checkpoint(
        "ids.csv",
        done_above={7: BitMap64([1])},
        failed={7: BitMap64([5, 8]), 3: BitMap64([2])},
        totals={"deleted": 10},
    )
    replayed = Replayed({7: BitMap64([5, 6]), 3: BitMap64([9])})

    apply(point, replayed)

    assert {c: list(b) for c, b in point.done_above.items()} == {7: [1, 5, 6], 3: [9]}
    assert {c: list(b) for c, b in point.failed.items()} == {7: [8], 3: [2]}
    assert point.totals == {"deleted": 13}


def test_apply_counts_from_zero_and_never_shares_a_bitmap_with_the_replay() -> None:
    point = Checkpoint("ids.csv")
    replayed = Replayed({7: BitMap64([5])})

    apply(point, replayed)
    point.done_above[7].add(99)

    assert point.totals == {"deleted": 1}
    assert list(replayed.deleted[7]) == [5]
