"""Stop means stop: once a run stops (a fatal answer, a signal), no request starts, and no
wait (for the rate limit, for a retry's backoff) holds the run back. At a slow rate, where
senders queue up at the rate limit, which is where a late check shows."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import read_audit, write_csv
from processes import finish, start

from worker.commands.run import run_purge
from worker.sandbox import FaultConfig
from worker.sandbox.runner import SandboxHandle
from worker.sending.credentials import Secret
from worker.sending.dispatch import Dispatcher
from worker.settings import Settings
from worker.settings.rate import RateSpec

MakeSettings = Callable[..., Settings]
SLOW = {"rate": RateSpec(2, 1.0), "concurrency": 8, "batch_size": 10, "campaign_id": 42}


def ids_file(tmp_path: Path, count: int = 400) -> Path:
    return write_csv(tmp_path / "ids.csv", [str(i) for i in range(1, count + 1)])


def requests_at_stop(sandbox: SandboxHandle, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sandbox's request count at the moment each dispatcher stop()s."""
    seen: list[int] = []
    stop = Dispatcher.stop

    def noting(self: Dispatcher) -> None:
        seen.append(sandbox.state.requests_total)
        stop(self)

    monkeypatch.setattr(Dispatcher, "stop", noting)
    return seen


async def test_after_a_401_no_other_request_starts_and_no_sender_waits_out_the_rate_limit(
    sandbox: SandboxHandle, make_settings: MakeSettings, tmp_path: Path
) -> None:
    settings = make_settings(token=Secret("wrong-token"), **SLOW)
    loop = asyncio.get_running_loop()
    began = loop.time()

    result = await run_purge(settings, str(ids_file(tmp_path)))

    assert result.exit_code == 3
    assert sandbox.state.requests_total == 1
    # Seven senders were queued at 2/s behind the first (up to 3.5 s): they gave up at once.
    assert loop.time() - began < 1.0
    sending = [r for r in read_audit(settings.audit_log) if r["event"] == "sending"]
    assert len(sending) == 1  # a batch whose request never started has no write-ahead record


async def test_after_sigterm_no_request_starts(
    sandbox: SandboxHandle,
    make_settings: MakeSettings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = make_settings(grace=10.0, **SLOW)
    at_stop = requests_at_stop(sandbox, monkeypatch)
    loop = asyncio.get_running_loop()
    loop.call_later(1.3, os.kill, os.getpid(), signal.SIGTERM)
    began = loop.time()

    result = await run_purge(settings, str(ids_file(tmp_path)))

    assert result.exit_code == 75
    assert at_stop
    assert sandbox.state.requests_total == at_stop[0]
    assert loop.time() - began < 1.3 + 0.5  # nobody waited for a slot after the signal
    records = read_audit(settings.audit_log)
    assert sum(r["event"] == "sending" for r in records) == at_stop[0]


async def test_a_stop_cuts_a_retry_backoff_short_and_starts_no_retry(
    sandbox: SandboxHandle,
    make_settings: MakeSettings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sandbox.state.replace_faults(FaultConfig(error_ratio=1.0, retry_after_on_5xx=True))
    settings = make_settings(
        grace=10.0, max_attempts=5, rate=RateSpec(100, 1.0), concurrency=1, campaign_id=42
    )
    at_stop = requests_at_stop(sandbox, monkeypatch)
    loop = asyncio.get_running_loop()
    loop.call_later(0.3, os.kill, os.getpid(), signal.SIGTERM)  # during the 1 s Retry-After
    began = loop.time()

    result = await run_purge(settings, str(ids_file(tmp_path, 20)))

    assert result.exit_code == 75
    assert sandbox.state.requests_total == at_stop[0] == 1
    assert loop.time() - began < 0.8
    records = read_audit(settings.audit_log)
    unconfirmed = [r for r in records if r["event"] == "unconfirmed"]
    assert [r["reason"] for r in unconfirmed] == ["stopped before a retry could settle it"]


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.1, 0.2, 0.4])
async def test_sigterm_at_any_moment_of_the_start_exits_75_without_a_traceback(
    sandbox: SandboxHandle, token: str, tmp_path: Path, delay: float
) -> None:
    ids = ids_file(tmp_path, 2000)
    argv = ["run", "--input", str(ids), "--campaign-id", "42", "--base-url", sandbox.url]
    proc = await start(*argv, "--rate", "2/second", "--progress", "off", cwd=tmp_path, token=token)
    await asyncio.sleep(delay)  # importing, preparing, or sending by now
    proc.send_signal(signal.SIGTERM)

    done = await finish(proc, timeout=30)

    assert done.code == 75, done.err
    assert "Traceback" not in done.err
    assert done.err.strip()
