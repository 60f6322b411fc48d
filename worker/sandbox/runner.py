"""Starting and stopping the sandbox: in-process for tests, in the foreground for the CLI."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp import web

from worker.sandbox.server import SandboxConfig, create_app
from worker.sandbox.state import STATE_KEY, SandboxState


@dataclass(frozen=True, slots=True)
class SandboxHandle:
    """A listening sandbox: ``url`` is the API base URL a client is configured with."""

    url: str
    port: int
    state: SandboxState
    app: web.Application


@asynccontextmanager
async def running_sandbox(
    config: SandboxConfig,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncIterator[SandboxHandle]:
    """Serve the sandbox on ``host:port`` (0 picks a free port) for the body of the block."""
    app = create_app(config, clock=clock)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1]
        shown = f"[{host}]" if ":" in host else host
        yield SandboxHandle(
            url=f"http://{shown}:{bound}{config.base_path}",
            port=bound,
            state=app[STATE_KEY],
            app=app,
        )
    finally:
        await runner.cleanup()


async def serve_forever(config: SandboxConfig, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Serve until SIGINT or SIGTERM; prints the base URL once listening.

    Handlers go through the loop rather than the default SIGINT behaviour so that the sandbox
    also stops cleanly as PID 1 in a container, where SIGTERM has no default action.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)
    try:
        async with running_sandbox(config, host, port) as handle:
            print(f"sandbox listening on {handle.url}", flush=True)
            await stop.wait()
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)


def serve(config: SandboxConfig, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Blocking entry point for the CLI: run :func:`serve_forever` in a fresh event loop."""
    asyncio.run(serve_forever(config, host, port))
