"""The HTTP boundary: the only module that imports aiohttp's client.

It sends one delete-audience request and returns the :class:`Verdict` of
:mod:`worker.sending.classify`; transport errors (timeouts, resets, refused connections) become
retryable verdicts here, so nothing above this module sees an aiohttp exception.

An answer's body is read up to :data:`MAX_BODY` bytes: a longer one (a proxy's error page
gone wrong, a misrouted download) is a retryable transport error, and its connection is
dropped rather than drained. A compressed body is inflated here, a piece at a time, and
the cap counts what it inflates to: aiohttp would inflate each received chunk whole, and a
few KiB of a gzip bomb are hundreds of MiB before any cap is checked.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Protocol, TypeVar

import aiohttp
import orjson

from worker import __version__
from worker.errors import Kind
from worker.sending.classify import Verdict, classify, classify_read, transport_failure
from worker.sending.credentials import Secret, TokenSource

USER_AGENT = f"audience-purge/{__version__}"
# The API answers with a few dozen bytes of JSON; 1 MiB is generous, and bounds the memory
# of `concurrency` answers in flight whatever a server sends.
MAX_BODY = 1 << 20
# A page of audience-list holds up to 10,000 records of a few hundred bytes each.
MAX_READ_BODY = 64 << 20
PIECE = 1 << 16  # bytes read from the connection at a time
# The content codings asked for, and zlib's window bits for each (gzip, or a zlib stream).
_WBITS = {"gzip": zlib.MAX_WBITS | 16, "x-gzip": zlib.MAX_WBITS | 16, "deflate": zlib.MAX_WBITS}
ACCEPT_ENCODING = "gzip, deflate"


class _Answer(Protocol):
    @property
    def verdict(self) -> Verdict | None: ...


R = TypeVar("R", bound=_Answer)


class BodyTooLarge(aiohttp.ClientPayloadError):
    """An answer longer than :data:`MAX_BODY`: not the API's, and not read to its end."""


class BadEncoding(aiohttp.ClientPayloadError):
    """An answer in a content coding not asked for, or that does not inflate."""


@dataclass(frozen=True, slots=True)
class Reply:
    """A verdict and how long the request took."""

    verdict: Verdict
    latency_ms: float


@dataclass(frozen=True, slots=True)
class ReadReply:
    """A read's JSON object, or the verdict of why there is none, and its latency."""

    data: Mapping[str, object] | None
    verdict: Verdict | None
    latency_ms: float


class UnleashXClient:
    """Sends requests with the current token in the ``token`` header: delete-audience, and
    the reads a retention purge needs (audience-list, campaign-audience-stats)."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, tokens: TokenSource) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self._url = f"{self._base}/delete-audience"
        self._tokens = tokens

    async def read(self, endpoint: str, params: Sequence[tuple[str, str]]) -> ReadReply:
        """GET ``endpoint`` with ``params``; one retry with a rotated token after a 401."""
        return await self._authorised(partial(self._get, endpoint, params))

    async def _authorised(self, send: Callable[[Secret], Awaitable[R]]) -> R:
        """``send`` with the current token; once more after a 401 if the token changed
        meanwhile (another request may have rotated it while this one was in flight) or
        can be rotated now."""
        token = self._tokens.current()
        reply = await send(token)
        said = reply.verdict
        unauthorised = said is not None and said.kind is Kind.FATAL and said.status == 401
        if unauthorised and (self._tokens.current() != token or self._tokens.rotate()):
            reply = await send(self._tokens.current())
        return reply

    def _redacted(self, verdict: Verdict) -> Verdict:
        """The verdict, with any token the API's message may echo masked."""
        if verdict.message is None:
            return verdict
        return replace(verdict, message=self._tokens.redact(verdict.message))

    async def _get(
        self, endpoint: str, params: Sequence[tuple[str, str]], token: Secret
    ) -> ReadReply:
        headers = {"token": token.reveal(), "Accept": "application/json"}
        started = time.perf_counter()
        answer: Verdict | Mapping[str, object]
        try:
            async with self._session.get(
                f"{self._base}/{endpoint}",
                params=list(params),
                headers=headers,
                allow_redirects=False,
            ) as response:
                body = await _read_capped(response, MAX_READ_BODY)
                answer = classify_read(response.status, body, response.headers)
        except (TimeoutError, aiohttp.ClientError) as exc:
            answer = transport_failure(exc)
        latency = round((time.perf_counter() - started) * 1000, 1)
        if not isinstance(answer, Verdict):
            return ReadReply(answer, None, latency)
        return ReadReply(None, self._redacted(answer), latency)

    async def delete_audience(self, campaign_id: int, audience_ids: Sequence[int]) -> Reply:
        """Ask the API to delete ``audience_ids`` from ``campaign_id``."""
        return await self._post({"campaign_id": campaign_id, "audience": list(audience_ids)})

    async def delete_all(self, campaign_id: int) -> Reply:
        """Ask the API to delete every audience record of a (draft) campaign."""
        return await self._post({"campaign_id": campaign_id, "delete_all": True})

    async def _post(self, payload: dict[str, Any]) -> Reply:
        return await self._authorised(partial(self._send, payload))

    async def _send(self, payload: dict[str, Any], token: Secret) -> Reply:
        headers = {
            "token": token.reveal(),
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        started = time.perf_counter()
        try:
            async with self._session.post(
                self._url, data=orjson.dumps(payload), headers=headers, allow_redirects=False
            ) as response:
                body = await _read_capped(response)
                verdict = classify(response.status, body, response.headers)
        except (TimeoutError, aiohttp.ClientError) as exc:
            verdict = transport_failure(exc)
        return Reply(self._redacted(verdict), round((time.perf_counter() - started) * 1000, 1))


async def _read_capped(response: aiohttp.ClientResponse, cap: int = MAX_BODY) -> bytes:
    """The body, inflated if compressed, read in pieces up to ``cap`` + 1 bytes: what is held
    stays within ``cap`` plus a piece. Content-Length is checked first but not trusted (a
    chunked answer has none).

    Raises:
        BodyTooLarge: the body is, or inflates to, more than ``cap``; the connection is closed.
        BadEncoding: a content coding not asked for, or a body that does not inflate.
    """
    coding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if coding not in ("", "identity") and coding not in _WBITS:
        response.close()
        raise BadEncoding(f"response in a content coding not asked for: {coding!r}")
    inflate = zlib.decompressobj(_WBITS[coding]) if coding in _WBITS else None
    body = bytearray()
    if (response.content_length or 0) <= cap:
        try:
            while len(body) <= cap and (piece := await response.content.read(PIECE)):
                _add(body, piece, inflate, cap)
        except zlib.error as exc:
            response.close()
            raise BadEncoding(f"{coding} response body does not inflate: {exc}") from None
        if len(body) <= cap:
            return bytes(body)
    response.close()
    raise BodyTooLarge(f"response body over {cap} bytes")


def _add(body: bytearray, piece: bytes, inflate: Any, cap: int) -> None:
    """``piece`` (inflated a ``PIECE`` at a time, no more than ``cap`` + 1 bytes in all)
    appended to ``body``."""
    if inflate is None:
        body += piece
        return
    while piece and len(body) <= cap:
        body += inflate.decompress(piece, min(PIECE, cap + 1 - len(body)))
        piece = inflate.unconsumed_tail


@asynccontextmanager
async def http_session(
    timeout: float,  # noqa: ASYNC109 - a per-request timeout, not a deadline
    concurrency: int,
) -> AsyncIterator[aiohttp.ClientSession]:
    """One pooled session per run; TLS verification stays on."""
    connector = aiohttp.TCPConnector(limit=concurrency, enable_cleanup_closed=True)
    async with aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=timeout),
        headers={"User-Agent": USER_AGENT, "Accept-Encoding": ACCEPT_ENCODING},
        auto_decompress=False,  # inflated by _read_capped, within the cap
        json_serialize=lambda obj: orjson.dumps(obj).decode(),
    ) as session:
        yield session
