"""The one sink: every audit record and every tally change of a run passes through here.

The recorder writes the audit record first, then tells its observers, so nothing that
counts or reports an outcome can claim more than the audit log proves. Observers follow
one small protocol (:class:`Observer`); the :class:`Tally` is the first of them, and the
progress display reads it. The failed-out CSV and the JSON report are observers too, and
so will be anything new that wants to see outcomes (metrics, per-row result files): it
subscribes here instead of being called from the pipeline.

Duplicate rows are the one outcome written in groups: the recorder holds them and writes
one ``duplicates`` record per campaign (``lines`` and ``audience_ids``, parallel arrays)
for up to :data:`DUPLICATES_PER_RECORD` rows, so that a file with millions of repeats does
not need a record, and its ~300 bytes, for each. The held rows are written (and only then
counted) when there are that many, when the input has been read or its reading stops, before
``run_finished``, and before every :meth:`AuditLog.sync`, which a checkpoint makes before it
saves: a state never names a row as done whose record is not in the log.

No other module writes to the audit log or changes a tally
(``tests/records/test_single_writer.py`` holds the package to it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pyroaring import BitMap64

from worker.errors import ApiError
from worker.input.batching import Batch
from worker.input.validate import Rejected, Row
from worker.records.audit import AuditLog
from worker.records.tally import Tally
from worker.sending.classify import Verdict
from worker.state.checkpoint import count

# Duplicate rows per ``duplicates`` record: ~20 bytes a row with the record's ~250 bytes of
# envelope spread thin, and a line of ~20-30 KB that stays easy to read back.
DUPLICATES_PER_RECORD = 1000

# Characters of a rejected row's id cell kept in its record: a valid id has at most 19, so
# this shows what the cell held without keeping a whole note pasted into it.
ID_CELL_CHARS = 64


class Observer(Protocol):
    """Told of every event after its audit record (if it has one) was written.

    ``fields`` are the record's own fields (not ``ts``, ``event``, ``run_id`` or the chain
    fields); events that are not audited (``accepted``, ``already_done``, ``other_shard``,
    ``admitted``, ``request``, ``input_read``) carry what counting them needs. A batch's
    ``deleted``, ``failed`` and ``unconfirmed`` also carry ``lines``, the input line of each
    of its ids (None for a batch that is not input rows), which the record does not keep.
    """

    def on_event(self, event: str, fields: Mapping[str, Any]) -> None: ...


class Recorder:
    """Writes outcomes to the audit log and tells the observers; keeps the failed pairs."""

    def __init__(
        self,
        audit: AuditLog,
        observers: Sequence[Observer] = (),
        failed_pairs: dict[int, BitMap64] | None = None,
    ) -> None:
        self._audit = audit
        self.tally = Tally()
        self._observers: tuple[Observer, ...] = (self.tally, *observers)
        # Every pair that failed and has not been deleted since: retried on resume.
        self.failed_pairs: dict[int, BitMap64] = failed_pairs if failed_pairs is not None else {}
        self._held: dict[int, _Repeats] = {}  # duplicate rows not written yet, per campaign
        self._held_rows = 0
        audit.before_sync(self.flush)

    @property
    def audit(self) -> AuditLog:
        """The log, for its position (``head``) and durability (``sync``): not for writing."""
        return self._audit

    @property
    def failed_left(self) -> int:
        """Ids that failed and were not deleted since: what makes a run end with exit 1."""
        return count(self.failed_pairs)

    def subscribe(self, observer: Observer) -> None:
        self._observers = (*self._observers, observer)

    def _record(self, event: str, **fields: Any) -> None:
        self._audit.write(event, **fields)
        self._tell(event, fields)

    def _record_batch(self, event: str, batch: Batch, **fields: Any) -> None:
        """A batch's record; the observers are told its ids' input lines too (``lines``):
        per-row results need them, the audit names rows by id and keeps no lines."""
        self._audit.write(event, **fields)
        fields["lines"] = batch.lines
        self._tell(event, fields)

    def _tell(self, event: str, fields: Mapping[str, Any]) -> None:
        for observer in self._observers:
            observer.on_event(event, fields)

    # -- the run's frame ------------------------------------------------------------------

    def run_started(self, **fields: Any) -> None:
        self._record("run_started", **fields)

    def run_finished(self, **fields: Any) -> None:
        self.flush()
        self._record("run_finished", **fields)

    # -- input rows -----------------------------------------------------------------------

    def rejected(self, item: Rejected) -> None:
        """A rejected row, by its line, its id cell (cut to :data:`ID_CELL_CHARS`) and the
        SHA-256 of its bytes: never its text (``item.raw``), which may hold anything a
        person typed in the file (data minimisation, GDPR Art. 5(1)(c)). The observers are
        told these fields only, so neither can a report, a dry run's findings or a log."""
        cell = item.audience_raw
        self._record(
            "rejected",
            line=item.line,
            audience_raw=None if cell is None else cell[:ID_CELL_CHARS],
            raw_sha256=item.raw_sha256,
            reason=item.reason,
        )

    def duplicate(self, row: Row) -> None:
        """A repeated row: held for a ``duplicates`` record (see :meth:`flush`)."""
        held = self._held.get(row.campaign_id)
        if held is None:
            held = self._held[row.campaign_id] = _Repeats()
        held.lines.append(row.line)
        held.audience_ids.append(row.audience_id)
        self._held_rows += 1
        if self._held_rows >= DUPLICATES_PER_RECORD:
            self.flush()

    def flush(self) -> None:
        """Write the held duplicate rows, one ``duplicates`` record per campaign in the order
        the campaigns were met, and then tell the observers (the event carries the rows)."""
        held, self._held, self._held_rows = self._held, {}, 0
        for campaign, rows in held.items():
            self._record(
                "duplicates",
                campaign_id=campaign,
                lines=rows.lines,
                audience_ids=rows.audience_ids,
            )

    def accepted(self, rows: int) -> None:
        """``rows`` valid rows taken for sending, told in one event: a run accepts rows by
        the million, and an event each was a tenth of its CPU."""
        if rows:
            self._tell("accepted", {"rows": rows})

    def already_done(self, rows: int) -> None:
        """``rows`` rows an earlier run already finished (resume): neither sent nor audited
        again; told in one event, as :meth:`accepted`."""
        if rows:
            self._tell("already_done", {"rows": rows})

    def other_shard(self, row: Row) -> None:
        """A row of another shard: neither sent nor audited here."""
        self._tell("other_shard", {"line": row.line})

    def input_read(self) -> None:
        """The input was read to its end: every row of it is recorded."""
        self.flush()
        self._tell("input_read", {})

    # -- queue entries ----------------------------------------------------------------------

    def enqueued(self, entry_id: str, batch: Batch, ref: str | None) -> None:
        self._record(
            "enqueued",
            entry_id=entry_id,
            campaign_id=batch.campaign_id,
            audience_ids=batch.audience_ids,
            ref=ref,
        )

    def admitted(self, entry_id: str, audience_ids: Sequence[int]) -> None:
        """A valid stream entry taken for sending (not audited: its batches are)."""
        self._tell("admitted", {"entry_id": entry_id, "audience_ids": audience_ids})

    def dead_lettered(self, entry_id: str, reason: str, fields: Mapping[str, str]) -> None:
        self._record(
            "dead_lettered",
            entry_id=entry_id,
            reason=reason,
            fields={k: v[:200] for k, v in fields.items()},
        )

    def acknowledged(self, entry_id: str, dead_lettered_ids: int) -> None:
        self._record("acknowledged", entry_id=entry_id, dead_lettered_ids=dead_lettered_ids)

    def redriven(self, entry_id: str, dead_letter_id: str, was: str | None, reason: str) -> None:
        """A dead letter moved back to its stream (``redrive``) as entry ``entry_id``."""
        self._record(
            "redriven",
            entry_id=entry_id,
            dead_letter_id=dead_letter_id,
            original_entry_id=was,
            reason=reason,
        )

    # -- requests and their outcomes -----------------------------------------------------

    def sending(self, batch: Batch) -> None:
        """Write-ahead: the intent is on disk before the request can reach the API."""
        origin = {} if batch.entry_id is None else {"entry_id": batch.entry_id, "ref": batch.ref}
        self._record(
            "sending",
            campaign_id=batch.campaign_id,
            batch_id=batch.batch_id,
            audience_ids=batch.audience_ids,
            **origin,
        )

    def request_made(self, *, retry: bool, waited_s: float = 0.0) -> None:
        """A request is about to go out (after ``waited_s`` seconds at the rate limit)."""
        self._tell("request", {"retry": retry, "waited_s": waited_s})

    def answered(self, status: int | None, kind: str | None, latency_s: float | None) -> None:
        """The end of one request: its HTTP status and meaning, or None (no answer)."""
        self._tell("answered", {"status": status, "kind": kind, "latency_s": latency_s})

    def unconfirmed(self, batch: Batch, reason: str) -> None:
        """A batch that was (or may have been) sent, without a final answer: sent again later."""
        self._record_batch(
            "unconfirmed",
            batch,
            campaign_id=batch.campaign_id,
            batch_id=batch.batch_id,
            audience_ids=batch.audience_ids,
            reason=reason,
        )

    def deleted(self, batch: Batch, verdict: Verdict, *, attempts: int, latency_ms: float) -> None:
        self._record_batch("deleted", batch, **_batch_fields(batch, verdict, attempts, latency_ms))
        failed = self.failed_pairs.get(batch.campaign_id)
        if failed is not None:
            failed.difference_update(BitMap64(batch.audience_ids))

    def failed(
        self,
        batch: Batch,
        verdict: Verdict | None,
        error: ApiError,
        *,
        reason: str,
        attempts: int,
        latency_ms: float | None,
    ) -> None:
        """Audit a failure. A fatal one leaves the batch unsettled (it is sent again once the
        cause is fixed), so it is not added to the failed pairs that a resume retries."""
        fields = _batch_fields(batch, verdict, attempts, latency_ms)
        self._record_batch("failed", batch, **fields, reason=reason, retryable=error.kind.retryable)
        if not error.kind.stops_run:
            self.failed_pairs.setdefault(batch.campaign_id, BitMap64()).update(
                BitMap64(batch.audience_ids)
            )

    def verified(
        self,
        campaign_id: int,
        *,
        checked: int,
        still_present: Sequence[int],
        listed: int,
        pages: int,
        passes: int = 1,
        unproven: str | None = None,
    ) -> None:
        """A read-back of a campaign through audience-list: ``checked`` ids recorded as
        deleted were looked for among the ``listed`` records it still holds (read in
        ``pages`` pages over ``passes`` listings; ``unproven`` says why no listing read it
        completely, if none did). The ids ``still_present`` failed after all: they join the
        failed pairs (a resume retries them; the failed-out file lists them, reason
        ``still_present``)."""
        self._record(
            "verified",
            campaign_id=campaign_id,
            checked=checked,
            listed=listed,
            pages=pages,
            passes=passes,
            unproven=unproven,
            still_present=list(still_present),
        )
        if still_present:
            self.failed_pairs.setdefault(campaign_id, BitMap64()).update(BitMap64(still_present))

    def audience_stats(
        self, campaign_id: int, moment: str, stats: Mapping[str, Any] | None, error: str | None
    ) -> None:
        """The campaign's campaign-audience-stats answer ``before`` or ``after`` the purge
        (``stats`` None and ``error`` why, when it could not be read: that never fails a run)."""
        self._record(
            "audience_stats",
            campaign_id=campaign_id,
            moment=moment,
            stats=None if stats is None else dict(stats),
            error=error,
        )

    def deleted_all(self, campaign_id: int, verdict: Verdict | None, **request: Any) -> None:
        """The answer to a ``delete_all`` request (no ids: the whole campaign)."""
        self._record("deleted_all", **_request_fields(campaign_id, verdict, **request))

    def delete_all_unconfirmed(self, campaign_id: int, reason: str, *, attempts: int) -> None:
        """A delete_all request cut off without an answer: it may or may not have acted."""
        self._record("unconfirmed", campaign_id=campaign_id, attempts=attempts, reason=reason)

    def delete_all_failed(
        self, campaign_id: int, verdict: Verdict | None, error: ApiError, **request: Any
    ) -> None:
        fields = _request_fields(campaign_id, verdict, **request)
        self._record("failed", **fields, reason=error.reason, retryable=error.kind.retryable)


@dataclass(slots=True)
class _Repeats:
    """Duplicate rows of one campaign, held for its next ``duplicates`` record."""

    lines: list[int] = field(default_factory=list)
    audience_ids: list[int] = field(default_factory=list)


def _request_fields(
    campaign_id: int, verdict: Verdict | None, *, attempts: int, latency_ms: float | None
) -> dict[str, Any]:
    return {
        "campaign_id": campaign_id,
        "http_status": verdict.status if verdict else None,
        "attempts": attempts,
        "latency_ms": latency_ms,
        "message": verdict.message if verdict else None,
    }


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
