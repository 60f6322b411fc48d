"""Three workers sharing one rate budget (issue #4): 30/s for 30 s against a sandbox that
enforces exactly 30 requests per second.

Starts redis-server and the sandbox (``--limit-per-second``) in their own processes, queues
enough 10-id entries for the run, starts three ``consume --until-empty`` workers with
``--rate-scope shared``, then reads the sandbox's accepted request times. Prints the
aggregate achieved rate (target 95-100 % of the limit), the 429s (target 0) and the busiest
one-second window. For comparison, the same three workers with per-process (local) limits.
Usage: python bench/fleet.py [--rate 30] [--seconds 30] [--local-seconds 10]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from bisect import bisect_right
from pathlib import Path

from _common import PYTHON, TOKEN, Sandbox, free_port, write_ids

OUT = Path(__file__).resolve().parent / "out"


def start_redis() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            tempfile.mkdtemp(),
        ],
        stdout=subprocess.DEVNULL,
    )
    time.sleep(0.3)
    return proc, f"redis://127.0.0.1:{port}/0"


def fleet(scope: str, rate: int, seconds: int, redis: str, work: Path) -> dict[str, float]:
    requests = rate * seconds
    ids = write_ids(OUT / f"fleet-{requests * 10}.csv", requests * 10)
    sandbox = Sandbox(requests * 10, "--limit-per-second", str(rate))
    env = {**os.environ, "UNLEASHX_TOKEN": TOKEN}
    stream = f"fleet-{scope}"
    common = ["--redis", redis, "--stream", stream]
    try:
        subprocess.run(
            [PYTHON, "-m", "worker", "enqueue", "--input", str(ids), *common, "--batch-size", "10"],
            cwd=work,
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        workers = [
            subprocess.Popen(
                [
                    PYTHON,
                    "-m",
                    "worker",
                    "consume",
                    *common,
                    "--until-empty",
                    "--consumer",
                    f"w{n}",
                    "--base-url",
                    sandbox.url,
                    "--rate",
                    f"{rate}/s",
                    "--rate-scope",
                    scope,
                    "--batch-size",
                    "10",
                    "--concurrency",
                    "4",
                    # consume serves /metrics on one fixed port by default: three on one
                    # host would collide, and two of them would exit at start.
                    "--metrics-port",
                    "0",
                    "--log-level",
                    "error",
                ],
                cwd=work,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for n in range(3)
        ]
        codes = [proc.wait(timeout=seconds * 6 + 60) for proc in workers]
        if codes != [0, 0, 0]:
            raise SystemExit(f"the workers exited with {codes}: the figures would mislead")
        url = f"http://127.0.0.1:{sandbox.port}/_sandbox/state?times=1"
        with urllib.request.urlopen(url) as reply:
            state = json.loads(reply.read())
    finally:
        sandbox.close()
    times = sorted(state["accepted_times"])
    span = times[-1] - times[0]
    busiest = max(bisect_right(times, t + 1.0 - 1e-9) - i for i, t in enumerate(times))
    return {
        "accepted": len(times),
        "rate": (len(times) - 1) / span if span else 0.0,
        "status_429": state["requests"]["by_status"].get("429", 0),
        "busiest_1s": busiest,
        "span_s": span,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=int, default=30)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--local-seconds", type=int, default=10)
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is needed (scripts/test installs it)")
    work = OUT / "fleet"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    redis, url = start_redis()
    try:
        for scope, seconds in (("shared", args.seconds), ("local", args.local_seconds)):
            got = fleet(scope, args.rate, seconds, url, work)
            print(
                f"3 workers, {scope:>6} budget of {args.rate}/s: {got['accepted']:.0f} "
                f"accepted in {got['span_s']:.1f} s = {got['rate']:.2f}/s "
                f"({got['rate'] / args.rate:.1%} of the limit), 429s: {got['status_429']:.0f}, "
                f"busiest 1 s window: {got['busiest_1s']:.0f}",
                flush=True,
            )
    finally:
        redis.terminate()


if __name__ == "__main__":
    main()
