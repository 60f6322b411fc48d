"""The metrics and health endpoints, and the push of a one-shot Job's final metrics.

``--metrics-port N`` serves, on the run's own event loop:

- ``/metrics``: the run's Prometheus registry (see :mod:`worker.records.metrics`);
- ``/healthz``: 200 while the process and its event loop are alive (a loop blocked for
  good does not answer: that is what a liveness probe is for);
- ``/readyz``: 200 once the run is under way and while it is not stopping, and (where a
  Redis is used) while its last check reached it; 503 with the reason otherwise.

Monitoring never blocks the work: the server takes at most :data:`MAX_CONNECTIONS` at once
(more are closed as they come), a client must send its request's headers within
:data:`HEADER_TIMEOUT_S` of connecting, and each connection serves one request, so idle or
slow clients cannot hold the process's file descriptors. A default port that is busy is a
warning and the endpoints move to a free port (logged); only a port asked for is an error.

A Job ends before a scrape would see its last figures: ``--pushgateway URL`` pushes them at
the end, grouped by job name and shard. A failed push is a warning: the purge itself
succeeded or failed on its own terms.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, cast

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest, push_to_gateway
from prometheus_client.exposition import basic_auth_handler, default_handler

from worker.errors import ConfigError
from worker.records.metrics import Metrics
from worker.sending.credentials import split_userinfo

log = structlog.get_logger("audience_purge.health")

PUSH_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 32
HEADER_TIMEOUT_S = 5.0
Readiness = Callable[[], str | None]  # None when ready, else the reason it is not


def _app(metrics: Metrics, readiness: Readiness) -> web.Application:
    async def scrape(_: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def alive(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def ready(_: web.Request) -> web.Response:
        reason = readiness()
        if reason is None:
            return web.Response(text="ready\n")
        return web.Response(status=503, text=f"not ready: {reason}\n")

    async def one_request(_: web.Request, response: web.StreamResponse) -> None:
        response.force_close()

    app = web.Application()
    app.on_response_prepare.append(one_request)
    app.router.add_get("/metrics", scrape)
    app.router.add_get("/healthz", alive)
    app.router.add_get("/readyz", ready)
    return app


class _Counted(asyncio.Protocol):
    """A connection of the endpoints, handed to aiohttp's handler, counted in ``live`` from
    the moment it is accepted (several may be accepted before the first is set up) until it
    is lost."""

    def __init__(self, inner: asyncio.Protocol, live: set[_Counted]) -> None:
        self._inner = inner
        self._live = live
        live.add(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._live.discard(self)
        self._inner.connection_lost(exc)


class _Refused(asyncio.Protocol):
    """A connection beyond :data:`MAX_CONNECTIONS`: closed at once."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        cast(asyncio.Transport, transport).abort()


@asynccontextmanager
async def serving(
    metrics: Metrics,
    readiness: Readiness,
    *,
    port: int,
    host: str = "127.0.0.1",
    asked: bool = True,
) -> AsyncIterator[int | None]:
    """Serve the endpoints for the body of the block; yields the port (None: not served).

    Raises:
        ConfigError: a port that was ``asked`` for cannot be bound (in use, not permitted):
            nothing was sent. A default one is a warning: the endpoints move to a free port.
    """
    runner = web.AppRunner(
        _app(metrics, readiness),
        access_log=None,
        handle_signals=False,
        # aiohttp closes a connection that has not sent a whole request this long after it
        # was opened (or after its last answer): an idle or trickling client included.
        keepalive_timeout=HEADER_TIMEOUT_S,
    )
    await runner.setup()
    handlers = runner.server
    assert handlers is not None
    live: set[_Counted] = set()

    def connection() -> asyncio.Protocol:
        if len(live) >= MAX_CONNECTIONS:
            return _Refused()
        return _Counted(handlers(), live)

    server = None
    try:
        server = await _listen(connection, host, port, asked)
        bound = int(server.sockets[0].getsockname()[1]) if server is not None else None
        if bound is not None:
            log.info("metrics and health endpoints listening", address=host, port=bound)
        yield bound
    finally:
        if server is not None:
            server.close()
        await runner.cleanup()


async def _listen(
    connection: Callable[[], asyncio.Protocol], host: str, port: int, asked: bool
) -> asyncio.Server | None:
    loop = asyncio.get_running_loop()
    try:
        return await loop.create_server(connection, host, port, reuse_address=True)
    except OSError as exc:
        why = exc.strerror or str(exc)
        if asked:
            raise ConfigError(
                f"cannot serve metrics on port {port}: {why} (at {host}; another worker on "
                "this host? give each its own --metrics-port, or 0 to turn them off)",
                key="metrics_port",
            ) from None
        failed = exc
    try:
        server = await loop.create_server(connection, host, 0, reuse_address=True)
    except OSError as exc:
        log.warning(
            "metrics and health endpoints not served: the run goes on without them",
            address=host,
            port=port,
            error=exc.strerror or str(exc),
        )
        return None
    log.warning(
        "default metrics port busy (another consumer on this host?): endpoints on a free "
        "port instead; give --metrics-port to choose one",
        address=host,
        busy_port=port,
        error=failed.strerror or str(failed),
        port=int(server.sockets[0].getsockname()[1]),
    )
    return server


async def push(metrics: Metrics, url: str, *, job: str, grouping: dict[str, str]) -> None:
    """Push the final figures to a Pushgateway; a failure is a warning, never an error.
    A user and password in the URL are sent as HTTP basic auth (never in the URL, never
    logged)."""
    bare, credentials = split_userinfo(url)
    handler = default_handler if credentials is None else _basic_auth(*credentials)
    try:
        await asyncio.to_thread(
            push_to_gateway,
            bare,
            job=job,
            registry=metrics.registry,
            grouping_key=grouping,
            timeout=PUSH_TIMEOUT_S,
            handler=handler,
        )
    except Exception as exc:  # urllib raises many kinds; all of them mean "not pushed"
        log.warning("metrics could not be pushed", pushgateway=bare, error=str(exc))
    else:
        log.info("metrics pushed", pushgateway=bare, job=job, **grouping)


def _basic_auth(user: str, password: str) -> Callable[..., Callable[[], None]]:
    def handler(
        url: str, method: str, timeout: float | None, headers: Any, data: bytes
    ) -> Callable[[], None]:
        return basic_auth_handler(url, method, timeout, headers, data, user, password)

    return handler
