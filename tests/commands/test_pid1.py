"""The worker as PID 1 of its own PID namespace, as in a container: SIGTERM still stops it
gracefully (PID 1 gets no default signal actions, so only explicit handlers work)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import read_audit, write_csv
from processes import eventually, finish, pid_namespaces_work, start

from worker.sandbox import FaultConfig
from worker.sandbox.runner import SandboxHandle

pytestmark = pytest.mark.skipif(
    not pid_namespaces_work(), reason="needs unshare with PID namespaces (root)"
)


@pytest.mark.parametrize("faults", [FaultConfig(latency_ms=100)])
async def test_sigterm_to_pid_1_stops_gracefully_with_exit_75(
    sandbox: SandboxHandle, token: str, tmp_path: Path
) -> None:
    path = write_csv(tmp_path / "ids.csv", [str(i) for i in range(1, 5001)])
    audit = tmp_path / "audit.jsonl"
    proc = await start(
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
        token=token,
        env={"PATH": "/usr/bin:/bin"},
        pid1=True,
    )
    await eventually(
        lambda: audit.exists() and b'"event":"deleted"' in audit.read_bytes(),
        timeout=15,
        what="a deletion audited",
    )
    inner = subprocess.run(
        ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert len(inner) == 1
    subprocess.run(["kill", "-TERM", inner[0]], check=True)

    done = await finish(proc)

    assert done.code == 75, done.err
    assert "Traceback" not in done.err
    finished = read_audit(audit)[-1]
    assert finished["event"] == "run_finished"
    assert finished["interrupted"] is True
    assert 0 < finished["deleted"] < 5000
