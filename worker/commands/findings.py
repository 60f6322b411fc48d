"""What a dry run found besides the plan: the rows a real run would reject or skip, the
progress it would continue from, and what the guards would say."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TextIO

from worker.input.planning import Count
from worker.records.report import plural
from worker.records.tally import Tally
from worker.runtime.guards import count_refusal
from worker.settings import Settings
from worker.state.checkpoint import Checkpoint, count

SHOWN = 5


class Findings:
    """Observer: the first rejected rows, with their lines, id cells and reasons (never the
    row's text: the recorder tells none)."""

    def __init__(self) -> None:
        self.rejected: list[tuple[int, str | None, str]] = []

    def on_event(self, event: str, fields: Mapping[str, Any]) -> None:
        if event == "rejected" and len(self.rejected) < SHOWN:
            cell = fields.get("audience_raw")
            self.rejected.append(
                (int(fields["line"]), None if cell is None else str(cell), str(fields["reason"]))
            )


def print_findings(
    findings: Findings,
    tally: Tally,
    point: Checkpoint | None,
    settings: Settings,
    counted: Count | None,
    out: TextIO,
) -> None:
    """The lines after the plan: rejected rows, duplicates, saved progress, guards."""
    lines: list[str] = []
    if tally.rejected:
        lines.append(f"  rejected: {plural(tally.rejected, 'row')} (a real run audits each):")
        lines += [
            f"    line {line}: {reason}" + ("" if cell is None else f": {cell!r}")
            for line, cell, reason in findings.rejected
        ]
        if tally.rejected > len(findings.rejected):
            lines.append(f"    ... and {tally.rejected - len(findings.rejected)} more")
    if tally.duplicates:
        lines.append(f"  duplicates: {plural(tally.duplicates, 'row')}, sent once")
    if point is not None:
        lines.append(_progress(point, tally))
    lines += _guards(settings, counted)
    for line in lines:
        print(line, file=out)


def _progress(point: Checkpoint, tally: Tally) -> str:
    done = point.totals.get("deleted", 0)
    failed = count(point.failed)
    return (
        f"  saved progress: {plural(done, 'id')} deleted by earlier runs"
        + (f", {plural(failed, 'id')} failed (retried first)" if failed else "")
        + f", {plural(tally.already_done, 'row')} done out of order; the plan above is what "
        "remains"
    )


def _guards(settings: Settings, counted: Count | None) -> list[str]:
    if counted is None:
        return []
    reason = count_refusal(settings, counted.valid)
    verdict = f"would refuse: {reason}" if reason else "would pass"
    return [
        f"  guards: {verdict} ({plural(counted.valid, 'valid id')} in the whole input, "
        f"counted in {counted.seconds:g} s)"
    ]
