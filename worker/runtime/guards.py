"""Guards that stop a run that is going wrong, or running late, before it does more.

- :class:`FailureRateGuard` (``--halt-on-failure-rate``): an observer of the recorder that
  trips when the share of failed ids among the last ``window`` ids (at least 100) passes
  the limit: a wrong campaign, an expired plan, a server refusing everything. The run then
  stops starting requests, lets those in flight finish, saves its state and exits 1.
- :func:`count_refusal` (``--max-deletes``, ``--expect-count``): refuses, before anything
  is sent, an input that holds more ids than expected, or another number.
- :func:`watch_deadline` (``--deadline``): logs the ETA from the measured rate, warns once
  when the deadline is at risk, and stops the run gracefully when it passes (exit 75):
  re-running the same command continues where it stopped.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import structlog

from worker.records.tally import Tally
from worker.settings import Settings
from worker.times import utc_text

log = structlog.get_logger("audience_purge.guards")

MIN_WINDOW = 100


class FailureRateGuard:
    """Observer: calls ``on_trip`` once, when too many of the latest ids failed."""

    def __init__(self, limit: float, on_trip: Callable[[str], None], window: int = MIN_WINDOW):
        self._limit = limit
        self._on_trip = on_trip
        self._window = max(window, MIN_WINDOW)
        self._batches: deque[tuple[int, bool]] = deque()
        self._ids = 0
        self._failed = 0
        self.tripped = False

    def on_event(self, event: str, fields: Mapping[str, Any]) -> None:
        if event not in ("deleted", "failed") or not fields.get("audience_ids"):
            return
        self._add(len(fields["audience_ids"]), event == "failed")
        if self.tripped or self._ids < self._window:
            return
        if self._failed / self._ids > self._limit:
            self.tripped = True
            self._on_trip(
                f"{self._failed} of the last {self._ids} ids failed "
                f"({self._failed / self._ids:.0%} > --halt-on-failure-rate {self._limit:.0%})"
            )

    def _add(self, n: int, failed: bool) -> None:
        self._batches.append((n, failed))
        self._ids += n
        self._failed += n if failed else 0
        # Keep the smallest run of latest batches that still holds a whole window.
        while self._batches and self._ids - self._batches[0][0] >= self._window:
            old, old_failed = self._batches.popleft()
            self._ids -= old
            self._failed -= old if old_failed else 0


def eta_seconds(tally: Tally, total_lines: int | None, elapsed: float) -> float | None:
    """Seconds left at the rate measured so far, when the input's size is known."""
    done = tally.deleted + tally.failed + tally.rejected + tally.duplicates + tally.already_done
    if not total_lines or done <= 0 or elapsed <= 0:
        return None
    return max(total_lines - done, 0) / (done / elapsed)


async def watch_deadline(
    deadline: datetime,
    tally: Tally,
    total_lines: Callable[[], int | None],
    on_passed: Callable[[], None],
    *,
    interval: float = 5.0,
) -> None:
    """Until cancelled: log the ETA every ``interval``, warn once if it is past the
    deadline, and call ``on_passed`` when the deadline comes."""
    started = time.monotonic()
    warned = False
    while True:
        left = (deadline - datetime.now(UTC)).total_seconds()
        if left <= 0:
            log.warning("deadline passed: stopping gracefully", deadline=utc_text(deadline))
            on_passed()
            return
        eta = eta_seconds(tally, total_lines(), time.monotonic() - started)
        if eta is not None:
            log.info("eta", eta_s=round(eta), deadline_in_s=round(left))
            if eta > left and not warned:
                warned = True
                log.warning(
                    "deadline at risk: at the measured rate the purge ends after it",
                    eta_s=round(eta),
                    deadline_in_s=round(left),
                    deadline=utc_text(deadline),
                )
        await asyncio.sleep(min(interval, left))


def count_refusal(settings: Settings, valid: int) -> str | None:
    """Why ``--max-deletes`` or ``--expect-count`` refuses an input of ``valid`` ids, if it
    does: a wrong file, or the wrong scale of one, is stopped before the first request."""
    if settings.max_deletes is not None and valid > settings.max_deletes:
        return f"the input holds {valid} valid ids, more than --max-deletes {settings.max_deletes}"
    if settings.expect_count is not None and valid != settings.expect_count:
        return (
            f"the input holds {valid} valid ids, not the {settings.expect_count} of "
            "--expect-count (a truncated or wrong file?)"
        )
    return None
