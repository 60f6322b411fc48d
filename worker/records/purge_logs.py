"""A purge's audit logs as evidence: which files make up the purge, what they record as
deleted, and which runs in them never finished.

``run --verify`` reads back what every run of a resumed purge deleted, not only its own:
:func:`whole_purge` takes the files the state directory names (by absolute path, so a
resume from any directory finds them) and those :func:`purge_files` reaches by following
each file's ``previous`` link back to the first; an earlier run's file that neither finds
makes the read-back :class:`Partial`. ``verify``
reads any files it is given: :func:`deleted_by_campaign` totals what they record, and
:func:`incomplete_runs` names the runs without ``run_finished`` (a crash, or a truncated
file), whose deletions the files may not hold in full.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

from pyroaring import BitMap64

from worker.input.validate import MAX_ID
from worker.records.audit_query import ChainEnd, distinct_paths, parse_line, read_records


@dataclass(frozen=True, slots=True)
class Deleted:
    """What audit logs record as done: ids per campaign, campaigns emptied by delete-all,
    and each campaign's stats recorded before its purge (the earliest, for a resumed one)."""

    ids: dict[int, BitMap64] = field(default_factory=dict)
    emptied: frozenset[int] = frozenset()
    before: dict[int, dict[str, Any]] = field(default_factory=dict)

    @property
    def campaigns(self) -> list[int]:
        return sorted(set(self.ids) | self.emptied)

    def count(self, campaign_id: int) -> int:
        return len(self.ids.get(campaign_id, ()))


def deleted_by_campaign(paths: Sequence[Path], campaign_id: int | None = None) -> Deleted:
    """The ids the files record as deleted (``deleted`` records: the API acknowledged
    them, whatever happened to them later), the campaigns ``deleted_all`` emptied, and
    the ``audience_stats`` taken before; only ``campaign_id``'s when given.

    Raises:
        OSError: a file cannot be read.
    """
    ids: dict[int, BitMap64] = {}
    emptied: set[int] = set()
    before: dict[int, tuple[str, dict[str, Any]]] = {}
    for _, _, record in read_records(paths):
        campaign = record.get("campaign_id")
        if not _is_id(campaign) or campaign_id not in (None, campaign):
            continue
        match record.get("event"):
            case "deleted":
                ids.setdefault(campaign, BitMap64()).update(_audience_ids(record))
            case "deleted_all":
                emptied.add(campaign)
            case "audience_stats" if _taken_before(record):
                when = str(record.get("ts"))
                if campaign not in before or when < before[campaign][0]:
                    before[campaign] = (when, record["stats"])
    return Deleted(
        {c: bitmap for c, bitmap in ids.items() if bitmap},
        frozenset(emptied),
        {c: stats for c, (_, stats) in before.items()},
    )


@dataclass(frozen=True, slots=True)
class PurgeFiles:
    """The audit files of one purge, oldest first; if following them back stopped short of
    the purge's first file, why (``reason``) and the predecessor it could not take
    (``missing``; None when the link names no file)."""

    files: list[Path]
    missing: Path | None = None
    reason: str | None = None

    @property
    def complete(self) -> bool:
        """Whether the files reach back to the purge's first run."""
        return self.reason is None


def purge_files(path: Path) -> PurgeFiles:
    """The audit files of the purge whose latest file is ``path``, oldest first, ``path`` last.

    A file continues another when its first record carries ``previous`` (``audit_log``,
    ``run_id``, ``last_seq``, ``last_hash``); the links are followed back from ``path``. A
    relative ``audit_log`` is taken as written, relative to the current directory. A file
    whose first record has no ``previous`` began the purge (runs appended to one fixed
    ``--audit-log`` are all in that file). The walk stops short, naming the file in
    ``missing`` and why in ``reason``, at a predecessor that cannot be read, that does not
    hold the record the link names (another file at that path now), or that is already
    among the files (a loop): what came before it is unknown.

    Raises:
        OSError: ``path`` itself cannot be read.
    """
    files = [path]
    seen = {path.resolve()}
    link = _link(path)
    while link is not None:
        previous, wanted = link
        if previous is None:
            reason = f"{files[-1]} continues a run, but its link names no file"
            return PurgeFiles(files[::-1], None, reason)
        why = _unreachable(previous, wanted, seen)
        beside = files[-1].parent / previous.name
        # A relative link was written by a run in another directory: look beside the file
        # that links to it.
        if (
            why is not None
            and not previous.is_absolute()
            and _unreachable(beside, wanted, seen) is None
        ):
            previous, why = beside, None
        if why is not None:
            return PurgeFiles(files[::-1], previous, f"{files[-1]} continues {previous}, {why}")
        files.append(previous)
        seen.add(previous.resolve())
        link = _link(previous)
    return PurgeFiles(files[::-1])


@dataclass(frozen=True, slots=True)
class Partial:
    """A read-back that could not cover the whole purge: the earlier runs' files that
    cannot be found, and how many ids they recorded as deleted (``unchecked``; None when
    unknown: a link the state does not account for)."""

    missing: list[str]
    unchecked: int | None
    why: str = "cannot be found"

    def text(self) -> str:
        """``partly read back: N ids of earlier runs not checked (... cannot be found)``."""
        files = ", ".join(self.missing)
        if self.unchecked is None:
            return (
                f"partly read back: the ids of earlier runs in {files} were not checked "
                f"({self.why})"
            )
        return (
            f"partly read back: {self.unchecked:,} ids of earlier runs not checked ({files} "
            f"{self.why})"
        )

    def fields(self) -> dict[str, Any]:
        """For ``run_finished`` and the report."""
        return {"unchecked": self.unchecked, "missing": self.missing, "reason": self.text()}


def whole_purge(
    path: Path, known: Sequence[Mapping[str, Any]]
) -> tuple[list[Path], Partial | None]:
    """The audit files of the purge whose latest file is ``path`` (``path`` last), and
    what of it cannot be read back.

    ``known`` are the state's entries for the purge's runs (``run_id``, absolute ``path``,
    ``deleted``): a file that is gone, or that no longer holds its run, is missing, and
    the ids its run recorded as deleted (by its last checkpoint; None: unknown, a state of
    an older version) were not checked; a run that recorded none is no loss. A
    ``previous`` link that reaches no file the state accounts for is missing too, its ids
    unknown.

    Raises:
        OSError: ``path`` itself cannot be read.
    """
    walked = purge_files(path)
    found: list[Path] = []
    missing: dict[str, int | None] = {}
    for entry in known:
        where = Path(str(entry.get("path")))
        if _holds_run(where, str(entry.get("run_id"))):
            found.append(where)
        elif (deleted := entry.get("deleted")) is None:
            missing[str(where.absolute())] = None  # a state of an older version: unknown
        elif isinstance(deleted, int) and deleted > 0:
            name = str(where.absolute())
            known_so_far = missing.get(name, 0)
            missing[name] = None if known_so_far is None else known_so_far + deleted
    files = distinct_paths([*found, *walked.files])
    have = {f.resolve() for f in files}
    lost = walked.missing
    if walked.reason is not None and (lost is None or lost.resolve() not in have):
        name = "(a link that names no file)" if lost is None else str(lost.absolute())
        missing.setdefault(name, None)
    if not missing:
        return files, None
    counts = list(missing.values())
    unchecked = None if None in counts else sum(c for c in counts if c is not None)
    return files, Partial(list(missing), unchecked)


def not_given(paths: Sequence[Path]) -> Partial | None:
    """The earlier files that the given ones continue and that are not among them (by the
    record their links name, whatever the files are called): a read-back of the given
    files alone does not cover what those recorded.

    Raises:
        OSError: a given file cannot be read.
    """
    missing: list[str] = []
    for path in paths:
        link = _link(path)
        if link is None:
            continue
        previous, wanted = link
        if not any(_unreachable(other, wanted, set()) is None for other in paths):
            missing.append("(a link that names no file)" if previous is None else str(previous))
    if not missing:
        return None
    return Partial(missing, None, "not among the files given: add them to --audit")


def _holds_run(path: Path, run_id: str) -> bool:
    """Whether ``path`` is a file holding records of run ``run_id``."""
    needle = b'"run_id":"' + run_id.encode() + b'"'
    try:
        with path.open("rb") as handle:
            return any(needle in line for line in handle)
    except OSError:
        return False


def _link(path: Path) -> tuple[Path | None, str] | None:
    """The file ``path`` continues (None if its link names none) and the hash of the record
    it continues from; None when its first record names no predecessor.

    Raises:
        OSError: ``path`` cannot be read.
    """
    with path.open("rb") as handle:
        first = next((r for line in handle if isinstance(r := parse_line(line), dict)), None)
    previous = first.get("previous") if first is not None else None
    if not isinstance(previous, dict):
        return None
    name, last_hash = previous.get("audit_log"), previous.get("last_hash")
    return (Path(name) if isinstance(name, str) and name else None), str(last_hash)


def _unreachable(path: Path, wanted: str, seen: set[Path]) -> str | None:
    """Why the predecessor a link names cannot be taken as the file it continues, or None."""
    if path.resolve() in seen:
        return "which is already among the purge's files (a loop)"
    needle = b'"hash":"' + wanted.encode() + b'"'
    try:
        with path.open("rb") as handle:
            for line in handle:
                record = parse_line(line) if needle in line else None
                if isinstance(record, dict) and record.get("hash") == wanted:
                    return None
    except OSError as exc:
        return f"which cannot be read: {exc.strerror}"
    return (
        f"which does not hold the record it continues (hash {wanted[:12]}…): another file "
        "is at that path now, or the path is relative to another directory"
    )


def _is_id(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_ID


def _audience_ids(record: Mapping[str, Any]) -> list[int]:
    ids = record.get("audience_ids")
    return [i for i in ids if _is_id(i)] if isinstance(ids, list) else []


def _taken_before(record: Mapping[str, Any]) -> bool:
    return record.get("moment") == "before" and isinstance(record.get("stats"), dict)


@dataclass(frozen=True, slots=True)
class IncompleteRun:
    """A run of an audit file that has no ``run_finished``: its last record is at ``line``
    (``seq``); ``continued_by`` is the later run in the files that continued it, if any
    (run id, file). A file with no complete record is one too, of no known run."""

    path: Path
    run_id: str | None
    line: int = 1
    seq: int | None = None
    continued_by: tuple[str, Path] | None = None

    def fields(self) -> dict[str, Any]:
        """For ``run_finished`` and the report."""
        by = self.continued_by
        return {
            "file": str(self.path),
            "run_id": self.run_id,
            "line": self.line,
            "last_seq": self.seq,
            "continued_by": None if by is None else {"run_id": by[0], "file": str(by[1])},
        }

    def warning(self) -> str:
        """The ``WARNING:`` line, naming the file, the line and the run."""
        where = f"WARNING: {self.path}:{self.line}:"
        if self.run_id is None:
            return (
                f"{where} no complete record (a run killed before its first record, or a "
                "truncated file): the deletions it was to record are unknown"
            )
        said = f"{where} run {self.run_id} has no run_finished after seq {self.seq}"
        if self.continued_by is not None:
            run_id, path = self.continued_by
            return f"{said} (a crash); run {run_id} in {path} continued it"
        return (
            f"{said} (a crash, a run still going, or a truncated file): the deletions it "
            "records may be incomplete"
        )


def incomplete_runs(ends: Sequence[ChainEnd]) -> list[IncompleteRun]:
    """Every run of the files (each verified on its own) that has no ``run_finished``, and
    every file with no complete record."""
    firsts = {end.first_prev: end for end in ends if end.records}
    found = [IncompleteRun(end.path, None) for end in ends if not end.records]
    for end in ends:
        for number, run in enumerate(end.runs):
            if not run.finished:
                by = _continued_by(end, number, firsts)
                found.append(IncompleteRun(end.path, run.run_id, run.last.line, run.last.seq, by))
    return found


def _continued_by(
    end: ChainEnd, number: int, firsts: dict[str, ChainEnd]
) -> tuple[str, Path] | None:
    """The run that continued run ``number`` of ``end``: the next one in the file, or the
    first of a file whose first record links to its last record (by hash, whatever the
    file's name is now)."""
    if number + 1 < len(end.runs):
        return end.runs[number + 1].run_id, end.path
    successor = firsts.get(end.runs[number].last.hash)
    return None if successor is None else (successor.runs[0].run_id, successor.path)
