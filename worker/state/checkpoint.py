"""Crash-safe progress: what a re-run of the same command needs to continue.

Design (low watermark + exceptions). The input is read in order; every row has a byte
offset. The *watermark* W is the offset of the first row that has not reached its end
(deleted, failed, rejected, duplicate). A checkpoint stores:

- W, and a verified prefix (B, line count, SHA-256 of the input's first B bytes, B <= W) so
  a changed input is noticed without trusting file names or sizes;
- ``seen``: every valid (campaign, id) pair met so far, as roaring bitmaps, and ``pending``:
  those of rows at or after W still on their way; ``seen - pending - done_above`` is what
  was met before W, so rows after W are still recognised as duplicates of rows before it;
- ``done_above``: pairs at or after W that already reached their end (batches finish out of
  order), so they are not sent again;
- ``failed``: pairs that failed, retried first on resume unless ``--no-retry-failed``;
- the audit chain head, so the next run's audit file links to this one, and the file the
  running run writes (``audit_pending``): records after the head are replayed on resume
  (see :mod:`worker.state.replay`), so only batches that were in flight are sent again;
- every audit file of the purge, by absolute path, with its run and the ids that run
  recorded as deleted (``audit_files``): a read-back finds them from any directory, and
  says how many ids it could not check when one is gone;
- the target it belongs to (API base URL without credentials, ``--campaign-id``, shard):
  a state directory reused for another target is refused, never taken for "done".

Resuming re-reads (and hashes) the first B bytes at disk speed, drops rows before W
without parsing them into work, and skips ``done_above`` pairs: resume time and memory do
not grow with the work already done. Files are replaced atomically (write, fsync, rename,
fsync the directory); a state that cannot be read is an error naming the file, never a
silent restart from zero.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import socket
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson
from pyroaring import BitMap64

from worker.errors import OutputError, StateError
from worker.files import make_dirs, open_private, sync_directory, write_atomic

FORMAT = 1
LOCK_FILE = "lock"
STATE_FILE = "state.json"
_HEADER = struct.Struct("<QQ")
PARTS = ("seen", "pending", "done_above", "failed")
# The bitmap files a generation writes: only these are ever removed from the directory.
_OURS = re.compile(rf"({'|'.join(PARTS)})\.[0-9]+\.bin")


Pairs = dict[int, BitMap64]


def dump_pairs(pairs: Mapping[int, BitMap64]) -> bytes:
    """Serialise per-campaign bitmaps: (campaign, length, roaring bytes) repeated."""
    out = bytearray()
    for campaign, ids in sorted(pairs.items()):
        ids.run_optimize()
        blob = ids.serialize()
        out += _HEADER.pack(campaign, len(blob)) + blob
    return bytes(out)


def load_pairs(data: bytes, name: str) -> Pairs:
    pairs: Pairs = {}
    at = 0
    try:
        while at < len(data):
            campaign, size = _HEADER.unpack_from(data, at)
            at += _HEADER.size
            if at + size > len(data):
                raise ValueError("truncated")
            pairs[campaign] = BitMap64.deserialize(data[at : at + size])
            at += size
    except (ValueError, struct.error) as exc:
        raise StateError(
            f"state file {name} is corrupt ({exc}); use --fresh to start over"
        ) from None
    return pairs


def pairs_from(items: Iterable[tuple[int, int]]) -> Pairs:
    pairs: Pairs = {}
    for campaign, audience in items:
        pairs.setdefault(campaign, BitMap64()).add(audience)
    return pairs


def count(pairs: Mapping[int, BitMap64]) -> int:
    return sum(len(ids) for ids in pairs.values())


@dataclass(slots=True)
class Checkpoint:
    """One consistent snapshot of a run's progress."""

    input_name: str
    watermark: int = 0
    prefix_bytes: int = 0
    prefix_lines: int = 0
    prefix_sha256: str = hashlib.sha256().hexdigest()
    complete: bool = False
    input_sha256: str | None = None
    run_ids: list[str] = field(default_factory=list)
    audit: dict[str, Any] = field(default_factory=dict)
    audit_pending: str | None = None
    # Every run's audit file ({"run_id", "path" (absolute), "deleted"}), oldest first.
    audit_files: list[dict[str, Any]] = field(default_factory=list)
    target: dict[str, Any] = field(default_factory=dict)
    completed_by: dict[str, Any] | None = None  # the run that finished the purge, and when
    totals: dict[str, int] = field(default_factory=dict)
    layout: tuple[int, int | None, bool] | None = None
    seen: Pairs = field(default_factory=dict)
    pending: Pairs = field(default_factory=dict)
    done_above: Pairs = field(default_factory=dict)
    failed: Pairs = field(default_factory=dict)

    def seen_before_watermark(self) -> Pairs:
        """The pairs met before W: what a resumed run's de-duplication starts from."""
        out: Pairs = {}
        for campaign, ids in self.seen.items():
            rest = ids.copy()
            for part in (self.pending, self.done_above):
                if campaign in part:
                    rest.difference_update(part[campaign])
            out[campaign] = rest
        return out


def _layout(value: object) -> tuple[int, int | None, bool] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != 3:
        raise ValueError(f"bad layout {value!r}")
    id_col, campaign_col, header = value
    return int(id_col), None if campaign_col is None else int(campaign_col), bool(header)


def _audit_files(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The purge's audit files; a state written before they were kept names two at most:
    its chain head's and the last run's (as written then, perhaps relative), the ids they
    hold unknown (``deleted`` None)."""
    if "audit_files" in doc:
        return [dict(entry) for entry in doc["audit_files"] or []]
    head, runs = doc.get("audit") or {}, doc.get("run_ids") or [None]
    named = [(head.get("run_id"), head.get("audit_log")), (runs[-1], doc.get("audit_pending"))]
    found: dict[str, dict[str, Any]] = {}
    for run_id, path in named:
        if run_id and path:
            found.setdefault(str(path), {"run_id": str(run_id), "path": str(path), "deleted": None})
    return list(found.values())


def _optional_str(value: object) -> str | None:
    return None if value is None else str(value)


def default_state_dir(
    input_path: str, campaign_id: int | None, base_url: str, shard: str = ""
) -> Path:
    """Derived from what identifies a purge, so re-running the same command finds it."""
    name = "stdin" if input_path == "-" else str(Path(input_path).resolve())
    key = f"{name}|{campaign_id}|{base_url}|{shard}"
    stem = ("stdin" if input_path == "-" else Path(input_path).stem) + (
        f"-shard{shard.replace('/', 'of')}" if shard else ""
    )
    return Path("purge-state") / f"{stem}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


class StateStore:
    """Reads and writes checkpoints in one directory; one generation of files at a time.

    One run at a time: :meth:`lock` takes an exclusive ``flock`` on a lock file in the
    directory, which the kernel releases when the process ends, however it ends.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / STATE_FILE
        self._generation = 0
        self._lock: IO[str] | None = None

    def lock(self) -> None:
        """Take the directory for this run.

        Raises:
            StateError: another process holds it (named by PID and host).
            OutputError: the directory or its lock file cannot be created.
        """
        lock_path = self.directory / LOCK_FILE
        try:
            make_dirs(self.directory)
            handle = open_private(lock_path, "a+", encoding="utf-8")
        except OSError as exc:
            raise OutputError("the progress in", self.directory, exc) from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise StateError(
                f"state directory {self.directory} is in use by {holder}: wait for that run, "
                "or give this one its own --state-dir"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"PID {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        self._lock = handle

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file releases the flock
            self._lock = None

    def exists(self) -> bool:
        return self.path.exists()

    def save(self, point: Checkpoint) -> None:
        """Write the bitmaps of a new generation, then switch state.json to them.

        Raises:
            OutputError: a file could not be written; the previous state stays in force.
        """
        self.prepare(point)()

    def prepare(self, point: Checkpoint) -> Callable[[], None]:
        """Serialise ``point`` now (the structures it names go on changing) and return what
        writes it: that part only touches files, and may run in a thread while the run goes
        on. One write at a time, in the order they were prepared.

        The writer raises OutputError as :meth:`save` does.
        """
        self._generation += 1
        files: dict[str, bytes] = {}
        blobs: dict[str, str] = {}
        for part in PARTS:
            data = dump_pairs(getattr(point, part))
            name = f"{part}.{self._generation}.bin"
            files[name] = data
            blobs[part] = f"{name}:{hashlib.sha256(data).hexdigest()}"
        doc = orjson.dumps(_document(point, self._generation, blobs), option=orjson.OPT_INDENT_2)

        def write() -> None:
            try:
                make_dirs(self.directory)
                for name, data in files.items():
                    write_atomic(self.directory / name, data, sync_dir=False)
                write_atomic(self.path, doc, sync_dir=False)
                sync_directory(self.directory)
                self._remove_other_generations(set(files))
            except OSError as exc:
                raise OutputError("the progress in", self.directory, exc) from None

        return write

    def _remove_other_generations(self, keep: set[str]) -> None:
        for stale in self._bitmap_files():
            if stale.name not in keep:
                stale.unlink(missing_ok=True)

    def _bitmap_files(self) -> list[Path]:
        """The generations' bitmap files in the directory (``seen.7.bin``...), nothing else."""
        return [p for p in self.directory.glob("*.bin") if _OURS.fullmatch(p.name)]

    def load(self) -> Checkpoint:
        """Read the current checkpoint; anything unreadable is a StateError naming the file."""
        try:
            doc = orjson.loads(self.path.read_bytes())
            if doc.get("format") != FORMAT:
                raise StateError(
                    f"state file {self.path} has format {doc.get('format')!r}, expected {FORMAT}"
                )
            self._generation = int(doc["generation"])
            meta = doc["input"]
            point = Checkpoint(
                input_name=str(meta["name"]),
                watermark=int(meta["watermark"]),
                prefix_bytes=int(meta["prefix_bytes"]),
                prefix_lines=int(meta["prefix_lines"]),
                prefix_sha256=str(meta["prefix_sha256"]),
                layout=_layout(doc.get("layout")),
                complete=bool(doc["complete"]),
                input_sha256=doc.get("input_sha256"),
                run_ids=[str(r) for r in doc["run_ids"]],
                audit=dict(doc["audit"]),
                audit_pending=_optional_str(doc.get("audit_pending")),
                audit_files=_audit_files(doc),
                target=dict(doc.get("target") or {}),
                completed_by=doc.get("completed_by"),
                totals={str(k): int(v) for k, v in doc["totals"].items()},
            )
            files = doc["files"]
        except StateError:
            raise
        except (
            OSError,
            orjson.JSONDecodeError,
            KeyError,
            TypeError,
            ValueError,
            AttributeError,
        ) as exc:
            raise StateError(
                f"state file {self.path} is unreadable or corrupt ({type(exc).__name__}: {exc}); "
                "use --fresh to start over"
            ) from None
        for part in PARTS:
            setattr(point, part, self._load_blob(str(files.get(part, ""))))
        return point

    def _load_blob(self, ref: str) -> Pairs:
        name, _, digest = ref.partition(":")
        path = self.directory / name
        try:
            data = path.read_bytes()
        except OSError:
            raise StateError(f"state file {path} is missing; use --fresh to start over") from None
        if hashlib.sha256(data).hexdigest() != digest:
            raise StateError(
                f"state file {path} is corrupt (checksum mismatch); use --fresh to start over"
            )
        return load_pairs(data, str(path))

    def clear(self) -> None:
        """Forget the state (``--fresh``)."""
        for stale in [*self._bitmap_files(), self.path]:
            stale.unlink(missing_ok=True)
        self._generation = 0


def _document(point: Checkpoint, generation: int, blobs: dict[str, str]) -> dict[str, Any]:
    """state.json: the checkpoint's fields, and the bitmap files of its generation."""
    return {
        "format": FORMAT,
        "generation": generation,
        "input": {
            "name": point.input_name,
            "watermark": point.watermark,
            "prefix_bytes": point.prefix_bytes,
            "prefix_lines": point.prefix_lines,
            "prefix_sha256": point.prefix_sha256,
        },
        "layout": point.layout,
        "complete": point.complete,
        "input_sha256": point.input_sha256,
        "run_ids": point.run_ids,
        "audit": point.audit,
        "audit_pending": point.audit_pending,
        "audit_files": point.audit_files,
        "target": point.target,
        "completed_by": point.completed_by,
        "totals": point.totals,
        "files": blobs,
    }
