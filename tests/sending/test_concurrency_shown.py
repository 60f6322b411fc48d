"""The concurrency limit where an operator sees it: the metrics gauge (wired by the runtime,
pushed at the end of a real run against the sandbox) and the progress events."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import orjson
import pytest
import structlog
from aiohttp import web
from conftest import write_csv
from prometheus_client.parser import text_string_to_metric_families

from worker.commands.run import run_purge
from worker.records.metrics import Metrics
from worker.records.progress import show_progress
from worker.records.tally import Tally
from worker.runtime.logs import configure_logging
from worker.sandbox import FaultConfig
from worker.settings import Settings
from worker.settings.rate import RateSpec

GAUGE = "audience_purge_concurrency_limit"


def test_the_gauge_reads_the_limit_at_each_scrape() -> None:
    metrics = Metrics(rate_per_second=1.0)
    limit = [27]
    metrics.follow_concurrency(lambda: limit[0])
    assert metrics.registry.get_sample_value(GAUGE) == 27

    limit[0] = 24

    assert metrics.registry.get_sample_value(GAUGE) == 24


@pytest.fixture
async def pushed() -> AsyncIterator[tuple[list[str], str]]:
    """A stand-in Pushgateway on loopback: the bodies pushed to it, and its URL."""
    bodies: list[str] = []

    async def keep(request: web.Request) -> web.Response:
        bodies.append(await request.text())
        return web.Response()

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", keep)
    runner = web.AppRunner(app)
    await runner.setup()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield bodies, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def gauge_in(body: str) -> float:
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == GAUGE:
                return sample.value
    raise AssertionError(f"{GAUGE} was not pushed")


@pytest.mark.parametrize("faults", [FaultConfig(latency_ms=50)], ids=["50ms"])
@pytest.mark.parametrize(
    ("mode", "low", "high"), [("fixed", 64, 64), ("adaptive", 2, 20)], ids=["fixed", "adaptive"]
)
async def test_a_run_pushes_its_concurrency_limit(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    pushed: tuple[list[str], str],
    mode: str,
    low: float,
    high: float,
) -> None:
    """At 200/s and 50 ms, about 10 in flight are needed: the adaptive limit says so; the
    fixed one stays at --concurrency."""
    bodies, url = pushed
    path = write_csv(tmp_path / "ids.csv", [str(i) for i in range(1, 301)])
    settings = make_settings(
        campaign_id=42,
        batch_size=1,
        rate=RateSpec(200, 1.0),
        concurrency=64,
        concurrency_mode=mode,
        pushgateway=url,
    )

    result = await run_purge(settings, str(path))

    assert (result.exit_code, result.tally.deleted) == (0, 300)
    (body,) = bodies
    assert low <= gauge_in(body) <= high


@pytest.fixture
def json_logging() -> Iterator[None]:
    configure_logging("info", json=True)
    yield
    structlog.reset_defaults()


@pytest.mark.usefixtures("json_logging")
async def test_progress_events_carry_the_current_limit(
    capfd: pytest.CaptureFixture[str],
) -> None:
    limit = [64]

    async def lower() -> None:
        await asyncio.sleep(0.05)
        limit[0] = 27

    shown = asyncio.create_task(
        show_progress(Tally(), None, mode="log", interval=0.02, concurrency=lambda: limit[0])
    )
    await lower()
    await asyncio.sleep(0.05)
    shown.cancel()
    await asyncio.gather(shown, return_exceptions=True)

    events = [orjson.loads(line) for line in capfd.readouterr().err.splitlines()]
    seen = [e["concurrency_limit"] for e in events if e.get("event") == "progress"]
    assert seen[0] == 64
    assert seen[-1] == 27


async def test_the_progress_bar_shows_the_limit(capfd: pytest.CaptureFixture[str]) -> None:
    shown = asyncio.create_task(
        show_progress(Tally(), 10, mode="bar", interval=1.0, concurrency=lambda: 27)
    )
    await asyncio.sleep(0.05)
    shown.cancel()
    await asyncio.gather(shown, return_exceptions=True)

    assert "27 in flight at most" in capfd.readouterr().err
