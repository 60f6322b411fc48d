"""Replay: what a crashed run confirmed after its last checkpoint, read back from its audit.

A checkpoint is taken every few seconds; a run killed between two of them has deleted
batches the state does not know about. Its audit file does: every ``deleted`` record is
flushed before the next request. On resume, the records the crashed run wrote after the
checkpoint's chain head are read back, and their ids join the "already done" set, so the
rerun sends again only the batches that were in flight (a ``sending`` record and no
outcome): at most ``concurrency x batch_size`` ids.

Only ``deleted`` records are replayed: a failed batch is sent again (a failure is not a
deletion, and a fatal one leaves its batch unsettled by design). Each record's hash is
checked, and so is the link between consecutive ones; replay stops at the first record that
does not verify (a torn last line, an edit), and everything after it is sent again, which
is the safe side: a delete is repeated, never skipped on an unproven claim.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import structlog

from worker.records.audit_query import record_hash
from worker.state.checkpoint import Checkpoint, Pairs, count, pairs_from

log = structlog.get_logger("audience_purge.replay")


@dataclass(slots=True)
class Replayed:
    """The deletions a crashed run confirmed after its last checkpoint."""

    deleted: Pairs = field(default_factory=dict)
    records: int = 0
    path: str | None = None

    @property
    def ids(self) -> int:
        return count(self.deleted)


def replay(point: Checkpoint) -> Replayed:
    """The ``deleted`` records the last run wrote after ``point`` was saved."""
    if not point.audit_pending or not point.run_ids:
        return Replayed()
    path = Path(point.audit_pending)
    after = _seq_after(point, path)
    pairs: list[tuple[int, int]] = []
    records = 0
    for record in _verified(path, point.run_ids[-1], after):
        records += 1
        if record.get("event") == "deleted":
            campaign = int(record["campaign_id"])
            pairs.extend((campaign, int(i)) for i in record.get("audience_ids", ()))
    return Replayed(pairs_from(pairs), records, str(path))


def apply(point: Checkpoint, replayed: Replayed) -> None:
    """Fold the replayed deletions into the checkpoint: done, no longer failed, counted."""
    for campaign, ids in replayed.deleted.items():
        done = point.done_above.get(campaign)
        if done is None:
            point.done_above[campaign] = ids.copy()
        else:
            done |= ids
        failed = point.failed.get(campaign)
        if failed is not None:
            failed.difference_update(ids)
    point.totals["deleted"] = point.totals.get("deleted", 0) + replayed.ids


def _seq_after(point: Checkpoint, path: Path) -> int:
    """Records of the pending file after this seq are newer than the checkpoint."""
    head = point.audit.get("audit_log")
    if head and _same_file(Path(str(head)), path):
        return int(point.audit.get("last_seq", -1))
    return -1


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return a.resolve() == b.resolve()


def _verified(path: Path, run_id: str, after: int) -> Iterator[dict[str, Any]]:
    """The run's records after seq ``after``, each checked against its hash and its link."""
    prev: str | None = None
    for record in _records(path):
        if record.get("run_id") != run_id or int(record.get("seq", -1)) <= after:
            continue
        if record.get("hash") != record_hash(record) or (
            prev is not None and record.get("prev_hash") != prev
        ):
            log.warning(
                "audit record does not verify: replay stops here and the rest is sent again",
                path=str(path),
                seq=record.get("seq"),
            )
            return
        prev = str(record["hash"])
        yield record


def _records(path: Path) -> Iterator[dict[str, Any]]:
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return
    with handle:
        for line in handle:
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                return  # a torn last line: the crash came mid-write
            if isinstance(record, dict):
                yield record
