"""The parts of ``run`` that read the API rather than delete: collecting a ``--select``
selection before the purge, and the proof after it (``--verify``'s read-back, and the
campaigns' stats before and after). Both use the run's own client and rate gate
(:meth:`Runtime.api`), so a listing spends the same budget as the deletions beside it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson
import structlog

from worker.commands.select import describe
from worker.errors import OutputError, StateError
from worker.exit_codes import ExitCode
from worker.files import file_sha256, write_atomic
from worker.input.selecting import Selecting, Selection, collect_into
from worker.records.purge_logs import Partial, deleted_by_campaign, whole_purge
from worker.records.report import RunResult
from worker.runtime.runtime import Runtime
from worker.runtime.stopping import Abandoned
from worker.sending.audience_stats import take_stats
from worker.sending.listing import Reader
from worker.sending.readback import ReadBack, read_back
from worker.sending.retry import RetryPolicy
from worker.state.checkpoint import Checkpoint

log = structlog.get_logger("audience_purge.run")


BINDING = "selection.json"  # in the state directory: the rule and the file it collected


@dataclass(frozen=True, slots=True)
class Prepared:
    """A ``run --select`` ready to purge: what ``run_started`` says of the selection, the
    file to read, and a temporary file to remove afterwards (a dry run's)."""

    record: dict[str, Any]
    input_path: str
    temporary: Path | None = None


async def prepare_selection(
    runtime: Runtime, selecting: Selecting, point: Checkpoint | None, directory: Path
) -> Prepared:
    """The selection an unfinished purge collected, checked against the rule and its own
    hash; or a new one, collected now and bound to the state (``selection.json``). A dry
    run collects into a temporary file: the real selection may be a purge's input.

    Raises:
        StateError: the unfinished purge was selected by another rule, or its selection
            is gone or changed since it was collected.
        FatalError, KeyboardInterrupt: from :func:`collect_selection`.
    """
    if point is not None:
        return Prepared({**bound(selecting, directory), "resumed": True}, str(selecting.path))
    dry = runtime.settings.dry_run
    target = _scratch() if dry else selecting.path
    try:
        found = await collect_selection(runtime, replace(selecting, path=target))
    except BaseException:
        if dry:
            target.unlink(missing_ok=True)
        raise
    record = selecting.record(found)
    if not dry:
        binding = {"digest": selecting.rule.digest(), **record}
        try:
            write_atomic(directory / BINDING, orjson.dumps(binding, option=orjson.OPT_INDENT_2))
        except OSError as exc:
            raise OutputError("the state's selection record", directory / BINDING, exc) from None
    return Prepared(record, str(target), target if dry else None)


def bound(selecting: Selecting, directory: Path) -> dict[str, Any]:
    """What the unfinished purge in ``directory`` collected, if this rule and this file are
    still what it collected.

    Raises:
        StateError: they are not (or the record of them cannot be read).
    """
    again = "re-run the purge with the same rule flags, or add --fresh to select anew"
    try:
        data = orjson.loads((directory / BINDING).read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise StateError(
            f"the purge under way in {directory} has no readable record of its selection "
            f"({BINDING}: {getattr(exc, 'strerror', None) or exc}): add --fresh to select anew"
        ) from None
    if data.get("digest") != selecting.rule.digest():
        raise StateError(
            f"the purge under way in {directory} was selected by another rule "
            f"({orjson.dumps(data.get('rule')).decode()}): {again}"
        )
    if not selecting.path.is_file():
        raise StateError(
            f"the purge under way in {directory} was selected into {selecting.path}, which "
            "is gone: restore it to continue, or add --fresh to select anew"
        )
    collected = data.get("collected") or {}
    if file_sha256(selecting.path)[0] != collected.get("sha256"):
        raise StateError(
            f"the selection {selecting.path} changed since it was collected (its SHA-256 is "
            f"not the one recorded in {directory / BINDING}): restore it, or add --fresh to "
            "select anew"
        )
    return {key: data.get(key) for key in ("rule", "path", "collected")}


def _scratch() -> Path:
    """A private name for a dry run's selection: a file made by mkstemp and removed, so that
    the selection is written as a new file (an empty one is no selection to replace)."""
    handle, name = tempfile.mkstemp(prefix="audience-purge-dry-run-", suffix=".csv")
    os.close(handle)
    os.unlink(name)
    return Path(name)


async def collect_selection(runtime: Runtime, selecting: Selecting) -> Selection:
    """Collect the selection into its file, with the run's client and rate gate (listing
    spends the deletions' budget); a signal stops it with nothing written.

    Raises:
        FatalError: the API refused the listing.
        KeyboardInterrupt: SIGINT or SIGTERM during the collection.
    """
    reader = await reader_of(runtime)
    rule = selecting.rule
    found: list[Selection] = []

    async def work() -> None:
        page_size = runtime.settings.page_size
        found.append(await collect_into(rule, reader, selecting.path, page_size))

    try:
        interrupted = await runtime.supervise(work(), reader.stop.set)
    except Abandoned:
        interrupted = True
    if interrupted or not found:
        raise KeyboardInterrupt
    log.info(describe(rule, found[0]), selection=str(selecting.path), sha256=found[0].sha256)
    return found[0]


async def reader_of(runtime: Runtime) -> Reader:
    """A reader of the API on the run's own client and rate gate."""
    settings = runtime.settings
    client, gate = await runtime.api(settings.concurrency)
    return Reader(client, gate, RetryPolicy.from_settings(settings))


@dataclass(slots=True)
class Proof:
    """What a run proves beyond the API's answers: the campaigns' campaign-audience-stats
    before and after (with ``--verify`` or ``--select``, for the campaign named up front),
    and with ``--verify`` a read-back of every campaign this run deleted from, and of what
    the earlier runs of the purge deleted (their files as the state names them,
    ``earlier``): ``partial`` when one of those cannot be found."""

    runtime: Runtime
    campaigns: tuple[int, ...]
    verify: bool
    earlier: Sequence[dict[str, Any]] = ()
    reader: Reader | None = None
    partial: Partial | None = None

    @classmethod
    def of(cls, runtime: Runtime, started: dict[str, Any], point: Checkpoint | None) -> Proof:
        settings = runtime.settings
        wanted = settings.verify or "selection" in started
        campaign = settings.campaign_id
        campaigns = (campaign,) if campaign is not None and wanted else ()
        earlier = point.audit_files if point is not None else []
        return cls(runtime, campaigns, settings.verify, earlier)

    async def _read(self) -> Reader:
        if self.reader is None:
            self.reader = await reader_of(self.runtime)
        return self.reader

    async def before(self) -> None:
        """The stats before the first delete; a signal meanwhile ends the run (nothing
        was sent) as interrupted.

        Raises:
            KeyboardInterrupt: SIGINT or SIGTERM while they were read.
        """
        if self.campaigns and not await self._stats(self.campaigns, "before"):
            raise KeyboardInterrupt

    async def after(self, sent: RunResult) -> RunResult:
        """Verify and take the stats after; the result again, since ids still present make
        it fail. A signal meanwhile ends the run as interrupted (resumable)."""
        runtime = self.runtime
        campaigns = set(self.campaigns)
        checked: list[ReadBack] = []
        if self.verify:
            reader = await self._read()
            runtime.recorder.audit.sync()
            deleted = deleted_by_campaign(self._purge_files())
            campaigns |= set(deleted.campaigns)
            work = read_back(reader, runtime.recorder, deleted, runtime.settings.page_size)
            if not await self._supervised(_kept(work, checked)) or not checked:
                return runtime.result(interrupted=True, fatal=None)
        if campaigns and not await self._stats(sorted(campaigns), "after"):
            return runtime.result(interrupted=True, fatal=None)
        result = runtime.result(interrupted=False, fatal=None)
        unproven = checked[0].unproven if checked else {}
        if not unproven and self.partial is None:
            return result
        # A campaign that could not be read completely proves nothing either way, and ids
        # never looked for are not proven gone.
        return replace(
            result,
            exit_code=max(result.exit_code, ExitCode.FAILED),
            unproven={str(c): why for c, why in sorted(unproven.items())} or None,
            partial=None if self.partial is None else self.partial.fields(),
        )

    def _purge_files(self) -> list[Path]:
        """The audit files of the whole purge, so that a resumed run reads back what every
        run of it deleted, not only its own; what it cannot find makes it partial."""
        files, self.partial = whole_purge(self.runtime.audit_path, self.earlier)
        if self.partial is not None:
            log.warning("read back without an earlier run's deletions", **self.partial.fields())
        return files

    async def _stats(self, campaigns: Sequence[int], moment: str) -> bool:
        reader = await self._read()
        return await self._supervised(take_stats(reader, self.runtime.recorder, campaigns, moment))

    async def _supervised(self, work: Awaitable[object]) -> bool:
        """Run ``work`` under the signal handlers; False if a signal stopped it (a read
        waiting at the gate or in a backoff then ends at once)."""
        reader = await self._read()
        stopped = await self.runtime.supervise(_quiet(work), reader.stop.set)
        return not stopped and not reader.stop.is_set()


async def _kept(work: Awaitable[ReadBack], into: list[ReadBack]) -> None:
    into.append(await work)


async def _quiet(work: Awaitable[object]) -> None:
    """``work`` to its end; a stop while it waits at the gate ends it quietly."""
    with contextlib.suppress(Abandoned):
        await work
