"""Latency hiding (issue #11): the rate met against a server that answers in 250 +/- 50 ms.

Starts this file with ``--serve`` in its own process: the project's sandbox limited to
``--limit`` requests in any sliding second (429 with Retry-After above it, decided on
arrival), whose answers (all but the 429s) leave 200-300 ms after the request arrived,
uniformly at random. Then runs the real ``audience-purge run --rate LIMIT/s`` with default
settings otherwise (batches of 100; ``--batch-size`` to change) for ``--seconds`` and stops
it with SIGTERM, once per variant, each against a fresh server, in turn:

- ``fixed-8``: ``--concurrency-mode fixed --concurrency 8`` (the defaults before #11)
- ``fixed-64``: ``--concurrency-mode fixed --concurrency 64``
- ``adaptive``: the defaults (adaptive, at most 64)

Prints, per variant: requests/s accepted by the server between the first and the last
accepted request (target: the rate the gate paces, --rate less rate_margin), the 429s
(target 0), the mean requests in flight at the server, and the worker's concurrency limit
(``audience_purge_concurrency_limit``, scraped every 0.25 s: mean and last).
Usage: python bench/latency.py [--limit 100] [--seconds 15] [--rounds 1] [--batch-size 100]
                               [--variants fixed-8 fixed-64 adaptive]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from _common import (  # noqa: E402
    PYTHON,
    TOKEN,
    free_port,
    serve_until_terminated,
    write_ids,
)

OUT = BENCH / "out"
VARIANTS = {
    "fixed-8": ["--concurrency-mode", "fixed", "--concurrency", "8"],
    "fixed-64": ["--concurrency-mode", "fixed", "--concurrency", "64"],
    "adaptive": [],
}
STATS = "/_sandbox/latency-stats"


# -- the server (its own process) ------------------------------------------------------------


class Held:
    """Answers held for their latency; what the server saw, on its monotonic clock."""

    def __init__(self, latency: float, jitter: float, seed: int) -> None:
        self.latency = latency
        self.jitter = jitter
        self.rng = random.Random(seed)
        self.accepted: list[float] = []
        self.refused = 0
        self.in_flight = 0
        self.area = 0.0  # integral of in_flight over time
        self.since: float | None = None
        self.last_end = 0.0

    def change(self, by: int) -> None:
        now = time.monotonic()
        if self.since is not None:
            self.area += self.in_flight * (now - self.since)
        self.since = now
        self.in_flight += by

    def summary(self) -> dict[str, object]:
        first = self.accepted[0] if self.accepted else 0.0
        span = max(self.last_end - first, 1e-9)
        return {
            "accepted": [t - first for t in self.accepted],
            "refused": self.refused,
            "mean_in_flight": self.area / span,
        }


def build(args: argparse.Namespace) -> object:
    from aiohttp import web

    from worker.sandbox import FaultConfig, SandboxConfig, parse_campaign_spec
    from worker.sandbox.server import DELETE_ROUTE, create_app

    held = Held(args.latency_ms / 1000, args.jitter_ms / 1000, args.seed)
    Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

    @web.middleware
    async def hold(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.match_info.route.name != DELETE_ROUTE:
            return await handler(request)
        held.change(+1)
        try:
            arrived = time.monotonic()
            response = await handler(request)  # the rate limit is decided on arrival
            if response.status == 429:
                held.refused += 1
                return response
            held.accepted.append(arrived)
            delay = held.latency + held.rng.uniform(-held.jitter, held.jitter)
            await asyncio.sleep(max(0.0, arrived + delay - time.monotonic()))
            return response
        finally:
            held.change(-1)
            held.last_end = time.monotonic()

    async def stats(_: web.Request) -> web.Response:
        return web.json_response(held.summary())

    config = SandboxConfig(
        campaigns=(parse_campaign_spec(f"42:draft:1-{args.ids}"),),
        token=TOKEN,
        faults=FaultConfig(limit_per_second=args.limit),
    )
    app = create_app(config)
    app.middlewares.insert(0, hold)  # outermost: the latency is on top of everything
    app.router.add_get(STATS, stats)
    return app


async def serve(args: argparse.Namespace) -> None:
    await serve_until_terminated(build(args), args.port)


# -- the runs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Figures:
    variant: str
    req_per_s: float
    refused: int
    mean_in_flight: float
    limit_mean: float
    limit_last: float
    exit_code: int


def start_server(limit: int, ids: int, seed: int) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    proc = subprocess.Popen(
        [
            *(PYTHON, __file__, "--serve", "--port", str(port), "--ids", str(ids)),
            *("--limit", str(limit), "--seed", str(seed)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    proc.stdout.readline()  # "listening"
    return proc, port


def scrape_limit(port: int) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as reply:
            text = reply.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("audience_purge_concurrency_limit "):
            return float(line.split()[1])
    return None


def run_variant(variant: str, args: argparse.Namespace, ids: Path, work: Path) -> Figures:
    server, port = start_server(args.limit, args.ids, args.seed)
    metrics_port = free_port()
    workdir = Path(tempfile.mkdtemp(dir=work))
    try:
        command = [
            *(PYTHON, "-m", "worker", "run", "--input", str(ids)),
            *("--base-url", f"http://127.0.0.1:{port}/api/v1/global"),
            *("--rate", f"{args.limit}/s", "--progress", "off", "--log-level", "warning"),
            *("--metrics-port", str(metrics_port), "--fresh"),
            *("--batch-size", str(args.batch_size)),
            *VARIANTS[variant],
        ]
        env = {**os.environ, "UNLEASHX_TOKEN": TOKEN}
        worker = subprocess.Popen(
            command, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        limits: list[float] = []
        stop_at = time.monotonic() + args.seconds
        while time.monotonic() < stop_at and worker.poll() is None:
            time.sleep(0.25)
            value = scrape_limit(metrics_port)
            if value is not None:
                limits.append(value)
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=60)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{STATS}") as reply:
            stats = json.loads(reply.read())
    finally:
        server.terminate()
        server.wait(timeout=10)
    accepted = stats["accepted"]
    span = accepted[-1] - accepted[0] if len(accepted) > 1 else 0.0
    return Figures(
        variant=variant,
        req_per_s=(len(accepted) - 1) / span if span else 0.0,
        refused=int(stats["refused"]),
        mean_in_flight=float(stats["mean_in_flight"]),
        limit_mean=statistics.fmean(limits) if limits else float("nan"),
        limit_last=limits[-1] if limits else float("nan"),
        exit_code=code,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--limit", type=int, default=100, help="server's requests per second")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ids", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--latency-ms", type=float, default=250.0, help=argparse.SUPPRESS)
    parser.add_argument("--jitter-ms", type=float, default=50.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args))
        return
    # Enough ids for the whole run at the full rate, and some to spare.
    args.ids = int(args.limit * (args.seconds + 5) * args.batch_size)
    ids = write_ids(OUT / f"latency-{args.ids}.csv", args.ids)
    work = Path(tempfile.mkdtemp(prefix="latency-"))
    print(
        f"server: {args.limit}/s (sliding second), latency 250 +/- 50 ms; worker --rate "
        f"{args.limit}/s, batches of {args.batch_size}, {args.seconds:g} s per run"
    )
    print(
        f"{'variant':<10} {'req/s':>7} {'429s':>5} {'in flight':>10} {'limit mean':>11} "
        f"{'limit last':>11} {'exit':>5}"
    )
    for round_ in range(args.rounds):
        order = args.variants if round_ % 2 == 0 else list(reversed(args.variants))
        for variant in order:
            f = run_variant(variant, args, ids, work)
            print(
                f"{f.variant:<10} {f.req_per_s:>7.1f} {f.refused:>5} {f.mean_in_flight:>10.1f} "
                f"{f.limit_mean:>11.1f} {f.limit_last:>11.0f} {f.exit_code:>5}",
                flush=True,
            )


if __name__ == "__main__":
    main()
