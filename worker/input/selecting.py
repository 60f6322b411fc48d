"""Selecting what to purge by rule: pages of audience-list, checked record by record, into a CSV.

A retention purge starts from a rule ("Completed records of campaign 42 whose last attempt
is older than 180 days"). The API filters what it can (status, call_status, attempt); the
age rule is applied here on ``last_attempt``, and so is every other part of the rule again,
on each record: an API that ignored a filter must not make us delete what was not asked for.

Records never attempted (attempt 0, or no ``last_attempt``) have no age: an age rule leaves
them out unless ``--include-never-attempted`` says otherwise. ``last_attempt`` is read as
UTC (the vendor does not say; its examples carry no zone).

Paging is by offset, and offsets shift when records are added or deleted, by this purge or
by anyone beside it. So the whole selection is collected before anything is deleted, and
it is what the pass that proved the listing read (:func:`~worker.sending.listing.read_whole`:
two consecutive consistent passes that list the same ids), not the sum of passes: a record
gone before that pass is not selected, one that was skipped by an earlier pass is. The
selection streams to disk, started anew by each pass, so a large campaign does not sit in
memory (a bitmap of the ids seen does) and the file never outgrows one pass.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import io
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any

import orjson
import structlog
from pyroaring import BitMap64

from worker.errors import ApiError, OutputError, UsageError
from worker.files import (
    SELECTION,
    csv_safe,
    file_to_write,
    keep_mode,
    make_dirs,
    sync_directory,
)
from worker.input.validate import parse_id
from worker.sending.listing import AudienceReader, Filters, Page, Reader, read_whole, refused
from worker.times import parse_duration, parse_timestamp, shifted, utc_text

STATUS_CODES = {"fresh": 0, "completed": 1, "halted": 2, "inqueue": 3}
HEADER = ("campaign_id", "audience_id", "status", "attempt", "last_attempt", "call_status")
SELECTIONS = Path("purge-selections")  # where run --select keeps its selections by default
_NEVER = ("", "0000-00-00 00:00:00", "0000-00-00")
log = structlog.get_logger("audience_purge.select")


class SelectionError(UsageError):
    """The selection cannot be trusted (the campaign kept changing, or a record cannot be
    checked against the rule): nothing is written and nothing deleted."""


@dataclass(frozen=True, slots=True)
class Rule:
    """What to select from one campaign; every part given narrows it."""

    campaign_id: int
    statuses: tuple[str, ...] = ()
    call_statuses: tuple[str, ...] = ()
    attempts: tuple[int, ...] = ()
    older_than: str | None = None  # as given (180d): the rule, whatever day it runs
    before: datetime | None = None  # the cutoff: last_attempt strictly before it
    include_never_attempted: bool = False

    def describe(self) -> dict[str, Any]:
        """The rule as the audit records it (``run_started.selection.rule``)."""
        return {
            "campaign_id": self.campaign_id,
            "status": list(self.statuses),
            "call_status": list(self.call_statuses),
            "attempt": list(self.attempts),
            "older_than": self.older_than,
            "last_attempt_before": _stamp(self.before),
            "include_never_attempted": self.include_never_attempted,
        }

    def digest(self) -> str:
        """12 hex digits naming the rule as given: the same flags on another day (an
        ``--older-than`` moves its cutoff) name the same selection, so a re-run resumes."""
        text = self.describe()
        if self.older_than is not None:
            text["last_attempt_before"] = None
        return hashlib.sha256(orjson.dumps(text, option=orjson.OPT_SORT_KEYS)).hexdigest()[:12]

    def filters(self) -> Filters:
        """The API's own filters for the rule (the age it cannot filter by)."""
        out = [("status", ",".join(str(STATUS_CODES[s]) for s in self.statuses))]
        out += [("call_status", value) for value in self.call_statuses]
        out += [("attempt", ",".join(map(str, self.attempts)))] if self.attempts else []
        return [item for item in out if item[1]]

    def why_not(self, record: Mapping[str, Any]) -> str | None:
        """None if the record matches the rule, else which part it fails.

        Raises:
            SelectionError: the record lacks a field the rule needs (it cannot be checked).
        """
        if self.statuses and _status(record) not in self.statuses:
            return "status"
        if self.call_statuses and _field(record, "call_status") not in self.call_statuses:
            return "call_status"
        if self.attempts and _attempts(record) not in self.attempts:
            return "attempt"
        if self.before is not None:
            when = last_attempt(record)
            if when is None:
                return None if self.include_never_attempted else "never_attempted"
            if when >= self.before:
                return "age"
        return None


def rule_given(args: argparse.Namespace) -> bool:
    """Whether any rule flag is on the command line."""
    return any(
        getattr(args, name, None)
        for name in (
            "status",
            "call_status",
            "attempt",
            "older_than",
            "last_attempt_before",
            "include_never_attempted",
        )
    )


def rule_from(args: argparse.Namespace, campaign_id: int | None, now: datetime) -> Rule:
    """The rule of a command line, its age cutoff taken from ``now``.

    Raises:
        UsageError: no campaign, no rule at all, or an unreadable age or time.
    """
    if campaign_id is None:
        raise UsageError("selecting needs --campaign-id N: the campaign to select from")
    if not rule_given(args):
        raise UsageError(
            "a selection needs a rule: --status, --call-status, --attempt, --older-than or "
            "--last-attempt-before (a whole campaign is delete-all's job)"
        )
    if args.include_never_attempted and not (args.older_than or args.last_attempt_before):
        raise UsageError(
            "--include-never-attempted goes with --older-than or --last-attempt-before"
        )
    before = None
    if args.older_than:
        before = _cutoff(now, parse_age(args.older_than))
    elif args.last_attempt_before:
        before = parse_time(args.last_attempt_before, "--last-attempt-before")
    attempts = tuple(sorted(set(args.attempt or ())))
    if any(n < 0 for n in attempts):
        raise UsageError("--attempt takes a number of attempts, 0 or more")
    return Rule(
        campaign_id=campaign_id,
        statuses=tuple(sorted(set(args.status or ()), key=STATUS_CODES.__getitem__)),
        call_statuses=tuple(sorted(set(args.call_status or ()))),
        attempts=attempts,
        older_than=args.older_than.strip() if args.older_than else None,
        before=before,
        include_never_attempted=bool(args.include_never_attempted),
    )


def parse_age(text: str) -> timedelta:
    """An age above zero in :mod:`worker.times`'s grammar (``180d``, ``12w``, ``1h30m``).

    Raises:
        UsageError: anything else.
    """
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise UsageError(f"--older-than: {exc}") from None


def _cutoff(now: datetime, age: timedelta) -> datetime:
    try:
        return shifted(now, -age)
    except ValueError as exc:
        raise UsageError(f"--older-than: {exc}") from None


def parse_time(text: str, flag: str) -> datetime:
    """A date (midnight UTC) or an RFC 3339 time; a time without a zone is UTC.

    Raises:
        UsageError: not a date or time, or one out of datetime's range in UTC.
    """
    try:
        return parse_timestamp(text)
    except ValueError as exc:
        raise UsageError(f"{flag}: {exc}") from None


def last_attempt(record: Mapping[str, Any]) -> datetime | None:
    """When the record was last attempted, None if never.

    Raises:
        SelectionError: the record has no ``last_attempt`` field, or one that is no time.
    """
    value = _field(record, "last_attempt")
    if value is None or (isinstance(value, str) and value.strip() in _NEVER):
        return None
    if not isinstance(value, str):
        raise SelectionError(f"record {record['id']}: last_attempt {value!r} is not a time")
    try:
        return parse_timestamp(value)
    except ValueError:
        raise SelectionError(
            f"record {record['id']}: last_attempt {value!r} is not a time"
        ) from None


def _field(record: Mapping[str, Any], name: str) -> Any:
    if name not in record:
        raise SelectionError(
            f"the API's records carry no {name}: the rule cannot be checked on record "
            f"{record['id']}, so nothing is selected"
        )
    return record[name]


def _status(record: Mapping[str, Any]) -> str | None:
    """The status as a rule names it: the API gives a name (``Completed``) or a code."""
    value = _field(record, "status")
    if isinstance(value, int) and not isinstance(value, bool):
        return next((name for name, code in STATUS_CODES.items() if code == value), None)
    return value.strip().lower() if isinstance(value, str) else None


def _attempts(record: Mapping[str, Any]) -> int | None:
    value = _field(record, "attempt")
    text = value.strip() if isinstance(value, str) else ""
    if text.isascii() and text.isdigit():  # "²" and "٢" are digits to str, not to the API
        return int(text)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _stamp(when: datetime | None) -> str | None:
    """RFC 3339 in UTC, to the microsecond the cutoff has (``0001-01-01T00:00:00Z``)."""
    return None if when is None else utc_text(when)


@dataclass(slots=True)
class Selection:
    """What a collection read and kept: the counts a report and the audit show."""

    selected: int = 0
    listed: int = 0
    pages: int = 0
    passes: int = 0
    left_out: dict[str, int] = field(default_factory=dict)
    sha256: str = ""

    def as_record(self) -> dict[str, Any]:
        return {
            "selected": self.selected,
            "listed": self.listed,
            "pages": self.pages,
            "passes": self.passes,
            "left_out": dict(sorted(self.left_out.items())),
            "sha256": self.sha256,
        }


async def collect(rule: Rule, reader: AudienceReader, out: IO[bytes], page_size: int) -> Selection:
    """Write the records the rule selects to ``out`` as CSV (:data:`HEADER`), each once:
    those of the pass that proved the listing (:func:`~worker.sending.listing.read_whole`),
    as that pass read them. Each pass starts the file anew, so it never holds more than
    one pass of the listing.

    Raises:
        SelectionError: the listing was not proven in
            :data:`~worker.sending.listing.MAX_PASSES` passes, or a record cannot be
            checked, or a selected record has an id ``run`` cannot delete.
        ApiError: a read was refused, or kept failing.
    """
    result = Selection()
    seen = BitMap64()
    digest = hashlib.sha256()
    reading = 0

    def take(number: int, page: Page) -> None:
        nonlocal digest, reading
        if number != reading:  # a new pass: the selection is its own
            reading = number
            out.seek(0)
            out.truncate()
            seen.clear()
            result.selected, result.listed, result.left_out = 0, 0, {}
            digest = hashlib.sha256()
            _write(out, digest, [HEADER])
        rows = [_row(rule, record) for record in page.records if _take(rule, record, seen, result)]
        _write(out, digest, rows)

    listing = await read_whole(reader, rule.campaign_id, page_size, take, rule.filters())
    result.passes, result.pages = listing.passes, listing.pages
    if listing.why is not None:
        raise SelectionError(
            f"campaign {rule.campaign_id} could not be listed completely: {listing.why}; "
            "nothing is selected: run the selection again when it is quiet"
        )
    result.sha256 = digest.hexdigest()
    return result


async def collect_into(rule: Rule, reader: Reader, target: str | Path, page_size: int) -> Selection:
    """:func:`collect` from ``reader`` into ``target`` (a :class:`SelectionFile`: whole or
    not at all).

    Raises:
        FatalError: the API refused the listing, or it kept failing.
        SelectionError, UsageError, OutputError: see :func:`collect`, :class:`SelectionFile`.
        Abandoned: the reader was stopped.
    """
    with SelectionFile(target) as out:
        try:
            with out.writing():
                selection = await collect(rule, reader, out.file, page_size)
        except ApiError as exc:
            raise refused(exc, f"cannot list campaign {rule.campaign_id}") from None
        out.commit()
    return selection


def _take(rule: Rule, record: Mapping[str, Any], seen: BitMap64, result: Selection) -> bool:
    """Check one record against the rule (once a pass): whether it is selected.

    Raises:
        SelectionError: it is selected, and its id is one ``run`` would reject.
    """
    audience_id = record["id"]
    if audience_id in seen:
        return False
    seen.add(audience_id)
    result.listed += 1
    why = rule.why_not(record)
    if why is not None:
        result.left_out[why] = result.left_out.get(why, 0) + 1
        return False
    if isinstance(refusal := parse_id(str(audience_id)), str):
        raise SelectionError(
            f"record {audience_id} of campaign {rule.campaign_id} matches the rule, but "
            f"run cannot delete it (audience_id {refusal}): nothing is selected"
        )
    result.selected += 1
    return True


def _row(rule: Rule, record: Mapping[str, Any]) -> Sequence[object]:
    def cell(name: str) -> object:
        value = record.get(name)
        return "" if value is None else csv_safe(value)  # the API's text: never a formula

    return (
        rule.campaign_id,
        record["id"],
        cell("status"),
        cell("attempt"),
        cell("last_attempt"),
        cell("call_status"),
    )


def _write(out: IO[bytes], digest: Any, rows: Sequence[Sequence[object]]) -> None:
    """A page's rows, as CSV, into the file and its hash (one write a page)."""
    if not rows:
        return
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(rows)
    data = text.getvalue().encode()
    digest.update(data)
    out.write(data)


class SelectionFile:
    """Where a selection is written: a file that appears whole or not at all (written
    private under a temporary name, fsynced, renamed over the path), so a selection cut
    off by an error or a signal never looks like a complete one to a later ``run --input``;
    or ``-``, stdout, written only once the selection is complete (it is spooled to a
    private temporary file until then) for the same reason.

    Raises (from the block or :meth:`commit`):
        UsageError: the path is a directory, a device, a pipe: not a file to replace.
        OutputError: it could not be written.
    """

    def __init__(self, target: str | Path) -> None:
        self._target = None if str(target) == "-" else Path(target)
        self.path: Path | None = None  # the file, through symlinks (None: stdout)
        self._shown: object = target if self._target is not None else "to stdout"
        self._tmp: Path | None = None
        self.file: IO[bytes]

    def __enter__(self) -> SelectionFile:
        if self._target is None:
            if sys.stdout is None:
                raise UsageError("select --out -: stdout is closed; name a file with --out")
            with self.writing():
                self.file = tempfile.TemporaryFile()
            return self
        self.path = file_to_write(self._target, SELECTION)
        with self.writing():
            make_dirs(self.path.parent)
            handle, name = tempfile.mkstemp(
                dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".partial"
            )
            self._tmp = Path(name)
            self.file = os.fdopen(handle, "wb")
        return self

    def commit(self) -> None:
        """Make the selection the file at :attr:`path` (or copy it to stdout)."""
        with self.writing():
            self.file.flush()
            if self.path is None:  # stdout
                self.file.seek(0)
                shutil.copyfileobj(self.file, sys.stdout.buffer)
                sys.stdout.flush()
                return
            assert self._tmp is not None
            keep_mode(self.file.fileno(), self.path)
            os.fsync(self.file.fileno())
            self.file.close()
            os.replace(self._tmp, self.path)
            self._tmp = None
            sync_directory(self.path.parent)

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self.file.close()
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Around writes: an OSError becomes an :class:`OutputError`; a closed pipe
        (``select --out - | head``) also stops later writes to stdout, so that the
        interpreter's own flush at exit does not fail a second time."""
        try:
            yield
        except OSError as exc:
            if self._target is None and isinstance(exc, BrokenPipeError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise OutputError("the selection", self._shown, exc) from None


@dataclass(frozen=True, slots=True)
class Selecting:
    """``run --select``: the rule, and the file its selection is collected into (the purge's
    input, so a re-run resumes from it rather than collecting again)."""

    rule: Rule
    path: Path

    @classmethod
    def of(cls, rule: Rule, given: Path | None, shard: str | None = None) -> Selecting:
        """The rule's selection file: ``given``, or one named after the rule (and the shard:
        shards running side by side must not write one file).

        Raises:
            UsageError: ``given`` is ``-``: the selection is the purge's input, a file.
        """
        if given is not None and str(given) == "-":
            raise UsageError(
                "--selection names the file the selection is kept in (the purge's input): "
                "it cannot be stdout; use select --out - to print one"
            )
        part = f"-shard-{shard.replace('/', '-of-')}" if shard else ""
        name = f"select-{rule.campaign_id}-{rule.digest()}{part}.csv"
        return cls(rule, given or SELECTIONS / name)

    def record(self, selection: Selection | None) -> dict[str, Any]:
        """What ``run_started`` says of the selection: the rule, the file, and what the
        collection found (None when a re-run took the file an earlier run collected)."""
        return {
            "rule": self.rule.describe(),
            "path": str(self.path),
            "collected": None if selection is None else selection.as_record(),
        }
