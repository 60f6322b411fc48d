"""The one runtime: what a run does when something inside it breaks, and the observers the
recorder tells. Against the sandbox on loopback."""

from __future__ import annotations

import asyncio
import io
import os
import signal
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import read_audit, write_csv

from worker.commands.delete_all import delete_all
from worker.commands.run import run_purge
from worker.records.recorder import Recorder
from worker.records.report import ReportFile
from worker.runtime.runtime import Runtime
from worker.sandbox.runner import SandboxHandle
from worker.settings import Settings
from worker.settings.rate import RateSpec
from worker.state.resume import Checkpointer

MakeSettings = Callable[..., Settings]


class Boom(Exception):
    """An error nobody planned for."""


def fail_deletion(monkeypatch: pytest.MonkeyPatch, number: int) -> None:
    """Recording the ``number``-th deletion raises Boom (inside a sender task)."""
    deleted = Recorder.deleted
    calls = 0

    def failing(self: Recorder, *args: Any, **kwargs: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == number:
            raise Boom("recording failed")
        deleted(self, *args, **kwargs)

    monkeypatch.setattr(Recorder, "deleted", failing)


async def test_an_exception_in_a_sender_ends_the_run_with_it_and_a_run_finished_naming_it(
    make_settings: MakeSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_csv(tmp_path / "ids.csv", [str(i) for i in range(1, 201)])
    settings = make_settings(campaign_id=42, rate=RateSpec(50, 1.0), concurrency=4)
    fail_deletion(monkeypatch, 3)

    with pytest.raises(Boom, match="recording failed"):
        await asyncio.wait_for(run_purge(settings, str(path)), timeout=10)

    records = read_audit(settings.audit_log)
    assert records[-1]["event"] == "run_finished"
    assert (records[-1]["exit_code"], records[-1]["error"]) == (70, "recording failed")
    # The run stopped at the error: far fewer batches than the 20 of the input were sent.
    assert sum(r["event"] == "sending" for r in records) <= 3 + settings.concurrency


async def test_an_exception_in_a_background_helper_ends_the_run_instead_of_vanishing(
    make_settings: MakeSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_csv(tmp_path / "ids.csv", [str(i) for i in range(1, 201)])
    settings = make_settings(campaign_id=42, rate=RateSpec(20, 1.0))

    async def failing_saver(self: Checkpointer, interval: float) -> None:
        await asyncio.sleep(0.2)
        raise Boom("checkpoint failed")

    monkeypatch.setattr(Checkpointer, "every", failing_saver)
    loop = asyncio.get_running_loop()
    began = loop.time()

    with pytest.raises(Boom, match="checkpoint failed"):
        await asyncio.wait_for(run_purge(settings, str(path)), timeout=10)

    # 20 batches at 20/s take a second; the failure at 0.2 s ended the run.
    assert loop.time() - began < 0.9
    assert read_audit(settings.audit_log)[-1]["error"] == "checkpoint failed"


async def test_the_report_is_written_by_its_observer_from_run_finished(
    make_settings: MakeSettings, tmp_path: Path
) -> None:
    path = write_csv(tmp_path / "ids.csv", ["audience_id", "1", "2", "x", "2"])
    settings = make_settings(campaign_id=42)

    result = await run_purge(settings, str(path))

    assert settings.report is not None
    report = orjson.loads(settings.report.read_bytes())
    finished = read_audit(settings.audit_log)[-1]
    assert report == {
        "run_id": result.run_id,
        **{k: v for k, v in finished.items() if k not in ("ts", "event", "run_id")},
        "audit_log": str(settings.audit_log),
        "failed_out": str(settings.failed_out),
        "results": None,
        "state_dir": str(settings.state_dir),
    }
    assert report == {**result.summary(), "duration_s": report["duration_s"]}
    assert (report["deleted"], report["rejected"], report["duplicates"]) == (2, 1, 1)


async def test_an_observer_sees_every_audited_event_after_its_record_is_written(
    make_settings: MakeSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_csv(tmp_path / "ids.csv", ["1", "2", "3", "abc", "3"])
    settings = make_settings(campaign_id=42, batch_size=2)
    seen: list[tuple[str, int]] = []

    class Watcher:
        def on_event(self, event: str, fields: Mapping[str, Any]) -> None:
            # The record is on disk before the observer hears of it.
            seen.append((event, len(settings.audit_log.read_bytes().splitlines())))

    original = Recorder.__init__

    def with_watcher(self: Recorder, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.subscribe(Watcher())

    monkeypatch.setattr(Recorder, "__init__", with_watcher)

    await run_purge(settings, str(path))

    unaudited = ("accepted", "request", "answered", "input_read")
    audited = [(e, n) for e, n in seen if e not in unaudited]
    records = read_audit(settings.audit_log)
    assert [e for e, _ in audited] == [r["event"] for r in records]
    assert [n for _, n in audited] == list(range(1, len(records) + 1))


async def test_the_sandbox_saw_no_request_that_the_audit_does_not_record(
    make_settings: MakeSettings,
    tmp_path: Path,
    sandbox: SandboxHandle,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = write_csv(tmp_path / "ids.csv", [str(i) for i in range(1, 101)])
    settings = make_settings(campaign_id=42, rate=RateSpec(100, 1.0))
    fail_deletion(monkeypatch, 2)

    with pytest.raises(Boom):
        await run_purge(settings, str(path))

    sent = {
        i
        for r in read_audit(settings.audit_log)
        if r["event"] == "sending"
        for i in r["audience_ids"]
    }
    received = set(sandbox.state.receipts[42].received_ids())
    assert received
    assert received <= sent


async def test_a_shared_config_never_lets_delete_all_touch_the_outputs_of_run(
    make_settings: MakeSettings, tmp_path: Path
) -> None:
    # make_settings sets report and failed_out, as a config file shared with run would.
    settings = make_settings()
    assert settings.report is not None
    assert settings.failed_out is not None
    settings.report.write_text("run's report\n")
    settings.failed_out.write_text("campaign_id,audience_id\n42,7\n")

    code = await delete_all(settings, 42, out=io.StringIO(), err=io.StringIO())

    assert code == 0
    assert settings.report.read_text() == "run's report\n"
    assert settings.failed_out.read_text() == "campaign_id,audience_id\n42,7\n"


async def test_the_report_is_written_after_the_last_checkpoint(
    make_settings: MakeSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_csv(tmp_path / "ids.csv", ["1", "2", "3"])
    settings = make_settings(campaign_id=42)
    order: list[str] = []
    final = Checkpointer.final
    write = ReportFile.write

    def final_noted(self: Checkpointer, *, stopped: bool) -> None:
        final(self, stopped=stopped)
        order.append("checkpoint")

    def write_noted(self: ReportFile) -> None:
        write(self)
        order.append("report")

    monkeypatch.setattr(Checkpointer, "final", final_noted)
    monkeypatch.setattr(ReportFile, "write", write_noted)

    await run_purge(settings, str(path))

    assert order == ["checkpoint", "report"]


async def test_a_signal_after_the_work_ended_does_not_mark_the_run_interrupted() -> None:
    runtime = Runtime(Settings(), "run", needs_token=False)

    async def helper_slow_to_stop() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await asyncio.sleep(0.3)  # a last checkpoint, say
            raise

    async def work() -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(0.1, os.kill, os.getpid(), signal.SIGTERM)

    runtime.background(helper_slow_to_stop())

    assert await runtime.supervise(work(), lambda: None) is False


async def test_a_signal_during_the_work_stops_it_and_marks_the_run_interrupted() -> None:
    runtime = Runtime(Settings(grace=5.0), "run", needs_token=False)
    stopped = asyncio.Event()

    async def work() -> None:
        asyncio.get_running_loop().call_later(0.05, os.kill, os.getpid(), signal.SIGTERM)
        await stopped.wait()

    assert await asyncio.wait_for(runtime.supervise(work(), stopped.set), timeout=2) is True


async def test_a_run_whose_work_raised_leaves_no_cancel_request_on_the_callers_task() -> None:
    runtime = Runtime(Settings(), "run", needs_token=False)

    async def work() -> None:
        await asyncio.sleep(0.01)
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await runtime.supervise(work(), lambda: None)

    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0
    await asyncio.sleep(0)  # an embedder's next await is not cancelled
