"""A loopback API in front of the sandbox, for tests that need the API to answer one
request its own way (echo the token, hold a request until the test lets it go) and every
other as the sandbox does."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import aiohttp
from aiohttp import web

from worker.sandbox.runner import SandboxHandle

# Given the endpoint (``delete-audience``, ``audience-list``, ...) and the request: an answer
# of its own, or None to pass the request on to the sandbox.
Hook = Callable[[str, web.Request], Awaitable[web.Response | None]]


@asynccontextmanager
async def api_in_front_of(sandbox: SandboxHandle, hook: Hook) -> AsyncIterator[str]:
    """Serve on loopback until the block ends; yields the base URL to give the worker."""
    session = aiohttp.ClientSession()

    async def answer(request: web.Request) -> web.Response:
        endpoint = request.match_info["endpoint"]
        own = await hook(endpoint, request)
        if own is not None:
            return own
        async with session.request(
            request.method,
            f"{sandbox.url}/{endpoint}",
            params=request.query,
            data=await request.read(),
            headers={"token": request.headers["token"], "Content-Type": "application/json"},
        ) as passed:
            body = await passed.read()
            return web.Response(body=body, status=passed.status, content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/api/{endpoint}", answer)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/api"
    finally:
        await runner.cleanup()
        await session.close()
