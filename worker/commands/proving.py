"""The parts of ``run`` that read the API rather than delete: collecting a ``--select``
selection before the purge, and the proof after it (``--verify``'s read-back, and the
campaigns' stats before and after). Both use the run's own client and rate gate
(:meth:`Runtime.api`), so a listing spends the same budget as the deletions beside it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import structlog

from worker.commands.select import describe
from worker.errors import ApiError
from worker.exit_codes import ExitCode
from worker.input.selecting import Selecting, Selection, SelectionFile, collect
from worker.records.report import RunResult
from worker.runtime.runtime import Runtime
from worker.runtime.stopping import Abandoned
from worker.sending.audience_stats import take_stats
from worker.sending.listing import Reader, refused
from worker.sending.readback import ReadBack, deleted_by_campaign, read_back
from worker.sending.retry import RetryPolicy

log = structlog.get_logger("audience_purge.run")


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
        with SelectionFile(selecting.path) as target:
            try:
                with target.writing():
                    found.append(
                        await collect(
                            rule,
                            partial(reader.page, rule.campaign_id),
                            target.file,
                            runtime.settings.page_size,
                        )
                    )
            except ApiError as exc:
                raise refused(exc, f"cannot list campaign {rule.campaign_id}") from None
            target.commit()

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
    and with ``--verify`` a read-back of every campaign this run deleted from."""

    runtime: Runtime
    campaigns: tuple[int, ...]
    verify: bool
    reader: Reader | None = None

    @classmethod
    def of(cls, runtime: Runtime, started: dict[str, Any]) -> Proof:
        settings = runtime.settings
        wanted = settings.verify or "selection" in started
        campaign = settings.campaign_id
        return cls(runtime, (campaign,) if campaign is not None and wanted else (), settings.verify)

    async def _read(self) -> Reader:
        if self.reader is None:
            self.reader = await reader_of(self.runtime)
        return self.reader

    async def before(self) -> None:
        if self.campaigns:
            await take_stats(await self._read(), self.runtime.recorder, self.campaigns, "before")

    async def after(self, sent: RunResult) -> RunResult:
        """Verify and take the stats after; the result again, since ids still present make
        it fail. A signal during the read-back ends the run as interrupted (resumable)."""
        runtime = self.runtime
        campaigns = set(self.campaigns)
        checked: list[ReadBack] = []
        if self.verify:
            reader = await self._read()
            runtime.recorder.audit.sync()
            deleted = deleted_by_campaign([runtime.audit_path])
            campaigns |= set(deleted.campaigns)
            work = read_back(reader, runtime.recorder, deleted, runtime.settings.page_size)
            if await runtime.supervise(_settled(work, checked), reader.stop.set) or not checked:
                return runtime.result(interrupted=True, fatal=None)
        if campaigns:
            await take_stats(await self._read(), runtime.recorder, sorted(campaigns), "after")
        result = runtime.result(interrupted=False, fatal=None)
        unproven = checked[0].unproven if checked else {}
        if not unproven:
            return result
        # A campaign that could not be read completely proves nothing either way.
        return replace(
            result,
            exit_code=max(result.exit_code, ExitCode.FAILED),
            unproven={str(c): why for c, why in sorted(unproven.items())},
        )


async def _settled(work: Awaitable[ReadBack], into: list[ReadBack]) -> None:
    """``work`` to its end, its result kept in ``into``; a stop while it waits at the gate
    ends it quietly (``into`` stays empty)."""
    with contextlib.suppress(Abandoned):
        into.append(await work)
