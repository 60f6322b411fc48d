"""``audience-purge status``: where a purge stands, read without disturbing it.

- ``--state-dir DIR``: the saved progress of a ``run`` (read with the state store, never
  written; the lock is probed, not held), its input, target, campaigns, counts, last
  checkpoint, and whether a process runs it now.
- no ``--state-dir``: one line for every state directory under ``./purge-state``.
- ``--redis URL --stream S``: the queue: its length and memory, the dead-letter stream's,
  the group's pending entries per consumer, its oldest pending entry and its lag.

How much of the input is left is told in bytes (the watermark of the N bytes of the file
as it is now): counting rows would mean reading the input again. ``--json`` prints one JSON
object. Exit 0; 2 for a state directory that is missing or unreadable (the listing prints
every line first), or a stream that does not exist.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

import orjson

from worker.errors import StateError, UsageError
from worker.exit_codes import ExitCode
from worker.queue.admin import QueueState, entry_time_ms, now_ms, queue_state
from worker.queue.intake import open_queue
from worker.sending.credentials import redact_url
from worker.settings import Settings
from worker.state.checkpoint import LOCK_FILE, STATE_FILE, Checkpoint, StateStore, count
from worker.times import from_unix, utc_text

STATE_ROOT = Path("purge-state")


def status_command(args: argparse.Namespace, settings: Settings) -> int:
    """``audience-purge status``."""
    return asyncio.run(show_status(settings, as_json=bool(args.json)))


async def show_status(settings: Settings, *, as_json: bool, out: TextIO = sys.stdout) -> int:
    """Print the status the settings point at; the exit code.

    Raises:
        UsageError: both a state directory and a stream, a missing or unreadable state
            directory, or a stream that does not exist.
        ServiceUnavailable: Redis could not be reached, or refused the credentials.
    """
    if settings.stream is not None:
        if settings.state_dir is not None:
            raise UsageError("status shows a state directory or a stream, not both")
        state = await _queue(settings)
        _print(out, as_json, _queue_doc(state, settings), _queue_lines(state, settings))
        return ExitCode.OK
    if settings.state_dir is not None:
        summary = read_summary(settings.state_dir)
        _print(out, as_json, summary.doc(), summary.lines())
        return ExitCode.OK
    return _list(out, as_json)


def _print(out: TextIO, as_json: bool, doc: Mapping[str, Any], lines: Iterable[str]) -> None:
    if as_json:
        out.write(orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS).decode() + "\n")
    else:
        out.write("".join(f"{line}\n" for line in lines))


# -- a state directory -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Lock:
    """Whether a process holds the directory now, and the holder line its lock file has."""

    held: bool
    holder: str | None


def probe_lock(directory: Path) -> Lock:
    """A non-blocking shared flock on ``DIR/lock``, released at once: held if it fails.

    The lock file is only opened for reading (never created), and the probe lasts two
    system calls; a run that starts in exactly that moment is refused as when another run
    holds the directory (exit 2, nothing sent) and can simply be started again."""
    try:
        handle = open(directory / LOCK_FILE, encoding="utf-8")  # noqa: SIM115 (closed below)
    except FileNotFoundError:
        return Lock(False, None)
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return Lock(True, handle.read().strip() or "another process")
        fcntl.flock(handle, fcntl.LOCK_UN)
        return Lock(False, handle.read().strip() or None)


@dataclass(frozen=True, slots=True)
class Summary:
    """What ``status`` tells of one state directory."""

    directory: Path
    point: Checkpoint
    checkpoint_at: float  # state.json's mtime
    input_size: int | None  # the input file's size now (None: stdin, or not found here)
    lock: Lock

    @property
    def left_bytes(self) -> int | None:
        if self.input_size is None:
            return None
        return max(self.input_size - self.point.watermark, 0)

    def campaigns(self) -> dict[int, dict[str, int]]:
        failed = self.point.failed
        return {
            campaign: {"ids": len(ids), "failed": len(failed.get(campaign, ()))}
            for campaign, ids in sorted(self.point.seen.items())
        }

    def doc(self) -> dict[str, Any]:
        p = self.point
        return {
            "state_dir": str(self.directory),
            "input": {
                "name": p.input_name,
                "size": self.input_size,
                "watermark": p.watermark,
                "bytes_left": self.left_bytes,
                "prefix_bytes": p.prefix_bytes,
                "prefix_lines": p.prefix_lines,
            },
            "target": p.target,
            "campaigns": {str(c): v for c, v in self.campaigns().items()},
            "deleted": p.totals.get("deleted", 0),
            "failed_left": p.totals.get("failed_left", count(p.failed)),
            "pending": count(p.pending),
            "done_above_watermark": count(p.done_above),
            "complete": p.complete,
            "runs": p.run_ids,
            "last_checkpoint": utc_text(from_unix(self.checkpoint_at), "seconds"),
            "last_checkpoint_age_s": round(time.time() - self.checkpoint_at, 1),
            "locked": self.lock.held,
            "lock_holder": self.lock.holder,
        }

    def lines(self) -> list[str]:
        doc, p = self.doc(), self.point
        campaigns = "; ".join(
            f"{campaign}: {n['ids']:,} ids met, {n['failed']:,} failed"
            for campaign, n in self.campaigns().items()
        )
        return [
            f"state directory {self.directory}",
            f"  input       {self._input_line()}",
            f"  target      {_target(p.target)}",
            f"  campaigns   {campaigns or 'none yet'}",
            f"  ids         {doc['deleted']:,} deleted, {doc['failed_left']:,} failed (retried "
            f"by the next run), {doc['pending']:,} on their way at the checkpoint",
            f"  runs        {len(p.run_ids)}" + (f" (last {p.run_ids[-1]})" if p.run_ids else ""),
            f"  checkpoint  {doc['last_checkpoint']} ({_age(doc['last_checkpoint_age_s'])} ago)",
            f"  complete    {'yes' if p.complete else 'no'}",
            f"  lock        {self._lock_line()}",
        ]

    def _input_line(self) -> str:
        p = self.point
        prefix = f"prefix verified: {p.prefix_bytes:,} bytes, {p.prefix_lines:,} lines"
        if self.input_size is None:
            return f"{p.input_name}: done up to byte {p.watermark:,} ({prefix}; size unknown here)"
        share = 100.0 if self.input_size == 0 else 100 * p.watermark / self.input_size
        return (
            f"{p.input_name}: {p.watermark:,} of {self.input_size:,} bytes done ({share:.1f} %), "
            f"{self.left_bytes:,} bytes left; {prefix}"
        )

    def _lock_line(self) -> str:
        if self.lock.held:
            return f"held by {self.lock.holder}: a run is under way"
        last = f" (last held by {self.lock.holder})" if self.lock.holder else ""
        return f"free: no run now{last}"

    def line(self) -> str:
        """The one line of the listing."""
        p, doc = self.point, self.doc()
        share = (
            f"{100 * p.watermark / self.input_size:5.1f} %"
            if self.input_size
            else f"byte {p.watermark:,}"
        )
        state = (
            f"running ({self.lock.holder})"
            if self.lock.held
            else ("complete" if p.complete else "stopped")
        )
        return (
            f"{self.directory}  {p.input_name}  {share}  deleted {doc['deleted']:,}  "
            f"failed {doc['failed_left']:,}  {state}  checkpoint "
            f"{_age(doc['last_checkpoint_age_s'])} ago"
        )


def read_summary(directory: Path) -> Summary:
    """The summary of one state directory, read-only.

    Raises:
        StateError: the directory or its state file is missing, or the state is corrupt.
    """
    store = StateStore(directory)
    if not directory.is_dir():
        raise StateError(f"state directory {directory} does not exist")
    if not store.exists():
        raise StateError(f"state directory {directory} holds no saved progress ({STATE_FILE})")
    point = store.load()
    try:
        checkpoint_at = store.path.stat().st_mtime
    except OSError as exc:
        raise StateError(f"state file {store.path} is unreadable: {exc.strerror}") from None
    return Summary(directory, point, checkpoint_at, _size(point.input_name), probe_lock(directory))


def _size(name: str) -> int | None:
    if name in ("-", "<stdin>"):
        return None
    try:
        return Path(name).stat().st_size
    except OSError:
        return None


def _list(out: TextIO, as_json: bool) -> int:
    """One line per state directory under ./purge-state; exit 2 if one is unreadable."""
    if not STATE_ROOT.is_dir():
        raise UsageError(
            f"no {STATE_ROOT}/ here: run status from where the purges ran, or give --state-dir"
        )
    docs: list[dict[str, Any]] = []
    lines: list[str] = []
    for directory in sorted(d for d in STATE_ROOT.iterdir() if d.is_dir()):
        try:
            summary = read_summary(directory)
        except StateError as exc:
            docs.append({"state_dir": str(directory), "error": str(exc)})
            lines.append(f"{directory}  unreadable: {exc}")
            continue
        docs.append(summary.doc())
        lines.append(summary.line())
    if not lines:
        lines.append(f"no state directories under {STATE_ROOT}/")
    _print(out, as_json, {"state_dirs": docs}, lines)
    return ExitCode.USAGE if any("error" in d for d in docs) else ExitCode.OK


def _target(target: Mapping[str, Any]) -> str:
    if not target:
        return "not recorded (state written by an older version)"
    campaign = target.get("campaign_id")
    parts = [
        str(target.get("base_url")),
        f"campaign {campaign}" if campaign else "campaigns from the input",
    ]
    if target.get("shard"):
        parts.append(f"shard {target['shard']}")
    return ", ".join(parts)


def _age(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


# -- a queue ---------------------------------------------------------------------------------


async def _queue(settings: Settings) -> QueueState:
    async with open_queue(settings) as queue:
        state = await queue_state(queue)
    if not state.exists:
        raise UsageError(
            f"stream {state.stream} does not exist on {redact_url(settings.redis_url or '')}"
        )
    return state


def _queue_doc(state: QueueState, settings: Settings) -> dict[str, Any]:
    doc = asdict(state)
    doc["redis"] = redact_url(settings.redis_url or "")
    oldest = state.group.oldest_pending if state.group else None
    if oldest is not None:
        doc["group"]["oldest_pending"]["age_ms"] = now_ms() - entry_time_ms(oldest.entry_id)
    if state.group is None:
        doc["group"] = {"name": settings.group, "exists": False}
    return doc


def _queue_lines(state: QueueState, settings: Settings) -> list[str]:
    lines = [
        f"stream {state.stream} on {redact_url(settings.redis_url or '')}",
        f"  entries       {state.length:,} ({_bytes(state.memory_bytes)})",
        f"  dead letters  {state.dead_length:,} on {state.dead_stream} "
        f"({_bytes(state.dead_memory_bytes)})",
    ]
    group = state.group
    if group is None:
        lines.append(f"  group         {settings.group}: not created yet (no consumer started)")
        return lines
    lag = f"lag {group.lag:,}" + (
        "" if group.lag_exact else " (stream length - pending: Redis gives none after deletions)"
    )
    lines.append(
        f"  group         {group.name}: {group.pending:,} pending, {lag}, last delivered "
        f"{group.last_delivered_id}"
    )
    for consumer in group.consumers:
        lines.append(
            f"  consumer      {consumer.name}: {consumer.pending:,} pending, idle "
            f"{_age(consumer.idle_ms / 1000)}"
        )
    oldest = group.oldest_pending
    if oldest is not None:
        added = (now_ms() - entry_time_ms(oldest.entry_id)) / 1000
        lines.append(
            f"  oldest        {oldest.entry_id} at {oldest.consumer}: added {_age(added)} ago, "
            f"idle {_age(oldest.idle_ms / 1000)}, delivered {oldest.deliveries} time(s)"
        )
    return lines


def _bytes(size: int | None) -> str:
    if size is None:
        return "no such key"
    if size < 1024:
        return f"{size:,} bytes of memory"
    if size < 1024**2:
        return f"{size / 1024:,.1f} KiB of memory"
    return f"{size / 1024**2:,.1f} MiB of memory"
