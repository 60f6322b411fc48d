"""Wires the stages of a purge: source → validate/dedupe → batch → dispatch → record → report.

This is the embedding API: :func:`run_purge` takes one :class:`Settings` and an input path
and returns a :class:`RunResult`; it raises only :class:`UsageError` (nothing was sent).
It runs inside the one :class:`~worker.runtime.runtime.Runtime`; progress is checkpointed (see
:mod:`worker.state.resume`) so that re-running the same command continues the purge.
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

import structlog

from worker.commands.findings import Findings, print_findings
from worker.commands.proving import Proof, prepare_selection
from worker.errors import InputError, UsageError
from worker.exit_codes import ExitCode
from worker.files import RUN_SELECTION
from worker.input.batching import Batch
from worker.input.planning import Count, Plan, count_input, plan_batches
from worker.input.selecting import Selecting
from worker.input.sources import ByteSource, InputDigest, open_input
from worker.records.progress import show_progress
from worker.records.report import RunResult, plural, print_plan, print_summary
from worker.runtime.guards import count_refusal
from worker.runtime.runtime import Runtime
from worker.settings import Settings
from worker.state.checkpoint import Checkpoint, StateStore, count
from worker.state.replay import Replayed, apply, replay
from worker.state.resume import (
    Checkpointer,
    make_plan,
    open_state,
    peek_state,
    previous_link,
    run_target,
    state_directory,
)

log = structlog.get_logger("audience_purge.run")


def run_command(settings: Settings, input_path: str, selecting: Selecting | None = None) -> int:
    """``audience-purge run``: purge (or plan) and print the summary."""
    result = asyncio.run(run_purge(settings, input_path, selecting=selecting))
    if not settings.dry_run:
        print_summary(result, sys.stdout)
    return result.exit_code


async def run_purge(
    settings: Settings,
    input_path: str,
    *,
    out: TextIO = sys.stdout,
    selecting: Selecting | None = None,
) -> RunResult:
    """Run one purge (or, with ``settings.dry_run``, plan it) and return its result.

    With ``selecting`` (``run --select``), ``input_path`` is the selection's file: it is
    collected first, unless an unfinished purge of the same rule already collected it.

    Raises:
        UsageError: the input, the settings or the saved state are unusable; nothing was
            sent.
    """
    directory = state_directory(settings, input_path)
    collects = selecting is not None and not settings.dry_run
    runtime = Runtime(
        settings,
        "run",
        needs_token=not settings.dry_run or selecting is not None,
        # A selection a run collects into is read back as its input: it is checked as
        # the output it is (a dry run collects aside, and reads it only).
        inputs={} if collects else {"the input": input_path},
        files={RUN_SELECTION: selecting.path} if collects and selecting else {},
        state_dir=None if settings.dry_run else directory,
    )
    counted = None if selecting is not None else await _count_for_guards(settings, input_path)
    store: StateStore | None = None
    if settings.dry_run:
        point = None if settings.fresh else peek_state(directory, run_target(settings))
    else:
        store, point = open_state(directory, fresh=settings.fresh, target=run_target(settings))
    try:
        carried = None
        if selecting is not None:
            point, carried = _selection_state(store, point)
        replayed = replay(point) if point is not None else Replayed()
        if point is not None:
            apply(point, replayed)
        plan = make_plan(point, settings)
        try:
            job = _Job(input_path, selecting, counted, directory, carried)
            return await _purge(runtime, plan, job, store, point, replayed, out)
        except UsageError:
            if point is None and store is not None:
                store.clear()  # nothing was sent: a corrected input must not look "changed"
            raise
    finally:
        if store is not None:
            store.unlock()


def _selection_state(
    store: StateStore | None, point: Checkpoint | None
) -> tuple[Checkpoint | None, dict[str, Any] | None]:
    """The saved progress a ``run --select`` continues, and the audit chain a new purge of
    the rule continues.

    An unfinished purge, or a finished one with ids still failed, is resumed from the
    selection it collected (checked by
    :func:`~worker.commands.proving.prepare_selection`; the failed ids are retried, as
    for any input). A purge finished with nothing left failed is over: the rule is
    collected anew (what matches it now), and the new purge's audit file continues the
    finished one's chain, so that their files verify as one.
    """
    if point is None or not point.complete or count(point.failed):
        return point, None
    link = previous_link(point) if store is not None else None
    if store is not None:
        store.clear()
    return None, link


@dataclass(frozen=True, slots=True)
class _Job:
    """What a purge reads: its input, and for ``run --select`` the rule that makes it."""

    input_path: str
    selecting: Selecting | None
    counted: Count | None
    directory: Path  # the state's, which a selection is bound to
    link: dict[str, Any] | None = None  # the chain a new purge of the same rule continues


async def _purge(
    runtime: Runtime,
    plan: Plan,
    job: _Job,
    store: StateStore | None,
    point: Checkpoint | None,
    replayed: Replayed,
    out: TextIO,
) -> RunResult:
    settings = runtime.settings
    digest = InputDigest()

    def read() -> dict[str, Any]:
        return {"input_sha256": digest.sha256, "input_bytes": digest.bytes_read}

    runtime.failure_fields = read
    # A dry run's audit file stands alone: linking it to the purge's chain would fork it.
    link = (previous_link(point) or job.link) if store is not None else None
    async with runtime.recording(
        previous=link,
        failed_pairs=dict(point.failed) if point else None,
        state_dir=store.directory if store else None,
    ):
        started: dict[str, Any] = {}
        counted, input_path, scratch = job.counted, job.input_path, None
        if job.selecting is not None:
            try:
                prepared = await prepare_selection(runtime, job.selecting, point, job.directory)
            except BaseException:
                if point is None:  # the listing went out: the audit says so, and how it ended
                    selection = job.selecting.record(None)
                    runtime.start(dry_run=settings.dry_run, input=None, selection=selection)
                raise
            started["selection"] = prepared.record
            input_path, scratch = prepared.input_path, prepared.temporary
            counted = await _count_for_guards(settings, input_path)
        source = await open_input(input_path)
        try:
            return await _read_and_send(
                runtime,
                plan,
                source,
                digest,
                read,
                store,
                point,
                replayed,
                counted,
                out,
                started,
                link,
            )
        finally:
            source.close()
            if scratch is not None:
                scratch.unlink(missing_ok=True)


async def _read_and_send(
    runtime: Runtime,
    plan: Plan,
    source: ByteSource,
    digest: InputDigest,
    read: Callable[[], dict[str, Any]],
    store: StateStore | None,
    point: Checkpoint | None,
    replayed: Replayed,
    counted: Count | None,
    out: TextIO,
    started: dict[str, Any],
    link: dict[str, Any] | None,
) -> RunResult:
    settings = runtime.settings
    recorder = runtime.recorder
    # The input is bound to the state by its verified prefix (checked as it is read),
    # not by the whole file: rows appended to a finished input are picked up.
    input_sha256, input_lines = await source.survey()
    runtime.input_lines = input_lines
    if runtime.metrics is not None and input_lines is not None:
        runtime.metrics.input_rows.set(input_lines)
    batches = plan_batches(plan, source, digest, recorder, settings)
    checkpoints = None
    if store is not None:
        checkpoints = Checkpointer(
            store,
            plan,
            digest,
            recorder,
            source.name,
            point,
            input_sha256,
            link=link,
            target=run_target(settings),
        )
        # Before the first audit record: a crash from here on leaves a state whose audit
        # head names this run's file, so the next run's chain links to it.
        checkpoints.save()
    runtime.start(
        dry_run=settings.dry_run,
        input=source.name,
        input_size=source.size,
        input_sha256=input_sha256,
        state_dir=str(store.directory) if store else None,
        resumed=_resumed(point, replayed),
        **started,
    )
    if store is None or checkpoints is None:
        findings = Findings()
        recorder.subscribe(findings)
        await _dry_run(batches, settings, out)
        print_findings(findings, recorder.tally, point, settings, counted, out)
        planned = runtime.result(interrupted=False, fatal=None, **read())
        return runtime.finish_with(replace(planned, selection=started.get("selection")))
    proof = Proof.of(runtime, started, point)
    try:
        await proof.before()
        sent = await _send(runtime, plan, batches, checkpoints, input_lines)
        if sent.exit_code in (ExitCode.OK, ExitCode.FAILED) and not sent.halted:
            sent = await proof.after(sent)
    except Exception:
        checkpoints.last_words()
        raise
    _refuse_all_rejected(sent)
    sent = all_selected_settled(sent, selecting="selection" in started)
    result = replace(
        sent,
        state_dir=store.directory,
        already_complete=_already_complete(point, sent),
        selection=started.get("selection"),
        **read(),
    )
    try:
        return runtime.finish_with(result)
    finally:
        # Also when a file of the run could not be put in place: every outcome is audited.
        checkpoints.final(stopped=result.interrupted or result.fatal_reason is not None)


async def _send(
    runtime: Runtime,
    plan: Plan,
    batches: AsyncIterator[Batch],
    checkpoints: Checkpointer,
    input_lines: int | None,
) -> RunResult:
    """Send the batches under the dispatcher, with checkpoints and progress beside it."""
    settings = runtime.settings
    dispatcher = await runtime.dispatcher(on_settled=plan.ledger.settled)
    runtime.background(checkpoints.every(settings.checkpoint_interval))
    runtime.background(
        show_progress(
            runtime.recorder.tally,
            input_lines,
            mode=settings.progress,
            interval=settings.progress_interval,
            concurrency=lambda: dispatcher.limit.limit,
        )
    )
    interrupted = await runtime.supervise(dispatcher.run(batches), dispatcher.stop)
    return runtime.result(interrupted=interrupted, fatal=dispatcher.fatal)


async def _count_for_guards(settings: Settings, input_path: str) -> Count | None:
    """Count the input when a guard needs it; a real run refuses here, before anything.

    Raises:
        UsageError: a guard refuses the input (not in a dry run, which reports it).
    """
    if settings.max_deletes is None and settings.expect_count is None:
        return None
    counted = await count_input(input_path, settings)
    log.info(
        "input counted for the guards",
        valid=counted.valid,
        rejected=counted.rejected,
        duplicates=counted.duplicates,
        seconds=counted.seconds,
    )
    reason = count_refusal(settings, counted.valid)
    if reason is not None and not settings.dry_run:
        raise InputError(f"{reason}: nothing was sent")
    return counted


def _already_complete(point: Checkpoint | None, sent: RunResult) -> str | None:
    """For a rerun of a finished purge that found nothing new: who finished it, and when."""
    t = sent.tally
    if point is None or not point.complete or t.rows or t.requests or sent.exit_code:
        return None
    by = point.completed_by or {"run_id": point.run_ids[-1] if point.run_ids else "?"}
    when = f" at {by['at']}" if by.get("at") else ""
    return (
        f"already complete: {plural(point.totals.get('deleted', 0), 'id')} deleted by run "
        f"{by['run_id']}{when}; nothing to do (exit 0)"
    )


def _refuse_all_rejected(sent: RunResult) -> None:
    """An input with rows and not one valid id is not a purge that succeeded: it is the
    wrong file, or the wrong column (each row's reason is in the audit log).

    Raises:
        InputError: every row read was rejected.
    """
    t = sent.tally
    something_valid = t.valid or t.duplicates or t.already_done or t.other_shard
    if t.rejected and not something_valid and sent.exit_code == ExitCode.OK:
        raise InputError(
            f"not one valid audience id: all {t.rejected} rows were rejected (the audit "
            f"log {sent.audit_log} gives each line and its reason)"
        )


def all_selected_settled(sent: RunResult, *, selecting: bool) -> RunResult:
    """A ``run --select`` whose selection held rows the run rejected (each audited with
    its reason) left selected records neither deleted nor failed: not a purge of what was
    selected, so not exit 0 (``select`` refuses such records; this is the backstop)."""
    rejected = sent.tally.rejected
    if not selecting or not rejected or sent.exit_code != ExitCode.OK:
        return sent
    log.warning("selected records were rejected, not deleted", rejected=rejected)
    return replace(sent, exit_code=ExitCode.FAILED)


def _resumed(point: Checkpoint | None, replayed: Replayed) -> dict[str, object] | None:
    if point is None:
        return None
    return {
        "runs": point.run_ids,
        "watermark": point.watermark,
        "complete": point.complete,
        "failed": count(point.failed),
        "confirmed_deleted": point.totals.get("deleted", 0),
        "replayed": {
            "audit_log": replayed.path,
            "records": replayed.records,
            "deleted": replayed.ids,
        },
    }


async def _dry_run(batches: AsyncIterator[Batch], settings: Settings, out: TextIO) -> None:
    """Print the plan: what would be sent, and how long it would take at the set rate."""
    ids: Counter[int] = Counter()
    requests: Counter[int] = Counter()
    async for batch in batches:
        ids[batch.campaign_id] += len(batch.audience_ids)
        requests[batch.campaign_id] += 1
    print_plan(ids, requests, settings.rate, settings.batch_size, out)
