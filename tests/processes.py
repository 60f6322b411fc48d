"""Worker processes started the way a user starts them: ``python -m worker`` in a subprocess.

The end-to-end tests (tests/commands, tests/state, tests/queue, tests/sending) all run the real
CLI in a child process while the sandbox (and redis) keep serving in the test's event loop, so
every child is started with ``asyncio.create_subprocess_exec``, from an environment without the
operator's own settings, and reaped within a bound. One copy of that lives here so the tests
cannot drift apart in how they start, feed, wait for and clean up a worker.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

# Runs as PID 1 of a fresh PID namespace, then becomes ``python -m worker ...`` (same PID).
PID1_BOOT = (
    "import os, sys; assert os.getpid() == 1; "
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)
UNSHARE_PID = ("unshare", "--fork", "--pid", "--mount-proc")


@dataclass(frozen=True)
class Completed:
    code: int
    out: str
    err: str


def child_env(token: str | None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) without any setting of the worker's own
    (UNLEASHX_*, AUDIENCE_*, JOB_COMPLETION_INDEX), plus ``token`` as UNLEASHX_TOKEN if given."""
    source = os.environ if base is None else base
    env = {k: v for k, v in source.items() if not k.startswith(("UNLEASHX_", "AUDIENCE_"))}
    env.pop("JOB_COMPLETION_INDEX", None)
    # Several consumers run at once here: their metrics endpoints (on by default in consume,
    # on one fixed port) are off unless a test asks for them with --metrics-port.
    env["AUDIENCE_PURGE_METRICS_PORT"] = "0"
    if token is not None:
        env["UNLEASHX_TOKEN"] = token
    return env


def pid_namespaces_work() -> bool:
    """Whether ``start(..., pid1=True)`` can work here (needs unshare and, usually, root)."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run([*UNSHARE_PID, "true"], capture_output=True, check=False)
    return probe.returncode == 0


async def start(
    *args: str,
    cwd: Path,
    token: str | None,
    stdin: bool = False,
    env: Mapping[str, str] | None = None,
    pid1: bool = False,
) -> asyncio.subprocess.Process:
    """``python -m worker ARGS`` from ``cwd``; stdout and stderr are piped, stdin is piped only
    if ``stdin`` (else /dev/null). ``env`` replaces this process's environment as the base of
    ``child_env``. With ``pid1`` the worker is PID 1 of its own PID namespace, as in a
    container (``proc`` is then the ``unshare`` process; the worker is its only child)."""
    command = (
        (*UNSHARE_PID, "--kill-child", sys.executable, "-c", PID1_BOOT)
        if pid1
        else (sys.executable,)
    )
    return await asyncio.create_subprocess_exec(
        *command,
        "-m",
        "worker",
        *args,
        cwd=cwd,
        env=child_env(token, env),
        stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finish(
    proc: asyncio.subprocess.Process, data: bytes | None = None, timeout: float = 30.0
) -> Completed:
    """Feed ``data`` to stdin, wait for the exit and collect the output; a child still running
    after ``timeout`` seconds is killed (and the TimeoutError raised)."""
    try:
        out, err = await asyncio.wait_for(proc.communicate(data), timeout=timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Completed(proc.returncode, out.decode(), err.decode())


def closed_port() -> int:
    """A loopback port nothing listens on (bound once, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]],
    timeout: float = 10.0,
    what: str = "",
    poll: float = 0.02,
) -> None:
    """Poll ``condition`` (sync or async) every ``poll`` seconds until it holds; fail after
    ``timeout`` seconds. The event loop (sandbox, redis clients) keeps serving meanwhile."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        assert loop.time() < deadline, f"not met within {timeout} s: {what}"
        await asyncio.sleep(poll)
