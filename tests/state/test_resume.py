"""Crash-safe resume end to end: ``python -m worker run`` killed, stopped, or given bad state.

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
from worker.sandbox import FaultConfig
from worker.sandbox.runner import SandboxHandle
from worker.state.checkpoint import PARTS, STATE_FILE

pytestmark = pytest.mark.slow

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
RESENT_BOUND = 3 * CONCURRENCY * BATCH_SIZE
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


@pytest.fixture
def purge(sandbox: SandboxHandle, token: str, tmp_path: Path) -> Purge:
    (tmp_path / "ids.csv").write_bytes(csv_bytes(IDS))
    (tmp_path / "purge.toml").write_text(CONFIG, encoding="utf-8")
    return Purge(sandbox, token, tmp_path, "ids.csv")


@pytest.fixture
def stdin_purge(purge: Purge) -> Purge:
    return Purge(purge.sandbox, purge.token, purge.cwd, "-")


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


@pytest.fixture
def audit_verify(purge: Purge, monkeypatch: pytest.MonkeyPatch) -> Verify:
    """``audit verify`` as the operator runs it: from the purge's directory."""
    return lambda paths: audit_verify_in(purge.cwd, paths, monkeypatch)


def assert_every_input_id_deleted_and_nothing_else_sent(sandbox: SandboxHandle) -> None:
    campaign = sandbox.state.campaigns[CAMPAIGN]
    assert [i for i in IDS if campaign.alive(i)] == []
    assert set(sandbox.state.receipts) == {CAMPAIGN}
    assert set(sandbox.state.receipts[CAMPAIGN].received_ids()) <= set(IDS)


# -- kill -9 ------------------------------------------------------------------------------


KILL_POINTS = [
    # The sandbox holds every request for 2 s: the kill lands before any answer.
    pytest.param(FaultConfig(latency_ms=2000), run_started, False, id="before-the-first-answer"),
    pytest.param(FaultConfig(latency_ms=200), request_in_flight, False, id="requests-in-flight"),
    pytest.param(FaultConfig(), outcome_written, True, id="right-after-the-first-outcome"),
    pytest.param(FaultConfig(), many_batches_done, True, id="after-30-of-100-batches"),
]


@pytest.mark.parametrize(("faults", "reached", "deletions_expected"), KILL_POINTS)
async def test_rerun_after_kill_9_deletes_every_input_id_with_a_bounded_number_resent(
    purge: Purge,
    sandbox: SandboxHandle,
    audit_verify: Verify,
    reached: Callable[[Records], bool],
    deletions_expected: bool,
) -> None:
    killed = await purge.stopped_when(reached, how=signal.SIGKILL)
    assert killed.code == -signal.SIGKILL
    (first,) = purge.audit_files()
    assert not events(complete_records(first), "run_finished")
    assert bool(events(complete_records(first), "deleted")) is deletions_expected

    await purge.set_faults()
    again = await purge.run()

    assert again.code == 0, again.err
    assert "Traceback" not in again.err
    assert_every_input_id_deleted_and_nothing_else_sent(sandbox)
    first_again, second = purge.audit_files()
    assert first_again == first
    audited = ids_of(complete_records(first) + complete_records(second), "deleted")
    assert audited == set(IDS)
    resent = sandbox.state.receipts[CAMPAIGN].resent
    print(f"\nresent after kill -9 ({reached.__name__}): {resent} ids")
    assert resent <= RESENT_BOUND, f"{resent} ids were sent twice"
    code, report = audit_verify([first, second])
    assert code == 0, report


@pytest.mark.parametrize("faults", [FaultConfig(error_ratio=1.0)], ids=["every-request-5xx"])
async def test_rerun_after_kill_9_while_retrying_failed_ids_audits_no_false_duplicates(
    purge: Purge, sandbox: SandboxHandle, audit_verify: Verify
) -> None:
    failed = await purge.run("--max-attempts", "1")
    assert failed.code == 1, failed.err
    await purge.set_faults()
    killed = await purge.stopped_when(ten_batches_done, "--max-attempts", "1", how=signal.SIGKILL)
    assert killed.code == -signal.SIGKILL

    again = await purge.run("--max-attempts", "1")

    assert again.code == 0, again.err
    assert_every_input_id_deleted_and_nothing_else_sent(sandbox)
    third = complete_records(purge.audit_files()[-1])
    assert events(third, "duplicate") == []
    assert third[-1]["duplicates"] == 0
    code, report = audit_verify(purge.audit_files())
    assert code == 0, report


async def test_audit_verify_accepts_a_crashed_and_resumed_runs_files_from_another_directory(
    purge: Purge, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    killed = await purge.stopped_when(many_batches_done, how=signal.SIGKILL)
    assert killed.code == -signal.SIGKILL
    again = await purge.run()
    assert again.code == 0, again.err
    files = purge.audit_files()
    assert len(files) == 2
    # An auditor checks the files where they were collected, not where the purge ran.
    auditor = tmp_path_factory.mktemp("auditor")

    code, report = audit_verify_in(auditor, files, monkeypatch)

    assert code == 0, report


# -- changed input ------------------------------------------------------------------------


async def state_of_a_completed_run(purge: Purge) -> None:
    done = await purge.run()
    assert done.code == 0, done.err


async def state_of_an_interrupted_run(purge: Purge) -> None:
    await purge.stopped_midway()


@pytest.mark.parametrize(
    "make_state",
    [state_of_a_completed_run, state_of_an_interrupted_run],
    ids=["after-a-completed-run", "after-an-interrupted-run"],
)
async def test_input_changed_since_the_state_was_written_exits_2_and_sends_nothing(
    purge: Purge, sandbox: SandboxHandle, make_state: Callable[[Purge], Any]
) -> None:
    await make_state(purge)
    requests = sandbox.state.requests_total
    # The export was regenerated: its first ten ids differ (and so do the later offsets).
    (purge.cwd / "ids.csv").write_bytes(csv_bytes([*range(1001, 1011), *IDS[10:]]))

    refused = await purge.run()

    assert refused.code == 2, refused.err
    assert "Traceback" not in refused.err
    assert "changed" in refused.err
    assert "--fresh" in refused.err
    assert sandbox.state.requests_total == requests


async def test_fresh_starts_a_changed_input_over_and_completes(
    purge: Purge, sandbox: SandboxHandle
) -> None:
    await purge.stopped_midway()
    changed = [*range(1001, 1011), *IDS[10:]]
    (purge.cwd / "ids.csv").write_bytes(csv_bytes(changed))

    again = await purge.run("--fresh")

    assert again.code == 0, again.err
    campaign = sandbox.state.campaigns[CAMPAIGN]
    assert [i for i in changed if campaign.alive(i)] == []
    second = complete_records(purge.audit_files()[-1])
    assert second[0]["resumed"] is None
    assert ids_of(second, "deleted") == set(changed)


# -- corrupt state --------------------------------------------------------------------------


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def overwrite_with_garbage(path: Path) -> None:
    path.write_bytes(b"\x00\xffnot json at all\n")


@pytest.mark.parametrize("damage", [truncate, overwrite_with_garbage], ids=["truncated", "garbage"])
async def test_unreadable_state_json_exits_2_naming_it_and_sends_nothing(
    purge: Purge, sandbox: SandboxHandle, damage: Callable[[Path], None]
) -> None:
    await purge.stopped_midway()
    state = purge.state_dir() / STATE_FILE
    damage(state)
    requests = sandbox.state.requests_total

    refused = await purge.run()

    assert refused.code == 2, refused.err
    assert "Traceback" not in refused.err
    assert str(state.relative_to(purge.cwd)) in refused.err
    assert "--fresh" in refused.err
    assert sandbox.state.requests_total == requests


@pytest.mark.parametrize("part", PARTS)
async def test_modified_bitmap_file_exits_2_naming_it_and_sends_nothing(
    purge: Purge, sandbox: SandboxHandle, part: str
) -> None:
    await purge.stopped_midway()
    (blob,) = purge.state_dir().glob(f"{part}.*.bin")
    blob.write_bytes(blob.read_bytes() + b"\x01")
    requests = sandbox.state.requests_total

    refused = await purge.run()

    assert refused.code == 2, refused.err
    assert "Traceback" not in refused.err
    assert str(blob.relative_to(purge.cwd)) in refused.err
    assert sandbox.state.requests_total == requests


async def test_fresh_recovers_from_a_corrupt_state_and_completes(
    purge: Purge, sandbox: SandboxHandle
) -> None:
    await purge.stopped_midway()
    overwrite_with_garbage(purge.state_dir() / STATE_FILE)

    again = await purge.run("--fresh")

    assert again.code == 0, again.err
    assert_every_input_id_deleted_and_nothing_else_sent(sandbox)
    state = orjson.loads((purge.state_dir() / STATE_FILE).read_bytes())
    assert state["complete"] is True


# -- failed ids -----------------------------------------------------------------------------


@pytest.mark.parametrize("faults", [FaultConfig(error_ratio=1.0)], ids=["every-request-5xx"])
async def test_ids_that_failed_are_retried_and_deleted_by_the_rerun(
    purge: Purge, sandbox: SandboxHandle
) -> None:
    failed = await purge.run("--max-attempts", "1")
    assert failed.code == 1, failed.err
    assert ids_of(purge.records(), "failed") == set(IDS)
    await purge.set_faults()

    again = await purge.run("--max-attempts", "1")

    assert again.code == 0, again.err
    assert_every_input_id_deleted_and_nothing_else_sent(sandbox)
    second = complete_records(purge.audit_files()[-1])
    assert second[0]["resumed"]["failed"] == len(IDS)
    assert ids_of(second, "deleted") == set(IDS)
    assert events(second, "failed") == []
    assert second[-1]["failed_left"] == 0


@pytest.mark.parametrize("faults", [FaultConfig(error_ratio=1.0)], ids=["every-request-5xx"])
async def test_no_retry_failed_sends_nothing_and_exits_1_naming_the_ids_left(
    purge: Purge, sandbox: SandboxHandle
) -> None:
    failed = await purge.run("--max-attempts", "1")
    assert failed.code == 1, failed.err
    await purge.set_faults()
    requests = sandbox.state.requests_total

    again = await purge.run("--max-attempts", "1", "--no-retry-failed")

    assert again.code == 1, again.err
    assert sandbox.state.requests_total == requests
    assert f"failed in earlier runs, not retried: {len(IDS)}" in again.out
    assert sandbox.state.campaigns[CAMPAIGN].deleted_count == 0


# -- completed run --------------------------------------------------------------------------


async def test_rerun_of_a_completed_purge_sends_nothing_and_exits_0(
    purge: Purge, sandbox: SandboxHandle, audit_verify: Verify
) -> None:
    done = await purge.run()
    assert done.code == 0, done.err
    requests = sandbox.state.requests_total

    again = await purge.run()

    assert again.code == 0, again.err
    assert sandbox.state.requests_total == requests
    first, second = purge.audit_files()
    records = complete_records(second)
    assert records[0]["resumed"]["complete"] is True
    assert (records[-1]["deleted"], records[-1]["requests"]) == (0, 0)
    code, report = audit_verify([first, second])
    assert code == 0, report


# -- SIGTERM --------------------------------------------------------------------------------


@pytest.mark.parametrize("faults", [FaultConfig(latency_ms=300)], ids=["latency-300ms"])
async def test_sigterm_lets_in_flight_batches_finish_within_grace_and_exits_75(
    purge: Purge, sandbox: SandboxHandle
) -> None:
    grace = 5.0
    proc = await purge.start("--grace", str(grace))
    await purge.wait_for(request_in_flight)
    loop = asyncio.get_running_loop()
    signalled = loop.time()
    proc.send_signal(signal.SIGTERM)
    done = await finish(proc)
    elapsed = loop.time() - signalled

    assert done.code == 75, done.err
    assert elapsed < grace + 2
    records = purge.records()
    assert batch_ids(records, "sending")
    assert batch_ids(records, "deleted") == batch_ids(records, "sending")
    assert events(records, "unconfirmed") == []
    assert (records[-1]["event"], records[-1]["interrupted"]) == ("run_finished", True)
    assert sandbox.state.campaigns[CAMPAIGN].deleted_count == len(ids_of(records, "deleted"))


@pytest.mark.parametrize("faults", [FaultConfig(latency_ms=5000)], ids=["latency-5s"])
async def test_second_sigterm_cuts_requests_off_as_unconfirmed_and_a_rerun_completes(
    purge: Purge, sandbox: SandboxHandle, audit_verify: Verify
) -> None:
    proc = await purge.start("--grace", "20")
    await purge.wait_for(request_in_flight)
    loop = asyncio.get_running_loop()
    signalled = loop.time()
    proc.send_signal(signal.SIGTERM)
    # Standard signals do not queue: a second SIGTERM sent before the first is delivered
    # would merge with it, so it goes out once the child has handled the first.
    await signal_handled(proc)
    proc.send_signal(signal.SIGTERM)
    done = await finish(proc)
    elapsed = loop.time() - signalled

    assert done.code == 75, done.err
    assert elapsed < 3
    records = purge.records()
    assert batch_ids(records, "sending")
    assert batch_ids(records, "unconfirmed") == batch_ids(records, "sending")
    assert events(records, "deleted") == []
    assert (records[-1]["event"], records[-1]["interrupted"]) == ("run_finished", True)

    await purge.set_faults()
    again = await purge.run()

    assert again.code == 0, again.err
    assert_every_input_id_deleted_and_nothing_else_sent(sandbox)
    code, report = audit_verify(purge.audit_files())
    assert code == 0, report


# -- stdin ----------------------------------------------------------------------------------


async def test_stdin_input_fed_the_same_bytes_again_resumes_and_completes(
    stdin_purge: Purge, sandbox: SandboxHandle, audit_verify: Verify
) -> None:
    data = csv_bytes(IDS)
    await stdin_purge.stopped_midway(stdin=data)

    again = await stdin_purge.run(stdin=data)

    assert again.code == 0, again.err
    assert_every_input_id_deleted_and_nothing_else_sent(sandbox)
    first, second = stdin_purge.audit_files()
    assert complete_records(second)[0]["resumed"]["runs"] == [complete_records(first)[0]["run_id"]]
    assert ids_of(complete_records(first) + complete_records(second), "deleted") == set(IDS)
    code, report = audit_verify([first, second])
    assert code == 0, report
    resent = sandbox.state.receipts[CAMPAIGN].resent
    print(f"\nresent after SIGTERM on stdin: {resent} ids")
    assert resent == 0


async def test_stdin_input_fed_different_bytes_exits_2_and_sends_nothing(
    stdin_purge: Purge, sandbox: SandboxHandle
) -> None:
    await stdin_purge.stopped_midway(stdin=csv_bytes(IDS))
    requests = sandbox.state.requests_total

    refused = await stdin_purge.run(stdin=csv_bytes([*range(1001, 1011), *IDS[10:]]))

    assert refused.code == 2, refused.err
    assert "Traceback" not in refused.err
    assert "changed" in refused.err
    assert "--fresh" in refused.err
    assert sandbox.state.requests_total == requests


async def test_stdin_resume_checks_the_input_before_retrying_earlier_failures(
    stdin_purge: Purge, sandbox: SandboxHandle
) -> None:
    data = csv_bytes(IDS)
    await stdin_purge.set_faults(error_ratio=1.0)
    failed = await stdin_purge.run("--max-attempts", "1", stdin=data)
    assert failed.code == 1, failed.err
    await stdin_purge.set_faults()
    requests = sandbox.state.requests_total

    refused = await stdin_purge.run(stdin=csv_bytes([*range(1001, 1011)]))

    assert refused.code == 2, refused.err
    assert "changed" in refused.err
    assert sandbox.state.requests_total == requests
