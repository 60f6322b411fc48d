"""Outcome stage: every input row and every batch ends here, exactly once.

The recorder writes the audit record first, then counts it and (for failures) appends the
ids to the failed-out CSV, so the tally never claims more than the audit log proves.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pyroaring import BitMap64

from worker.input.batching import Batch
from worker.input.validate import Rejected, Row
from worker.records.audit import AuditLog
from worker.sending.classify import Verdict


@dataclass(slots=True)
class Tally:
    """Running totals for progress and the report."""

    rows: int = 0
    rejected: int = 0
    duplicates: int = 0
    valid: int = 0
    deleted: int = 0
    failed: int = 0
    requests: int = 0
    unconfirmed: int = 0
    already_done: int = 0
    other_shard: int = 0
    dead_lettered: int = 0
    input_read: bool = False
    retries: int = 0
    deleted_by_campaign: Counter[int] = field(default_factory=Counter)
    failed_by_campaign: Counter[int] = field(default_factory=Counter)
    failure_reasons: Counter[str] = field(default_factory=Counter)


class FailedOut:
    """The failed ids as a CSV that ``run --input`` accepts as is."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file: IO[str] = path.open("w", newline="", encoding="utf-8")
        self._csv = csv.writer(self._file)
        self._csv.writerow(("campaign_id", "audience_id"))
        self._file.flush()

    def add(self, batch: Batch) -> None:
        self._csv.writerows((batch.campaign_id, i) for i in batch.audience_ids)
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class Recorder:
    """Writes outcomes to the audit log, the tally and the failed-out file."""

    def __init__(
        self,
        audit: AuditLog,
        failed_out: FailedOut | None = None,
        failed_pairs: dict[int, BitMap64] | None = None,
    ) -> None:
        self.audit = audit
        self.tally = Tally()
        self._failed_out = failed_out
        # Every pair that failed and has not been deleted since: retried on resume.
        self.failed_pairs: dict[int, BitMap64] = failed_pairs if failed_pairs is not None else {}

    def sending(self, batch: Batch) -> None:
        """Write-ahead: the intent is on disk before the request can reach the API."""
        origin = {} if batch.entry_id is None else {"entry_id": batch.entry_id, "ref": batch.ref}
        self.audit.write(
            "sending",
            campaign_id=batch.campaign_id,
            batch_id=batch.batch_id,
            audience_ids=batch.audience_ids,
            **origin,
        )

    def unconfirmed(self, batch: Batch, reason: str) -> None:
        """A batch that was (or may have been) sent, without a final answer: sent again later."""
        self.audit.write(
            "unconfirmed",
            campaign_id=batch.campaign_id,
            batch_id=batch.batch_id,
            audience_ids=batch.audience_ids,
            reason=reason,
        )
        self.tally.unconfirmed += len(batch.audience_ids)

    def other_shard(self, row: Row) -> None:
        """A row of another shard: neither sent nor audited here."""
        self.tally.other_shard += 1

    def already_done(self, row: Row) -> None:
        """A row an earlier run already finished (resume): neither sent nor audited again."""
        self.tally.rows += 1
        self.tally.already_done += 1

    def rejected(self, item: Rejected) -> None:
        self.audit.write(
            "rejected",
            line=item.line,
            raw=item.raw,
            audience_raw=item.audience_raw,
            reason=item.reason,
        )
        self.tally.rows += 1
        self.tally.rejected += 1

    def duplicate(self, row: Row) -> None:
        self.audit.write(
            "duplicate", line=row.line, campaign_id=row.campaign_id, audience_id=row.audience_id
        )
        self.tally.rows += 1
        self.tally.duplicates += 1

    def accepted(self, row: Row) -> None:
        self.tally.rows += 1
        self.tally.valid += 1

    def request_made(self, *, retry: bool) -> None:
        self.tally.requests += 1
        self.tally.retries += int(retry)

    def deleted(self, batch: Batch, verdict: Verdict, *, attempts: int, latency_ms: float) -> None:
        self.audit.write("deleted", **self._batch_fields(batch, verdict, attempts, latency_ms))
        self.tally.deleted += len(batch.audience_ids)
        self.tally.deleted_by_campaign[batch.campaign_id] += len(batch.audience_ids)
        failed = self.failed_pairs.get(batch.campaign_id)
        if failed is not None:
            failed.difference_update(BitMap64(batch.audience_ids))

    def failed(
        self,
        batch: Batch,
        verdict: Verdict | None,
        *,
        reason: str,
        retryable: bool,
        attempts: int,
        latency_ms: float | None,
        pending: bool = False,
    ) -> None:
        """Audit a failure. ``pending``: the batch stays unsettled (it is sent again later),
        so it is not added to the failed pairs that a resume retries."""
        fields = self._batch_fields(batch, verdict, attempts, latency_ms)
        self.audit.write("failed", **fields, reason=reason, retryable=retryable)
        self.tally.failed += len(batch.audience_ids)
        self.tally.failed_by_campaign[batch.campaign_id] += len(batch.audience_ids)
        self.tally.failure_reasons[reason] += len(batch.audience_ids)
        if not pending:
            self.failed_pairs.setdefault(batch.campaign_id, BitMap64()).update(
                BitMap64(batch.audience_ids)
            )
        if self._failed_out is not None:
            self._failed_out.add(batch)

    @staticmethod
    def _batch_fields(
        batch: Batch, verdict: Verdict | None, attempts: int, latency_ms: float | None
    ) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "campaign_id": batch.campaign_id,
            "batch_id": batch.batch_id,
            "audience_ids": batch.audience_ids,
            "http_status": verdict.status if verdict else None,
            "attempts": attempts,
            "latency_ms": latency_ms,
            "message": verdict.message if verdict else None,
        }
        if batch.entry_id is not None:
            fields["entry_id"] = batch.entry_id
            fields["ref"] = batch.ref
        return fields
