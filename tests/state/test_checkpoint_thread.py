"""Periodic checkpoints write in a thread: the event loop goes on meanwhile, the audit log is
made durable before the state that names it, and a stop waits for a write under way."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import pytest

from worker.input.batching import Batcher, Deduper
from worker.input.planning import Plan
from worker.input.sources import InputDigest
from worker.records.audit import AuditLog
from worker.records.recorder import Recorder
from worker.state.checkpoint import StateStore
from worker.state.resume import Checkpointer
from worker.state.watermark import Ledger

SLOW = 0.15  # seconds each fsync takes here


@pytest.fixture
def slow_disk(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, str]]:
    """Every fsync takes SLOW seconds; each is logged as (thread, fd, what the fd is)."""
    calls: list[tuple[str, int, str]] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        calls.append((threading.current_thread().name, fd, os.readlink(f"/proc/self/fd/{fd}")))
        time.sleep(SLOW)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return calls


def is_state_tmp(target: str) -> bool:
    """The private temporary file that becomes state.json (``.state.json.XXXX.tmp``)."""
    name = Path(target).name
    return name.startswith(".state.json.") and name.endswith(".tmp")


def checkpointer(tmp_path: Path) -> Checkpointer:
    audit = AuditLog(tmp_path / "audit.jsonl", "run-1")
    recorder = Recorder(audit)
    recorder.run_started(command="run")
    plan = Plan(Ledger(0), Batcher(10), Deduper())
    return Checkpointer(StateStore(tmp_path / "state"), plan, InputDigest(), recorder, "ids", None)


async def longest_stall(seconds: float) -> float:
    """The longest the loop went without running this task, over ``seconds``."""
    longest, last = 0.0, time.monotonic()
    end = last + seconds
    while (now := time.monotonic()) < end:
        longest, last = max(longest, now - last), now
        await asyncio.sleep(0.005)
    return longest


async def test_the_loop_runs_while_a_checkpoint_is_written(
    tmp_path: Path, slow_disk: list[tuple[str, int, str]]
) -> None:
    points = checkpointer(tmp_path)
    saving = asyncio.create_task(points.every(0.05))

    stall = await longest_stall(1.0)
    saving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await saving

    assert len(slow_disk) >= 3  # at least one checkpoint was written meanwhile
    assert stall < SLOW / 2
    assert all(thread != threading.main_thread().name for thread, _, _ in slow_disk)
    assert StateStore(tmp_path / "state").load().run_ids == ["run-1"]


async def test_the_audit_log_is_durable_before_the_state_that_names_it(
    tmp_path: Path, slow_disk: list[tuple[str, int, str]]
) -> None:
    points = checkpointer(tmp_path)
    saving = asyncio.create_task(points.every(0.01))
    while not any(is_state_tmp(target) for _, _, target in slow_disk):
        await asyncio.sleep(0.01)
    saving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await saving

    targets = [Path(target).name for _, _, target in slow_disk]
    assert targets[0] == "audit.jsonl"
    first_state = next(i for i, name in enumerate(targets) if is_state_tmp(name))
    assert targets.index("audit.jsonl") < first_state


async def test_a_stop_waits_for_the_write_under_way(
    tmp_path: Path, slow_disk: list[tuple[str, int, str]]
) -> None:
    points = checkpointer(tmp_path)
    saving = asyncio.create_task(points.every(0.01))
    while not slow_disk:  # the audit fsync of the first checkpoint has begun
        await asyncio.sleep(0.001)
    began = time.monotonic()
    saving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await saving

    # The whole checkpoint was written (audit, bitmaps, state, directory) before the task
    # ended, so the final save that follows cannot race it.
    assert time.monotonic() - began >= 3 * SLOW
    assert any(is_state_tmp(target) for _, _, target in slow_disk)
    assert not list((tmp_path / "state").glob(".*.tmp"))
    points.save()  # the next save (a run's final one) finds the files as they should be
    assert StateStore(tmp_path / "state").load().run_ids == ["run-1"]
