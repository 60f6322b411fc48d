"""``audience-purge redrive``: move dead letters back to their stream, audited.

Every dead letter (or those whose reason contains ``--reason``, dead-lettered since
``--since``) is added to the stream again with the fields its producer wrote (the
dead-letter bookkeeping, ``dead_reason``, ``dead_entry_id`` and ``dead_consumer``, taken
off), as a new entry that consumers read like any other, then removed from the dead-letter
stream: both in one Lua script per page, which Redis runs whole or not at all (see
:func:`worker.queue.admin.move_back`). Each move is audited as ``redriven`` with the new
entry id. Only dead letters that were there when the redrive started are looked at, so an
entry that fails again meanwhile is not moved round and round. ``--dry-run`` lists what
would move and moves nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import TextIO

from worker.errors import UsageError
from worker.exit_codes import ExitCode
from worker.queue.admin import DeadLetter, dead_letters, last_dead_id, move_back, now_ms
from worker.queue.intake import open_queue
from worker.queue.message import shown
from worker.queue.streams import StreamQueue
from worker.records.recorder import Recorder
from worker.runtime.runtime import Runtime
from worker.settings import Settings
from worker.times import from_unix, parse_duration_or_time, unix_ms, utc_text

PAGE = 100
MILLISECOND = timedelta(milliseconds=1)


def redrive_command(args: argparse.Namespace, settings: Settings) -> int:
    """``audience-purge redrive``."""
    since_ms = parse_since(args.since, now_ms()) if args.since else None
    return asyncio.run(run_redrive(settings, reason=args.reason, since_ms=since_ms))


def parse_since(text: str, now: int) -> int:
    """The Unix ms a ``--since`` names: ``now`` minus a duration, or an RFC 3339 time with
    its offset (the grammar of :mod:`worker.times`).

    Raises:
        UsageError: neither, or a time before 1970.
    """
    try:
        given = parse_duration_or_time(text, allow_zero=True)
    except ValueError as exc:
        raise UsageError(f"--since: {exc}") from None
    since = now - given // MILLISECOND if isinstance(given, timedelta) else unix_ms(given)
    if since < 0:  # stream entry ids count from 1970
        raise UsageError(
            f"--since {text!r} is before 1970-01-01: leave --since out for every dead letter"
        )
    return since


async def run_redrive(
    settings: Settings,
    *,
    reason: str | None = None,
    since_ms: int | None = None,
    out: TextIO = sys.stdout,
) -> int:
    """Move the chosen dead letters back (or list them, with ``settings.dry_run``)."""
    runtime = Runtime(settings, "redrive", needs_token=False, plans=True)
    async with open_queue(settings) as queue, runtime.recording() as recorder:
        runtime.start(
            dry_run=settings.dry_run,
            stream=queue.stream,
            dead_stream=queue.dead_stream,
            reason=reason,
            since=None if since_ms is None else utc_text(from_unix(since_ms / 1000), "seconds"),
        )
        mover = _Mover(queue, recorder, _Choice(reason, since_ms), settings.dry_run, out)
        interrupted = await runtime.supervise(mover.run(), mover.stop)
        code = ExitCode.INTERRUPTED if interrupted else ExitCode.OK
        runtime.finish(
            exit_code=code,
            interrupted=interrupted,
            dry_run=settings.dry_run,
            matched=mover.matched,
            redriven=mover.moved,
            not_moved=mover.missed,
        )
    verb = "would move" if settings.dry_run else "moved"
    print(
        f"{'interrupted: ' if interrupted else ''}{'dry run: ' if settings.dry_run else ''}"
        f"{verb} {mover.moved if not settings.dry_run else mover.matched} dead letters from "
        f"{queue.dead_stream} back to {queue.stream}"
        + (f" ({mover.missed} gone meanwhile or without fields, left)" if mover.missed else "")
        + f"; audit log {runtime.audit_path}",
        file=out,
    )
    return code


@dataclass(frozen=True, slots=True)
class _Choice:
    """Which dead letters move."""

    reason: str | None
    since_ms: int | None

    @property
    def start(self) -> str:
        return "-" if self.since_ms is None else f"{max(self.since_ms, 0)}-0"

    def __call__(self, dead: DeadLetter) -> bool:
        return self.reason is None or self.reason.casefold() in dead.reason.casefold()


class _Mover:
    """Walks the dead-letter stream page by page up to its newest entry at the start."""

    def __init__(
        self,
        queue: StreamQueue,
        recorder: Recorder,
        choice: _Choice,
        dry_run: bool,
        out: TextIO,
    ) -> None:
        self._queue = queue
        self._recorder = recorder
        self._choice = choice
        self._dry_run = dry_run
        self._out = out
        self._stop = asyncio.Event()
        self.matched = self.moved = self.missed = 0

    def stop(self) -> None:
        """Move no further page; the page being moved finishes (and is audited)."""
        self._stop.set()

    async def run(self) -> None:
        end = await last_dead_id(self._queue)
        start = self._choice.start
        while end is not None and not self._stop.is_set():
            page = await dead_letters(self._queue, start, end, PAGE)
            if not page:
                return
            start = f"({page[-1].dead_id}"
            await self._page([dead for dead in page if self._choice(dead)])
            if len(page) < PAGE:
                return

    async def _page(self, chosen: list[DeadLetter]) -> None:
        self.matched += len(chosen)
        if self._dry_run:
            for dead in chosen:
                print(f"would move {dead.dead_id}: {_described(dead)}", file=self._out)
            return
        moved = await move_back(self._queue, [dead.dead_id for dead in chosen])
        for dead in chosen:
            new = moved.get(dead.dead_id)
            if new is None:
                self.missed += 1
                print(f"left {dead.dead_id}: gone, or no field of its own", file=self._out)
                continue
            self._recorder.redriven(new, dead.dead_id, dead.entry_id, dead.reason)
            self.moved += 1
            print(f"moved {dead.dead_id} -> {new}: {_described(dead)}", file=self._out)


def _described(dead: DeadLetter) -> str:
    fields = shown(dead.fields)
    ids = fields.get("audience_ids", "")
    count = len([i for i in re.split(r"[\s,\[\]]+", ids) if i])
    at = utc_text(from_unix(dead.dead_at_ms / 1000), "seconds")
    return (
        f"{dead.reason or 'no reason'} (dead-lettered {at}; campaign "
        f"{fields.get('campaign_id', '?')}, {count} ids; was {dead.entry_id or '?'})"
    )
