"""Resume: turn a saved checkpoint into a plan, and take checkpoints while a run goes on.

See :mod:`worker.state.checkpoint` for the design. This module decides *when* to checkpoint
(every ``checkpoint_interval`` seconds, and once at the end, synchronously) and
what a snapshot of the running pipeline is.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import structlog

from worker.errors import OutputError, StateError
from worker.input.batching import Batcher, Deduper
from worker.input.planning import Plan
from worker.input.sources import InputDigest, Prefix, ResumeFrom
from worker.input.validate import Layout
from worker.records.audit import last_record
from worker.records.recorder import Recorder
from worker.settings import Settings
from worker.state.checkpoint import (
    Checkpoint,
    Pairs,
    StateStore,
    count,
    default_state_dir,
    pairs_from,
)
from worker.state.watermark import Ledger
from worker.times import utc_text

log = structlog.get_logger("audience_purge.resume")


def state_directory(settings: Settings, input_path: str) -> Path:
    """Where the run keeps its progress: given, or derived from what identifies the purge."""
    shard = (
        f"{settings.shard_index}/{settings.shard_count}" if settings.shard_count is not None else ""
    )
    return settings.state_dir or default_state_dir(
        input_path, settings.campaign_id, settings.base_url, shard
    )


def run_target(settings: Settings) -> dict[str, Any]:
    """What a state directory is for: the API (without credentials), the campaign given on
    the command line, and the shard. The input is bound by content (the verified prefix),
    not by name, so a moved or re-mounted file still resumes."""
    parts = urlsplit(settings.base_url)
    host = parts.netloc.rpartition("@")[2]
    shard = (
        f"{settings.shard_index}/{settings.shard_count}"
        if settings.shard_count is not None
        else None
    )
    return {
        "base_url": urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", "")),
        "campaign_id": settings.campaign_id,
        "shard": shard,
    }


_TARGET_NAMES = {"base_url": "--base-url", "campaign_id": "--campaign-id", "shard": "--shard"}


def check_target(point: Checkpoint, target: dict[str, Any], directory: Path) -> None:
    """Refuse a state written for another target (a rehearsal's state reused in production).

    Raises:
        StateError: naming what differs and how to start over.
    """
    saved = point.target
    differs = [
        f"{_TARGET_NAMES[key]} {saved.get(key)!r} there, {target[key]!r} now"
        for key in target
        if key in saved and saved[key] != target[key]
    ]
    if differs:
        raise StateError(
            f"state directory {directory} belongs to another purge ({'; '.join(differs)}): "
            "give this purge its own --state-dir, or --fresh to start this one over there"
        )


def open_state(
    directory: Path, *, fresh: bool, target: dict[str, Any] | None = None
) -> tuple[StateStore, Checkpoint | None]:
    """The run's state store, locked for this run, and its checkpoint unless there is none
    or ``fresh``.

    Raises:
        StateError: another run holds the directory, its state is unusable, or it was
            written for another ``target``.
    """
    store = StateStore(directory)
    store.lock()
    try:
        if fresh:
            store.clear()
            return store, None
        point = store.load() if store.exists() else None
        if point is not None and target is not None:
            check_target(point, target, directory)
        return store, point
    except BaseException:
        store.unlock()
        raise


def peek_state(directory: Path, target: dict[str, Any]) -> Checkpoint | None:
    """The saved progress a dry run plans from: read only, without the lock (a run may be
    going on; its files are replaced atomically), and never written.

    Raises:
        StateError: the state is unusable, or belongs to another purge.
    """
    store = StateStore(directory)
    if not store.exists():
        return None
    point = store.load()
    check_target(point, target, directory)
    return point


def make_plan(point: Checkpoint | None, settings: Settings) -> Plan:
    """A fresh plan, or one that continues ``point``."""
    if point is None:
        return Plan(Ledger(0), Batcher(settings.batch_size), Deduper())
    resume = None
    if point.layout is not None:
        resume = ResumeFrom(
            Prefix(point.prefix_bytes, point.prefix_lines, point.prefix_sha256),
            point.watermark,
            Layout(*point.layout),
        )
    return Plan(
        Ledger(point.watermark),
        Batcher(settings.batch_size),
        Deduper(point.seen_before_watermark()),
        resume=resume,
        skip=point.done_above,
        retry={c: ids.copy() for c, ids in point.failed.items()} if settings.retry_failed else {},
    )


def previous_link(point: Checkpoint | None) -> dict[str, Any] | None:
    """Where the last run's audit chain ended, read from the files (the truth on disk).

    The newest file first: the one the last run was writing (a run killed before its next
    checkpoint wrote records there that the checkpoint's head does not name yet), then the
    file of the checkpoint's head.
    """
    if point is None:
        return None
    names = [point.audit_pending, point.audit.get("audit_log")]
    for name in filter(None, names):
        last = last_record(Path(str(name)))
        if last is not None and "hash" in last:
            return {
                "audit_log": str(name),
                "run_id": last.get("run_id"),
                "last_seq": last.get("seq"),
                "last_hash": last["hash"],
            }
    if any(names):
        log.warning(
            "previous audit log not found: the new chain starts unlinked",
            path=str(next(filter(None, names))),
        )
    return None


@dataclass(slots=True)
class Checkpointer:
    """Takes consistent snapshots of a running plan and saves them."""

    store: StateStore
    plan: Plan
    digest: InputDigest
    recorder: Recorder
    input_name: str
    prior: Checkpoint | None
    input_sha256: str | None = None
    link: dict[str, Any] | None = None
    target: dict[str, Any] = field(default_factory=dict)

    def snapshot(self, *, complete: bool) -> Checkpoint:
        plan = self.plan
        watermark = (
            self.digest.bytes_read
            if complete
            else plan.ledger.watermark(plan.batcher.oldest_open())
        )
        prefix = self.digest.prefix_before(watermark)
        prior = self.prior
        if prior is not None and prefix.size < prior.prefix_bytes <= watermark:
            # Not re-read that far yet (retrying failures, or still skipping): keep the
            # prior's verified prefix rather than a shorter one.
            prefix = Prefix(prior.prefix_bytes, prior.prefix_lines, prior.prefix_sha256)
        pending = pairs_from([*plan.ledger.pending_pairs(), *plan.batcher.open_ids()])
        done = _union(plan.ledger.done_above(watermark), plan.skip)
        layout = self.digest.layout or (
            Layout(*prior.layout) if prior is not None and prior.layout else None
        )
        prior_deleted = self.prior.totals.get("deleted", 0) if self.prior else 0
        return Checkpoint(
            input_name=self.input_name,
            watermark=watermark,
            prefix_bytes=prefix.size,
            prefix_lines=prefix.lines,
            prefix_sha256=prefix.sha256,
            layout=None
            if layout is None
            else (layout.id_col, layout.campaign_col, layout.has_header),
            complete=complete,
            input_sha256=self.input_sha256,
            run_ids=[*(self.prior.run_ids if self.prior else []), self.recorder.audit.run_id],
            # Until this run writes its first record, the chain still ends where it links to.
            audit=self.recorder.audit.head()
            if self.recorder.audit.written or self.link is None
            else self.link,
            audit_pending=str(self.recorder.audit.path.absolute()),
            audit_files=self._audit_files(),
            target=self.target,
            completed_by=self._completed_by(complete),
            totals={
                "deleted": prior_deleted + self.recorder.tally.deleted,
                "failed_left": count(self.recorder.failed_pairs),
            },
            seen=plan.dedupe.seen,
            pending=pending,
            done_above=done,
            failed=self.recorder.failed_pairs,
        )

    def _audit_files(self) -> list[dict[str, Any]]:
        """The earlier runs' audit files, and this run's, with what each recorded as
        deleted (this run's: so far)."""
        audit = self.recorder.audit
        earlier = [
            e
            for e in (self.prior.audit_files if self.prior else [])
            if e.get("run_id") != audit.run_id
        ]
        mine = {
            "run_id": audit.run_id,
            "path": str(audit.path.absolute()),
            "deleted": self.recorder.tally.deleted,
        }
        return [*earlier, mine]

    def _completed_by(self, complete: bool) -> dict[str, Any] | None:
        """Who finished the purge: an earlier run, unless this one had work of its own."""
        if not complete:
            return None
        tally, prior = self.recorder.tally, self.prior
        if prior is not None and prior.completed_by and not (tally.rows or tally.requests):
            return prior.completed_by
        return {"run_id": self.recorder.audit.run_id, "at": utc_text(datetime.now(UTC))}

    def save(self, *, complete: bool = False) -> None:
        """Audit first, then state: the state never claims more than the audit proves."""
        self.recorder.audit.sync()
        self.store.save(self.snapshot(complete=complete))

    def finished(self) -> bool:
        plan = self.plan
        return (
            self.recorder.tally.input_read
            and plan.ledger.idle()
            and plan.batcher.oldest_open() is None
        )

    async def every(self, interval: float) -> None:
        """Save periodically until cancelled.

        The snapshot is taken on the event loop; the fsyncs and file writes (4-40 ms, more
        when the disk is busy) run in a thread, so that sending does not stall meanwhile. A
        cancellation waits for a write under way: the next save must not race it.
        """
        while True:
            await asyncio.sleep(interval)
            durable = self.recorder.audit.sync_later()
            write = self.store.prepare(self.snapshot(complete=False))
            await _in_a_thread_to_the_end(durable, write)  # the audit first, then the state

    def last_words(self) -> None:
        """Save what a run that ends in an error can still prove (the audit first: with a
        broken audit log, nothing is saved, and the state keeps its last claim)."""
        try:
            self.save()
        except OutputError as exc:
            log.error("the progress could not be saved at the end", error=str(exc))

    def final(self, *, stopped: bool) -> None:
        """The last save of a run (synchronous: no cancellation can cut it short)."""
        self.save(complete=not stopped and self.finished())


def _union(a: Pairs, b: Pairs) -> Pairs:
    out: Pairs = {c: ids.copy() for c, ids in a.items()}
    for campaign, ids in b.items():
        if campaign in out:
            out[campaign] |= ids
        else:
            out[campaign] = ids.copy()
    return out


async def _in_a_thread_to_the_end(*steps: Callable[[], None]) -> None:
    """The steps, in order, in a thread; a cancellation still waits for them to end (a
    thread cannot be stopped), then goes on."""

    def work() -> None:
        for step in steps:
            step()

    done = asyncio.ensure_future(asyncio.to_thread(work))
    try:
        await asyncio.shield(done)
    except asyncio.CancelledError:
        while not done.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([done])
        if not done.cancelled() and (error := done.exception()) is not None:
            log.error("a checkpoint failed as the run stopped", error=str(error))
        raise
