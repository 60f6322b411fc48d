"""Progress: a live bar on a terminal, a structured event every few seconds otherwise.

Progress counts input rows that reached their end (deleted, failed, rejected, duplicate)
against the file's line count, so the ETA follows the API, not the file reader. For stdin
the total is unknown and the bar only counts. Beside the request rate it shows the
concurrency limit when given one: the adaptive limit moves, and a rate below the configured
one next to a low limit says the server is pushing back.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from typing import Any

import structlog
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from worker.records.tally import Tally

log = structlog.get_logger("audience_purge.progress")


def _mode(requested: str) -> str:
    if requested == "auto":
        return "bar" if sys.stderr.isatty() else "log"
    return requested


def done(tally: Tally) -> int:
    """Rows that reached their end."""
    return tally.deleted + tally.failed + tally.rejected + tally.duplicates


async def show_progress(
    tally: Tally,
    total_lines: int | None,
    *,
    mode: str,
    interval: float,
    concurrency: Callable[[], int] | None = None,
) -> None:
    """Show progress until cancelled; ``mode`` is auto, bar, log or off; ``concurrency``
    reads the current concurrency limit (the dispatcher's ``limit.limit``)."""
    chosen = _mode(mode)
    fields = _Fields(tally, concurrency)
    if chosen == "bar":
        await _bar(tally, total_lines, fields)
    elif chosen == "log":
        await _events(tally, total_lines, interval, fields)


class _Fields:
    """The figures every progress line shows, measured from its creation."""

    def __init__(self, tally: Tally, concurrency: Callable[[], int] | None) -> None:
        self._tally = tally
        self._concurrency = concurrency
        self._started = time.monotonic()

    @property
    def concurrency(self) -> bool:
        """The concurrency limit is among the figures."""
        return self._concurrency is not None

    def __call__(self) -> dict[str, Any]:
        tally = self._tally
        elapsed = max(time.monotonic() - self._started, 1e-6)
        fields: dict[str, Any] = {
            "deleted": tally.deleted,
            "failed": tally.failed,
            "rejected": tally.rejected,
            "duplicates": tally.duplicates,
            "requests": tally.requests,
            "req_per_s": round(tally.requests / elapsed, 2),
        }
        if self._concurrency is not None:
            fields["concurrency_limit"] = self._concurrency()
        return fields


async def _events(tally: Tally, total: int | None, interval: float, fields: _Fields) -> None:
    try:
        while True:
            await asyncio.sleep(interval)
            share = round(min(100.0, 100 * done(tally) / total), 1) if total else None
            log.info("progress", done_pct=share, **fields())
    finally:
        log.info("progress", **fields())


async def _bar(tally: Tally, total: int | None, fields: _Fields) -> None:
    limit = ", {task.fields[concurrency_limit]} in flight at most" if fields.concurrency else ""
    columns = (
        TextColumn("[bold]purging"),
        BarColumn(),
        TextColumn(
            "deleted [green]{task.fields[deleted]}[/] failed [red]{task.fields[failed]}"
            "[/] rejected {task.fields[rejected]} | {task.fields[req_per_s]} req/s" + limit
        ),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        job = bar.add_task("purge", total=total, **fields())
        try:
            while True:
                bar.update(job, completed=done(tally), **fields())
                await asyncio.sleep(0.2)
        finally:
            # The line count includes the header and blank lines: once the input was read
            # whole, the rows that reached their end are the true total.
            final = done(tally)
            bar.update(
                job,
                completed=final,
                total=final if tally.input_read else total,
                **fields(),
            )
