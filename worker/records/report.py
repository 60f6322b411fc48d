"""Report stage: the JSON summary file (or stdout), the one-screen human summary, and the
dry-run plan; counts and durations worded for a person ("1 request", "about 2 h 24 min")."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import orjson

from worker.errors import OutputError
from worker.exit_codes import ExitCode
from worker.files import STDOUT as STDOUT  # --report - (see worker.files)
from worker.files import make_dirs, write_atomic
from worker.records.tally import Tally
from worker.settings.rate import RateSpec


@dataclass(frozen=True, slots=True)
class RunResult:
    """What a finished run hands back to the CLI (and to embedding code)."""

    run_id: str
    exit_code: int
    tally: Tally
    duration_s: float
    audit_log: Path
    report: Path | None
    failed_out: Path | None
    interrupted: bool
    fatal_reason: str | None
    dry_run: bool
    input_sha256: str = ""
    input_bytes: int = 0
    state_dir: Path | None = None
    failed_left: int = 0
    halted: str | None = None  # why --halt-on-failure-rate stopped the run
    stopped_by: str | None = None  # "deadline" when --deadline stopped it
    already_complete: str | None = None  # a rerun of a finished purge: who finished it
    selection: Mapping[str, Any] | None = None  # run --select: the rule and its file
    unproven: Mapping[str, str] | None = None  # --verify: campaigns not read completely, why
    # --verify: earlier runs' files that could not be read back (purge_logs.Partial.fields)
    partial: Mapping[str, Any] | None = None
    results: Path | None = None  # --results: one row per input row

    def summary(self) -> dict[str, Any]:
        """The report's content: totals first, then where to look."""
        t = self.tally
        campaigns = sorted(set(t.deleted_by_campaign) | set(t.failed_by_campaign))
        return {
            "run_id": self.run_id,
            "exit_code": self.exit_code,
            "dry_run": self.dry_run,
            "interrupted": self.interrupted,
            "fatal_reason": self.fatal_reason,
            "halted": self.halted,
            "stopped_by": self.stopped_by,
            "rows": t.rows,
            "valid": t.valid,
            "deleted": t.deleted,
            "failed": t.failed,
            "rejected": t.rejected,
            "duplicates": t.duplicates,
            "requests": t.requests,
            "retries": t.retries,
            "already_done": t.already_done,
            "other_shard": t.other_shard,
            "unconfirmed": t.unconfirmed,
            "failed_left": self.failed_left,
            "duration_s": self.duration_s,
            "failure_reasons": dict(t.failure_reasons),
            "verified": t.verified,
            "still_present": t.still_present,
            "unproven": dict(self.unproven or {}),
            "partial": None if self.partial is None else dict(self.partial),
            **audience_totals(t),
            "campaigns": {
                str(c): {"deleted": t.deleted_by_campaign[c], "failed": t.failed_by_campaign[c]}
                for c in campaigns
            },
            "selection": self.selection,
            "input_sha256": self.input_sha256,
            "input_bytes": self.input_bytes,
            "audit_log": str(self.audit_log),
            "failed_out": str(self.failed_out) if self.failed_out else None,
            "results": str(self.results) if self.results else None,
            "state_dir": str(self.state_dir) if self.state_dir else None,
        }

    def audit_totals(self) -> dict[str, Any]:
        """The summary as ``run_finished`` carries it (the record names the run already)."""
        skip = ("run_id", "audit_log", "failed_out", "results", "state_dir")
        return {k: v for k, v in self.summary().items() if k not in skip}


def audience_totals(t: Tally) -> dict[str, Any]:
    """campaign-audience-stats before and after, summed over the campaigns read at both
    moments (None when none was), and each campaign's figures with what they should be."""
    both = {c: m for c, m in t.audience_stats.items() if m.get("before") and m.get("after")}
    before = sum(m["before"]["total_audience"] for m in both.values()) if both else None
    after = sum(m["after"]["total_audience"] for m in both.values()) if both else None
    return {
        "total_audience_before": before,
        "total_audience_after": after,
        "audience": {
            str(c): audience_check(c, moments, t) for c, moments in sorted(t.audience_stats.items())
        },
    }


def audience_check(campaign: int, moments: Mapping[str, Any], t: Tally) -> dict[str, Any]:
    """One campaign's before/after, and the difference from what the run's deletions
    explain (see :func:`worker.sending.audience_stats.explain`)."""
    from worker.sending.audience_stats import explain

    before, after = moments.get("before"), moments.get("after")
    return explain(
        before,
        after,
        deleted=t.deleted_by_campaign[campaign],
        still_present=t.still_present_by_campaign[campaign],
    )


class ReportFile:
    """Observer: keeps what the run's ``run_finished`` says, for :meth:`write`."""

    def __init__(
        self,
        path: Path,
        *,
        run_id: str,
        audit_log: Path,
        failed_out: Path | None,
        state_dir: Path | None,
        results: Path | None = None,
    ) -> None:
        self.path = path
        self._finished: Mapping[str, Any] | None = None
        self._head = {"run_id": run_id}
        self._where = {
            "audit_log": str(audit_log),
            "failed_out": str(failed_out) if failed_out else None,
            "results": str(results) if results else None,
            "state_dir": str(state_dir) if state_dir else None,
        }

    def on_event(self, event: str, fields: Mapping[str, Any]) -> None:
        if event == "run_finished":
            self._finished = fields

    def write(self) -> None:
        """Write the report, if the run got as far as its ``run_finished``."""
        if self._finished is not None:
            write_report(self.path, {**self._head, **self._finished, **self._where})


def write_report(path: Path, data: dict[str, Any]) -> None:
    """Write the report atomically, so a reader never sees half of it; :data:`STDOUT` writes
    it to stdout instead, for a pipe.

    Raises:
        OutputError: it could not be written.
    """
    body = orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n"
    try:
        if path == STDOUT:
            sys.stdout.write(body.decode())
            sys.stdout.flush()
            return
        make_dirs(path.parent)
        write_atomic(path, body, durable=False)
    except OSError as exc:
        raise OutputError("the report", "to stdout" if path == STDOUT else path, exc) from None


def print_json(result: RunResult, out: TextIO) -> None:
    """The summary as one JSON object on one line (``run --json``), for scripts."""
    print(orjson.dumps(result.summary()).decode(), file=out, flush=True)


_VERDICTS: dict[int, str] = {
    ExitCode.OK: "done",
    ExitCode.FAILED: "finished with failures",
    ExitCode.USAGE: "refused",
    ExitCode.FATAL: "aborted",
    ExitCode.UNAVAILABLE: "Redis unavailable",
    ExitCode.INTERRUPTED: "interrupted",
    ExitCode.INTERNAL: "stopped on an internal error",
    ExitCode.IO_ERROR: "stopped: a file could not be written",
}


def print_summary(result: RunResult, out: TextIO, command: str = "run") -> None:
    """A one-screen summary for a person."""
    t = result.tally
    if result.already_complete is not None:
        print(f"audience-purge {command}: {result.already_complete}", file=out)
        return
    verdict = _VERDICTS.get(result.exit_code, "ended")
    why = result.fatal_reason or (f"halted: {result.halted}" if result.halted else None)
    if result.stopped_by == "deadline":
        why = "the --deadline passed"
    lines = [
        f"audience-purge {command} {result.run_id}: {verdict} (exit {result.exit_code})"
        + (f": {why}" if why else ""),
        f"  rows read   {t.rows:>10}    valid      {t.valid:>10}",
        f"  deleted     {t.deleted:>10}    failed     {t.failed:>10}",
        f"  rejected    {t.rejected:>10}    duplicates {t.duplicates:>10}",
        f"  requests    {t.requests:>10}    retries    {t.retries:>10}    "
        f"time {duration(result.duration_s)}",
    ]
    if t.already_done or t.unconfirmed:
        lines.append(f"  done before {t.already_done:>10}    unconfirmed {t.unconfirmed:>9}")
    lines += [
        f"  failed: {plural(count, 'id')}, {reason}"
        for reason, count in t.failure_reasons.most_common(5)
    ]
    if t.verified or result.unproven:
        lines.append(
            f"  read back   {t.verified:>10} ids   still present {t.still_present:>7}"
            + (f"    NOT PROVEN: {', '.join(sorted(result.unproven))}" if result.unproven else "")
        )
    if result.partial:
        lines.append(f"  {result.partial['reason']}")
    for campaign, moments in sorted(t.audience_stats.items()):
        check = audience_check(campaign, moments, t)
        if check.get("total_audience_before") is not None:
            lines.append(
                f"  campaign {campaign}: {check['total_audience_before']} records before, "
                f"{check['total_audience_after']} after: {check['explanation']}"
            )
    # failed_left holds this run's failures and, with a read-back, the ids found still
    # present: only what is beyond both was carried over from earlier runs.
    this_run = t.failed + t.still_present
    if result.failed_left > this_run:
        earlier = plural(result.failed_left - this_run, "id")
        lines.append(f"  failed in earlier runs, not retried: {earlier}")
    if result.exit_code in (ExitCode.FATAL, ExitCode.INTERRUPTED) or result.halted:
        lines.append("  to continue: fix the cause if any, then re-run the same command")
    lines.append(f"  audit log   {result.audit_log}")
    if result.report:
        lines.append(f"  report      {'stdout' if result.report == STDOUT else result.report}")
    if result.failed_out:
        lines.append(f"  failed ids  {result.failed_out}")
    if result.results:
        lines.append(f"  results     {result.results}")
    if result.state_dir:
        lines.append(f"  state       {result.state_dir}")
    print("\n".join(lines), file=out)


def print_plan(
    ids: Mapping[int, int],
    requests: Mapping[int, int],
    rate: RateSpec,
    batch_size: int,
    out: TextIO,
) -> None:
    """The dry run's plan: ids and requests per campaign, and how long they would take at
    ``rate``."""
    total = sum(requests.values())
    print(f"dry run: nothing was sent. Plan at {rate} (batch size {batch_size}):", file=out)
    for campaign in sorted(ids):
        print(
            f"  campaign {campaign}: {plural(ids[campaign], 'id')} in "
            f"{plural(requests[campaign], 'request')}",
            file=out,
        )
    print(
        f"  total: {plural(sum(ids.values()), 'id')} in {plural(len(ids), 'campaign')}, "
        f"{plural(total, 'request')}, about {duration(total / rate.per_second)} at the "
        "configured rate",
        file=out,
    )


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``1 request``, ``2 requests``: what a person reads, not ``1 requests``."""
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"


def duration(seconds: float) -> str:
    """A duration for a person, in its two largest units: ``0.6 s``, ``1 min 30 s``,
    ``2 h 24 min``, ``3 d 4 h`` (not ``8640.0s``)."""
    if round(seconds, 1) < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return _units(minutes, "min", secs, "s")
    hours, minutes = divmod(round(seconds / 60), 60)
    if hours < 24:
        return _units(hours, "h", minutes, "min")
    days, hours = divmod(round(seconds / 3600), 24)
    return _units(days, "d", hours, "h")


def _units(high: int, high_unit: str, low: int, low_unit: str) -> str:
    return f"{high} {high_unit}" + (f" {low} {low_unit}" if low else "")
