"""Specification of worker.records.recorder, record by record (issue #25: its mutants showed
what the end-to-end tests leave open): the fields each event writes, what the observers are
told and when, the failed pairs a resume retries, and how duplicate rows are held. In
process: a real audit log in a temporary directory, a list for an observer."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest

from worker.errors import ApiError, FatalError, Kind, PermanentError, RetryableError
from worker.input.batching import Batch
from worker.input.validate import Rejected, Row
from worker.records.audit import AuditLog
from worker.records.recorder import DUPLICATES_PER_RECORD, ID_CELL_CHARS, Recorder
from worker.sending.classify import Verdict

CHAIN = {"ts", "run_id", "seq", "hash", "prev_hash"}


class Seen:
    """An observer: every event with its fields, and how many records were on disk then."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.on_disk: list[int] = []

    def on_event(self, event: str, fields: Mapping[str, Any]) -> None:
        self.events.append((event, dict(fields)))
        self.on_disk.append(len(records(self.path)))


def records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    lines = path.read_bytes().splitlines()
    return [{k: v for k, v in orjson.loads(line).items() if k not in CHAIN} for line in lines]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "audit.jsonl"


@pytest.fixture
def seen(path: Path) -> Seen:
    return Seen(path)


@pytest.fixture
def recorder(path: Path, seen: Seen) -> Recorder:
    return Recorder(AuditLog(path, "run-1"), [seen])


def batch(*ids: int, entry: str | None = None) -> Batch:
    return Batch(7, ids, entry_id=entry, ref="t-1" if entry else None, lines=(2, 3)[: len(ids)])


OK = Verdict(Kind.DELETED, 200, "deleted", "done")


# -- the frame and the observers --------------------------------------------------------------


def test_observers_are_told_after_the_record_is_on_disk_tally_first(
    recorder: Recorder, seen: Seen, path: Path
) -> None:
    later = Seen(path)
    recorder.subscribe(later)

    recorder.run_started(command="run")
    recorder.deleted(batch(5, 6), OK, attempts=1, latency_ms=3.0)

    assert [e for e, _ in seen.events] == ["run_started", "deleted"]
    assert seen.on_disk == [1, 2]
    assert later.events == seen.events
    assert recorder.tally.deleted == 2


def test_run_finished_writes_the_held_duplicates_first(recorder: Recorder, path: Path) -> None:
    recorder.duplicate(Row(4, 7, 5))
    recorder.run_finished(exit_code=0)

    assert [r["event"] for r in records(path)] == ["duplicates", "run_finished"]
    assert records(path)[1]["exit_code"] == 0


# -- input rows -------------------------------------------------------------------------------


def test_a_rejected_row_keeps_its_id_cell_cut_and_never_its_text(
    recorder: Recorder, seen: Seen, path: Path
) -> None:
    cell = "9" * (ID_CELL_CHARS + 1)
    recorder.rejected(
        Rejected(3, "secret note", "not a number", audience_raw=cell, raw_sha256="ab")
    )
    recorder.rejected(Rejected(4, "x", "too few cells", raw_sha256="cd"))

    assert records(path) == [
        {"event": "rejected", "line": 3, "audience_raw": "9" * 64, "raw_sha256": "ab",
         "reason": "not a number"},
        {"event": "rejected", "line": 4, "audience_raw": None, "raw_sha256": "cd",
         "reason": "too few cells"},
    ]  # fmt: skip
    assert "secret note" not in repr(seen.events)


def test_duplicates_are_held_and_written_per_campaign_at_the_limit(
    recorder: Recorder, seen: Seen, path: Path
) -> None:
    recorder.duplicate(Row(2, 8, 1))
    for line in range(3, DUPLICATES_PER_RECORD + 1):
        recorder.duplicate(Row(line, 7, 5))
    assert records(path) == []

    recorder.duplicate(Row(9999, 7, 6))

    written = records(path)
    assert [(r["campaign_id"], len(r["lines"])) for r in written] == [(8, 1), (7, 999)]
    assert (written[0]["lines"], written[0]["audience_ids"]) == ([2], [1])
    assert (written[1]["lines"][-1], written[1]["audience_ids"][-2:]) == (9999, [5, 6])
    assert seen.events[-1][1]["lines"] == written[1]["lines"]
    recorder.duplicate(Row(10000, 7, 5))  # the count started again
    assert len(records(path)) == 2


def test_rows_accepted_or_already_done_are_told_in_one_event_and_none_for_zero(
    recorder: Recorder, seen: Seen, path: Path
) -> None:
    recorder.accepted(0)
    recorder.already_done(0)
    recorder.accepted(3)
    recorder.already_done(2)
    recorder.other_shard(Row(9, 7, 5))
    recorder.request_made(retry=True, waited_s=0.5)
    recorder.request_made(retry=False)
    recorder.answered(429, "rate_limited", 0.25)
    recorder.admitted("1-0", (5, 6))

    assert seen.events == [
        ("accepted", {"rows": 3}),
        ("already_done", {"rows": 2}),
        ("other_shard", {"line": 9}),
        ("request", {"retry": True, "waited_s": 0.5}),
        ("request", {"retry": False, "waited_s": 0.0}),
        ("answered", {"status": 429, "kind": "rate_limited", "latency_s": 0.25}),
        ("admitted", {"entry_id": "1-0", "audience_ids": (5, 6)}),
    ]
    assert records(path) == []


def test_the_input_read_writes_the_held_duplicates_then_is_told(
    recorder: Recorder, seen: Seen
) -> None:
    recorder.duplicate(Row(4, 7, 5))
    recorder.input_read()

    assert [e for e, _ in seen.events] == ["duplicates", "input_read"]
    assert seen.events[1][1] == {}


# -- queue entries ----------------------------------------------------------------------------


def test_queue_events_write_their_fields(recorder: Recorder, path: Path) -> None:
    recorder.enqueued("1-0", batch(5, 6), "t-1")
    recorder.dead_lettered("2-0", "malformed", {"audience_ids": "x" * 300, "ref": "r"})
    recorder.acknowledged("1-0", dead_lettered_ids=2)
    recorder.redriven("3-0", "9-0", "2-0", "fixed")

    assert records(path) == [
        {"event": "enqueued", "entry_id": "1-0", "campaign_id": 7, "audience_ids": [5, 6],
         "ref": "t-1"},
        {"event": "dead_lettered", "entry_id": "2-0", "reason": "malformed",
         "fields": {"audience_ids": "x" * 200, "ref": "r"}},
        {"event": "acknowledged", "entry_id": "1-0", "dead_lettered_ids": 2},
        {"event": "redriven", "entry_id": "3-0", "dead_letter_id": "9-0",
         "original_entry_id": "2-0", "reason": "fixed"},
    ]  # fmt: skip


# -- requests and their outcomes --------------------------------------------------------------


def test_sending_names_the_entry_only_in_queue_mode(recorder: Recorder, path: Path) -> None:
    plain, queued = batch(5), batch(6, entry="1-0")
    recorder.sending(plain)
    recorder.sending(queued)

    assert records(path) == [
        {"event": "sending", "campaign_id": 7, "batch_id": plain.batch_id, "audience_ids": [5]},
        {"event": "sending", "campaign_id": 7, "batch_id": queued.batch_id, "audience_ids": [6],
         "entry_id": "1-0", "ref": "t-1"},
    ]  # fmt: skip


def test_outcomes_write_the_answer_and_tell_the_lines(
    recorder: Recorder, seen: Seen, path: Path
) -> None:
    done, cut = batch(5, 6, entry="1-0"), batch(8)
    recorder.deleted(done, OK, attempts=2, latency_ms=4.5)
    recorder.unconfirmed(cut, "timeout")

    assert records(path) == [
        {"event": "deleted", "campaign_id": 7, "batch_id": done.batch_id, "audience_ids": [5, 6],
         "http_status": 200, "attempts": 2, "latency_ms": 4.5, "message": "done",
         "entry_id": "1-0", "ref": "t-1"},
        {"event": "unconfirmed", "campaign_id": 7, "batch_id": cut.batch_id,
         "audience_ids": [8], "reason": "timeout"},
    ]  # fmt: skip
    assert [f["lines"] for _, f in seen.events] == [(2, 3), (2,)]


def test_a_failure_is_retried_on_resume_unless_fatal_and_a_deletion_clears_it(
    recorder: Recorder, path: Path
) -> None:
    recorder.failed(
        batch(5, 6), None, RetryableError("503"), reason="http_503", attempts=3, latency_ms=None
    )
    recorder.failed(batch(8), None, PermanentError("400"), reason="http_400", attempts=1,
                    latency_ms=1.0)  # fmt: skip
    recorder.failed(batch(9), None, FatalError("401"), reason="http_401", attempts=1,
                    latency_ms=1.0)  # fmt: skip

    assert [list(ids) for ids in recorder.failed_pairs.values()] == [[5, 6, 8]]
    assert [
        (r["reason"], r["retryable"], r["http_status"], r["message"]) for r in records(path)
    ] == [
        ("http_503", True, None, None),
        ("http_400", False, None, None),
        ("http_401", True, None, None),
    ]
    assert recorder.failed_left == 3

    recorder.deleted(batch(6), OK, attempts=1, latency_ms=1.0)
    assert [list(ids) for ids in recorder.failed_pairs.values()] == [[5, 8]]
    recorder.deleted(Batch(99, (1,)), OK, attempts=1, latency_ms=1.0)  # no failures there
    assert list(recorder.failed_pairs) == [7]


def test_ids_still_present_after_a_read_back_join_the_failed_pairs(
    recorder: Recorder, path: Path
) -> None:
    recorder.verified(7, checked=3, still_present=[], listed=10, pages=1)
    assert recorder.failed_pairs == {}
    recorder.verified(7, checked=3, still_present=[5], listed=10, pages=2, passes=2,
                      unproven="cut short")  # fmt: skip

    assert records(path) == [
        {"event": "verified", "campaign_id": 7, "checked": 3, "listed": 10, "pages": 1,
         "passes": 1, "unproven": None, "still_present": []},
        {"event": "verified", "campaign_id": 7, "checked": 3, "listed": 10, "pages": 2,
         "passes": 2, "unproven": "cut short", "still_present": [5]},
    ]  # fmt: skip
    assert [list(ids) for ids in recorder.failed_pairs.values()] == [[5]]


def test_campaign_level_events_write_their_fields(recorder: Recorder, path: Path) -> None:
    recorder.audience_stats(7, "before", {"total": 3}, None)
    recorder.audience_stats(7, "after", None, "http_503")
    recorder.deleted_all(7, OK, attempts=1, latency_ms=2.0)
    recorder.deleted_all(7, None, attempts=2, latency_ms=None)
    recorder.delete_all_unconfirmed(7, "timeout", attempts=3)
    error: ApiError = PermanentError("http_400")
    recorder.delete_all_failed(7, Verdict(Kind.PERMANENT, 400, "x", "bad"), error, attempts=1,
                               latency_ms=1.5)  # fmt: skip

    assert records(path) == [
        {"event": "audience_stats", "campaign_id": 7, "moment": "before", "stats": {"total": 3},
         "error": None},
        {"event": "audience_stats", "campaign_id": 7, "moment": "after", "stats": None,
         "error": "http_503"},
        {"event": "deleted_all", "campaign_id": 7, "http_status": 200, "attempts": 1,
         "latency_ms": 2.0, "message": "done"},
        {"event": "deleted_all", "campaign_id": 7, "http_status": None, "attempts": 2,
         "latency_ms": None, "message": None},
        {"event": "unconfirmed", "campaign_id": 7, "attempts": 3, "reason": "timeout"},
        {"event": "failed", "campaign_id": 7, "http_status": 400, "attempts": 1,
         "latency_ms": 1.5, "message": "bad", "reason": "http_400", "retryable": False},
    ]  # fmt: skip
