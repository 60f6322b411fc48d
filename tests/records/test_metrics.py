"""Metrics and health: scraped during a real run against the sandbox, pushed at its end.

The pushed figures are the run's last word: they must equal the report's, counter by
counter. A stand-in Pushgateway (an aiohttp server on loopback) receives the push.
"""

from __future__ import annotations

import io
import json
import logging
import signal
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import redirect_stderr
from pathlib import Path

import aiohttp
import orjson
import pytest
import structlog
from aiohttp import web
from conftest import write_csv
from processes import eventually, finish, start
from prometheus_client.parser import text_string_to_metric_families

from worker.commands.run import run_purge
from worker.errors import ConfigError
from worker.records.metrics import MAX_CAMPAIGN_LABELS, Metrics
from worker.runtime.logs import configure_logging
from worker.sandbox import FaultConfig
from worker.sandbox.runner import SandboxHandle
from worker.settings import Settings

MakeSettings = Callable[..., Settings]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def samples(text: str) -> Samples:
    """Every sample of an exposition, by name and sorted labels."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def ids(found: Samples, outcome: str) -> float:
    return found.get(("audience_purge_ids_total", (("outcome", outcome),)), 0.0)


def requests(found: Samples) -> float:
    return sum(v for (name, _), v in found.items() if name == "audience_purge_requests_total")


class Pushgateway:
    """Keeps every push: the path (the grouping key) and the body."""

    def __init__(self) -> None:
        self.pushes: list[tuple[str, str, str]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.pushes.append((request.method, request.path, await request.text()))
        return web.Response(status=200)


@pytest.fixture
async def pushgateway() -> AsyncIterator[tuple[Pushgateway, str]]:
    gateway = Pushgateway()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", gateway.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield gateway, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def mixed_input(path: Path) -> Path:
    """300 valid ids in 3 campaigns, 2 rejected rows, 3 duplicates."""
    rows = ["campaign_id,audience_id"]
    rows += [f"{42 if i % 2 else 77},{i}" for i in range(1, 301)]
    rows += ["42,abc", "77,-1", "42,1", "42,3", "77,2"]
    return write_csv(path, rows)


@pytest.mark.parametrize("faults", [FaultConfig(error_ratio=0.2, seed=3)], ids=["20%-5xx"])
async def test_pushed_metrics_equal_the_reports_figures(
    sandbox: SandboxHandle,
    make_settings: MakeSettings,
    tmp_path: Path,
    pushgateway: tuple[Pushgateway, str],
) -> None:
    gateway, url = pushgateway
    settings = make_settings(pushgateway=url, metrics_job="purge-2026")

    result = await run_purge(settings, str(mixed_input(tmp_path / "ids.csv")))

    assert result.exit_code == 0
    report = orjson.loads(settings.report.read_bytes())
    ((method, path, body),) = gateway.pushes
    assert (method, path) == ("PUT", "/metrics/job/purge-2026/shard/all")
    found = samples(body)
    assert ids(found, "deleted") == report["deleted"] == 300
    assert ids(found, "rejected") == report["rejected"] == 2
    assert ids(found, "duplicate") == report["duplicates"] == 3
    assert requests(found) == report["requests"]
    assert found[("audience_purge_retries_total", ())] == report["retries"] > 0
    assert found[("audience_purge_requests_in_flight", ())] == 0
    assert found[("audience_purge_request_duration_seconds_count", ())] == report["requests"]
    by_class = {
        dict(labels)["status_class"]: v
        for (name, labels), v in found.items()
        if name == "audience_purge_requests_total"
    }
    assert by_class["5xx"] == report["retries"]  # each 5xx was retried, and then deleted
    deleted_by_campaign = {
        dict(labels)["campaign_id"]: v
        for (name, labels), v in found.items()
        if name == "audience_purge_campaign_ids_total" and dict(labels)["outcome"] == "deleted"
    }
    assert deleted_by_campaign == {c: float(n["deleted"]) for c, n in report["campaigns"].items()}
    assert found[("audience_purge_rate_configured_per_second", ())] == 1000


async def test_a_push_that_fails_is_a_warning_and_the_purge_still_succeeds(
    sandbox: SandboxHandle, make_settings: MakeSettings, tmp_path: Path
) -> None:
    settings = make_settings(campaign_id=42, pushgateway=f"http://127.0.0.1:{free_port()}")

    result = await run_purge(settings, str(write_csv(tmp_path / "ids.csv", ["1", "2"])))

    assert (result.exit_code, result.tally.deleted) == (0, 2)


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, await resp.text()


@pytest.mark.slow
@pytest.mark.parametrize("faults", [FaultConfig(latency_ms=1500)], ids=["latency-1.5s"])
async def test_endpoints_during_a_run_show_progress_readiness_and_stopping(
    sandbox: SandboxHandle, token: str, tmp_path: Path
) -> None:
    write_csv(tmp_path / "ids.csv", [str(i) for i in range(1, 201)])
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = await start(
        "run",
        *("--input", "ids.csv", "--campaign-id", "42", "--base-url", sandbox.url),
        *("--rate", "20/second", "--batch-size", "5", "--concurrency", "4"),
        *("--metrics-port", str(port), "--progress", "off", "--grace", "10"),
        cwd=tmp_path,
        token=token,
    )
    try:
        await eventually(
            lambda: _answers(f"{base}/readyz", 200), what="ready", timeout=10, poll=0.05
        )
        await eventually(
            lambda: _in_flight(f"{base}/metrics"), what="requests in flight", timeout=10
        )
        status, text = await get(f"{base}/metrics")
        found = samples(text)
        assert status == 200
        assert found[("audience_purge_input_rows", ())] == 200
        assert 0 < found[("audience_purge_requests_in_flight", ())] <= 4
        assert found[("audience_purge_run_start_time_seconds", ())] > 0
        assert (await get(f"{base}/healthz"))[0] == 200
        proc.send_signal(signal.SIGTERM)
        await eventually(
            lambda: _answers(f"{base}/readyz", 503), what="not ready", timeout=5, poll=0.05
        )
        assert "stopping" in (await get(f"{base}/readyz"))[1]
    finally:
        proc.send_signal(signal.SIGTERM)
        done = await finish(proc)
    assert done.code == 75, done.err


async def _answers(url: str, expected: int) -> bool:
    try:
        return (await get(url))[0] == expected
    except aiohttp.ClientError:
        return False


async def _in_flight(url: str) -> bool:
    try:
        found = samples((await get(url))[1])
    except aiohttp.ClientError:
        return False
    return found.get(("audience_purge_requests_in_flight", ()), 0) > 0


async def test_a_metrics_port_in_use_is_refused_before_anything_is_sent(
    sandbox: SandboxHandle, make_settings: MakeSettings, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = make_settings(campaign_id=42, metrics_port=port)
        with pytest.raises(ConfigError, match=f"cannot serve metrics on port {port}"):
            await run_purge(settings, str(write_csv(tmp_path / "ids.csv", ["1"])))
    assert sandbox.state.requests_total == 0


def test_campaign_labels_are_bounded() -> None:
    metrics = Metrics(rate_per_second=1.0)
    for campaign in range(MAX_CAMPAIGN_LABELS + 30):
        metrics.on_event("deleted", {"campaign_id": campaign, "audience_ids": [1, 2]})
    labels = {
        s.labels["campaign_id"]
        for family in metrics.registry.collect()
        if family.name == "audience_purge_campaign_ids"
        for s in family.samples
        if s.name.endswith("_total")
    }
    assert len(labels) == MAX_CAMPAIGN_LABELS + 1
    assert "other" in labels
    other = metrics.campaign_ids.labels("other", "deleted")._value.get()
    assert other == 30 * 2


def test_library_logs_are_json_lines_with_the_runs_context() -> None:
    err = io.StringIO()
    with redirect_stderr(err):
        configure_logging("info", log_format="json")
        structlog.contextvars.bind_contextvars(run_id="r-1", command="run")
        try:
            logging.getLogger("aiohttp.client").warning("connection reset by %s", "peer")
            logging.getLogger("redis").info("chatter below warning stays out")
            try:
                raise ValueError("boom")
            except ValueError:
                logging.getLogger("asyncio").exception("Task exception was never retrieved")
        finally:
            structlog.contextvars.unbind_contextvars("run_id", "command")
    lines = err.getvalue().splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert [(r["logger"], r["level"]) for r in records] == [
        ("aiohttp.client", "warning"),
        ("asyncio", "error"),
    ]
    assert records[0]["event"] == "connection reset by peer"
    assert {r["run_id"] for r in records} == {"r-1"}
    assert "ValueError: boom" in records[1]["exception"]


def test_console_format_is_not_json() -> None:
    err = io.StringIO()
    with redirect_stderr(err):
        configure_logging("info", log_format="console")
        structlog.get_logger("x").warning("hello", n=1)
    assert not err.getvalue().lstrip().startswith("{")
    assert "hello" in err.getvalue()


async def test_every_log_line_of_a_run_carries_its_run_command_and_campaign(
    sandbox: SandboxHandle, make_settings: MakeSettings, tmp_path: Path
) -> None:
    ids = write_csv(tmp_path / "ids.csv", ["1", "2"])
    err = io.StringIO()
    with redirect_stderr(err):
        configure_logging("info", log_format="json")
        first = await run_purge(make_settings(campaign_id=42, progress="log"), str(ids))
        rows = write_csv(tmp_path / "rows.csv", ["campaign_id,audience_id", "77,1"])
        second = await run_purge(
            make_settings(progress="log", audit_log=tmp_path / "2.jsonl", state_dir=tmp_path / "2"),
            str(rows),
        )
    lines = [json.loads(line) for line in err.getvalue().splitlines()]
    mine = [line for line in lines if line.get("run_id") == first.run_id]
    theirs = [line for line in lines if line.get("run_id") == second.run_id]
    assert mine
    assert theirs
    assert {(line["command"], line["campaign_id"]) for line in mine} == {("run", 42)}
    assert all("campaign_id" not in line for line in theirs)  # not the first run's
