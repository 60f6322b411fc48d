"""Specification of worker.sending.client: the request it sends and how answers become verdicts.

The HTTP exchanges are faked with aioresponses (the only module that does so); the tests of a
refused connection, a server that never answers and answers too large to read use real
sockets on loopback.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aioresponses import aioresponses
from yarl import URL

from worker.errors import Kind
from worker.sending.classify import Verdict
from worker.sending.client import MAX_BODY, USER_AGENT, UnleashXClient, http_session
from worker.sending.credentials import Secret, TokenSource

BASE = "http://127.0.0.1:8931/api/v1/global"
URL_ = f"{BASE}/delete-audience"
TOKEN = "tok-client-0123456789"
SUCCESS = {"message": "Audience deleted successfully"}
UNAUTHORISED = {"message": "Unauthenticated."}


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with http_session(5.0, 4) as s:
        yield s


_NEEDS_STREAM_WRITER = "stream_writer" in inspect.signature(aiohttp.ClientResponse).parameters


class _FinishedUpload:
    output_size = 0


class _Response(aiohttp.ClientResponse):
    """aioresponses 0.7.9 builds responses without the ``stream_writer`` argument that
    aiohttp 3.14 requires (pnuckowski/aioresponses#289): give it a finished upload."""

    def __init__(self, method: str, url: URL, **kwargs: Any) -> None:
        if _NEEDS_STREAM_WRITER:
            kwargs.setdefault("stream_writer", _FinishedUpload())
        super().__init__(method, url, **kwargs)


class _Mock(aioresponses):
    def add(self, url: Any, method: str = "GET", *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("response_class", _Response)
        super().add(url, method, *args, **kwargs)


@pytest.fixture
def mock() -> Iterator[aioresponses]:
    with _Mock() as m:
        yield m


@pytest.fixture
def client(session: aiohttp.ClientSession) -> UnleashXClient:
    return UnleashXClient(session, BASE, TokenSource(Secret(TOKEN), None))


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("old-token\n", encoding="utf-8")
    return path


def sent(mock: aioresponses, url: str = URL_) -> list[dict[str, Any]]:
    """Every request made to ``url``: its token, JSON body and redirect setting."""
    return [
        {
            "token": call.kwargs["headers"]["token"],
            "json": orjson.loads(call.kwargs["data"]),
            "allow_redirects": call.kwargs["allow_redirects"],
        }
        for call in mock.requests.get(("POST", URL(url)), [])
    ]


# -- the request ----------------------------------------------------------------------------------


async def test_delete_audience_sends_token_and_ids(
    mock: aioresponses, client: UnleashXClient
) -> None:
    mock.post(URL_, payload=SUCCESS)

    await client.delete_audience(42, [101, 102, 103])

    assert sent(mock) == [
        {
            "token": TOKEN,
            "json": {"campaign_id": 42, "audience": [101, 102, 103]},
            "allow_redirects": False,
        }
    ]


async def test_delete_audience_accepts_a_tuple_of_ids(
    mock: aioresponses, client: UnleashXClient
) -> None:
    mock.post(URL_, payload=SUCCESS)

    await client.delete_audience(42, (7,))

    assert [r["json"] for r in sent(mock)] == [{"campaign_id": 42, "audience": [7]}]


async def test_delete_all_sends_the_delete_all_shape(
    mock: aioresponses, client: UnleashXClient
) -> None:
    mock.post(URL_, payload={"message": "All audience deleted successfully"})

    await client.delete_all(42)

    assert sent(mock) == [
        {"token": TOKEN, "json": {"campaign_id": 42, "delete_all": True}, "allow_redirects": False}
    ]


async def test_request_headers(mock: aioresponses, client: UnleashXClient) -> None:
    mock.post(URL_, payload=SUCCESS)

    await client.delete_audience(42, [101])

    headers = mock.requests[("POST", URL(URL_))][0].kwargs["headers"]
    assert {k: headers[k] for k in ("token", "Content-Type", "Accept", "User-Agent")} == {
        "token": TOKEN,
        "Content-Type": "application/json",
        "Accept": "application/json",
        "User-Agent": USER_AGENT,
    }
    assert "Authorization" not in headers


async def test_trailing_slash_in_base_url_is_not_doubled(
    mock: aioresponses, session: aiohttp.ClientSession
) -> None:
    client = UnleashXClient(session, BASE + "/", TokenSource(Secret(TOKEN), None))
    mock.post(URL_, payload=SUCCESS)

    reply = await client.delete_audience(42, [101])

    assert (reply.verdict.kind, len(sent(mock))) == (Kind.DELETED, 1)


# -- answers ------------------------------------------------------------------------------------


async def test_success_is_deleted(mock: aioresponses, client: UnleashXClient) -> None:
    mock.post(URL_, payload=SUCCESS)

    reply = await client.delete_audience(42, [101])

    assert reply.verdict == Verdict(Kind.DELETED, 200, "deleted", "Audience deleted successfully")


async def test_documented_error_in_a_200_is_permanent(
    mock: aioresponses, client: UnleashXClient
) -> None:
    mock.post(URL_, payload={"message": "Campaign not exist"})

    reply = await client.delete_audience(999, [101])

    assert reply.verdict == Verdict(Kind.PERMANENT, 200, "unknown campaign", "Campaign not exist")


async def test_429_retry_after_header_is_read_case_insensitively(
    mock: aioresponses, client: UnleashXClient
) -> None:
    mock.post(URL_, status=429, headers={"retry-after": "12"}, body=b"")

    reply = await client.delete_audience(42, [101])

    assert reply.verdict == Verdict(Kind.RATE_LIMITED, 429, "rate limited (HTTP 429)", None, 12.0)


async def test_redirect_is_fatal_and_not_followed(
    mock: aioresponses, client: UnleashXClient
) -> None:
    elsewhere = "http://127.0.0.1:8932/steal-the-token"
    mock.post(URL_, status=302, headers={"Location": elsewhere})
    mock.post(elsewhere, payload=SUCCESS)
    mock.get(elsewhere, payload=SUCCESS)

    reply = await client.delete_audience(42, [101])

    assert reply.verdict == Verdict(Kind.FATAL, 302, "redirected (HTTP 302): check base_url")
    assert list(mock.requests) == [("POST", URL(URL_))]


async def test_reply_carries_its_latency(mock: aioresponses, client: UnleashXClient) -> None:
    mock.post(URL_, payload=SUCCESS)

    reply = await client.delete_audience(42, [101])

    assert isinstance(reply.latency_ms, float)
    assert reply.latency_ms >= 0.0


# -- transport failures -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "exc",
    [
        aiohttp.ClientConnectionError("refused"),
        aiohttp.ServerDisconnectedError(),
        aiohttp.ClientOSError(104, "Connection reset by peer"),
        aiohttp.ClientPayloadError("truncated"),
        aiohttp.ServerTimeoutError("read timeout"),
        aiohttp.ConnectionTimeoutError("connect timeout"),
        TimeoutError(),
    ],
    ids=lambda exc: type(exc).__name__,
)
async def test_transport_error_becomes_a_retryable_verdict(
    mock: aioresponses, client: UnleashXClient, exc: BaseException
) -> None:
    mock.post(URL_, exception=exc)

    reply = await client.delete_audience(42, [101])

    assert reply.verdict == Verdict(Kind.RETRYABLE, None, f"transport error: {type(exc).__name__}")


async def test_refused_connection_on_loopback_is_retryable() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound but not listening: connections are refused
        port = closed.getsockname()[1]
        async with http_session(5.0, 1) as session:
            client = UnleashXClient(
                session, f"http://127.0.0.1:{port}", TokenSource(Secret(TOKEN), None)
            )
            reply = await client.delete_audience(42, [101])

    assert reply.verdict == Verdict(Kind.RETRYABLE, None, "transport error: ClientConnectorError")


async def test_server_that_never_answers_times_out_as_retryable() -> None:
    silence = asyncio.Event()

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await silence.wait()
        writer.close()

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with http_session(0.05, 1) as session:
            client = UnleashXClient(
                session, f"http://127.0.0.1:{port}", TokenSource(Secret(TOKEN), None)
            )
            reply = await client.delete_audience(42, [101])
    finally:
        silence.set()
        server.close()
        await server.wait_closed()

    assert (reply.verdict.kind, reply.verdict.status) == (Kind.RETRYABLE, None)
    assert reply.verdict.reason.startswith("transport error: ")
    assert "Timeout" in reply.verdict.reason


# -- 401 and token rotation -----------------------------------------------------------------------


async def test_401_with_a_fixed_token_is_fatal_after_one_request(
    mock: aioresponses, client: UnleashXClient
) -> None:
    mock.post(URL_, status=401, payload=UNAUTHORISED)
    mock.post(URL_, payload=SUCCESS)

    reply = await client.delete_audience(42, [101])

    assert reply.verdict == Verdict(
        Kind.FATAL, 401, "authentication refused (HTTP 401)", "Unauthenticated."
    )
    assert [r["token"] for r in sent(mock)] == [TOKEN]


async def test_401_rereads_a_changed_token_file_and_resends(
    mock: aioresponses, session: aiohttp.ClientSession, token_file: Path
) -> None:
    client = UnleashXClient(session, BASE, TokenSource(None, token_file))
    token_file.write_text("new-token\n", encoding="utf-8")
    mock.post(URL_, status=401, payload=UNAUTHORISED)
    mock.post(URL_, payload=SUCCESS)

    reply = await client.delete_audience(42, [101])

    assert reply.verdict == Verdict(Kind.DELETED, 200, "deleted", "Audience deleted successfully")
    assert sent(mock) == [
        {
            "token": token,
            "json": {"campaign_id": 42, "audience": [101]},
            "allow_redirects": False,
        }
        for token in ("old-token", "new-token")
    ]


async def test_401_with_an_unchanged_token_file_is_not_resent(
    mock: aioresponses, session: aiohttp.ClientSession, token_file: Path
) -> None:
    client = UnleashXClient(session, BASE, TokenSource(None, token_file))
    mock.post(URL_, status=401, payload=UNAUTHORISED)
    mock.post(URL_, payload=SUCCESS)

    reply = await client.delete_audience(42, [101])

    assert (reply.verdict.kind, reply.verdict.status) == (Kind.FATAL, 401)
    assert [r["token"] for r in sent(mock)] == ["old-token"]


async def test_second_401_after_rotation_is_fatal(
    mock: aioresponses, session: aiohttp.ClientSession, token_file: Path
) -> None:
    client = UnleashXClient(session, BASE, TokenSource(None, token_file))
    token_file.write_text("new-token\n", encoding="utf-8")
    mock.post(URL_, status=401, payload=UNAUTHORISED, repeat=True)

    reply = await client.delete_audience(42, [101])

    assert reply.verdict == Verdict(
        Kind.FATAL, 401, "authentication refused (HTTP 401)", "Unauthenticated."
    )
    assert [r["token"] for r in sent(mock)] == ["old-token", "new-token"]


async def test_token_file_is_reread_only_once_per_run(
    mock: aioresponses, session: aiohttp.ClientSession, token_file: Path
) -> None:
    client = UnleashXClient(session, BASE, TokenSource(None, token_file))
    token_file.write_text("new-token\n", encoding="utf-8")
    mock.post(URL_, status=401, payload=UNAUTHORISED)
    mock.post(URL_, payload=SUCCESS)
    await client.delete_audience(42, [101])
    token_file.write_text("newest-token\n", encoding="utf-8")
    mock.post(URL_, status=401, payload=UNAUTHORISED, repeat=True)

    reply = await client.delete_audience(42, [102])

    assert (reply.verdict.kind, reply.verdict.status) == (Kind.FATAL, 401)
    assert [r["token"] for r in sent(mock)] == ["old-token", "new-token", "new-token"]


async def test_later_requests_use_the_rotated_token(
    mock: aioresponses, session: aiohttp.ClientSession, token_file: Path
) -> None:
    client = UnleashXClient(session, BASE, TokenSource(None, token_file))
    token_file.write_text("new-token\n", encoding="utf-8")
    mock.post(URL_, status=401, payload=UNAUTHORISED)
    mock.post(URL_, payload=SUCCESS, repeat=True)
    await client.delete_audience(42, [101])

    await client.delete_audience(42, [102])

    assert [r["token"] for r in sent(mock)] == ["old-token", "new-token", "new-token"]


async def test_403_does_not_reread_the_token_file(
    mock: aioresponses, session: aiohttp.ClientSession, token_file: Path
) -> None:
    client = UnleashXClient(session, BASE, TokenSource(None, token_file))
    token_file.write_text("new-token\n", encoding="utf-8")
    mock.post(URL_, status=403, payload={"message": "Forbidden"})
    mock.post(URL_, payload=SUCCESS)

    reply = await client.delete_audience(42, [101])

    assert (reply.verdict.kind, reply.verdict.status) == (Kind.FATAL, 403)
    assert [r["token"] for r in sent(mock)] == ["old-token"]


async def test_401_with_a_vanished_token_file_stays_a_fatal_verdict_without_a_resend(
    mock: aioresponses, session: aiohttp.ClientSession, token_file: Path
) -> None:
    client = UnleashXClient(session, BASE, TokenSource(None, token_file))
    token_file.unlink()
    mock.post(URL_, status=401, payload=UNAUTHORISED)

    reply = await client.delete_audience(42, [101])

    assert (reply.verdict.kind, reply.verdict.status) == (Kind.FATAL, 401)
    assert len(mock.requests[("POST", URL(URL_))]) == 1


# -- the session ----------------------------------------------------------------------------------


async def test_http_session_is_configured_from_timeout_and_concurrency() -> None:
    async with http_session(12.5, 3) as session:
        assert (
            session.timeout.total,
            session.connector.limit if session.connector else None,
            session.headers["User-Agent"],
        ) == (12.5, 3, USER_AGENT)


async def test_http_session_is_closed_on_exit() -> None:
    async with http_session(1.0, 1) as session:
        pass

    assert session.closed is True


# -- the size of an answer ------------------------------------------------------------------------

CHUNK = b"x" * 65_536
SUCCESS_BYTES = orjson.dumps(SUCCESS)


@asynccontextmanager
async def answering(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> AsyncIterator[UnleashXClient]:
    """A client of a real aiohttp server on loopback whose delete-audience is ``handler``."""
    app = web.Application()
    app.router.add_post("/api/delete-audience", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with http_session(10.0, 1) as session:
            yield UnleashXClient(
                session, f"http://127.0.0.1:{port}/api", TokenSource(Secret(TOKEN), None)
            )
    finally:
        await runner.cleanup()


def padded_success(size: int) -> bytes:
    """A documented success answer of exactly ``size`` bytes."""
    body = SUCCESS_BYTES[:-1] + b', "pad": "' + b"p" * (size - len(SUCCESS_BYTES) - 11) + b'"}'
    assert len(body) == size
    return body


async def test_a_huge_chunked_body_is_given_up_after_the_cap_without_holding_it() -> None:
    size = 64 * 2**20
    written = 0

    async def stream(request: web.Request) -> web.StreamResponse:
        nonlocal written
        response = web.StreamResponse()  # no Content-Length: chunked
        await response.prepare(request)
        try:
            while written < size:
                await response.write(CHUNK)
                written += len(CHUNK)
        except ConnectionError:
            pass
        return response

    tracemalloc.start()
    try:
        async with answering(stream) as client:
            reply = await client.delete_audience(42, [101])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert reply.verdict == Verdict(Kind.RETRYABLE, None, "transport error: BodyTooLarge")
    assert peak < 8 * MAX_BODY, f"peak {peak} bytes while reading"
    assert written < size / 2, f"the server could write {written} bytes"


async def test_a_declared_oversized_body_is_refused_before_it_arrives() -> None:
    never = asyncio.Event()

    async def promise_a_lot(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = 600 * 2**20
        await response.prepare(request)
        await response.write(b"{")
        await never.wait()  # the rest never comes: only the header can stop the read
        return response

    async with answering(promise_a_lot) as client:
        try:
            reply = await asyncio.wait_for(client.delete_audience(42, [101]), timeout=5)
        finally:
            never.set()

    assert reply.verdict == Verdict(Kind.RETRYABLE, None, "transport error: BodyTooLarge")


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content-length"])
async def test_a_body_of_exactly_the_cap_is_read_and_one_byte_more_is_not(chunked: bool) -> None:
    async def answer(request: web.Request) -> web.StreamResponse:
        body = padded_success(MAX_BODY + int(request.query.get("over", "0")))
        response = web.StreamResponse()
        if not chunked:
            response.content_length = len(body)
        await response.prepare(request)
        for start in range(0, len(body), len(CHUNK)):
            await response.write(body[start : start + len(CHUNK)])
        return response

    async with answering(answer) as client:
        at_cap = await client.delete_audience(42, [101])
        client._url += "?over=1"
        over = await client.delete_audience(42, [101])

    assert at_cap.verdict.kind is Kind.DELETED
    assert over.verdict == Verdict(Kind.RETRYABLE, None, "transport error: BodyTooLarge")
