"""The server of bench/rate.py: the project's sandbox behind a limit counted three ways.

A delete request is refused (429, ``Retry-After``) when it would make any of these hold more
than the limit: the fixed 1-s window it falls in, the sliding 1-s window ending at it, or the
fixed 60-s window it falls in. Fixed windows are counted from the first request, so the first
window starts on a request: the tightest alignment for evenly paced requests. Only accepted
requests count, as at the sandbox. Runs in its own process, so that its work never slows the
worker down; prints one line once listening; ``GET /_sandbox/bench-stats`` returns the arrival times
of the accepted requests and the refusals by rule.

Usage: python bench/_window_server.py --port P --token T --ids N --per-second N --per-minute N
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable

from _common import serve_until_terminated
from aiohttp import web

from worker.sandbox import SandboxConfig, parse_campaign_spec
from worker.sandbox.control import CONTROL_PREFIX
from worker.sandbox.server import DELETE_ROUTE, create_app

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
FIXED_SECOND, SLIDING_SECOND, FIXED_MINUTE = "fixed 1 s", "sliding 1 s", "fixed 60 s"


class WindowLimits:
    """The three counts, on the server's monotonic clock from the first request."""

    def __init__(self, per_second: int, per_minute: int) -> None:
        self.per_second = per_second
        self.per_minute = per_minute
        self.first: float | None = None
        self.accepted: list[float] = []
        self.refused: Counter[str] = Counter()
        self._seconds: Counter[int] = Counter()
        self._minutes: Counter[int] = Counter()
        self._last_second: deque[float] = deque()

    def admit(self) -> float | None:
        """Count the request and return None, or refuse it and return seconds to wait."""
        now = time.monotonic()
        if self.first is None:
            self.first = now
        t = now - self.first
        while self._last_second and self._last_second[0] <= t - 1.0:
            self._last_second.popleft()
        second, minute = math.floor(t), math.floor(t / 60)
        waits = {}
        if self._seconds[second] >= self.per_second:
            waits[FIXED_SECOND] = second + 1 - t
        if len(self._last_second) >= self.per_second:
            waits[SLIDING_SECOND] = self._last_second[-self.per_second] + 1.0 - t
        if self._minutes[minute] >= self.per_minute:
            waits[FIXED_MINUTE] = (minute + 1) * 60 - t
        if waits:
            self.refused.update(waits.keys())
            return max(waits.values())
        self._seconds[second] += 1
        self._minutes[minute] += 1
        self._last_second.append(t)
        self.accepted.append(t)
        return None


LIMITS_KEY = web.AppKey("window_limits", WindowLimits)


@web.middleware
async def window_limits(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.match_info.route.name != DELETE_ROUTE:
        return await handler(request)
    wait = request.app[LIMITS_KEY].admit()
    if wait is not None:
        retry_after = str(max(1, math.ceil(wait)))
        return web.json_response(
            {"message": "Too Many Requests"}, status=429, headers={"Retry-After": retry_after}
        )
    return await handler(request)


async def stats(request: web.Request) -> web.Response:
    limits = request.app[LIMITS_KEY]
    return web.json_response({"accepted": limits.accepted, "refused": dict(limits.refused)})


def build(args: argparse.Namespace) -> web.Application:
    config = SandboxConfig(
        campaigns=(parse_campaign_spec(f"42:draft:1-{args.ids}"),), token=args.token
    )
    app = create_app(config)
    app.middlewares.insert(0, window_limits)  # outermost: before the sandbox's own pipeline
    app[LIMITS_KEY] = WindowLimits(args.per_second, args.per_minute)
    app.router.add_get(f"{CONTROL_PREFIX}/bench-stats", stats)
    return app


async def serve(args: argparse.Namespace) -> None:
    await serve_until_terminated(build(args), args.port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--ids", type=int, required=True)
    parser.add_argument("--per-second", type=int, required=True)
    parser.add_argument("--per-minute", type=int, required=True)
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
