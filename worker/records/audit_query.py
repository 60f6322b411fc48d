"""Reading audit logs back: ``audit verify``, ``audit summary`` and ``audit find``.

The chain (see :mod:`worker.records.audit`): every record carries ``seq`` (0, 1, ... per file),
``prev_hash`` (the previous record's ``hash``; zeros for a fresh chain) and ``hash``, the
SHA-256 of the record's canonical JSON (sorted keys, no whitespace) without ``hash``. A
resumed run writes a new file whose first record's ``prev_hash`` is the last hash of the
file it continues, named in its ``previous`` field. ``run_finished`` may carry ``head_hmac``,
an HMAC-SHA256 of the chain head under a key the auditor holds.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
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
    body = {k: v for k, v in record.items() if k not in ("hash", "head_hmac")}
    return hmac.new(key, canonical(body), hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class Problem:
    path: Path
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclass(slots=True)
class ChainEnd:
    """What verifying one file found: its last record, and whether a run closed it."""

    path: Path
    records: int = 0
    last_seq: int = -1
    last_hash: str = ZERO_HASH
    finished: bool = False
    signed: int = 0
    first_prev: str = ZERO_HASH
    previous: dict[str, Any] = field(default_factory=dict)
    run_ids: set[str] = field(default_factory=set)


def _records(path: Path) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as handle:
        yield from enumerate(handle, start=1)


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


def verify_file(path: Path, key: bytes | None = None) -> tuple[ChainEnd, Problem | None]:
    """Walk one file's chain; returns where it ended and the first problem, if any."""
    end = ChainEnd(path)
    for number, line in _records(path):
        if not line.endswith(b"\n"):
            return end, Problem(path, number, "last record is incomplete (truncated file)")
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            return end, Problem(path, number, "not a JSON record (changed or corrupt)")
        if not isinstance(record, dict):
            return end, Problem(path, number, "not a JSON object")
        reason = _check_record(record, end, key)
        if reason is not None:
            return end, Problem(path, number, reason)
        end.records += 1
        end.last_seq = record["seq"]
        end.last_hash = record["hash"]
        end.finished = record.get("event") == "run_finished"
        end.run_ids.add(str(record.get("run_id")))
    if end.records == 0:
        return end, Problem(path, 1, "empty audit log")
    return end, None


def verify(
    paths: Sequence[Path], key: bytes | None = None
) -> tuple[list[ChainEnd], Problem | None]:
    """Verify files (in any order, from anywhere): each chain, and the links between them.

    A file may end without ``run_finished`` only if another given file continues it (a
    crash, then a resume). Links are found by chain identity (last hash and seq), not by
    path, so archived or moved files verify the same.
    """
    ends: list[ChainEnd] = []
    for path in paths:
        end, problem = verify_file(path, key)
        if problem is not None:
            return ends, problem
        ends.append(end)
    by_tail = {(e.last_hash, e.last_seq): e for e in ends}
    continued: set[int] = set()
    for end in ends:
        if end.first_prev == ZERO_HASH:
            continue
        last_seq = end.previous.get("last_seq")
        prior = by_tail.get((end.first_prev, last_seq if isinstance(last_seq, int) else -2))
        if prior is not None and prior is not end:
            continued.add(id(prior))
            continue
        holder = next(
            (e for e in ends if e is not end and end.previous.get("run_id") in e.run_ids), None
        )
        if holder is not None:
            return ends, Problem(
                holder.path,
                holder.records,
                f"chain continued by {end.path} does not end here "
                "(records were removed from the tail)",
            )
    for end in ends:
        if not end.finished and id(end) not in continued:
            return ends, Problem(
                end.path,
                end.records,
                "chain ends without run_finished: the tail was truncated or "
                "the run crashed and was not resumed",
            )
    return ends, None


def read_records(paths: Sequence[Path]) -> Iterator[tuple[Path, int, dict[str, Any]]]:
    """Every parseable record of the files, with where it stands."""
    for path in paths:
        for number, line in _records(path):
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(record, dict):
                yield path, number, record


def _ids(record: dict[str, Any]) -> list[int]:
    ids = record.get("audience_ids")
    return ids if isinstance(ids, list) else []


def summarize(paths: Sequence[Path]) -> dict[str, Any]:
    """Totals per event and per campaign, and one line per run."""
    events: Counter[str] = Counter()
    campaigns: dict[int, Counter[str]] = defaultdict(Counter)
    runs: dict[str, dict[str, Any]] = {}
    for _, _, record in read_records(paths):
        event = str(record.get("event"))
        events[event] += 1
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
            campaigns[campaign][event] += 1
    return {
        "events": dict(sorted(events.items())),
        "campaigns": {str(c): dict(sorted(v.items())) for c, v in sorted(campaigns.items())},
        "runs": sorted(runs.values(), key=lambda r: str(r.get("started", ""))),
    }


def find(
    paths: Sequence[Path], audience_id: int, campaign_id: int | None = None
) -> Iterator[tuple[Path, int, dict[str, Any]]]:
    """Every record that mentions ``audience_id`` (optionally within one campaign)."""
    needle = str(audience_id).encode()
    for path in paths:
        for number, line in _records(path):
            if needle not in line:
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if campaign_id is not None and record.get("campaign_id") not in (campaign_id, None):
                continue
            if _mentions(record, audience_id):
                yield path, number, record


def _mentions(record: dict[str, Any], audience_id: int) -> bool:
    if audience_id in _ids(record) or record.get("audience_id") == audience_id:
        return True
    if record.get("event") != "rejected":
        return False
    if "audience_raw" in record:  # the id cell itself, so a campaign id never matches
        return bool(record["audience_raw"] == str(audience_id))
    raw = record.get("raw")  # logs written before audience_raw existed
    return isinstance(raw, str) and str(audience_id) in (c.strip() for c in raw.split(","))
