"""The metrics and health endpoints, and the push of a one-shot Job's final metrics.

``--metrics-port N`` serves, on the run's own event loop:

- ``/metrics``: the run's Prometheus registry (see :mod:`worker.records.metrics`);
- ``/healthz``: 200 while the process and its event loop are alive (a loop blocked for
  good does not answer: that is what a liveness probe is for);
- ``/readyz``: 200 once the run is under way and while it is not stopping, and (where a
  Redis is used) while its last check reached it; 503 with the reason otherwise.

A Job ends before a scrape would see its last figures: ``--pushgateway URL`` pushes them at
the end, grouped by job name and shard. A failed push is a warning: the purge itself
succeeded or failed on its own terms.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest, push_to_gateway
from prometheus_client.exposition import basic_auth_handler, default_handler

from worker.errors import ConfigError
from worker.records.metrics import Metrics
from worker.sending.credentials import split_userinfo

log = structlog.get_logger("audience_purge.health")

PUSH_TIMEOUT_S = 10.0
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

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    app.router.add_get("/healthz", alive)
    app.router.add_get("/readyz", ready)
    return app


@asynccontextmanager
async def serving(
    metrics: Metrics,
    readiness: Readiness,
    *,
    port: int,
    host: str = "0.0.0.0",  # noqa: S104 (kubelet probes and Prometheus reach the pod's IP)
) -> AsyncIterator[None]:
    """Serve the endpoints for the body of the block.

    Raises:
        ConfigError: the port cannot be bound (in use, not permitted): nothing was sent.
    """
    runner = web.AppRunner(_app(metrics, readiness), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on port {port}: {exc.strerror or exc} (another worker "
                "on this host? give each its own --metrics-port, or 0 to turn them off)",
                key="metrics_port",
            ) from None
        log.info("metrics and health endpoints listening", port=port)
        yield
    finally:
        await runner.cleanup()


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
