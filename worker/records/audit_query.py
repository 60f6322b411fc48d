"""Reading audit logs back: ``audit verify``, ``audit summary`` and ``audit find``.

The chain (see :mod:`worker.records.audit`): every record carries ``seq`` (0, 1, ... per file),
``prev_hash`` (the previous record's ``hash``; zeros for a fresh chain) and ``hash``, the
SHA-256 of the record's canonical JSON (sorted keys, no whitespace) without ``hash``. A
resumed run writes a new file whose first record's ``prev_hash`` is the last hash of the
file it continues, named in its ``previous`` field. ``run_finished`` may carry ``head_hmac``,
an HMAC-SHA256 of the chain head under a key the auditor holds.

What ``audit verify FILE...`` prints (on stdout)
-----------------------------------------------
The files may be given in any order: they are put in chain order by their links (a file's
first record names, by hash, the record it continues), and the head reported is the end of
that chain. A file that links to no given file starts the order (a fresh chain, or one that
continues a file not given). A crash is not tampering: what a crash can leave is a
*warning*; what only an edit can produce is an *error*. Every line names ``FILE:LINE``.

``WARNING: FILE:LINE: ...``, one line each, for what a crash leaves:

- ``run X ended without run_finished at seq N: it crashed or was killed; ...``: a later run
  continued the chain, or, for the chain's last run, it is still going or was not resumed
  yet (or its last records were removed: a truncated tail and a crash look alike; with
  ``--audit-key-file``, "no signed head covers its records");
- ``run X in FILE ended by a crash at seq N; run Y in FILE2 continued from an earlier point
  (FILE0:LINE (seq M))``: two runs continue the same record, and one of them is a crashed
  run (no ``run_finished``, nothing continues it), as left when a run was killed before its
  checkpoint named its file; also when two files start a new chain and one is such a run;
- ``FILE ends with a torn record at byte N: a crash mid-write; the records before it
  verify``: a last line cut short; ``torn record at byte N (a crash mid-write); the chain
  continues past it from the record before it``: a later run appended after the torn line,
  and its first record links to the record before it;
- ``the last record has no newline (a crash mid-write)``: the record is whole and verifies;
- ``FILE holds no complete record: ...``: a run killed before its first record was written.

Then, exit 0: ``files in chain order: A, B, ...`` (when more than one file is given) and
``OK: F file(s), R records, chain intact[, S signed head(s) checked]; head HASH…
(FILE:LINE, seq N, run X)``, or the same line starting ``OK with warnings:`` and saying
``W warning(s) above``.

``TAMPERED: FILE:LINE: reason`` (exit 1), after the warnings found so far, for what no crash
produces: a changed byte (the hash), a removed, inserted or reordered record (``seq``,
``prev_hash``), a line that is not a record where a run went on writing (anything but a torn
line followed by the next run's record that continues the chain from the record before
it), a file whose predecessor lost its tail, a record continued twice where neither branch
is a crashed run (a fork of two finished runs, or of a crashed run that was continued), two
files that both start a chain (not one trail: a file between them is missing, or they are
separate purges or shards, each to be verified on its own), the same record in two files,
and, with a key, a ``head_hmac`` that does not match or is missing. A file that cannot be
read, or an empty key file, exits 2.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import orjson

ZERO_HASH = "0" * 64


def canonical(record: dict[str, Any]) -> bytes:
    """The bytes a record's hash covers: sorted keys, no whitespace, ``hash`` left out."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def record_hash(record: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(record)).hexdigest()


def head_hmac(key: bytes, record: dict[str, Any]) -> str:
    """Signs the record that carries it, and so, through ``prev_hash``, the whole chain."""
    body = {k: v for k, v in record.items() if k not in ("hash", "head_hmac", "head_signature")}
    return hmac.new(key, canonical(body), hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class Problem:
    path: Path
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclass(frozen=True, slots=True)
class Mark:
    """Where one record stands: what a link to it, or a line about it, needs."""

    index: int  # among the file's complete records, from 0
    line: int
    seq: int
    hash: str
    ts: str
    run_id: str


@dataclass(slots=True)
class RunSpan:
    """The records one run wrote in one file (an appended file holds several runs)."""

    run_id: str
    first: int
    last: Mark
    finished: bool


@dataclass(slots=True)
class ChainEnd:
    """What verifying one file found: its last record, its runs, and whether a run closed it."""

    path: Path
    records: int = 0
    last_seq: int = -1
    last_hash: str = ZERO_HASH
    finished: bool = False
    signed: int = 0
    first_prev: str = ZERO_HASH
    previous: dict[str, Any] = field(default_factory=dict)
    run_ids: set[str] = field(default_factory=set)
    first_line: int = 0
    runs: list[RunSpan] = field(default_factory=list)
    # Records other files link to (by index): where this file's chain forks.
    marks: dict[int, Mark] = field(default_factory=dict)
    finished_at: list[int] = field(default_factory=list)
    notes: list[Problem] = field(default_factory=list)  # warnings: torn records, crashes

    @property
    def last(self) -> Mark:
        return self.runs[-1].last

    def run_at(self, index: int) -> RunSpan:
        return next(run for run in reversed(self.runs) if run.first <= index)


@dataclass(slots=True)
class Verdict:
    """What ``audit verify`` found: the files in chain order, the head, and what to say."""

    files: list[ChainEnd]
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    head: Mark | None = None
    head_path: Path | None = None


def _records(path: Path) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as handle:
        yield from enumerate(handle, start=1)


def _lines(path: Path) -> Iterator[tuple[int, int, bytes]]:
    """Each line with its number and the byte it starts at."""
    offset = 0
    for number, line in _records(path):
        yield number, offset, line
        offset += len(line)


def parse_line(line: bytes) -> object:
    """The JSON value of a line, or None when it is not JSON (torn or corrupt)."""
    try:
        value: object = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return value


def _check_record(record: dict[str, Any], end: ChainEnd, key: bytes | None) -> str | None:
    expected_seq = end.last_seq + 1
    if record.get("seq") != expected_seq:
        return (
            f"seq is {record.get('seq')!r}, expected {expected_seq} (a record was removed, "
            "inserted or reordered)"
        )
    if expected_seq == 0:
        end.first_prev = str(record.get("prev_hash"))
        previous = record.get("previous")
        end.previous = previous if isinstance(previous, dict) else {}
        if end.first_prev != ZERO_HASH and end.previous.get("last_hash") != end.first_prev:
            return "first record links to a chain it does not name"
    elif record.get("prev_hash") != end.last_hash:
        return "prev_hash does not match the previous record (reordered or removed records)"
    if record.get("hash") != record_hash(record):
        return "hash does not match the record's content (the record was changed)"
    if "head_hmac" in record:
        end.signed += 1
        if key is not None and not hmac.compare_digest(
            str(record["head_hmac"]), head_hmac(key, record)
        ):
            return "head_hmac does not match: the chain was rebuilt or the key is wrong"
    elif key is not None and record.get("event") == "run_finished":
        return "run_finished has no head_hmac, but a key was given: the signature was removed"
    return None


@dataclass(frozen=True, slots=True)
class _Torn:
    line: int
    byte: int


class _FileWalk:
    """One file, line by line: the chain checks, the runs, and the torn records of crashes.

    A line that is not JSON but starts like a record is torn: a crash cut its write. It is
    accepted only at the end of the file, or when the next record continues the chain from
    the record before it and belongs to another run (a crashed run never writes again).
    """

    def __init__(self, path: Path, key: bytes | None, wanted: frozenset[str]) -> None:
        self.end = ChainEnd(path)
        self._key = key
        self._wanted = wanted
        self._torn: list[_Torn] = []

    def walk(self) -> Problem | None:
        for number, byte, line in _lines(self.end.path):
            problem = self._line(number, byte, line)
            if problem is not None:
                return problem
        self._at_the_end()
        return None

    def _line(self, number: int, byte: int, line: bytes) -> Problem | None:
        path = self.end.path
        record = parse_line(line)
        if record is None and line.startswith(b"{"):
            self._torn.append(_Torn(number, byte))
            return None
        if record is None:
            return Problem(path, number, "not a JSON record (changed or corrupt)")
        if not isinstance(record, dict):
            return Problem(path, number, "not a JSON object")
        problem = self._past_torn(record)
        if problem is not None:
            return problem
        reason = _check_record(record, self.end, self._key)
        if reason is not None:
            return Problem(path, number, reason)
        self._add(record, number)
        if not line.endswith(b"\n"):
            self.end.notes.append(
                Problem(path, number, "the last record has no newline (a crash mid-write)")
            )
        return None

    def _past_torn(self, record: dict[str, Any]) -> Problem | None:
        """The record after torn lines must go on from the record before them, in a new run."""
        if not self._torn:
            return None
        end, torn = self.end, self._torn[0]
        continues = record.get("seq") == end.last_seq + 1 and (
            end.records == 0 or record.get("prev_hash") == end.last_hash
        )
        if not continues:
            return Problem(
                end.path,
                torn.line,
                "not a JSON record (changed or corrupt), and the record after it does not "
                "continue the chain from the one before it",
            )
        if end.runs and record.get("run_id") == end.runs[-1].run_id:
            return Problem(
                end.path,
                torn.line,
                f"not a JSON record inside run {end.runs[-1].run_id} (inserted or changed: "
                "a run that tore a record never writes again)",
            )
        for cut in self._torn:
            end.notes.append(
                Problem(
                    end.path,
                    cut.line,
                    f"torn record at byte {cut.byte} (a crash mid-write); the chain "
                    "continues past it from the record before it",
                )
            )
        self._torn.clear()
        return None

    def _add(self, record: dict[str, Any], number: int) -> None:
        end = self.end
        mark = Mark(
            end.records,
            number,
            int(record["seq"]),
            str(record["hash"]),
            str(record.get("ts")),
            str(record.get("run_id")),
        )
        finished = record.get("event") == "run_finished"
        if end.records == 0:
            end.first_line = number
        end.records += 1
        end.last_seq, end.last_hash, end.finished = mark.seq, mark.hash, finished
        end.run_ids.add(mark.run_id)
        if mark.hash in self._wanted:
            end.marks[mark.index] = mark
        if finished:
            end.finished_at.append(mark.index)
        if end.runs and end.runs[-1].run_id == mark.run_id:
            end.runs[-1].last, end.runs[-1].finished = mark, finished
        else:
            end.runs.append(RunSpan(mark.run_id, mark.index, mark, finished))

    def _at_the_end(self) -> None:
        end = self.end
        for cut in self._torn:
            end.notes.append(
                Problem(
                    end.path,
                    cut.line,
                    f"{end.path} ends with a torn record at byte {cut.byte}: a crash "
                    "mid-write; the records before it verify",
                )
            )
        if end.records == 0:
            end.notes.append(
                Problem(
                    end.path,
                    1,
                    f"{end.path} holds no complete record: a run killed before its first "
                    "record was written",
                )
            )


def verify_file(
    path: Path, key: bytes | None = None, wanted: frozenset[str] = frozenset()
) -> tuple[ChainEnd, Problem | None]:
    """Walk one file's chain; returns where it ended and the first problem, if any.

    ``wanted`` are hashes other files link to: where they stand is kept (``marks``).
    """
    walk = _FileWalk(path, key, wanted)
    problem = walk.walk()
    return walk.end, problem


def _first_prev(path: Path) -> str | None:
    """The ``prev_hash`` of a file's first complete record: what the file links to."""
    for _, line in _records(path):
        record = parse_line(line)
        if isinstance(record, dict):
            return str(record.get("prev_hash"))
    return None


@dataclass(eq=False, slots=True)
class _Segment:
    """Records of one file, from ``start`` to ``stop``, that no other file links into.

    Files are cut after every record another file links to, so a link always points at the
    end of a segment, and the segments form a tree: an intact trail is one path through it,
    with at most crashed runs branching off.
    """

    end: ChainEnd
    start: int
    stop: Mark
    children: list[_Segment] = field(default_factory=list)

    def finished(self) -> bool:
        return any(self.start <= i <= self.stop.index for i in self.end.finished_at)

    def where(self) -> str:
        return f"{self.end.path}:{self.stop.line} (seq {self.stop.seq})"

    def first_run(self) -> str:
        return self.end.run_at(self.start).run_id


def _segments(end: ChainEnd) -> list[_Segment]:
    stops = [end.marks[i] for i in sorted(end.marks) if i < end.records - 1] + [end.last]
    segments: list[_Segment] = []
    start = 0
    for stop in stops:
        segments.append(_Segment(end, start, stop))
        start = stop.index + 1
    for before, after in pairwise(segments):
        before.children.append(after)
    return segments


def _crashed_end(segment: _Segment) -> _Segment | None:
    """The end of a crashed branch (no ``run_finished``, nothing else links to it), or None."""
    while not segment.finished():
        if not segment.children:
            return segment
        if len(segment.children) > 1:
            return None
        segment = segment.children[0]
    return None


def _recency(segment: _Segment) -> str:
    crashed = _crashed_end(segment)
    return crashed.stop.ts if crashed is not None else ""


def _starts(first: _Segment) -> str:
    """How a file that links to no given file begins."""
    if first.end.first_prev == ZERO_HASH:
        return "starts a new chain"
    prev = first.end.previous
    return (
        f"continues run {prev.get('run_id')} at seq {prev.get('last_seq')} in "
        f"{prev.get('audit_log')}, which is not among the files given"
    )


def _check_link(first: _Segment, parent: _Segment) -> Problem | None:
    seq = first.end.previous.get("last_seq")
    if isinstance(seq, int) and seq != parent.stop.seq:
        return Problem(
            first.end.path,
            first.end.first_line,
            f"first record names seq {seq}, but the record it links to is {parent.where()}",
        )
    return None


def _by_hash(segments: Iterator[_Segment]) -> tuple[dict[str, _Segment], Problem | None]:
    """Segments by the hash of their last record; the same record in two files is a copy."""
    by_hash: dict[str, _Segment] = {}
    for segment in segments:
        twin = by_hash.setdefault(segment.stop.hash, segment)
        if twin is not segment:
            reason = f"the same record as {twin.where()}: a chain copied into two files"
            return by_hash, Problem(segment.end.path, segment.stop.line, reason)
    return by_hash, None


def _tree(ends: list[ChainEnd]) -> tuple[list[_Segment], set[str], Problem | None]:
    """Every file's segments, each file linked under the segment its first record continues;
    returns the files' first segments and the hashes links can point at."""
    per_file = [_segments(end) for end in ends]
    by_hash, problem = _by_hash(s for segments in per_file for s in segments)
    firsts = [segments[0] for segments in per_file]
    for first in firsts if problem is None else []:
        parent = by_hash.get(first.end.first_prev)
        if parent is not None:
            problem = _check_link(first, parent)
            parent.children.append(first)
        if problem is not None:
            break
    return firsts, set(by_hash), problem


def _fork(a: _Segment, b: _Segment, origin: str, point: _Segment | None) -> Problem:
    """Two branches that both go on: at the start of the given files, two first files."""
    if point is None:
        return _two_firsts(a, b)
    return Problem(
        point.end.path,
        point.stop.line,
        f"fork: {a.end.path} (run {a.first_run()}) and {b.end.path} (run {b.first_run()}) "
        f"both continue from {origin}, and neither is a crashed run (a record has one "
        "successor: records were copied or a chain was rebuilt)",
    )


def _two_firsts(a: _Segment, b: _Segment) -> Problem:
    return Problem(
        b.end.path,
        b.end.first_line,
        f"{a.end.path} {_starts(a)}, and {b.end.path} {_starts(b)}: both claim to be first, "
        "so the files are not one chain (a file between them is missing, or they are separate "
        "purges or shards: verify each chain on its own)",
    )


@dataclass(slots=True)
class _Links:
    """Puts files in chain order by their links, and tells a crash from a fork."""

    ends: list[ChainEnd]
    unsigned: str = ""  # with a key: what a crashed branch's warning adds
    order: list[ChainEnd] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    explained: set[tuple[Path, int]] = field(default_factory=set)

    def follow(self) -> tuple[_Segment | None, Problem | None]:
        """The chain's last segment (its head), or the problem that makes it no chain."""
        firsts, linked, problem = _tree(self.ends)
        if problem is not None:
            return None, problem
        roots: dict[str, list[_Segment]] = defaultdict(list)
        for first in firsts:
            if first.end.first_prev not in linked:
                roots[first.end.first_prev].append(first)
        problem = self._one_start(roots)
        if problem is not None:
            return None, problem
        ((start, children),) = roots.items()
        origin = "the start of a new chain" if start == ZERO_HASH else "before the files given"
        return self._walk(children, origin)

    def _one_start(self, roots: dict[str, list[_Segment]]) -> Problem | None:
        """Exactly one point the given files start from (a fresh chain, or one file not given)."""
        for children in roots.values():
            problem = self._lost_tail(children[0])
            if problem is not None:
                return problem
        if not roots:
            end = self.ends[0]
            return Problem(end.path, end.first_line, "the files link in a loop: no first file")
        if len(roots) == 1:
            return None
        a, b = (children[0] for children in list(roots.values())[:2])
        return _two_firsts(a, b)

    def _lost_tail(self, first: _Segment) -> Problem | None:
        """A file continuing a given file's run at a record that file no longer has."""
        if first.end.first_prev == ZERO_HASH:
            return None
        run_id = first.end.previous.get("run_id")
        holder = next((e for e in self.ends if e is not first.end and run_id in e.run_ids), None)
        if holder is None:
            return None
        return Problem(
            holder.path,
            holder.last.line,
            f"chain continued by {first.end.path} does not end here "
            "(records were removed from the tail)",
        )

    def _walk(
        self, children: list[_Segment], origin: str, point: _Segment | None = None
    ) -> tuple[_Segment | None, Problem | None]:
        """From the start to the head: one successor at each step, crashed branches aside."""
        while True:
            chosen, problem = self._choose(children, origin, point)
            if chosen is None:
                return None, problem
            self._visit(chosen)
            if not chosen.children:
                return chosen, None
            children, origin, point = chosen.children, chosen.where(), chosen

    def _choose(
        self, children: list[_Segment], origin: str, point: _Segment | None
    ) -> tuple[_Segment | None, Problem | None]:
        """The branch the chain goes on with; every other one must be a crashed run."""
        if len(children) == 1:
            return children[0], None
        live = [child for child in children if _crashed_end(child) is None]
        if len(live) > 1:
            return None, _fork(live[0], live[1], origin, point)
        chosen = live[0] if live else max(children, key=_recency)
        for child in children:
            if child is not chosen:
                self._abandon(child, chosen, origin)
        return chosen, None

    def _abandon(self, branch: _Segment, chosen: _Segment, origin: str) -> None:
        """A crashed run the chain went on without: a warning, and its files in the order."""
        segment = branch
        self._visit(segment)
        while segment.children:
            segment = segment.children[0]
            self._visit(segment)
        last = segment.stop
        self.explained.add((segment.end.path, last.line))
        self.warnings.append(
            Problem(
                segment.end.path,
                last.line,
                f"run {last.run_id} in {segment.end.path} ended by a crash at seq {last.seq}; "
                f"run {chosen.first_run()} in {chosen.end.path} continued from an earlier "
                f"point ({origin}){self.unsigned}",
            )
        )

    def _visit(self, segment: _Segment) -> None:
        if not any(end is segment.end for end in self.order):
            self.order.append(segment.end)


def distinct_paths(paths: Sequence[Path]) -> list[Path]:
    """The paths, a file named twice only once."""
    seen: set[Path] = set()
    out: list[Path] = []
    for path in paths:
        if path.resolve() not in seen:
            seen.add(path.resolve())
            out.append(path)
    return out


def _run_warnings(links: _Links, head: Mark) -> Iterator[Problem]:
    """A warning for every run that ended without ``run_finished`` (a crash, not an edit)."""
    for end in links.order:
        for run in end.runs:
            if run.finished or (end.path, run.last.line) in links.explained:
                continue
            later = (
                "a later run continued the chain"
                if run.last != head
                else "the run is still going, or it was not resumed yet (or its last records "
                f"were removed){links.unsigned}"
            )
            yield Problem(
                end.path,
                run.last.line,
                f"run {run.run_id} ended without run_finished at seq {run.last.seq}: it "
                f"crashed or was killed; {later}",
            )


def check(paths: Sequence[Path], key: bytes | None = None) -> Verdict:
    """Verify files given in any order: each file's chain, then the links between them.

    Errors are what no crash produces; what a crash leaves (a run without ``run_finished``, a
    torn record, a crashed run the next one did not link to) is a warning. Links are found by
    hash, not by path, so archived or moved files verify the same.
    """
    paths = distinct_paths(paths)
    wanted = frozenset(filter(None, map(_first_prev, paths))) - {ZERO_HASH}
    ends: list[ChainEnd] = []
    errors: list[Problem] = []
    for path in paths:
        end, problem = verify_file(path, key, wanted)
        ends.append(end)
        errors.extend([problem] if problem is not None else [])
    notes = [note for end in ends for note in end.notes]
    chained = [end for end in ends if end.records]
    if not errors and not chained:
        errors.append(Problem(paths[0], 1, "no complete record in the files given"))
    if errors:
        return Verdict(ends, errors, notes)
    links = _Links(chained, " (no signed head covers its records)" if key else "")
    head, problem = links.follow()
    if head is None:
        return Verdict(ends, [problem] if problem else [], notes + links.warnings)
    order = links.order + [end for end in ends if not end.records]
    runs = _run_warnings(links, head.stop)
    rank = {end.path: n for n, end in enumerate(order)}
    warnings = sorted([*notes, *links.warnings, *runs], key=lambda p: (rank[p.path], p.line))
    return Verdict(order, [], warnings, head.stop, head.end.path)


def chains(paths: Sequence[Path]) -> list[list[Path]]:
    """The files grouped into chains by their links (a file is in the chain of the file
    holding the record its first record continues), in the order first given. Files with
    no complete record go with the first chain, where a crash's warning names them."""
    paths = distinct_paths(paths)
    firsts = {path: _first_prev(path) for path in paths}
    wanted = frozenset(h for h in firsts.values() if h is not None) - {ZERO_HASH}
    holder: dict[str, Path] = {}
    for path in paths:
        end, _ = verify_file(path, None, wanted)
        holder.update({mark.hash: path for mark in end.marks.values()})

    def find_root(path: Path) -> Path:
        seen = {path}
        while (parent := holder.get(firsts[path] or "")) is not None and parent not in seen:
            seen.add(parent)
            path = parent
        return path

    groups: dict[Path, list[Path]] = {}
    empty = [path for path in paths if firsts[path] is None]
    for path in paths:
        if firsts[path] is not None:
            groups.setdefault(find_root(path), []).append(path)
    found = list(groups.values()) or [[]]
    found[0] += empty
    return found


def check_chains(paths: Sequence[Path], key: bytes | None = None) -> list[Verdict]:
    """:func:`check` for each chain of the files (:func:`chains`): a purge's logs and a
    later ``verify`` run's are two chains by design, each with its own verdict. A chain
    that continues a file not given is said (the chain before it is not among them)."""
    verdicts = []
    for group in chains(paths):
        verdict = check(group, key)
        start = next((end for end in verdict.files if end.records), None)
        if not verdict.errors and start is not None and start.first_prev != ZERO_HASH:
            prev = start.previous
            verdict.warnings.insert(
                0,
                Problem(
                    start.path,
                    start.first_line,
                    f"the chain continues run {prev.get('run_id')} at seq {prev.get('last_seq')} "
                    f"in {prev.get('audit_log')}, which is not among the files given: what came "
                    "before it is not checked",
                ),
            )
        verdicts.append(verdict)
    return verdicts


def verify(
    paths: Sequence[Path], key: bytes | None = None
) -> tuple[list[ChainEnd], Problem | None]:
    """:func:`check`, reduced to the files (in chain order) and the first error."""
    verdict = check(paths, key)
    return verdict.files, verdict.errors[0] if verdict.errors else None


def declares_key(record: dict[str, Any]) -> bool:
    """Whether a ``run_started`` says its run signs its heads (``signing_key_id``, or, in
    older logs, a ``sign_key`` among its settings)."""
    settings = record.get("settings")
    sign_key = settings.get("sign_key") if isinstance(settings, dict) else None
    return bool(record.get("signing_key_id") or sign_key)


@dataclass(frozen=True, slots=True)
class UnsignedSpan:
    """Lines ``first`` to ``last`` of ``path``: records of run ``run_id``, which signs its
    heads, after its last signed one. A crash leaves them (a run killed between
    checkpoints); so does whoever appends to a signed log: no signature vouches for them."""

    path: Path
    run_id: str
    first: int
    last: int

    def holds(self, path: Path, line: int) -> bool:
        return path == self.path and self.first <= line <= self.last

    @property
    def lines(self) -> str:
        """``7`` or ``7-12``."""
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"


def unsigned_spans(paths: Sequence[Path]) -> list[UnsignedSpan]:
    """The records of signing runs that no signature covers, per run. Only lines that
    hold ``run_started`` or ``head_signature`` are decoded: a run's records follow its
    ``run_started`` in its file."""
    spans: list[UnsignedSpan] = []
    for path in paths:
        run: tuple[str, bool] | None = None
        first = last = 0
        for number, line in _records(path):
            record = (
                parse_line(line) if b"run_started" in line or b"head_signature" in line else None
            )
            if isinstance(record, dict) and record.get("event") == "run_started":
                spans += _unsigned(path, run, first, last)
                run, first = (str(record.get("run_id")), declares_key(record)), number
            elif isinstance(record, dict) and "head_signature" in record:
                first = number + 1
            last = number
        spans += _unsigned(path, run, first, last)
    return spans


def _unsigned(
    path: Path, run: tuple[str, bool] | None, first: int, last: int
) -> list[UnsignedSpan]:
    if run is None or not run[1] or first > last:
        return []
    return [UnsignedSpan(path, run[0], first, last)]


def read_records(paths: Sequence[Path]) -> Iterator[tuple[Path, int, dict[str, Any]]]:
    """Every parseable record of the files, with where it stands."""
    for path in paths:
        for number, line in _records(path):
            record = parse_line(line)
            if isinstance(record, dict):
                yield path, number, record


def _ids(record: dict[str, Any]) -> list[int]:
    ids = record.get("audience_ids")
    return ids if isinstance(ids, list) else []


def _repeats(record: dict[str, Any]) -> list[tuple[Any, Any]]:
    """The rows of a ``duplicates`` record: (input line, audience id) pairs. A malformed
    record (arrays of different lengths) yields the pairs it holds: the first ones, up to
    the shorter array (:func:`summarize` warns about it)."""
    lines = record.get("lines")
    return list(zip(lines, _ids(record), strict=False)) if isinstance(lines, list) else []


def duplicate_rows(record: dict[str, Any]) -> int:
    """The input rows a record says were duplicates: those a ``duplicates`` record pairs,
    or 1 for an older per-row ``duplicate`` record (0 for any other)."""
    event = record.get("event")
    if event == "duplicates":
        return len(_repeats(record))
    return 1 if event == "duplicate" else 0


def _malformed(record: dict[str, Any]) -> str | None:
    """Why a ``duplicates`` record's rows cannot all be paired, or None when they can."""
    lines, ids = record.get("lines"), record.get("audience_ids")
    if not isinstance(lines, list) or not isinstance(ids, list):
        return (
            "duplicates record without a list of lines and a list of audience_ids: none of "
            "its rows is counted or found"
        )
    if len(lines) != len(ids):
        return (
            f"duplicates record with {len(lines)} lines but {len(ids)} audience_ids: only its "
            f"first {min(len(lines), len(ids))} rows are counted and found"
        )
    return None


def _duplicate(record: dict[str, Any], line: Any, audience_id: Any) -> dict[str, Any]:
    """One row of a ``duplicates`` record as the ``duplicate`` record older logs hold for it;
    the chain fields (and anything else) are those of the record that holds the row."""
    row = {
        "ts": record.get("ts"),
        "event": "duplicate",
        "run_id": record.get("run_id"),
        "line": line,
        "campaign_id": record.get("campaign_id"),
        "audience_id": audience_id,
    }
    held = ("lines", "audience_ids")
    return row | {k: v for k, v in record.items() if k not in row and k not in held}


def summarize(paths: Sequence[Path]) -> dict[str, Any]:
    """Totals per event and per campaign, one line per run, and warnings.

    Each row of a ``duplicates`` record counts as one ``duplicate``, as when every duplicate
    row had a record of its own: the totals do not depend on how the log grouped them. A
    ``duplicates`` record whose ``lines`` and ``audience_ids`` cannot be paired (not two
    lists, or lists of different lengths) counts the rows it pairs and is named in
    ``warnings`` (file, line, reason): the chain does not care (``verify`` checks the
    chain only), but the totals then miss rows.
    """
    events: Counter[str] = Counter()
    campaigns: dict[int, Counter[str]] = defaultdict(Counter)
    runs: dict[str, dict[str, Any]] = {}
    warnings: list[dict[str, Any]] = []
    for path, number, record in read_records(paths):
        event = str(record.get("event"))
        rows = 1
        if event == "duplicates":
            event, rows = "duplicate", duplicate_rows(record)
            reason = _malformed(record)
            if reason is not None:
                warnings.append({"file": str(path), "line": number, "reason": reason})
        events[event] += rows
        run = runs.setdefault(str(record.get("run_id")), {"run_id": record.get("run_id")})
        if event == "run_started":
            run.update(
                started=record.get("ts"), command=record.get("command"), input=record.get("input")
            )
        elif event == "run_finished":
            run.update(
                finished=record.get("ts"),
                exit_code=record.get("exit_code"),
                interrupted=record.get("interrupted"),
            )
        campaign = record.get("campaign_id")
        if isinstance(campaign, int) and event in ("deleted", "failed", "sending"):
            campaigns[campaign][f"{event}_ids"] += len(_ids(record))
        elif isinstance(campaign, int) and event in ("duplicate", "deleted_all"):
            campaigns[campaign][event] += rows
    return {
        "events": dict(sorted(events.items())),
        "campaigns": {str(c): dict(sorted(v.items())) for c, v in sorted(campaigns.items())},
        "runs": sorted(runs.values(), key=lambda r: str(r.get("started", ""))),
        "warnings": warnings,
    }


Hit = tuple[Path, int, dict[str, Any]]


def _candidates(
    paths: Sequence[Path], wanted: Callable[[bytes], bool], campaign_id: int | None
) -> Iterator[Hit]:
    """The records whose bytes are ``wanted`` (only those are decoded), of the campaign
    (a record without one, such as ``rejected``, is of every campaign)."""
    for path in paths:
        for number, line in _records(path):
            if not wanted(line):
                continue
            record = parse_line(line)
            if not isinstance(record, dict):
                continue
            if campaign_id is not None and record.get("campaign_id") not in (campaign_id, None):
                continue
            yield path, number, record


def find(paths: Sequence[Path], audience_id: int, campaign_id: int | None = None) -> Iterator[Hit]:
    """Every record that mentions ``audience_id`` (optionally within one campaign).

    A ``duplicates`` record yields each of its rows with that id, shaped as the per-row
    ``duplicate`` record of older logs (see :func:`_duplicate`), at the record's own line.
    """
    needle = str(audience_id).encode()
    for path, number, record in _candidates(paths, lambda line: needle in line, campaign_id):
        if record.get("event") == "duplicates":
            for line_no, repeated in _repeats(record):
                if repeated == audience_id:
                    yield path, number, _duplicate(record, line_no, repeated)
        elif _mentions(record, audience_id):
            yield path, number, record


def find_line(paths: Sequence[Path], line: int, campaign_id: int | None = None) -> Iterator[Hit]:
    """Every record about input line ``line``: a ``rejected`` row, a per-row ``duplicate``
    of older logs, and the row of a ``duplicates`` record (shaped as :func:`find` shapes
    it). A row that was sent leaves no record of its line (``deleted`` names ids only).

    A line number is per input and per run: records of several runs (or of several
    inputs) may share it, and each carries its ``run_id``. Only records whose bytes hold
    the number and ``rejected`` or ``duplicate`` are decoded: never a ``sending`` or
    ``deleted`` record, the bulk of a log, unless an API message says so.
    """
    number = str(line).encode()

    def wanted(raw: bytes) -> bool:
        return number in raw and (b"rejected" in raw or b"duplicate" in raw)

    for path, at, record in _candidates(paths, wanted, campaign_id):
        event = record.get("event")
        if event == "duplicates":
            for line_no, audience_id in _repeats(record):
                if _is_line(line_no, line):
                    yield path, at, _duplicate(record, line_no, audience_id)
        elif event in ("rejected", "duplicate") and _is_line(record.get("line"), line):
            yield path, at, record


def _is_line(value: Any, line: int) -> bool:
    return type(value) is int and value == line


def _mentions(record: dict[str, Any], audience_id: int) -> bool:
    if audience_id in _ids(record) or record.get("audience_id") == audience_id:
        return True
    if record.get("event") != "rejected":
        return False
    if "audience_raw" in record:  # the id cell itself, so a campaign id never matches
        return bool(record["audience_raw"] == str(audience_id))
    raw = record.get("raw")  # logs written before audience_raw existed
    return isinstance(raw, str) and str(audience_id) in (c.strip() for c in raw.split(","))
