"""Faults nobody planned for end the run safely: one clear line, a documented exit code
(74: a file could not be written; 70: a bug), in-flight requests given their grace, and no
request ever sent whose ``sending`` record is not in the audit log."""

from __future__ import annotations

import asyncio
import errno
import resource
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog
from conftest import read_audit, write_csv
from processes import child_env, finish

import worker.commands.run as run_module
from worker.cli import main
from worker.commands.run import run_purge
from worker.errors import OutputError
from worker.records.audit_query import verify
from worker.records.recorder import Recorder
from worker.sandbox import FaultConfig
from worker.sandbox.runner import SandboxHandle
from worker.settings import Settings
from worker.settings.rate import RateSpec
from worker.state import checkpoint

MakeSettings = Callable[..., Settings]


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """The CLI configures structlog globally; put the previous configuration back."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def sent_ids(audit: Path) -> set[int]:
    """The ids of every complete ``sending`` record (a torn last line is not a record)."""
    ids: set[int] = set()
    for line in audit.read_bytes().splitlines():
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if record.get("event") == "sending":
            ids.update(record["audience_ids"])
    return ids


def deleted_ids(sandbox: SandboxHandle) -> set[int]:
    campaign = sandbox.state.campaigns[42]
    return {i for i in range(1, 5001) if not campaign.alive(i)}


def limit_file_size(limit: int) -> Callable[[], None]:
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.slow
async def test_an_audit_log_under_a_file_size_limit_ends_the_run_with_exit_74_and_one_line(
    sandbox: SandboxHandle, token: str, tmp_path: Path
) -> None:
    ids = write_csv(tmp_path / "ids.csv", [str(i) for i in range(1, 3001)])
    audit = tmp_path / "audit.jsonl"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        "run",
        "--input",
        str(ids),
        "--campaign-id",
        "42",
        "--base-url",
        sandbox.url,
        "--rate",
        "1000/second",
        "--batch-size",
        "10",
        "--audit-log",
        str(audit),
        "--state-dir",
        str(tmp_path / "state"),
        "--progress",
        "off",
        cwd=tmp_path,
        env=child_env(token),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=limit_file_size(40_000),
    )
    loop = asyncio.get_running_loop()
    began = loop.time()

    done = await finish(proc, timeout=30)

    assert done.code == 74, done.err
    assert loop.time() - began < 10
    assert "Traceback" not in done.err
    last = done.err.splitlines()[-1]
    assert last.startswith("audience-purge: error: cannot write ")
    assert "(EFBIG)" in last
    assert 0 < len(deleted_ids(sandbox)) < 3000
    assert deleted_ids(sandbox) <= sent_ids(audit)


async def test_a_failing_checkpoint_stops_the_run_gracefully_with_exit_74(
    sandbox: SandboxHandle,
    make_settings: MakeSettings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = write_csv(tmp_path / "ids.csv", [str(i) for i in range(1, 2001)])
    settings = make_settings(
        campaign_id=42, rate=RateSpec(200, 1.0), checkpoint_interval=0.1, grace=5.0
    )
    write = checkpoint.write_atomic
    calls = 0

    def full_disk(target: Path, data: bytes, **options: bool) -> None:
        nonlocal calls
        calls += 1
        if calls > 20:  # some checkpoints went through: the disk fills up mid-run
            raise OSError(errno.ENOSPC, "No space left on device", str(target))
        write(target, data, **options)

    monkeypatch.setattr(checkpoint, "write_atomic", full_disk)
    loop = asyncio.get_running_loop()
    began = loop.time()

    with pytest.raises(OutputError, match=r"cannot write the progress in .*\(ENOSPC\)"):
        await run_purge(settings, str(path))

    assert loop.time() - began < 5  # 200 batches at 200/s would take a second more at least
    records = read_audit(settings.audit_log)
    assert records[-1]["event"] == "run_finished"
    assert records[-1]["exit_code"] == 74
    assert verify([settings.audit_log])[1] is None  # the audit log itself is intact
    assert deleted_ids(sandbox) <= sent_ids(settings.audit_log)
    outcomes = {r["batch_id"] for r in records if r["event"] in ("deleted", "failed")}
    # Every request that started before the stop finished and was recorded.
    assert {r["batch_id"] for r in records if r["event"] == "sending"} == outcomes
    assert not [r for r in records if r["event"] == "unconfirmed"]


async def test_after_an_error_in_flight_requests_finish_and_are_recorded_within_the_grace(
    sandbox: SandboxHandle,
    make_settings: MakeSettings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sandbox.state.replace_faults(FaultConfig(latency_ms=300))
    path = write_csv(tmp_path / "ids.csv", [str(i) for i in range(1, 201)])
    settings = make_settings(campaign_id=42, rate=RateSpec(100, 1.0), concurrency=4, grace=5.0)
    deleted = Recorder.deleted
    calls = 0

    def fail_first(self: Recorder, *args: Any, **kwargs: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("injected")
        deleted(self, *args, **kwargs)

    monkeypatch.setattr(Recorder, "deleted", fail_first)

    with pytest.raises(RuntimeError, match="injected"):
        await run_purge(settings, str(path))

    records = read_audit(settings.audit_log)
    sending = [r["batch_id"] for r in records if r["event"] == "sending"]
    recorded = [r["batch_id"] for r in records if r["event"] == "deleted"]
    assert len(sending) == 4  # the four in flight when the error came; nothing after it
    assert len(recorded) == 3  # the three others finished and were recorded
    assert records[-1]["exit_code"] == 70


@pytest.mark.usefixtures("restore_logging")
def test_a_bug_ends_the_cli_with_exit_70_and_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The run itself records exit_code 70 (tests/runtime/test_runtime.py); here, the line.
    def broken(settings: Settings, input_path: str, selecting: object = None) -> int:
        raise KeyError("a bug")

    monkeypatch.setattr(run_module, "run_command", broken)
    ids = write_csv(tmp_path / "ids.csv", ["1"])

    code = main(["run", "--input", str(ids), "--campaign-id", "42", "--dry-run"])

    err = capsys.readouterr().err
    assert code == 70
    assert err.splitlines() == [
        "audience-purge: error: internal error: KeyError: 'a bug' (a bug: the run stopped "
        "safely; please report it with the audit log)"
    ]


async def test_an_audit_log_deleted_during_the_run_ends_it_with_exit_74(
    sandbox: SandboxHandle, make_settings: MakeSettings, tmp_path: Path
) -> None:
    path = write_csv(tmp_path / "ids.csv", [str(i) for i in range(1, 1001)])
    settings = make_settings(campaign_id=42, rate=RateSpec(40, 1.0), checkpoint_interval=0.2)
    assert settings.audit_log is not None
    loop = asyncio.get_running_loop()
    loop.call_later(0.5, settings.audit_log.unlink)
    began = loop.time()

    with pytest.raises(OutputError, match="deleted or replaced during the run"):
        await run_purge(settings, str(path))

    assert loop.time() - began < 2.5  # 100 batches at 40/s: it stopped long before the end
    assert not settings.audit_log.exists()
