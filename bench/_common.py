"""Shared pieces of the benchmark scripts: inputs, a sandbox process, a measured run."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TOKEN = "bench-token"  # the sandbox's own; never a real credential
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_ids(path: Path, count: int, *, campaign: int = 42) -> Path:
    """A header and ``count`` ids. Written by a child process, so that this process stays
    small: a forked child's peak RSS (ru_maxrss) includes what it inherited before exec."""
    if path.exists() and path.stat().st_size > 0:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([PYTHON, "-c", _WRITER, str(path), str(count), str(campaign)], check=True)
    return path


_WRITER = """
import sys
path, count, campaign = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with open(path, "w") as handle:
    handle.write("campaign_id,audience_id\\n")
    for start in range(1, count + 1, 1_000_000):
        stop = min(start + 1_000_000, count + 1)
        handle.write("".join(f"{campaign},{i}\\n" for i in range(start, stop)))
"""


class Sandbox:
    """``audience-purge sandbox`` in its own process, so its memory is not the worker's."""

    def __init__(self, ids: int, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/api/v1/global"
        self.proc = subprocess.Popen(
            [
                PYTHON,
                "-m",
                "worker",
                "sandbox",
                "--port",
                str(self.port),
                "--token",
                TOKEN,
                "--campaign",
                f"42:draft:1-{ids}",
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        self.proc.stdout.readline()  # "sandbox listening on ..."

    def state(self) -> dict[str, object]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/_sandbox/state") as reply:
            return dict(json.loads(reply.read()))

    def deleted(self) -> int:
        campaigns = self.state()["campaigns"]
        assert isinstance(campaigns, dict)
        return int(campaigns["42"]["deleted_count"])

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@dataclass(frozen=True)
class Measured:
    exit_code: int
    seconds: float
    peak_rss_mb: float


def run_worker(args: list[str], cwd: Path) -> Measured:
    """Run ``audience-purge`` and measure its peak RSS: the larger of ru_maxrss (wait4) and
    the last VmHWM seen in /proc (reset at exec, so nothing of this process is counted)."""
    env = {**os.environ, "UNLEASHX_TOKEN": TOKEN}
    started = time.perf_counter()
    proc = subprocess.Popen(
        [PYTHON, "-m", "worker", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    hwm = 0.0
    while proc.poll() is None:
        hwm = max(hwm, _vm_hwm_mb(proc.pid))
        time.sleep(0.02)
    seconds = time.perf_counter() - started
    return Measured(proc.returncode, seconds, hwm)


def _vm_hwm_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0.0


def fast_purge(path: Path, base_url: str) -> list[str]:
    """``run`` as the benchmarks use it: no rate limit to speak of, big batches, quiet."""
    return [
        "run",
        "--input",
        str(path),
        "--base-url",
        base_url,
        "--rate",
        "100000/s",
        "--batch-size",
        "1000",
        "--concurrency",
        "8",
        "--progress",
        "off",
        "--log-level",
        "warning",
    ]


async def serve_until_terminated(app: Any, port: int) -> None:
    """Serve an aiohttp ``app`` on 127.0.0.1:``port``, print "listening" (what the benchmark
    that started this process waits for), and serve until the process is terminated."""
    from aiohttp import web

    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print("listening", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
