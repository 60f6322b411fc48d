"""Progress: a live bar on a terminal, a structured event every few seconds otherwise.

Progress counts input rows that reached their end (deleted, failed, rejected, duplicate)
against the file's line count, so the ETA follows the API, not the file reader. For stdin
the total is unknown and the bar only counts.
"""

from __future__ import annotations

import asyncio
import sys
import time
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
    tally: Tally, total_lines: int | None, *, mode: str, interval: float
) -> None:
    """Show progress until cancelled; ``mode`` is auto, bar, log or off."""
    chosen = _mode(mode)
    if chosen == "bar":
        await _bar(tally, total_lines)
    elif chosen == "log":
        await _events(tally, total_lines, interval)


def _fields(tally: Tally, started: float) -> dict[str, Any]:
    elapsed = max(time.monotonic() - started, 1e-6)
    return {
        "deleted": tally.deleted,
        "failed": tally.failed,
        "rejected": tally.rejected,
        "duplicates": tally.duplicates,
        "requests": tally.requests,
        "req_per_s": round(tally.requests / elapsed, 2),
    }


async def _events(tally: Tally, total: int | None, interval: float) -> None:
    started = time.monotonic()
    try:
        while True:
            await asyncio.sleep(interval)
            share = round(min(100.0, 100 * done(tally) / total), 1) if total else None
            log.info("progress", done_pct=share, **_fields(tally, started))
    finally:
        log.info("progress", **_fields(tally, started))


async def _bar(tally: Tally, total: int | None) -> None:
    started = time.monotonic()
    columns = (
        TextColumn("[bold]purging"),
        BarColumn(),
        TextColumn(
            "deleted [green]{task.fields[deleted]}[/] failed [red]{task.fields[failed]}"
            "[/] rejected {task.fields[rejected]} | {task.fields[req_per_s]} req/s"
        ),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        job = bar.add_task("purge", total=total, **_fields(tally, started))
        try:
            while True:
                bar.update(job, completed=done(tally), **_fields(tally, started))
                await asyncio.sleep(0.2)
        finally:
            # The line count includes the header and blank lines: once the input was read
            # whole, the rows that reached their end are the true total.
            final = done(tally)
            bar.update(
                job,
                completed=final,
                total=final if tally.input_read else total,
                **_fields(tally, started),
            )
