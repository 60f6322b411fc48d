"""Rate fidelity (issue #11): ``--rate N/s`` against a server that allows exactly N a second.

Starts bench/_window_server.py (the sandbox behind a limit counted per fixed second, per
sliding second and per fixed minute) in its own process, runs the real ``audience-purge run``
at the allowed rate, batches of 10, for about ``--seconds``, and reads the arrival times of
the accepted requests at the server. A variant is a gate (``old``: the aiolimiter bucket
before #11, read from git history; ``new``: the GCRA of the working tree) and a
``rate_margin``. All variants run in one invocation, in turn (the order reversed every other
round), so that their figures share the machine's state: compare them with each other.

Prints, per run: requests/s achieved between the first and the last accepted request
(target >= 0.98 N), how far the last request arrived behind the schedule the gate aims at
(first arrival + k / (N x (1 - margin))), 429s by rule (target 0), and the busiest window of
each rule (target <= N per second, <= 60 N per minute; a fixed minute is only full in runs
of 60 s or more).
Concurrency is at most 8, adaptive unless a variant names a ``--concurrency-mode``.
Usage: python bench/rate.py [--rate 50] [--seconds 20] [--rounds 1]
                            [--variants old:0.03 new:0.03 new:0.01 new:0.005 new:0 ...]
       (a variant is GATE:MARGIN[:MODE], e.g. new:0.015:fixed)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import tempfile
import urllib.request
from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from _common import PYTHON, TOKEN, free_port, write_ids

BENCH = Path(__file__).resolve().parent
OUT = BENCH / "out"
BATCH = 10


@dataclass(frozen=True)
class Figures:
    exit_code: int
    accepted: int
    span_s: float
    rate: float
    behind_s: float
    refused: dict[str, int]
    fixed_second: int
    sliding_second: int
    fixed_minute: int
    sliding_minute: int


def busiest(times: list[float], window: float) -> int:
    """The most requests in any window ``[t, t + window)``, at any offset."""
    return max((bisect_left(times, t + window) - i for i, t in enumerate(times)), default=0)


def fixed(times: list[float], window: float) -> int:
    """The most requests in one fixed window, windows counted from the first request."""
    return max(Counter(math.floor(t / window) for t in times).values(), default=0)


def measure(gate: str, margin: float, mode: str, rate: int, seconds: int, work: Path) -> Figures:
    requests = rate * seconds
    ids = write_ids(OUT / f"rate-{requests * BATCH}.csv", requests * BATCH)
    port = free_port()
    server = subprocess.Popen(
        [
            *(PYTHON, str(BENCH / "_window_server.py"), "--port", str(port), "--token", TOKEN),
            *("--ids", str(requests * BATCH), "--per-second", str(rate)),
            *("--per-minute", str(60 * rate)),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        server.stdout.readline()  # "listening"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        config = work / "config.toml"
        config.write_text(f"rate_margin = {margin}\n")
        purge = subprocess.run(
            [
                *(PYTHON, str(BENCH / "_with_gate.py"), gate, "run", "--input", str(ids)),
                *("--base-url", f"http://127.0.0.1:{port}/api/v1/global"),
                *("--rate", f"{rate}/s", "--batch-size", str(BATCH), "--concurrency", "8"),
                *(("--concurrency-mode", mode) if mode else ()),
                *("--config", str(config), "--state-dir", str(work / "state")),
                *("--audit-log", str(work / "audit.jsonl"), "--fresh"),
                *("--progress", "off", "--log-level", "error"),
            ],
            cwd=work,
            env={**os.environ, "UNLEASHX_TOKEN": TOKEN},
            stdout=subprocess.DEVNULL,
            check=False,
        )
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_sandbox/bench-stats") as reply:
            stats = json.loads(reply.read())
    finally:
        server.terminate()
        server.wait(timeout=10)
    times = sorted(stats["accepted"])
    span = times[-1] - times[0] if len(times) > 1 else 0.0
    paced = rate * (1 - margin)  # the rate the gate aims at
    return Figures(
        exit_code=purge.returncode,
        accepted=len(times),
        span_s=span,
        rate=(len(times) - 1) / span if span else 0.0,
        behind_s=span - (len(times) - 1) / paced,
        refused=stats["refused"],
        fixed_second=fixed(times, 1.0),
        sliding_second=busiest(times, 1.0),
        fixed_minute=fixed(times, 60.0),
        sliding_minute=busiest(times, 60.0),
    )


def show(name: str, rate: int, got: Figures) -> None:
    refused = ", ".join(f"{rule} {n}" for rule, n in sorted(got.refused.items())) or "none"
    print(
        f"{name:<16} exit {got.exit_code}  {got.accepted} accepted in {got.span_s:5.1f} s = "
        f"{got.rate:6.2f} req/s ({got.rate / rate:6.1%} of {rate}/s), "
        f"{got.behind_s * 1000:+6.0f} ms behind its schedule  "
        f"429s: {sum(got.refused.values())} ({refused})  busiest: fixed 1 s {got.fixed_second}, "
        f"sliding 1 s {got.sliding_second}, fixed 60 s {got.fixed_minute}, "
        f"sliding 60 s {got.sliding_minute}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=int, default=50, help="requests per second allowed")
    parser.add_argument("--seconds", type=int, default=20, help="length of each run")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["old:0.03", "new:0.03", "new:0.01", "new:0.005", "new:0"],
        help="GATE:MARGIN[:MODE]: GATE old or new; MODE a --concurrency-mode (default: the CLI's)",
    )
    args = parser.parse_args()
    variants = [(*v.split(":")[:2], *(v.split(":")[2:3] or [""])) for v in args.variants]
    OUT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="rate-", dir=OUT))  # its own: runs may overlap
    results: dict[str, list[Figures]] = {}
    for number in range(args.rounds):
        order = variants if number % 2 == 0 else variants[::-1]
        for gate, margin, mode in order:
            name = ":".join(filter(None, (gate, f"{float(margin):g}", mode)))
            got = measure(gate, float(margin), mode, args.rate, args.seconds, work / "run")
            results.setdefault(name, []).append(got)
            show(name, args.rate, got)
    print(f"\nmedian req/s over {args.rounds} round(s), and ratios to the first variant:")
    base = None
    for name, runs in results.items():
        rate = statistics.median(run.rate for run in runs)
        base = base or rate
        worst = max(run.sliding_second for run in runs)
        refused = sum(sum(run.refused.values()) for run in runs)
        print(
            f"{name:<16} {rate:6.2f} req/s  x{rate / base:.3f}  429s {refused}  "
            f"busiest sliding 1 s {worst} (limit {args.rate})"
        )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
