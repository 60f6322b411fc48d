"""Where the worker's CPU goes (issue #11): ``python -m worker run`` on 1 M ids, batches of 100,
no rate limit, against bench/_fast_server.py, under pyinstrument.

bench/suite.py says *how much* CPU the worker spends per id against a bare aiohttp loop;
this says *where*, for docs/performance.md. The run is profiled in its own process
(``python -m pyinstrument -r pyisession``: a statistical profiler, about 1 sample per ms of
the main thread, so the figures are wall-clock samples; the worker is CPU-bound here, so
they are its CPU, less the reader thread's ``os.read`` calls). The same run without the
profiler comes first, to show the profiler's own cost.

Prints the run's figures, then the samples grouped by what the code is for (the innermost
frame that tells: input parsing, audit log, HTTP client, dispatch, state, imports, the event
loop; see ``GROUPS``), then the top functions by own time (a built-in is shown with its
caller) and the worker's functions by inclusive time. The session is kept under bench/out/
(``pyinstrument --load FILE -r html -o FILE.html`` renders it). ``--cprofile`` uses
cProfile (deterministic, with more overhead on small calls) instead, grouped by file only.

Usage: python bench/cpu_profile.py [--ids 1000000] [--top 30] [--interval 0.001] [--cprofile]
                               [-- EXTRA WORKER ARGS, e.g. --concurrency 32]
"""

from __future__ import annotations

import argparse
import pstats
import shutil
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from _common import PYTHON, TOKEN, write_ids  # noqa: E402
from _fast_server import FastServer  # noqa: E402
from suite import Proc, run_measured, worker_run  # noqa: E402

OUT = BENCH / "out"
IMPORTS = "imports (start-up)"
IDLE = "event loop: idle in epoll"
OTHER = "other (stdlib, unattributed)"
# (group, path fragments): the innermost frame of a sample whose file holds one of the
# fragments names the sample's group. Order matters only within one frame.
GROUPS: list[tuple[str, tuple[str, ...]]] = [
    ("input: read, parse, validate, de-duplicate, batch", ("/worker/input/",)),
    ("audit log, tally and other observers", ("/worker/records/", "/structlog/")),
    ("state: checkpoints, watermark", ("/worker/state/",)),
    (
        "HTTP client: aiohttp, client.py, classify.py",
        (
            "/worker/sending/client.py",
            "/worker/sending/classify.py",
            "/aiohttp/",
            "/yarl/",
            "/multidict/",
            "/aiohappyeyeballs/",
            "/propcache/",
            "/http/cookies.py",
        ),
    ),
    (
        "dispatch, rate gate, concurrency, retry",
        ("/worker/sending/", "/tenacity/", "/aiolimiter/"),
    ),
    (
        "socket I/O: asyncio transports",
        ("/asyncio/selector_events.py", "/asyncio/streams.py", "/asyncio/sslproto.py"),
    ),
    ("event loop: scheduling (asyncio)", ("/asyncio/", "/selectors.py")),
    ("threads (the input reader's to_thread)", ("/threading.py", "/concurrent/futures/")),
    ("other worker code: runtime, commands, settings", ("/worker/",)),
]


# -- pyinstrument's frame identifiers ----------------------------------------------------


def parse_frame(identifier: str) -> tuple[str, str]:
    """(``Class.function``, file) from ``function\\0file\\0line[\\1cClass][\\1lLine]``."""
    function, file, rest = ([*identifier.split("\x00"), "", ""])[:3]
    for attribute in rest.split("\x01")[1:]:
        if attribute.startswith("c"):
            function = f"{attribute[1:]}.{function}"
    return function, file


def short(file: str) -> str:
    for marker in ("/site-packages/", "/work/main/", "/lib/python3.11/"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


def group_of(stack: Sequence[str]) -> str:
    frames = [parse_frame(frame) for frame in stack[1:]]  # [0] is the thread
    if any(file.startswith("<frozen importlib") for _, file in frames):
        return IMPORTS
    if frames and frames[-1][0] in ("epoll.poll", "select.epoll.poll"):
        return IDLE
    for _, file in reversed(frames):
        for group, fragments in GROUPS:
            if any(fragment in file for fragment in fragments):
                return group
    return OTHER


def own_name(stack: Sequence[str]) -> str:
    """The leaf function; a built-in with the function that called it."""
    function, file = parse_frame(stack[-1])
    if file == "<built-in>" and len(stack) > 2:
        caller, caller_file = parse_frame(stack[-2])
        return f"{function} (built-in) in {caller} ({short(caller_file)})"
    return f"{function} ({short(file)})"


def most(seconds: dict[str, float], top: int | None = None) -> list[tuple[str, float]]:
    return sorted(seconds.items(), key=lambda item: -item[1])[:top]


def summarise_pyinstrument(session_path: Path, top: int) -> list[str]:
    from pyinstrument.session import Session

    session = Session.load(str(session_path))
    records: Iterable[tuple[list[str], float]] = session.frame_records
    groups: defaultdict[str, float] = defaultdict(float)
    own: defaultdict[str, float] = defaultdict(float)
    inclusive: defaultdict[str, float] = defaultdict(float)
    total = 0.0
    for stack, seconds in records:
        total += seconds
        group = group_of(stack)
        groups[group] += seconds
        if group != IDLE:
            own[own_name(stack)] += seconds
        seen = set()
        for frame in stack[1:]:
            function, file = parse_frame(frame)
            if "/worker/" in file:
                seen.add(f"{function} ({short(file)})")
        for name in seen:
            inclusive[name] += seconds
    busy = total - groups[IDLE]
    lines = [
        f"samples: {total:.2f} s of the main thread ({session.sample_count:,} samples), "
        f"{busy:.2f} s not idle; the profiled process's CPU: {session.cpu_time:.2f} s",
        "",
        "| group | s | % of samples |",
        "|---|---:|---:|",
        *(f"| {g} | {s:.2f} | {s / total:.1%} |" for g, s in most(groups)),
        "",
        f"Top {top} functions by own time (not idle):",
        "",
        "| function | own s | % of busy |",
        "|---|---:|---:|",
        *(f"| {n} | {s:.3f} | {s / busy:.1%} |" for n, s in most(own, top)),
        "",
        f"Top {top} worker functions by inclusive time:",
        "",
        "| function | incl. s | % of samples |",
        "|---|---:|---:|",
        *(f"| {n} | {s:.2f} | {s / total:.1%} |" for n, s in most(inclusive, top)),
    ]
    return lines


def summarise_cprofile(stats_path: Path, top: int) -> list[str]:
    stats = pstats.Stats(str(stats_path))
    raw: dict[tuple[str, int, str], tuple[int, int, float, float, object]]
    raw = stats.stats  # type: ignore[attr-defined]
    groups: defaultdict[str, float] = defaultdict(float)
    own: defaultdict[str, float] = defaultdict(float)
    for (file, _line, function), (_cc, _nc, tottime, _ct, _callers) in raw.items():
        group = IMPORTS if file.startswith("<frozen importlib") else OTHER
        if function in ("<method 'poll' of 'select.epoll' objects>",):
            group = IDLE
        elif group == OTHER:
            for name, fragments in GROUPS:
                if any(fragment in file for fragment in fragments):
                    group = name
                    break
        groups[group] += tottime
        own[f"{function} ({short(file)})"] += tottime
    total = sum(groups.values())
    return [
        f"cProfile: {total:.2f} s of own time in all (a function's group is its file's)",
        "",
        "| group | s | % |",
        "|---|---:|---:|",
        *(f"| {g} | {s:.2f} | {s / total:.1%} |" for g, s in most(groups)),
        "",
        "| function | own s | % |",
        "|---|---:|---:|",
        *(f"| {n} | {s:.3f} | {s / total:.1%} |" for n, s in most(own, top)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ids", type=int, default=1_000_000)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--interval", type=float, default=0.001, help="pyinstrument's, in s")
    parser.add_argument("--cprofile", action="store_true", help="cProfile, not pyinstrument")
    parser.add_argument("extra", nargs="*", help="more worker flags, after --")
    args = parser.parse_args()
    if not args.cprofile:
        try:
            import pyinstrument  # noqa: F401
        except ImportError:
            raise SystemExit(
                "pyinstrument is not installed: .venv/bin/pip install --require-hashes "
                "-r requirements/bench.lock (or use --cprofile)"
            ) from None
    path = write_ids(OUT / f"ids-{args.ids}.csv", args.ids)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    work = OUT / "profile-work"
    if args.cprofile:
        saved = OUT / f"profile-{stamp}.pstats"
        profiler = [PYTHON, "-m", "cProfile", "-o", str(saved)]
    else:
        saved = OUT / f"profile-{stamp}.pyisession"
        profiler = [PYTHON, "-m", "pyinstrument", "-r", "pyisession", "-o", str(saved)]
        profiler += ["-i", str(args.interval)]
    runs: dict[str, tuple[Proc, dict[str, object]]] = {}
    with FastServer(TOKEN) as server:
        for name in ("plain", "profiled"):
            shutil.rmtree(work, ignore_errors=True)
            command = worker_run(path, server.base_url, work) + list(args.extra)
            if name == "profiled":
                command = profiler + command[1:]  # instead of PYTHON: PYTHON -m profiler -m ...
            server.reset()
            started = time.monotonic()
            proc = run_measured(command, work)
            stats = server.stats()
            runs[name] = (proc, stats)
            print(
                f"{name:>8}: exit {proc.exit_code}, {time.monotonic() - started:.1f} s, "
                f"CPU {proc.cpu_s:.2f} s ({proc.cpu_s * 1e6 / args.ids:.2f} s per 1 M ids), "
                f"{stats['steady_req_per_s']:.0f} req/s at the server, "
                f"{stats['ids']:,} of {args.ids:,} ids arrived",
                flush=True,
            )
            if proc.exit_code != 0:
                print((work / "stderr").read_text()[-2000:], file=sys.stderr)
    shutil.rmtree(work, ignore_errors=True)
    plain, profiled = runs["plain"][0], runs["profiled"][0]
    print(f"profiler overhead: CPU x{profiled.cpu_s / plain.cpu_s:.2f}; session: {saved}\n")
    summary = (summarise_cprofile if args.cprofile else summarise_pyinstrument)(saved, args.top)
    print("\n".join(summary))


if __name__ == "__main__":
    main()
