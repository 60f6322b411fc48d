"""``audience-purge verify --audit PATH...``: prove, after the fact, that a purge's ids are gone.

The audit files are evidence, so they are checked before they are believed: each file's
own hash chain must verify (a changed, removed or reordered record is exit 2). The links
*between* files are ``audit verify``'s job: a purge directory holds many chains (other
purges, shards, earlier verify runs), and any of their files may be read back here. The
HMAC key (``--audit-key-file``) signs this run's own log; it is not asked of the inputs.

A chain that verifies can still be cut short: a run without ``run_finished`` crashed, is
still going, or lost its tail (``head -5 audit.jsonl`` verifies). The ids it recorded are
read back, but ids it deleted after its last record are not in the files, so each such run
is a ``WARNING:`` line, is listed in ``run_finished`` and the report (``incomplete_runs``),
and the verdict says that the proof covers what the files record only (``caveat``). The
exit code stays what the read-back found: the ids the files name are gone, or are not. A
crashed run that a later run in the files continued is warned about but not a caveat: the
run that continued it sent again what the crash left unrecorded.

Then each campaign is read back (:mod:`worker.sending.readback`), with its stats, in a run
of its own: its audit log holds ``run_started`` (the files with their SHA-256),
``audience_stats``, one ``verified`` per campaign and ``run_finished``; the ids still
present go to ``--failed-out`` for ``run --input`` to retry.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from worker.errors import FatalError, UsageError
from worker.exit_codes import ExitCode, finished_code
from worker.files import file_sha256
from worker.records.audit_query import ChainEnd, verify_file
from worker.records.purge_logs import (
    Deleted,
    IncompleteRun,
    Partial,
    deleted_by_campaign,
    incomplete_runs,
    not_given,
)
from worker.records.report import STDOUT, plural
from worker.runtime.runtime import Runtime
from worker.runtime.stopping import Abandoned
from worker.sending.audience_stats import compare_stats, take_stats
from worker.sending.listing import Reader
from worker.sending.readback import ReadBack, read_back
from worker.sending.retry import RetryPolicy
from worker.settings import Settings

COMMAND = "verify"


def verify_command(settings: Settings, paths: Sequence[Path]) -> int:
    """Read back the campaigns of the audit files; print what was found; the exit code.

    Raises:
        UsageError: an audit file cannot be read or does not verify, or records no
            deletion (of ``--campaign-id``, when given); nothing was requested.
    """
    files = distinct_files(paths)
    checked = [describe_file(path) for path in files]
    deleted = recorded_deletions(files, settings.campaign_id)
    out = sys.stderr if settings.report == STDOUT else sys.stdout
    described = [about for about, _ in checked]
    incomplete = incomplete_runs([end for _, end in checked])
    try:
        partial = not_given(files)
    except OSError as exc:
        raise UsageError(f"an audit file cannot be read: {exc.strerror}") from None
    return asyncio.run(
        verify(settings, files, described, deleted, out=out, incomplete=incomplete, partial=partial)
    )


def distinct_files(paths: Sequence[Path]) -> list[Path]:
    """The files given, each once (by what it is, through links).

    Raises:
        UsageError: one does not exist or is not a regular file.
    """
    seen: dict[tuple[int, int], Path] = {}
    for path in paths:
        try:
            info = path.stat()
        except OSError as exc:
            raise UsageError(f"audit file {path} cannot be read: {exc.strerror}") from None
        if not path.is_file():
            raise UsageError(f"audit file {path} is not a file")
        seen.setdefault((info.st_dev, info.st_ino), path)
    return list(seen.values())


def describe_file(path: Path) -> tuple[dict[str, Any], ChainEnd]:
    """The file as ``run_started`` names it (path, size, SHA-256, records), once its own
    chain verified, and what verifying it found (its runs).

    Raises:
        UsageError: it cannot be read, or its chain does not verify.
    """
    try:
        end, problem = verify_file(path)
        digest, size = file_sha256(path)
    except OSError as exc:
        raise UsageError(f"audit file {path} cannot be read: {exc.strerror}") from None
    if problem is not None:
        raise UsageError(
            f"audit file {problem}: its chain does not verify, so its records prove nothing "
            f"(audience-purge audit verify {path} says more)"
        )
    return {"path": str(path), "bytes": size, "sha256": digest, "records": end.records}, end


def recorded_deletions(files: Sequence[Path], campaign_id: int | None) -> Deleted:
    """What the files record as deleted.

    Raises:
        UsageError: they cannot be read, or record no deletion (of ``campaign_id``).
    """
    try:
        deleted = deleted_by_campaign(files, campaign_id)
    except OSError as exc:
        raise UsageError(f"an audit file cannot be read: {exc.strerror}") from None
    if not deleted.campaigns:
        which = "" if campaign_id is None else f" of campaign {campaign_id}"
        raise UsageError(
            f"the audit files record no deletion{which}: nothing to verify (are they the "
            "purge's audit logs?)"
        )
    return deleted


@dataclass(slots=True)
class _Verification:
    """The supervised work: stats, then the read-back; ``stop`` ends it between reads."""

    reader: Reader
    runtime: Runtime
    deleted: Deleted
    stop_event: asyncio.Event
    incomplete: Sequence[IncompleteRun] = ()
    partial: Partial | None = None  # earlier files the given ones continue, not given
    after: dict[int, dict[str, Any] | None] = field(default_factory=dict)
    checked: ReadBack | None = None
    fatal: FatalError | None = None

    def stop(self) -> None:
        self.stop_event.set()

    async def run(self) -> None:
        recorder, campaigns = self.runtime.recorder, self.deleted.campaigns
        try:
            self.after = await take_stats(self.reader, recorder, campaigns, "after")
            self.checked = await read_back(
                self.reader, recorder, self.deleted, self.runtime.settings.page_size
            )
        except FatalError as exc:
            self.fatal = exc
        except Abandoned:
            return


async def verify(
    settings: Settings,
    files: Sequence[Path],
    described: list[dict[str, Any]],
    deleted: Deleted,
    *,
    out: TextIO = sys.stdout,
    incomplete: Sequence[IncompleteRun] = (),
    partial: Partial | None = None,
) -> int:
    """Read back the campaigns ``deleted`` names, in a run of its own; the exit code.
    ``incomplete`` are the runs of the files without ``run_finished``: said, not failed;
    ``partial``, the earlier files the given ones continue and that were not given: ids
    never looked for are not proven gone (exit 1).

    Raises:
        UsageError: an output (audit log, report, failed-out) is one of the audit files.
    """
    runtime = Runtime(
        settings,
        COMMAND,
        outputs=("report", "failed_out"),
        inputs={f"--audit {path}": path for path in files},
    )
    async with runtime.recording() as recorder:
        runtime.start(
            audit_files=described,
            campaigns=deleted.campaigns,
            recorded_deleted={str(c): deleted.count(c) for c in deleted.campaigns},
            emptied=sorted(deleted.emptied),
        )
        client, gate = await runtime.api(concurrency=1)
        stop = asyncio.Event()
        reader = Reader(client, gate, RetryPolicy.from_settings(settings), stop=stop)
        work = _Verification(reader, runtime, deleted, stop, incomplete, partial)
        interrupted = await runtime.supervise(work.run(), work.stop)
        unproven = work.checked is not None and bool(work.checked.unproven)
        code = finished_code(
            fatal=work.fatal is not None,
            interrupted=interrupted,
            failed=recorder.failed_left > 0 or unproven or partial is not None,
        )
        fields = _finished_fields(work, code, interrupted, runtime)
        runtime.finish(**fields)
    print_verification(fields, runtime, work, out)
    return code


def _finished_fields(
    work: _Verification, code: int, interrupted: bool, runtime: Runtime
) -> dict[str, Any]:
    """``run_finished`` (and so the report): the verdict, the counts, each campaign."""
    checked = work.checked or ReadBack()
    deleted = work.deleted
    present = {c: len(check.still_present) for c, check in checked.campaigns.items()}
    return {
        "exit_code": code,
        "interrupted": interrupted,
        "fatal_reason": work.fatal.reason if work.fatal else None,
        "duration_s": runtime.elapsed(),
        "requests": work.reader.requests,
        **checked.fields(),
        "failed_left": runtime.recorder.failed_left,
        "incomplete_runs": [run.fields() for run in work.incomplete],
        "caveat": _caveat(work.incomplete),
        "partial": None if work.partial is None else work.partial.fields(),
        "campaigns": {str(c): check.fields() for c, check in checked.campaigns.items()},
        **compare_stats(
            deleted.before,
            work.after,
            {c: deleted.count(c) for c in deleted.campaigns},
            present,
            deleted.emptied,
        ),
    }


_VERDICTS = {
    ExitCode.OK: "every id recorded as deleted is gone",
    ExitCode.FATAL: "aborted",
    ExitCode.INTERRUPTED: "interrupted",
}


def _caveat(incomplete: Sequence[IncompleteRun]) -> str | None:
    """What the proof does not cover: runs cut short that no later run in the files
    continued (what they deleted after their last record is in no file)."""
    cut = sum(run.continued_by is None for run in incomplete)
    if not cut:
        return None
    have = "has" if cut == 1 else "have"
    return (
        f"the proof covers only what the files record: {plural(cut, 'run')} in them {have} "
        "no run_finished (a crash, or a truncated file), so the deletions recorded may be "
        "incomplete"
    )


def _verdict(fields: dict[str, Any]) -> str:
    """``done``, or why not: ids still present outrank a campaign not read completely."""
    code = fields["exit_code"]
    if code == ExitCode.FAILED:
        left = fields["still_present"]
        if left:
            return f"{plural(left, 'id')} still present"
        return "partly read back" if fields["partial"] and not fields["unproven"] else "not proven"
    return _VERDICTS.get(code, "ended")


def print_verification(
    fields: dict[str, Any], runtime: Runtime, work: _Verification, out: TextIO
) -> None:
    """A few lines for a person: the verdict, each campaign, where the files are."""
    code = fields["exit_code"]
    why = f": {fields['fatal_reason']}" if fields["fatal_reason"] else ""
    caveat = f"; but {fields['caveat']}" if fields["caveat"] else ""
    lines = [
        f"audience-purge verify {runtime.run_id}: {_verdict(fields)} (exit {code}){why}{caveat}",
        *(run.warning() for run in work.incomplete),
    ]
    if work.partial is not None:
        lines.append(f"  {work.partial.text()}")
    checks = work.checked.campaigns if work.checked else {}
    for campaign in work.deleted.campaigns:
        check = checks.get(campaign)
        if check is None:
            lines.append(f"  campaign {campaign}: not read back")
            continue
        lines.append(f"  campaign {campaign}: {_campaign_line(check.fields(), check.emptied)}")
        if check.unproven:
            lines.append(f"    NOT PROVEN: {check.unproven}")
        audience = fields["audience"].get(str(campaign))
        if audience is not None:
            lines.append(f"    total audience {_totals_line(audience)}")
    lines.append(f"  audit log   {runtime.audit_path}")
    settings = runtime.settings
    if settings.report is not None:
        lines.append(f"  report      {'stdout' if settings.report == STDOUT else settings.report}")
    if settings.failed_out is not None:
        lines.append(f"  still present ids  {settings.failed_out}")
    print("\n".join(lines), file=out)


def _campaign_line(check: dict[str, Any], emptied: bool) -> str:
    """``3,000 ids recorded as deleted, 0 still present (listed 2,000 records in 2 pages)``."""
    pages = f"{check['pages']:,} page" + ("" if check["pages"] == 1 else "s")
    said = f"{check['checked']:,} ids recorded as deleted, {check['still_present']:,} still present"
    if emptied:
        said = "emptied by delete-all" + (f"; {said}" if check["checked"] else "")
        return f"{said} (holds {check['listed']:,} records)"
    passes = "" if check["passes"] == 1 else f", {plural(check['passes'], 'pass', 'passes')}"
    return f"{said} (listed {check['listed']:,} records in {pages}{passes})"


def _totals_line(audience: dict[str, Any]) -> str:
    """``10,000 before the purge, 7,000 now: as expected: 3,000 removed``."""
    before, after = audience["total_audience_before"], audience["total_audience_after"]
    now = "unknown" if after is None else f"{after:,}"
    if before is None:
        return f"{now} now (not recorded before the purge)"
    return f"{before:,} before the purge, {now} now: {audience['explanation']}"
