"""Compressed answers are capped by what they inflate to, while they are read: a gzip bomb (a
few hundred KiB that inflate to hundreds of MiB) is given up within twice the cap of memory;
honest gzip and deflate answers read as before; a coding not asked for, or a body that does
not inflate, is a retryable transport error."""

from __future__ import annotations

import tracemalloc
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
import pytest
from aiohttp import web

from worker.errors import Kind
from worker.sending import client as client_module
from worker.sending.classify import Verdict
from worker.sending.client import UnleashXClient, http_session
from worker.sending.credentials import Secret, TokenSource

CAP = 4 << 20  # the read cap for these tests (MAX_READ_BODY is 64 MiB)
LISTING = {"datalist": [{"id": 1}], "pagination": {"totalRecords": 1, "totalPages": 1}}


def gzipped(data: bytes, wbits: int = zlib.MAX_WBITS | 16) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, wbits)
    return packer.compress(data) + packer.flush()


def bomb(inflated: int) -> bytes:
    """A gzip stream of ``inflated`` zero bytes (about a thousandth of that in size)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    zeros = bytes(1 << 20)
    return b"".join(packer.compress(zeros) for _ in range(inflated >> 20)) + packer.flush()


@asynccontextmanager
async def listing(body: bytes, coding: str) -> AsyncIterator[UnleashXClient]:
    """A client of a loopback server whose audience-list answers ``body`` in ``coding``."""

    async def answer(_: web.Request) -> web.Response:
        return web.Response(body=body, headers={"Content-Encoding": coding})

    app = web.Application()
    app.router.add_get("/api/audience-list", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        async with http_session(10.0, 1) as session:
            base = f"http://127.0.0.1:{site.port}/api"
            yield UnleashXClient(session, base, TokenSource(Secret("t"), None))
    finally:
        await runner.cleanup()


@pytest.fixture(autouse=True)
def small_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module, "MAX_READ_BODY", CAP)


async def test_a_gzip_bomb_is_given_up_within_twice_the_cap() -> None:
    compressed = bomb(256 << 20)
    assert len(compressed) < 2 * CAP // 8  # the wire brings a fraction of the cap

    tracemalloc.start()
    try:
        async with listing(compressed, "gzip") as client:
            tracemalloc.reset_peak()
            reply = await client.read("audience-list", [])
            _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert reply.verdict == Verdict(Kind.RETRYABLE, None, "transport error: BodyTooLarge")
    assert peak < 2 * CAP, f"peak {peak} bytes while reading"


@pytest.mark.parametrize(
    ("coding", "wbits"), [("gzip", zlib.MAX_WBITS | 16), ("deflate", zlib.MAX_WBITS)]
)
async def test_an_honest_compressed_answer_reads_as_before(coding: str, wbits: int) -> None:
    async with listing(gzipped(orjson.dumps(LISTING), wbits), coding) as client:
        reply = await client.read("audience-list", [])

    assert (reply.data, reply.verdict) == (LISTING, None)


async def test_an_answer_just_under_the_cap_once_inflated_is_read_whole() -> None:
    padded = orjson.dumps({**LISTING, "pad": "p" * (CAP - 200)})
    assert len(padded) <= CAP

    async with listing(gzipped(padded), "gzip") as client:
        reply = await client.read("audience-list", [])

    assert reply.data is not None
    assert reply.data["pad"] == "p" * (CAP - 200)


@pytest.mark.parametrize(
    ("body", "coding", "why"),
    [
        (b"\x1f\x8b not gzip at all", "gzip", "BadEncoding"),
        (orjson.dumps(LISTING), "br", "BadEncoding"),
    ],
    ids=["corrupt-gzip", "not-asked-for"],
)
async def test_a_body_that_cannot_be_inflated_is_a_transport_error(
    body: bytes, coding: str, why: str
) -> None:
    async with listing(body, coding) as client:
        reply = await client.read("audience-list", [])

    assert reply.verdict == Verdict(Kind.RETRYABLE, None, f"transport error: {why}")
