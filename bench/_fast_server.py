"""A loopback UnleashX stand-in that costs the benchmark as little CPU as possible.

bench/suite.py compares clients by requests/s *at the server* and by their CPU, on a small
busy machine: a server that spends more per request than the clients would cap them all at
its own speed and hide the differences. So this one does nothing but count. It answers
``POST .../delete-audience`` with the sandbox's success body (200,
``{"message": "Audience deleted successfully"}``, which worker/sending/classify.py accepts as
a deletion), 401 without the right ``token`` header (never logged, never stored), and counts
requests and ids (commas inside the ``audience`` array, without parsing the JSON).

Two implementations, so that the cost of the server itself can be measured (``--impl``):
``raw`` (the default), a bare asyncio.Protocol speaking just enough HTTP/1.1 (keep-alive,
Content-Length bodies, ``Expect: 100-continue``), and ``aiohttp``, an aiohttp.web app.
Measured with the bare aiohttp client of bench/_baselines.py on 1 M ids: ``raw`` spends
about 40 us of CPU a request and lets the client reach 4,600-5,500 req/s, ``aiohttp``
80-90 us and 4,000-4,200 req/s.

Control, on the same port: ``GET /_bench/stats`` returns counts, the arrival (on
CLOCK_MONOTONIC, which every process of the machine shares) of the first and the last
request, the steady-state rate (between the arrivals of the requests at 10 % and 90 % of the
count) and the server's own CPU seconds since the last ``POST /_bench/reset``; with
``?times=1`` also every arrival, relative to the first. Prints ``listening PORT`` once ready.

Usage: python bench/_fast_server.py --token T [--port 0] [--impl raw|aiohttp]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import subprocess
import sys
import time
import urllib.request
from typing import Any

SUCCESS = json.dumps({"message": "Audience deleted successfully"}).encode()
UNAUTHORISED = json.dumps({"message": "Unauthorized"}).encode()
DELETE_SUFFIX = "/delete-audience"
STATS_PATH, RESET_PATH = "/_bench/stats", "/_bench/reset"
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 411: "Length"}


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def count_ids(body: bytes) -> int:
    """Ids in ``{"campaign_id": N, "audience": [a, b, ...]}``: commas between the brackets."""
    start, end = body.find(b"["), body.rfind(b"]")
    if start < 0 or end <= start:
        return 0
    inner = body[start + 1 : end]
    return inner.count(b",") + 1 if inner.strip() else 0


class Counts:
    """What the server saw since the last reset."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.ids = 0
        self.unauthorised = 0
        self.arrivals: list[float] = []
        self.cpu_at_reset = _cpu()

    def record(self, ids: int) -> None:
        self.arrivals.append(time.monotonic())
        self.requests += 1
        self.ids += ids

    def summary(self, times: bool) -> dict[str, object]:
        arrivals = self.arrivals
        n = len(arrivals)
        low, high = n // 10, max(n // 10, (n * 9) // 10 - 1)
        span = arrivals[high] - arrivals[low] if n > 1 else 0.0
        whole = arrivals[-1] - arrivals[0] if n > 1 else 0.0
        result: dict[str, object] = {
            "requests": self.requests,
            "ids": self.ids,
            "unauthorised": self.unauthorised,
            "first": arrivals[0] if n else None,
            "last": arrivals[-1] if n else None,
            "steady_req_per_s": (high - low) / span if span > 0 else 0.0,
            "whole_req_per_s": (n - 1) / whole if whole > 0 else 0.0,
            "server_cpu_s": _cpu() - self.cpu_at_reset,
        }
        if times and n:
            result["times"] = [t - arrivals[0] for t in arrivals]
        return result


def answer(
    counts: Counts, token: bytes, method: str, target: str, got_token: bytes | None, body: bytes
) -> tuple[int, bytes]:
    """The status and JSON body for one request; counts what it must."""
    path, _, query = target.partition("?")
    if method == "POST" and path.endswith(DELETE_SUFFIX):
        if got_token != token:
            counts.unauthorised += 1
            return 401, UNAUTHORISED
        counts.record(count_ids(body))
        return 200, SUCCESS
    if method == "GET" and path == STATS_PATH:
        return 200, json.dumps(counts.summary("times=1" in query)).encode()
    if method == "POST" and path == RESET_PATH:
        counts.reset()
        return 200, b"{}"
    return 404, b'{"message":"Not Found"}'


# -- raw asyncio.Protocol ----------------------------------------------------------------


class RawHttp(asyncio.Protocol):
    """HTTP/1.1 keep-alive with Content-Length bodies, parsed from one growing buffer."""

    def __init__(self, counts: Counts, token: bytes) -> None:
        self.counts = counts
        self.token = token
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.continued = False  # a 100 Continue already sent for the request in the buffer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.transport is not None and self._one_request():
            pass

    def _one_request(self) -> bool:
        """Answer the first whole request in the buffer; False when it is not whole yet."""
        assert self.transport is not None
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        method, target = [*head[0].split(" "), "", ""][:2]
        headers: dict[str, str] = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", ""):
            self._reply(411, b'{"message":"Length Required"}', close=True)
            return False
        length = int(headers.get("content-length", "0") or 0)
        if len(self.buffer) < end + 4 + length:
            if headers.get("expect", "").lower() == "100-continue" and not self.continued:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                self.continued = True
            return False
        body = bytes(self.buffer[end + 4 : end + 4 + length])
        del self.buffer[: end + 4 + length]
        self.continued = False
        token = headers.get("token")
        status, payload = answer(
            self.counts,
            self.token,
            method,
            target,
            token.encode("latin-1") if token is not None else None,
            body,
        )
        self._reply(status, payload, close=headers.get("connection", "").lower() == "close")
        return True

    def _reply(self, status: int, payload: bytes, *, close: bool) -> None:
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s"
            % (
                status,
                _REASONS.get(status, "Status").encode(),
                len(payload),
                b"Connection: close\r\n" if close else b"",
                payload,
            )
        )
        if close:
            self.transport.close()
            self.transport = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def serve_raw(args: argparse.Namespace, counts: Counts) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: RawHttp(counts, args.token.encode()), "127.0.0.1", args.port, backlog=1024
    )
    port = server.sockets[0].getsockname()[1]
    print(f"listening {port}", flush=True)
    async with server:
        await server.serve_forever()


# -- aiohttp.web, to compare ---------------------------------------------------------------


async def serve_aiohttp(args: argparse.Namespace, counts: Counts) -> None:
    from aiohttp import web

    token = args.token.encode()

    async def any_request(request: web.Request) -> web.Response:
        got = request.headers.get("token")
        status, payload = answer(
            counts,
            token,
            request.method,
            request.path_qs,
            got.encode("latin-1") if got is not None else None,
            await request.read(),
        )
        return web.Response(status=status, body=payload, content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", any_request)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port, backlog=1024)
    await site.start()
    server = site._server  # the only way to learn port 0's choice
    assert isinstance(server, asyncio.base_events.Server)
    print(f"listening {server.sockets[0].getsockname()[1]}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


# -- the controller, for the scripts that start this server -------------------------------


class FastServer:
    """This file as a server in its own process, so that its CPU is never the client's."""

    def __init__(self, token: str, impl: str = "raw") -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--token", token, "--impl", impl],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # "listening PORT"
        if not line.startswith("listening "):
            self.proc.kill()
            raise RuntimeError(f"the fast server did not start: {line!r}")
        self.port = int(line.split()[1])
        self.base_url = f"http://127.0.0.1:{self.port}/api/v1/global"
        self.url = self.base_url + DELETE_SUFFIX

    def _call(self, method: str, path: str) -> dict[str, Any]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method)
        with urllib.request.urlopen(request, timeout=30) as reply:
            return dict(json.loads(reply.read()))

    def reset(self) -> None:
        self._call("POST", RESET_PATH)

    def stats(self, times: bool = False) -> dict[str, Any]:
        return self._call("GET", STATS_PATH + ("?times=1" if times else ""))

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)

    def __enter__(self) -> FastServer:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--token", default=os.environ.get("UNLEASHX_TOKEN", ""))
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    parser.add_argument("--impl", choices=["raw", "aiohttp"], default="raw")
    args = parser.parse_args()
    counts = Counts()
    serve = serve_raw if args.impl == "raw" else serve_aiohttp
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args, counts))


if __name__ == "__main__":
    main()
