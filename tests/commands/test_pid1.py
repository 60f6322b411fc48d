"""The worker as PID 1 of its own PID namespace, as in a container: SIGTERM still stops it
gracefully (PID 1 gets no default signal actions, so only explicit handlers work)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import read_audit, write_csv

from worker.sandbox import FaultConfig
from worker.sandbox.runner import SandboxHandle


def _pid_namespaces_work() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--fork", "--pid", "--mount-proc", "true"], capture_output=True, check=False
    )
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(
    not _pid_namespaces_work(), reason="needs unshare with PID namespaces (root)"
)

BOOT = (
    "import os, sys; assert os.getpid() == 1; "
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)


@pytest.mark.parametrize("faults", [FaultConfig(latency_ms=100)])
async def test_sigterm_to_pid_1_stops_gracefully_with_exit_75(
    sandbox: SandboxHandle, token: str, tmp_path: Path
) -> None:
    path = write_csv(tmp_path / "ids.csv", [str(i) for i in range(1, 5001)])
    audit = tmp_path / "audit.jsonl"
    proc = await asyncio.create_subprocess_exec(
        "unshare",
        "--fork",
        "--pid",
        "--mount-proc",
        "--kill-child",
        sys.executable,
        "-c",
        BOOT,
        "-m",
        "worker",
        "run",
        "--input",
        str(path),
        "--campaign-id",
        "42",
        "--base-url",
        sandbox.url,
        "--rate",
        "50/s",
        "--batch-size",
        "10",
        "--audit-log",
        str(audit),
        "--progress",
        "off",
        cwd=tmp_path,
        env={"UNLEASHX_TOKEN": token, "PATH": "/usr/bin:/bin"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while not (audit.exists() and b'"event":"deleted"' in audit.read_bytes()):
        assert loop.time() < deadline, "no deletion within 15 s"
        await asyncio.sleep(0.02)
    inner = subprocess.run(
        ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert len(inner) == 1
    subprocess.run(["kill", "-TERM", inner[0]], check=True)

    _, err = await asyncio.wait_for(proc.communicate(), timeout=30)

    assert proc.returncode == 75, err.decode()
    assert b"Traceback" not in err
    finished = read_audit(audit)[-1]
    assert finished["event"] == "run_finished"
    assert finished["interrupted"] is True
    assert 0 < finished["deleted"] < 5000
