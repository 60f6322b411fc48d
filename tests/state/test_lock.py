"""One run per state directory: a second one is refused at once, naming the first."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import write_csv

from worker.commands.run import run_purge
from worker.errors import StateError
from worker.sandbox.runner import SandboxHandle
from worker.settings import Settings
from worker.state.checkpoint import StateStore

MakeSettings = Callable[..., Settings]


async def test_a_second_run_on_a_held_state_directory_exits_2_naming_the_holder(
    sandbox: SandboxHandle, make_settings: MakeSettings, tmp_path: Path
) -> None:
    ids = write_csv(tmp_path / "ids.csv", ["1", "2", "3"])
    settings = make_settings(campaign_id=42)
    assert settings.state_dir is not None
    holder = StateStore(settings.state_dir)
    holder.lock()
    try:
        with pytest.raises(StateError) as refused:
            await run_purge(settings, str(ids))
    finally:
        holder.unlock()

    assert f"in use by PID {os.getpid()} on {socket.gethostname()}" in str(refused.value)
    assert sandbox.state.requests_total == 0

    result = await run_purge(settings, str(ids))  # released: the run goes ahead

    assert result.exit_code == 0


async def test_the_lock_of_a_killed_process_is_released_by_the_kernel(tmp_path: Path) -> None:
    state = tmp_path / "state"
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import sys, time; from pathlib import Path; from worker.state.checkpoint import "
        "StateStore; s = StateStore(Path(sys.argv[1])); s.lock(); print('held', flush=True); "
        "time.sleep(60)",
        str(state),
        stdout=asyncio.subprocess.PIPE,
    )
    assert holder.stdout is not None
    assert await asyncio.wait_for(holder.stdout.readline(), timeout=10) == b"held\n"
    with pytest.raises(StateError, match=f"in use by PID {holder.pid}"):
        StateStore(state).lock()

    holder.send_signal(signal.SIGKILL)
    await holder.wait()

    store = StateStore(state)
    store.lock()
    store.unlock()
