"""Monitoring never blocks the work: a busy default metrics port is a warning (the endpoints
move to a free port), an asked-for one an error; the server listens on loopback unless told
otherwise, caps its connections and closes clients that do not send their headers in time."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from worker.errors import ConfigError
from worker.records.metrics import Metrics
from worker.runtime import health
from worker.runtime.health import serving
from worker.settings import Settings


def ready() -> str | None:
    return None


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port something else listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


async def get(port: int, path: str = "/healthz") -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}{path}") as resp,
    ):
        return resp.status, await resp.text()


async def closed_by_server(reader: asyncio.StreamReader, within: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), timeout=within) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_the_endpoints_listen_on_loopback_unless_told_otherwise() -> None:
    assert Settings().metrics_address == "127.0.0.1"


async def test_a_busy_default_port_moves_the_endpoints_to_a_free_port(busy_port: int) -> None:
    async with serving(Metrics(rate_per_second=1), ready, port=busy_port, asked=False) as port:
        assert port is not None
        assert port != busy_port
        assert await get(port) == (200, "ok\n")


async def test_a_busy_port_that_was_asked_for_is_an_error(busy_port: int) -> None:
    with pytest.raises(ConfigError) as refused:
        async with serving(Metrics(rate_per_second=1), ready, port=busy_port, asked=True):
            pass

    assert f"cannot serve metrics on port {busy_port}: " in str(refused.value)
    assert "(at 127.0.0.1; another worker on this host?" in str(refused.value)


async def test_a_default_port_on_an_address_that_cannot_be_bound_serves_nothing() -> None:
    metrics = Metrics(rate_per_second=1)
    # 192.0.2.1 (TEST-NET-1) is no address of this host: nothing can be bound there.
    async with serving(metrics, ready, port=9102, host="192.0.2.1", asked=False) as port:
        assert port is None


async def test_idle_clients_cannot_hold_more_than_the_cap_nor_longer_than_the_header_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(health, "HEADER_TIMEOUT_S", 0.5)
    flood = health.MAX_CONNECTIONS + 40
    async with serving(Metrics(rate_per_second=1), ready, port=0, asked=True) as port:
        assert port is not None
        clients = [await asyncio.open_connection("127.0.0.1", port) for _ in range(flood)]
        try:
            # Beyond the cap, connections are closed as they come...
            refused = await asyncio.gather(*(closed_by_server(r, 0.3) for r, _ in clients))
            assert sum(refused) == flood - health.MAX_CONNECTIONS
            # ...and the others once they have sent no headers for HEADER_TIMEOUT_S.
            kept = [r for (r, _), gone in zip(clients, refused, strict=True) if not gone]
            assert all(await asyncio.gather(*(closed_by_server(r, 1.0) for r in kept)))
            assert await get(port) == (200, "ok\n")  # the server stayed up
        finally:
            for _, writer in clients:
                writer.close()


async def test_a_client_trickling_its_headers_is_closed_at_the_header_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(health, "HEADER_TIMEOUT_S", 0.4)
    async with serving(Metrics(rate_per_second=1), ready, port=0, asked=True) as port:
        assert port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            for byte in b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
                writer.write(bytes([byte]))
                await writer.drain()
                if reader.at_eof() or await closed_by_server(reader, 0.02):
                    break
        except ConnectionError:
            pass
        finally:
            writer.close()
        assert 0.4 <= loop.time() - started < 1.5


async def test_each_connection_serves_one_request() -> None:
    async with serving(Metrics(rate_per_second=1), ready, port=0, asked=True) as port:
        assert port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        # Read to EOF: the server closes the connection once answered (well before the
        # HEADER_TIMEOUT_S it would wait for a next request).
        answer: Any = await asyncio.wait_for(reader.read(), timeout=health.HEADER_TIMEOUT_S / 2)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200")
        assert answer.endswith(b"\r\n\r\nok\n")
