"""Helpers of the resume tests: one purge command, run again and again from one directory.

Every test runs the real CLI in a subprocess against the in-process sandbox (started with
``asyncio.create_subprocess_exec`` so the test's loop keeps serving), from one directory, and
then runs the same command again from there: the default state directory (``purge-state/``)
and the default per-run audit files (``purge-audit/``) are the ones an operator would get.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from processes import Completed, eventually, finish, start

from worker.cli import main
from worker.sandbox.runner import SandboxHandle

Records = list[dict[str, Any]]

CAMPAIGN = 42
IDS = range(1, 501)
CONCURRENCY = 4
BATCH_SIZE = 5
SLOW_RATE, FAST_RATE = "40/second", "1000/second"
CHECKPOINT_INTERVAL = 0.1
# After a kill -9 an id reaches the sandbox twice only if its batch was in flight (at most
# CONCURRENCY batches) or settled after the last checkpoint (at most SLOW_RATE x
# CHECKPOINT_INTERVAL = 4 batches, i.e. about CONCURRENCY again). The third share is slack for
# a checkpoint that is late because the loop was busy: 3 x CONCURRENCY x BATCH_SIZE = 60 ids.
RESENT_BOUND = CONCURRENCY * BATCH_SIZE
CONFIG = (
    f"checkpoint_interval = {CHECKPOINT_INTERVAL}\nbackoff_initial = 0.01\nbackoff_max = 0.05\n"
)


def csv_bytes(ids: range | list[int]) -> bytes:
    return "".join(f"{i}\n" for i in ids).encode()


def complete_records(path: Path) -> Records:
    """The records of an audit file; a line the child is still writing is left out."""
    return [orjson.loads(line) for line in path.read_bytes().split(b"\n")[:-1]]


def events(records: Records, event: str) -> Records:
    return [r for r in records if r["event"] == event]


def ids_of(records: Records, event: str) -> set[int]:
    return {i for r in events(records, event) for i in r["audience_ids"]}


def batch_ids(records: Records, event: str) -> set[str]:
    return {r["batch_id"] for r in events(records, event)}


async def signal_handled(proc: asyncio.subprocess.Process) -> None:
    """Wait for the child's "signal received" log line (stderr is read up to it)."""
    assert proc.stderr is not None
    stderr = proc.stderr

    async def logged() -> None:
        while line := await stderr.readline():
            if b"signal received" in line:
                return
        raise AssertionError("the child exited without handling the signal")

    await asyncio.wait_for(logged(), timeout=5)


def run_started(records: Records) -> bool:
    return bool(events(records, "run_started"))


def request_in_flight(records: Records) -> bool:
    return bool(events(records, "sending"))


def outcome_written(records: Records) -> bool:
    return bool(events(records, "deleted"))


def ten_batches_done(records: Records) -> bool:
    return len(events(records, "deleted")) >= 10


def many_batches_done(records: Records) -> bool:
    return len(events(records, "deleted")) >= 30


@dataclass(frozen=True)
class Purge:
    """One purge command, always run from ``cwd``: what an operator types again after a crash."""

    sandbox: SandboxHandle
    token: str
    cwd: Path
    input: str

    def args(self, *extra: str, rate: str) -> list[str]:
        return [
            "run",
            "--input",
            self.input,
            "--campaign-id",
            str(CAMPAIGN),
            "--base-url",
            self.sandbox.url,
            "--config",
            "purge.toml",
            "--rate",
            rate,
            "--concurrency",
            str(CONCURRENCY),
            "--batch-size",
            str(BATCH_SIZE),
            "--progress",
            "off",
            *extra,
        ]

    async def start(
        self, *extra: str, rate: str = FAST_RATE, stdin: bytes | None = None
    ) -> asyncio.subprocess.Process:
        proc = await start(
            *self.args(*extra, rate=rate), cwd=self.cwd, token=self.token, stdin=stdin is not None
        )
        if stdin is not None:
            assert proc.stdin is not None
            proc.stdin.write(stdin)
            await proc.stdin.drain()
            proc.stdin.close()
        return proc

    async def run(
        self, *extra: str, rate: str = FAST_RATE, stdin: bytes | None = None
    ) -> Completed:
        return await finish(await self.start(*extra, rate=rate, stdin=stdin))

    async def stopped_when(
        self,
        reached: Callable[[Records], bool],
        *extra: str,
        how: signal.Signals = signal.SIGTERM,
        stdin: bytes | None = None,
    ) -> Completed:
        """A slow run that gets signal ``how`` as soon as its audit records satisfy ``reached``."""
        proc = await self.start(*extra, rate=SLOW_RATE, stdin=stdin)
        try:
            await self.wait_for(reached)
        finally:
            proc.send_signal(how)
        return await finish(proc)

    async def wait_for(self, point: Callable[[Records], bool]) -> None:
        """Wait (polling every 10 ms, at most 10 s) until the audit records satisfy ``point``."""
        await eventually(lambda: point(self.records()), poll=0.01, what=point.__name__)

    async def stopped_midway(self, *extra: str, stdin: bytes | None = None) -> None:
        """A slow run stopped by SIGTERM after ten batches were deleted."""
        done = await self.stopped_when(ten_batches_done, *extra, stdin=stdin)
        assert done.code == 75, done.err

    def audit_files(self) -> list[Path]:
        """The per-run audit files, oldest run first."""
        files = [p for p in (self.cwd / "purge-audit").glob("*.jsonl") if p.stat().st_size]
        return sorted(files, key=lambda p: complete_records(p)[0]["ts"])

    def records(self) -> Records:
        """Every complete record of every run so far (oldest run first)."""
        directory = self.cwd / "purge-audit"
        if not directory.is_dir():
            return []
        return [r for path in self.audit_files() for r in complete_records(path)]

    def state_dir(self) -> Path:
        (directory,) = (self.cwd / "purge-state").iterdir()
        return directory

    async def set_faults(self, **fields: Any) -> None:
        """Replace the sandbox's faults through its control plane (unset fields: no fault)."""
        url = f"http://127.0.0.1:{self.sandbox.port}/_sandbox/faults"
        async with aiohttp.ClientSession() as session, session.post(url, json=fields) as resp:
            assert resp.status == 200, await resp.text()


Verify = Callable[[list[Path]], tuple[int, str]]


def audit_verify_in(
    directory: Path, paths: list[Path], monkeypatch: pytest.MonkeyPatch
) -> tuple[int, str]:
    """``audience-purge audit verify PATHS`` run from ``directory``: exit code and output."""
    out = io.StringIO()
    with monkeypatch.context() as patch, contextlib.redirect_stdout(out):
        patch.chdir(directory)
        code = main(["audit", "verify", *map(str, paths)])
    return code, out.getvalue()


@pytest.fixture(name="purge")
def purge_fixture(sandbox: SandboxHandle, token: str, tmp_path: Path) -> Purge:
    (tmp_path / "ids.csv").write_bytes(csv_bytes(IDS))
    (tmp_path / "purge.toml").write_text(CONFIG, encoding="utf-8")
    return Purge(sandbox, token, tmp_path, "ids.csv")


@pytest.fixture(name="stdin_purge")
def stdin_purge_fixture(purge: Purge) -> Purge:
    return Purge(purge.sandbox, purge.token, purge.cwd, "-")


@pytest.fixture(name="audit_verify")
def audit_verify_fixture(purge: Purge, monkeypatch: pytest.MonkeyPatch) -> Verify:
    """``audit verify`` as the operator runs it: from the purge's directory."""
    return lambda paths: audit_verify_in(purge.cwd, paths, monkeypatch)


def assert_every_input_id_deleted_and_nothing_else_sent(sandbox: SandboxHandle) -> None:
    campaign = sandbox.state.campaigns[CAMPAIGN]
    assert [i for i in IDS if campaign.alive(i)] == []
    assert set(sandbox.state.receipts) == {CAMPAIGN}
    assert set(sandbox.state.receipts[CAMPAIGN].received_ids()) <= set(IDS)
