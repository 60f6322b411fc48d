"""The one runtime every command runs inside.

It builds, in this order and in one place: the token source (first, so that a missing
token is refused before anything is touched), the audit log with its recorder and the
recorder's observers (failed-out file, report), the ``run_started`` record, the HTTP
session and rate gate and the dispatcher built on them, the signal handlers, and the
closing ``run_finished`` record with the exit code. Resources live in one
``AsyncExitStack``; the tasks of a run live in one ``asyncio.TaskGroup`` (:meth:`supervise`):
the work itself and its background helpers (checkpoints, progress), so an exception in
any of them ends the run instead of vanishing.

A command is: build a :class:`Runtime`, prepare what is its own (input, state, queue),
enter :meth:`Runtime.recording`, write :meth:`Runtime.start`, run its work under
:meth:`Runtime.supervise`, and :meth:`Runtime.finish`. An exception inside ``recording``
is recorded as ``run_finished`` with its exit code (see :func:`exit_code_for`), then
raised for the CLI to report.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from pyroaring import BitMap64

from worker import __version__
from worker.errors import FatalError, OutputError, UsageError
from worker.exit_codes import ExitCode, exit_code_for, finished_code
from worker.files import AUDIT_LOG, FAILED_OUT, REPORT, RESULTS, Kind, check_outputs
from worker.input.batching import Batch
from worker.records.audit import AuditLog, default_audit_path, new_run_id, read_key_file
from worker.records.failed_out import FailedOut
from worker.records.recorder import Recorder
from worker.records.report import ReportFile, RunResult
from worker.records.results import ResultsFile
from worker.runtime.early import deferring_signals
from worker.runtime.guards import FailureRateGuard, watch_deadline
from worker.runtime.signals import Stopper, signal_handlers
from worker.sending.client import UnleashXClient, http_session
from worker.sending.concurrency import concurrency_limit
from worker.sending.credentials import TokenSource
from worker.sending.dispatch import Dispatcher
from worker.sending.ratelimit import RateGate, rate_gate
from worker.sending.retry import RetryPolicy
from worker.settings import DECLARATIONS, Settings
from worker.settings.catalogue import CONSUME, DEFAULT_METRICS_PORT

if TYPE_CHECKING:
    from worker.records.metrics import Metrics
    from worker.records.signing import Signer

Work = Coroutine[Any, Any, None]
log = structlog.get_logger("audience_purge.runtime")


class Runtime:
    """Settings → audit and recorder → API session, rate gate, dispatcher → supervised work
    under signal handlers → ``run_finished`` and the exit code."""

    def __init__(
        self,
        settings: Settings,
        command: str,
        *,
        needs_token: bool = True,
        plans: bool = True,
        outputs: tuple[str, ...] = (),
        inputs: Mapping[str, str | Path | None] | None = None,
        files: Mapping[Kind, Path | None] | None = None,
        state_dir: Path | None = None,
    ) -> None:
        """Read the token now: without one, nothing (state, outputs) is touched. Then
        check every file the command writes against the policy of :mod:`worker.files`:
        the audit log, the outputs its settings name, ``files`` (its own, such as the
        selection), and ``state_dir``, against ``inputs`` and the key files it reads.

        Raises:
            UsageError: ``dry_run`` for a command that cannot plan (``plans=False``): it
                would act for real, so it is refused before anything is read; or a file
                it would write may not be written.
        """
        if settings.dry_run and not plans:
            raise UsageError(
                f"{command} has no dry run: it would act for real. Use run --dry-run to see "
                "what an input would send"
            )
        self.settings = settings
        self.command = command
        # Outputs (report, failed_out, ...) a command that is not in their settings'
        # ``commands`` offers through flags of its own (verify).
        self._outputs = frozenset(outputs)
        self.tokens = (
            TokenSource(settings.token, None if settings.token else settings.token_file)
            if needs_token
            else None
        )
        self.run_id = new_run_id()
        self.audit_path = settings.audit_log or default_audit_path(
            _standalone_dir(settings, command), self.run_id
        )
        self._check_files(inputs or {}, files or {}, state_dir)
        self._started = time.monotonic()
        self._stack = AsyncExitStack()
        self._background: list[Work] = []
        self._recorder: Recorder | None = None
        self._api: tuple[UnleashXClient, RateGate] | None = None
        # What puts the run's files in place before run_finished (see finish).
        self._settle: list[Callable[[], None]] = []
        self._stopper: Stopper | None = None
        self._under_way = False
        self._finished = False
        # What a run that ends in an exception can still say in its run_finished.
        self.failure_fields: Callable[[], dict[str, Any]] = dict
        self.metrics: Metrics | None = None
        self.metrics_port: int | None = None  # where the endpoints are served (None: not)
        # What else /readyz needs (a reachable Redis, say): None when fine, else why not.
        self.readiness_checks: list[Callable[[], str | None]] = []
        self.input_lines: int | None = None  # the input's size in lines, when known
        self.halted: str | None = None  # why a guard stopped the run
        self.stopped_by: str | None = None  # "deadline" when it passed
        # On every log line, the libraries' included (see worker.runtime.logs).
        context = {
            "run_id": self.run_id,
            "command": command,
            "shard": settings.shard_index if settings.shard_count is not None else None,
            "campaign_id": settings.campaign_id,
        }
        structlog.contextvars.unbind_contextvars(*context)
        structlog.contextvars.bind_contextvars(
            **{key: value for key, value in context.items() if value is not None}
        )

    def _check_files(
        self,
        inputs: Mapping[str, str | Path | None],
        files: Mapping[Kind, Path | None],
        state_dir: Path | None,
    ) -> None:
        settings = self.settings
        read = {
            **inputs,
            "--token-file": settings.token_file if self.tokens is not None else None,
            "--audit-key-file": settings.audit_key_file,
            "--sign-key": settings.sign_key,
        }
        outputs: dict[Kind, Path | None] = {
            AUDIT_LOG: self.audit_path,
            REPORT: settings.report if self._offers("report") else None,
            RESULTS: self._written("results"),
            FAILED_OUT: self._written("failed_out"),
            **files,
        }
        check_outputs(read, outputs, state_dir=state_dir)

    @property
    def recorder(self) -> Recorder:
        if self._recorder is None:
            raise RuntimeError("the recorder exists inside Runtime.recording() only")
        return self._recorder

    def elapsed(self) -> float:
        return round(time.monotonic() - self._started, 3)

    @asynccontextmanager
    async def recording(
        self,
        *,
        previous: dict[str, Any] | None = None,
        failed_pairs: dict[int, BitMap64] | None = None,
        state_dir: Path | None = None,
    ) -> AsyncIterator[Recorder]:
        """The audit log and its recorder, with the outputs the settings ask for."""
        settings = self.settings
        audit = AuditLog(
            self.audit_path,
            self.run_id,
            previous=previous,
            key=read_key_file(settings.audit_key_file),
            signer=_signer(settings.sign_key),
        )
        async with self._stack:
            self._stack.enter_context(deferring_signals())
            self._stack.callback(audit.close)
            self._recorder = Recorder(audit, failed_pairs=failed_pairs)
            self._attach_outputs(state_dir)
            await self._attach_metrics()
            try:
                yield self._recorder
            except BaseException as exc:
                # A run refused before run_started leaves no record, as if never begun.
                if self._under_way and not self._finished:
                    self._finish_failed(exc)
                raise

    def _finish_failed(self, exc: BaseException) -> None:
        """``run_finished`` for a run ended by ``exc``, if the audit log still takes it."""
        try:
            self.finish(
                exit_code=exit_code_for(exc),
                error=str(exc) or type(exc).__name__,
                duration_s=self.elapsed(),
                **self.failure_fields(),
            )
        except OutputError as broken:
            log.error("run_finished could not be written", error=str(broken))

    def _attach_outputs(self, state_dir: Path | None) -> None:
        """The failed-out file, the results file and the report, for a command that offers
        them: a config file shared by several commands must not let one overwrite another's
        outputs. A dry run writes neither the failed-out nor the results file: it sends
        nothing, so nothing fails and no row has an outcome (and opening them would empty
        the files of the real run the dry run rehearses, or its input)."""
        settings, recorder = self.settings, self.recorder
        # The results file first: refused (a directory, a file not its own), it leaves the
        # failed-out file of the run before untouched.
        if (results_path := self._written("results")) is not None:
            results = ResultsFile(results_path, self.run_id)
            self._stack.callback(results.close)
            self._settle.append(results.close)
            recorder.subscribe(results)
        if (failed_path := self._written("failed_out")) is not None:
            failed_out = FailedOut(failed_path, recorder.failed_pairs)
            self._stack.callback(failed_out.close)
            self._settle.append(failed_out.settle)
            recorder.subscribe(failed_out)
        if settings.report is not None and self._offers("report"):
            report = ReportFile(
                settings.report,
                run_id=self.run_id,
                audit_log=self.audit_path,
                failed_out=self._written("failed_out"),
                state_dir=state_dir,
                results=self._written("results"),
            )
            # Written when the stack unwinds: after the run's last checkpoint, as the last
            # thing a run does, even when it ends in an error.
            self._stack.callback(report.write)
            recorder.subscribe(report)

    async def _attach_metrics(self) -> None:
        """The metrics observer, its endpoints and the final push, as the settings ask."""
        settings = self.settings
        if not self._offers("metrics_port"):
            return
        port = settings.metrics_port
        asked = port is not None  # a default port that is busy is only a warning
        if port is None and self.command == CONSUME:
            port = DEFAULT_METRICS_PORT
        if not port and settings.pushgateway is None:
            return
        # Imported here: prometheus_client and aiohttp.web are for runs that ask for metrics.
        from worker.records.metrics import Metrics
        from worker.runtime.health import push, serving

        metrics = self.metrics = Metrics(rate_per_second=settings.rate.per_second)
        self.recorder.subscribe(metrics)
        if port:
            served = serving(
                metrics, self.readiness, port=port, host=settings.metrics_address, asked=asked
            )
            self.metrics_port = await self._stack.enter_async_context(served)
        if settings.pushgateway is not None:
            shard = "all" if settings.shard_count is None else str(settings.shard_index)
            self._stack.push_async_callback(
                push,
                metrics,
                settings.pushgateway,
                job=settings.metrics_job,
                grouping={"shard": shard},
            )

    def readiness(self) -> str | None:
        """None when the run is ready for work (``/readyz``), else why it is not."""
        if not self._under_way:
            return "starting"
        if self._finished or (self._stopper is not None and self._stopper.stopping):
            return "stopping"
        for check in self.readiness_checks:
            if (reason := check()) is not None:
                return reason
        return None

    def _written(self, setting: str) -> Path | None:
        """The path of an output this run writes (not on a dry run, which sends nothing)."""
        path: Path | None = getattr(self.settings, setting)
        return path if self._offers(setting) and not self.settings.dry_run else None

    def _offers(self, setting: str) -> bool:
        return self.command in DECLARATIONS[setting].commands or setting in self._outputs

    def start(self, **fields: Any) -> None:
        """Write ``run_started``: the version, the command, the effective settings, and what
        the command adds (its input, stream, state)."""
        self.recorder.run_started(
            version=__version__,
            command=self.command,
            settings=self.settings.public(),
            **fields,
        )
        self._under_way = True

    def finish(self, **fields: Any) -> None:
        """Put the run's files in place (results, failed-out), then write ``run_finished``,
        the last record of the run: so that it says how the run ended, files included.

        Raises:
            OutputError: a file could not be put in place; ``run_finished`` says so
                (exit 74, its error), unless the run was ending in an error already.
        """
        self._finished = True
        failed = self._settle_files()
        ours = failed is not None and not fields.get("error")
        if ours:
            fields = {**fields, "exit_code": ExitCode.IO_ERROR, "error": str(failed)}
        self.recorder.run_finished(**fields)
        if ours and failed is not None:
            raise failed

    def _settle_files(self) -> OutputError | None:
        """Each output put in place; the first that could not be (the others still are)."""
        first: OutputError | None = None
        settle, self._settle = self._settle, []
        for put_in_place in settle:
            try:
                put_in_place()
            except OutputError as exc:
                log.error("a file of the run could not be written", error=str(exc))
                first = first or exc
        return first

    def result(self, *, interrupted: bool, fatal: FatalError | None, **extra: Any) -> RunResult:
        """The result of a run that got under way; its exit code is decided here."""
        recorder = self.recorder
        recorder.flush()  # held duplicate rows are written and counted before the totals
        return RunResult(
            run_id=self.run_id,
            exit_code=finished_code(
                fatal=fatal is not None,
                interrupted=interrupted,
                failed=recorder.failed_left > 0 or self.halted is not None,
            ),
            tally=recorder.tally,
            duration_s=self.elapsed(),
            audit_log=self.audit_path,
            report=self.settings.report,
            failed_out=self._written("failed_out"),
            results=self._written("results"),
            interrupted=interrupted,
            fatal_reason=fatal.reason if fatal else None,
            dry_run=self.settings.dry_run,
            failed_left=recorder.failed_left,
            halted=self.halted,
            stopped_by=self.stopped_by,
            **extra,
        )

    def finish_with(self, result: RunResult) -> RunResult:
        self.finish(**result.audit_totals())
        return result

    async def api(self, concurrency: int) -> tuple[UnleashXClient, RateGate]:
        """The API client (on a pooled session) and the rate gate, for the rest of the run:
        built once, so that every request of the run (listing, stats, deleting) spends the
        one rate budget."""
        if self._api is not None:
            return self._api
        if self.tokens is None:
            raise RuntimeError(f"{self.command} was built without a token")
        settings = self.settings
        session = await self._stack.enter_async_context(http_session(settings.timeout, concurrency))
        gate = await self._stack.enter_async_context(rate_gate(settings))
        self._api = UnleashXClient(session, settings.base_url, self.tokens), gate
        return self._api

    async def dispatcher(self, *, on_settled: Callable[[Batch], None]) -> Dispatcher:
        """The dispatcher of the run: ``concurrency`` senders recording through the recorder,
        their requests in flight bounded by the limit ``concurrency_mode`` asks for (shown
        by the metrics)."""
        settings = self.settings
        client, gate = await self.api(settings.concurrency)
        self._guard(settings)
        limit = concurrency_limit(
            settings.concurrency_mode,
            settings.concurrency,
            rate_per_second=settings.rate.scaled(1 - settings.rate_margin).per_second,
            burst=settings.burst,
            clock=asyncio.get_running_loop().time,
        )
        if self.metrics is not None:
            self.metrics.follow_concurrency(lambda: limit.limit)
        return Dispatcher(
            client=client,
            gate=gate,
            policy=RetryPolicy.from_settings(settings),
            recorder=self.recorder,
            concurrency=settings.concurrency,
            limit=limit,
            on_settled=on_settled,
            on_error=self.fail,
        )

    def _guard(self, settings: Settings) -> None:
        """The guards the settings ask for: a failure-rate halt, a deadline."""
        if settings.halt_on_failure_rate is not None:
            guard = FailureRateGuard(
                settings.halt_on_failure_rate, self.halt, window=2 * settings.batch_size
            )
            self.recorder.subscribe(guard)
        if settings.deadline is not None:
            self.background(
                watch_deadline(
                    settings.deadline,
                    self.recorder.tally,
                    lambda: self.input_lines,
                    self._deadline_passed,
                    interval=settings.progress_interval,
                )
            )

    def background(self, helper: Work) -> None:
        """A helper that runs beside the next supervised work and is cancelled when it ends."""
        self._background.append(helper)

    async def supervise(self, work: Work, stop: Callable[[], None]) -> bool:
        """Run ``work`` and the background helpers in one task group, under the signal
        handlers; True if a signal interrupted it.

        A first signal, or an unexpected error in the work (reported through :meth:`fail`)
        or in a helper, calls ``stop`` and cancels the work after ``grace``; a second
        signal cancels it at once. The cancellation of a stopped work is its normal end.

        Raises:
            The first unexpected error, itself (not wrapped), once the work has ended.
        """
        helpers, self._background = self._background, []
        stopper = self._stopper = Stopper(stop, self.settings.grace)
        task = asyncio.current_task()
        cancelling = task.cancelling() if task is not None else 0
        try:
            with signal_handlers(stopper):
                async with asyncio.TaskGroup() as group:
                    main = group.create_task(work)
                    stopper.watch(main)
                    running = [group.create_task(self._guarded(h, stopper)) for h in helpers]
                    main.add_done_callback(lambda _: [task.cancel() for task in running])
        except BaseExceptionGroup as failed:
            # Python 3.11's TaskGroup leaves a cancel request on this task when a child fails
            # while the group is already closing: take back what the group asked, so that
            # the caller's next await is not cancelled by a run that has ended.
            while task is not None and task.cancelling() > cancelling:
                task.uncancel()
            raise _first(failed) from None
        finally:
            self._stopper = None
        if stopper.error is not None:
            raise stopper.error
        return stopper.signals > 0 or stopper.deadline_passed

    def halt(self, reason: str) -> None:
        """A guard tripped: stop starting requests, let those in flight finish, end with 1."""
        self.halted = reason
        log.error("halting: no new requests", reason=reason)
        if self._stopper is not None:
            self._stopper.halt()

    def _deadline_passed(self) -> None:
        self.stopped_by = "deadline"
        if self._stopper is not None:
            self._stopper.deadline()

    def fail(self, error: Exception) -> None:
        """An unexpected error in the supervised work: stop it gracefully, then end with it."""
        if self._stopper is None:
            raise error
        self._stopper.fail(error)

    @staticmethod
    async def _guarded(helper: Work, stopper: Stopper) -> None:
        try:
            await helper
        except Exception as exc:
            stopper.fail(exc)


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first exception of a task group's failure, itself rather than wrapped; the
    others (tasks failing as they were cancelled, say) are logged, not lost."""
    errors: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        error = pending.pop(0)
        if isinstance(error, BaseExceptionGroup):
            pending[:0] = error.exceptions
        else:
            errors.append(error)
    for other in errors[1:]:
        log.error("another task failed too", error=repr(other))
    return errors[0]


def _standalone_dir(settings: Settings, command: str) -> Path:
    """Where a run's audit log goes by default: a dry run's and a ``verify`` run's, each a
    chain of its own, in a subdirectory, so that ``audit verify purge-audit/*.jsonl`` reads
    the purges' chains only (two files that both start a chain are tampering there)."""
    if command == "verify":
        return settings.audit_dir / "verify"
    return settings.audit_dir / "dry-run" if settings.dry_run else settings.audit_dir


def _signer(path: Path | None) -> Signer | None:
    """The Ed25519 key of ``--sign-key`` (cryptography is imported only then)."""
    if path is None:
        return None
    from worker.records.signing import load_signer

    return load_signer(path)
