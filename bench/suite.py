"""The benchmark suite (issue #11): every figure of the performance table in one run, side by
side with baselines, as a markdown table of medians and ratios.

Why one command: the build machine is small and shared, so a figure means something only
against another taken minutes apart on the same machine. Every round measures everything,
the order reversed every other round, and the table shows medians; the ratios (worker ÷
baseline) are taken within each round, then their median.

What runs (each client and server in its own process; the servers are this folder's):

- rate fidelity: bench/rate.py's run, ``--rate 50/s`` against bench/_window_server.py
  (exactly 50 per fixed and per sliding second), batches of 10.
- latency hiding: bench/latency.py's run against a server answering in 250 +/- 50 ms with a
  limit of 100/s: the defaults (adaptive, at most 64 in flight), and fixed 64.
- throughput and CPU, against bench/_fast_server.py (which only counts): the worker with
  default settings and with ``--concurrency 32 --concurrency-mode fixed``, ``--rate
  1000000/s`` (no limit), batches of 100; and the baselines of bench/_baselines.py (a bare
  aiohttp loop, 32 in flight; a sequential ``requests`` loop) and ``xargs -P 16`` + ``curl``
  (one curl per batch). req/s is the server's steady state (between the arrivals of the
  requests at 10 % and 90 % of the run); CPU is user + sys of the client process and all
  its children (wait4), scaled to 1 M ids (interpreter start-up included).
- start-up: from just before the client process is started to the arrival of its first
  request at the server, with 100 ids; ``--version`` and ``--help`` wall times.
- audit bytes per duplicate row: the audit log of an input of mostly duplicates, less that of
  the same ids without them, per duplicate row.
- peak RSS (VmHWM, as bench/memory.py) at 10 M ids (1 M with ``--quick``), once.
- with ``--memory``, ``--resume``, ``--fleet`` (or ``--full``): bench/memory.py,
  bench/resume.py and bench/fleet.py as they are (long), once each, their output included.

The table is printed and written to bench/out/suite-TIMESTAMP.md.
With ``--snapshot`` every process imports a copy of worker/ taken at the start.
Usage: python bench/suite.py [--quick] [--rounds 3] [--ids N] [--snapshot]
                             [--full | --memory --resume --fleet]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import latency  # noqa: E402
import rate  # noqa: E402
from _common import PYTHON, TOKEN, fast_purge, run_worker, write_ids  # noqa: E402
from _fast_server import FastServer  # noqa: E402

OUT = BENCH / "out"
WORK = OUT / "suite-work"
ENV = {**os.environ, "UNLEASHX_TOKEN": TOKEN}
CLI = Path(PYTHON).parent / "audience-purge"
NO_LIMIT = "1000000/s"
BATCH = 100
# What a user scripts: one sh + curl per batch of 100, 16 at a time; "$*" joined by IFS=,.
CURL_PIPELINE = (
    'tail -n +2 "$INPUT" | cut -d, -f2 | xargs -n 100 -P 16 sh -c \'IFS=,; exec curl -sS '
    '-o /dev/null -w "%{http_code}\\n" -X POST -H "token: $UNLEASHX_TOKEN" '
    '-H "Content-Type: application/json" '
    '--data-binary "{\\"campaign_id\\":42,\\"audience\\":[$*]}" "$URL"\' _'
)


@dataclass(frozen=True)
class Config:
    quick: bool
    rounds: int
    ids: int  # throughput runs
    curl_ids: int  # xargs + curl costs a process or two per request: fewer ids, scaled
    rate_seconds: int
    latency_seconds: float
    rss_ids: int
    dup_rows: int
    dup_distinct: int


@dataclass(frozen=True)
class Proc:
    """A finished client process: exit code, wall time, and CPU of it and its children."""

    exit_code: int
    wall_s: float
    cpu_s: float


def run_measured(command: Sequence[str], cwd: Path, env: dict[str, str] | None = None) -> Proc:
    """Run ``command``; its rusage comes from wait4, so it is this child's and its reaped
    descendants' (xargs's curls), never the servers' or this process's."""
    cwd.mkdir(parents=True, exist_ok=True)
    with (cwd / "stdout").open("wb") as out, (cwd / "stderr").open("wb") as err:
        started = time.monotonic()
        proc = subprocess.Popen(command, cwd=cwd, env=env or ENV, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait again
    return Proc(proc.returncode, wall, usage.ru_utime + usage.ru_stime)


def fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


class Suite:
    """The measurements, and every sample they took, by name."""

    def __init__(self, config: Config, server: FastServer) -> None:
        self.config = config
        self.server = server
        self.samples: dict[str, list[float]] = {}
        self.problems: list[str] = []
        self.extra_output: dict[str, str] = {}
        self.margin = default_rate_margin()
        self.inputs = {
            "ids": write_ids(OUT / f"ids-{config.ids}.csv", config.ids),
            "curl": write_ids(OUT / f"ids-{config.curl_ids}.csv", config.curl_ids),
            "tiny": write_ids(OUT / "ids-100.csv", 100),
            "rss": write_ids(OUT / f"ids-{config.rss_ids}.csv", config.rss_ids),
        }
        self.source = source_state()  # at the start: worker/ may change while this runs

    def add(self, name: str, value: float) -> None:
        self.samples.setdefault(name, []).append(value)

    def median(self, name: str) -> float:
        values = self.samples.get(name)
        return statistics.median(values) if values else float("nan")

    def problem(self, text: str) -> None:
        self.problems.append(text)
        print(f"  ! {text}", flush=True)

    # -- rate fidelity and latency hiding: the existing scripts' runs ----------------------

    def rate_fidelity(self) -> None:
        got = rate.measure("new", self.margin, "", 50, self.config.rate_seconds, WORK / "rate")
        if got.exit_code != 0:
            self.problem(f"rate run exited {got.exit_code}")
            return
        self.add("rate.req_s", got.rate)
        self.add("rate.429", sum(got.refused.values()))
        self.add("rate.busiest", max(got.fixed_second, got.sliding_second))

    def latency(self, variant: str, round_: int) -> None:
        seconds = self.config.latency_seconds
        args = argparse.Namespace(limit=100, seconds=seconds, seed=round_, batch_size=BATCH, ids=0)
        args.ids = int(args.limit * (seconds + 5) * BATCH)  # as bench/latency.py sizes it
        ids = write_ids(OUT / f"latency-{args.ids}.csv", args.ids)
        got = latency.run_variant(variant, args, ids, fresh(WORK / "latency"))
        if got.exit_code not in (0, 75):  # stopped by SIGTERM: 75
            self.problem(f"latency {variant} exited {got.exit_code}")
            return
        self.add(f"latency.{variant}.req_s", got.req_per_s)
        self.add(f"latency.{variant}.429", got.refused)

    # -- throughput and CPU against the fast server ----------------------------------------

    def throughput(self, client: str) -> None:
        path, count = (
            self.inputs["curl" if client == "curl" else "ids"],
            (self.config.curl_ids if client == "curl" else self.config.ids),
        )
        work = fresh(WORK / f"tp-{client}")
        env = None
        if client.startswith("worker"):
            command = worker_run(path, self.server.base_url, work)
            if client == "worker-32":
                command += ["--concurrency", "32", "--concurrency-mode", "fixed"]
        elif client in ("aiohttp", "requests"):
            command = [PYTHON, str(BENCH / "_baselines.py"), client, "--url", self.server.url]
            command += ["--input", str(path), "--concurrency", "32"]
        else:
            command = ["bash", "-c", CURL_PIPELINE]
            env = {**ENV, "INPUT": str(path), "URL": self.server.url}
        self.server.reset()
        proc = run_measured(command, work, env)
        stats = self.server.stats()
        if client == "curl":
            codes = (work / "stdout").read_text().split()
            if codes.count("200") != len(codes):
                self.problem(f"curl: {len(codes) - codes.count('200')} answers not 200")
        if proc.exit_code != 0 or stats["ids"] != count:
            self.problem(
                f"{client}: exit {proc.exit_code}, {stats['ids']} of {count} ids arrived "
                f"({tail(work / 'stderr')})"
            )
            return  # a failed run's figures would only mislead
        self.add(f"{client}.req_s", stats["steady_req_per_s"])
        self.add(f"{client}.cpu_per_m", proc.cpu_s * 1_000_000 / count)
        self.add(f"{client}.server_cpu_ms_per_req", stats["server_cpu_s"] * 1000 / count * BATCH)

    # -- start-up -----------------------------------------------------------------------

    def first_request(self, client: str) -> None:
        work = fresh(WORK / f"start-{client}")
        path = self.inputs["tiny"]
        if client == "worker":
            command = worker_run(path, self.server.base_url, work)
        else:
            command = [PYTHON, str(BENCH / "_baselines.py"), client, "--url", self.server.url]
            command += ["--input", str(path)]
        self.server.reset()
        started = time.monotonic()  # CLOCK_MONOTONIC: the server's clock too
        proc = run_measured(command, work)
        first = self.server.stats()["first"]
        if proc.exit_code != 0 or first is None:
            self.problem(f"start-up {client}: exit {proc.exit_code} ({tail(work / 'stderr')})")
            return
        self.add(f"start.{client}", first - started)

    def wall(self, name: str, command: Sequence[str]) -> None:
        started = time.monotonic()
        done = subprocess.run(command, env=ENV, capture_output=True, check=False)
        self.add(f"wall.{name}", time.monotonic() - started)
        if done.returncode != 0:
            self.problem(f"{' '.join(command)} exited {done.returncode}")

    # -- audit bytes per duplicate row --------------------------------------------------------

    def audit_per_duplicate(self) -> None:
        config = self.config
        dup, uniq = duplicate_inputs(config.dup_rows, config.dup_distinct)
        sizes, records = [], []
        for name, path in (("dup", dup), ("uniq", uniq)):
            work = fresh(WORK / f"audit-{name}")
            proc = run_measured(worker_run(path, self.server.base_url, work), work)
            if proc.exit_code != 0:
                self.problem(f"audit run ({name}): exit {proc.exit_code} ({tail(work / 'stderr')})")
                return
            audit = work / "audit.jsonl"
            sizes.append(audit.stat().st_size)
            with audit.open("rb") as handle:
                records.append(sum(1 for _ in handle))
        duplicates = config.dup_rows - config.dup_distinct
        self.add("audit.bytes_per_dup", (sizes[0] - sizes[1]) / duplicates)
        self.add("audit.records_per_dup", (records[0] - records[1]) / duplicates)

    # -- once per suite -----------------------------------------------------------------

    def peak_rss(self) -> None:
        size = self.config.rss_ids
        path = self.inputs["rss"]
        work = fresh(WORK / "rss")
        command = fast_purge(path, self.server.base_url)
        command += ["--fresh", "--state-dir", str(work / "state")]
        command += ["--audit-log", str(work / "audit.jsonl")]
        self.server.reset()
        measured = run_worker(command, cwd=work)
        arrived = self.server.stats()["ids"]
        if measured.exit_code != 0 or arrived != size:
            self.problem(f"peak RSS run: exit {measured.exit_code}, {arrived} of {size} ids")
        else:
            self.add("rss.mb", measured.peak_rss_mb)
            self.add("rss.ids_per_s", size / measured.seconds)
        shutil.rmtree(work, ignore_errors=True)  # its audit log is hundreds of MB

    def script(self, name: str, args: Sequence[str]) -> None:
        """One of the long existing benchmarks, as it is; its output kept for the report."""
        print(f"  running bench/{name}.py {' '.join(args)}", flush=True)
        done = subprocess.run(
            [PYTHON, str(BENCH / f"{name}.py"), *args],
            cwd=BENCH.parent,
            capture_output=True,
            text=True,
            check=False,
        )
        text = done.stdout + (
            f"\n(exit {done.returncode}) {done.stderr[-2000:]}" if done.returncode else ""
        )
        self.extra_output[name] = text.strip("\n")
        print("    " + text.strip("\n").replace("\n", "\n    "), flush=True)


def worker_run(path: Path, base_url: str, work: Path) -> list[str]:
    """``python -m worker run`` as the throughput rows run it: no rate limit, batches of 100,
    its own state and audit log, quiet."""
    return [
        *(PYTHON, "-m", "worker", "run", "--input", str(path), "--base-url", base_url),
        *("--rate", NO_LIMIT, "--batch-size", str(BATCH), "--progress", "off"),
        *("--log-level", "warning", "--fresh", "--state-dir", str(work / "state")),
        *("--audit-log", str(work / "audit.jsonl")),
    ]


def duplicate_inputs(rows: int, distinct: int) -> tuple[Path, Path]:
    """``rows`` rows cycling through ``distinct`` ids (every row after the first
    ``distinct`` a duplicate), and the ``distinct`` ids alone: the same batches either way."""
    dup, uniq = OUT / f"dup-{rows}-{distinct}.csv", OUT / f"dup-{distinct}-{distinct}.csv"
    for path, count in ((dup, rows), (uniq, distinct)):
        if not path.exists():
            lines = "".join(f"42,{i % distinct + 1}\n" for i in range(count))
            path.write_text("campaign_id,audience_id\n" + lines)
    return dup, uniq


def default_rate_margin() -> float:
    """The worker's default ``rate_margin``, so that the rate row measures the defaults."""
    from worker.settings.catalogue import Settings

    default = next(f.default for f in dataclasses.fields(Settings) if f.name == "rate_margin")
    assert isinstance(default, float)
    return default


def take_snapshot() -> Path:
    """A copy of worker/ that every process of the suite imports (PYTHONPATH comes before
    the editable install), so that edits made while the suite runs do not mix versions."""
    target = OUT / f"suite-worker-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    shutil.copytree(
        BENCH.parent / "worker", target / "worker", ignore=shutil.ignore_patterns("__pycache__")
    )
    path = os.pathsep.join(filter(None, (str(target), os.environ.get("PYTHONPATH"))))
    os.environ["PYTHONPATH"] = ENV["PYTHONPATH"] = path  # rate.py, latency.py read os.environ
    return target


def source_state() -> str:
    """Which worker was measured: the commit, and whether worker/ differs from it."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(BENCH.parent), *args], capture_output=True, text=True, check=False
        )
        return done.stdout.strip()

    changed = len(git("status", "--porcelain", "--", "worker").splitlines())
    dirty = f", {changed} file(s) under worker/ changed since" if changed else ""
    return f"commit {git('rev-parse', '--short', 'HEAD') or '?'}{dirty}"


def tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return ""
    return " | ".join(lines[-3:])[-400:]


# -- the rounds ------------------------------------------------------------------------------


def plan(suite: Suite, round_: int) -> list[tuple[str, Callable[[], None]]]:
    """One round: every per-round measurement, named, in order."""
    steps: list[tuple[str, Callable[[], None]]] = [
        ("rate 50/s", suite.rate_fidelity),
        ("latency adaptive", lambda: suite.latency("adaptive", round_)),
        ("latency fixed-64", lambda: suite.latency("fixed-64", round_)),
    ]
    for client in ("worker", "worker-32", "aiohttp", "requests", "curl"):
        if client == "requests" and not has_requests():
            continue
        steps.append((f"throughput {client}", functools.partial(suite.throughput, client)))

    def startup() -> None:
        for _ in range(5):
            suite.first_request("worker")
            suite.first_request("aiohttp")

    def walls() -> None:
        commands = {
            "version": [str(CLI), "--version"],
            "help": [str(CLI), "--help"],
            "module_version": [PYTHON, "-m", "worker", "--version"],
            "python": [PYTHON, "-c", "pass"],
        }
        for _ in range(10):
            for name, command in commands.items():
                suite.wall(name, command)

    steps += [
        ("start-up x5", startup),
        ("--version/--help x10", walls),
        ("audit per duplicate", suite.audit_per_duplicate),
    ]
    return steps if round_ % 2 == 0 else steps[::-1]


def has_requests() -> bool:
    try:
        import requests  # noqa: F401
    except ImportError:
        return False
    return True


# -- the table -------------------------------------------------------------------------------


def fmt(value: float, digits: int = 2) -> str:
    return "n/a" if value != value else f"{value:,.{digits}f}"  # NaN: not measured


def per_round_ratio(suite: Suite, top: str, bottom: str) -> float:
    pairs = zip(suite.samples.get(top, []), suite.samples.get(bottom, []), strict=False)
    ratios = [a / b for a, b in pairs if b]
    return statistics.median(ratios) if ratios else float("nan")


def met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def table(suite: Suite) -> list[str]:
    s, c = suite, suite.config
    m = s.median
    requests_ok = "requests.req_s" in s.samples
    rows = [
        "| figure | worker | baseline(s) | ratio | target | met? |",
        "|---|---:|---|---:|---|---|",
    ]

    refused = sum(s.samples.get("rate.429", []))
    busiest = max(s.samples.get("rate.busiest", [0]))
    rate_s = m("rate.req_s")
    rows.append(
        f"| `--rate 50/s`, server allowing exactly 50/s (batches of 10) | {fmt(rate_s)} req/s, "
        f"{refused:.0f} x 429, busiest 1 s: {busiest:.0f} | server limit 50/s | "
        f"{fmt(rate_s / 50, 3)} | ≥ 49 req/s, 0 x 429, no 1-s window over 50 | "
        f"{met(rate_s >= 49 and refused == 0 and busiest <= 50)} |"
    )
    for variant, label, target in (
        ("adaptive", "default settings (adaptive, ≤ 64)", 97.0),
        ("fixed-64", "`--concurrency 64 --concurrency-mode fixed`", 98.0),
    ):
        got = m(f"latency.{variant}.req_s")
        refused = sum(s.samples.get(f"latency.{variant}.429", []))
        rows.append(
            f"| latency 250 ± 50 ms, limit 100/s, {label} | {fmt(got, 1)} req/s, "
            f"{refused:.0f} x 429 | server limit 100/s | {fmt(got / 100, 3)} | ≥ {target:g} req/s "
            f"| {met(got >= target)} |"
        )

    def baselines(metric: str, digits: int, unit: str) -> str:
        parts = [f"bare aiohttp {fmt(m(f'aiohttp.{metric}'), digits)}{unit}"]
        if requests_ok:
            parts.append(f"requests {fmt(m(f'requests.{metric}'), digits)}{unit}")
        else:
            parts.append("requests: not installed")
        parts.append(f"xargs+curl {fmt(m(f'curl.{metric}'), digits)}{unit}")
        return "; ".join(parts)

    cpu = m("worker.cpu_per_m")
    rows.append(
        f"| CPU per 1 M ids, batch 100, no limit (user+sys, start-up included) | "
        f"{fmt(cpu)} s (fixed 32: {fmt(m('worker-32.cpu_per_m'))} s) | "
        f"{baselines('cpu_per_m', 2, ' s')} | "
        f"{fmt(per_round_ratio(s, 'worker.cpu_per_m', 'aiohttp.cpu_per_m'))} x bare | ≤ 6.5 s | "
        f"{met(cpu <= 6.5)} |"
    )
    ratio = per_round_ratio(s, "worker-32.req_s", "aiohttp.req_s")
    rows.append(
        f"| steady-state req/s at the server, concurrency 32 (fixed) | "
        f"{fmt(m('worker-32.req_s'), 0)} req/s (defaults: {fmt(m('worker.req_s'), 0)}) | "
        f"{baselines('req_s', 0, ' req/s')} | {fmt(ratio)} x bare | ≥ 0.7 x | "
        f"{met(ratio >= 0.7)} |"
    )
    start = m("start.worker")
    rows.append(
        f"| start-up: process start to first request (100 ids) | {fmt(start, 3)} s | "
        f"bare aiohttp {fmt(m('start.aiohttp'), 3)} s | "
        f"{fmt(per_round_ratio(s, 'start.worker', 'start.aiohttp'))} x | ≤ 0.25 s | "
        f"{met(start <= 0.25)} |"
    )
    rss = m("rss.mb")
    rows.append(
        f"| peak RSS (VmHWM) at {c.rss_ids / 1e6:g} M ids (batch 1000, as bench/memory.py) | "
        f"{fmt(rss, 1)} MB | | | ≤ 80 MB at 10 M | {met(rss <= 80)} |"
    )
    per_dup = m("audit.bytes_per_dup")
    rows.append(
        f"| audit bytes per duplicate input row ({c.dup_rows:,} rows, {c.dup_distinct:,} ids) | "
        f"{fmt(per_dup, 1)} B ({fmt(m('audit.records_per_dup'), 3)} records) | | | ≤ 32 B | "
        f"{met(per_dup <= 32)} |"
    )
    python = m("wall.python")
    for name, label in (
        ("version", "`audience-purge --version`"),
        ("help", "`audience-purge --help`"),
        ("module_version", "`python -m worker --version`"),
    ):
        got = m(f"wall.{name}")
        rows.append(
            f"| {label} wall time | {fmt(got, 3)} s | `python -c pass` {fmt(python, 3)} s | "
            f"{fmt(got / python)} x | ≤ 0.15 s | {met(got <= 0.15)} |"
        )
    return rows


def samples_table(suite: Suite) -> list[str]:
    rows = ["| sample | median | every round |", "|---|---:|---|"]
    for name, values in sorted(suite.samples.items()):
        every = " · ".join(fmt(v, 3) for v in values[:12]) + (" ..." if len(values) > 12 else "")
        rows.append(f"| {name} | {fmt(statistics.median(values), 3)} | {every} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1 round, fewer ids, shorter runs")
    parser.add_argument("--rounds", type=int, help="paired rounds (default 3; 1 with --quick)")
    parser.add_argument("--ids", type=int, help="ids per throughput run (default 1 M)")
    parser.add_argument("--memory", action="store_true", help="also bench/memory.py (1 M, 10 M)")
    parser.add_argument("--resume", action="store_true", help="also bench/resume.py (10 M)")
    parser.add_argument("--fleet", action="store_true", help="also bench/fleet.py (redis)")
    parser.add_argument("--full", action="store_true", help="--memory --resume --fleet")
    parser.add_argument(
        "--snapshot",
        action="store_true",
        help="measure a copy of worker/ taken at the start (when others edit it meanwhile)",
    )
    args = parser.parse_args()
    snapshot = take_snapshot() if args.snapshot else None
    quick = args.quick
    ids = args.ids or (200_000 if quick else 1_000_000)
    config = Config(
        quick=quick,
        rounds=args.rounds or (1 if quick else 3),
        ids=ids,
        curl_ids=min(ids, 50_000 if quick else 200_000),
        rate_seconds=10 if quick else 20,
        latency_seconds=8.0 if quick else 15.0,
        rss_ids=1_000_000 if quick else 10_000_000,
        dup_rows=200_000,
        dup_distinct=5_000,
    )
    if not has_requests():
        print(
            "requests is not installed: the requests baseline is skipped. Install it with\n"
            "  .venv/bin/pip install --require-hashes -r requirements/bench.lock",
            flush=True,
        )
    OUT.mkdir(parents=True, exist_ok=True)
    fresh(WORK)
    began = time.monotonic()
    timings: dict[str, float] = {}
    with FastServer(TOKEN) as server:
        suite = Suite(config, server)
        for round_ in range(config.rounds):
            print(f"round {round_ + 1} of {config.rounds}", flush=True)
            for name, step in plan(suite, round_):
                started = time.monotonic()
                print(f"  {name} ...", end="", flush=True)
                step()
                took = time.monotonic() - started
                timings[name] = timings.get(name, 0.0) + took
                print(f" {took:.1f} s", flush=True)
        started = time.monotonic()
        print(f"  peak RSS at {config.rss_ids:,} ids ...", end="", flush=True)
        suite.peak_rss()
        timings["peak RSS"] = time.monotonic() - started
        print(f" {timings['peak RSS']:.1f} s", flush=True)
    for name, wanted in (
        ("memory", args.memory or args.full),
        ("resume", args.resume or args.full),
        ("fleet", args.fleet or args.full),
    ):
        if wanted:
            started = time.monotonic()
            suite.script(name, [])
            timings[f"bench/{name}.py"] = time.monotonic() - started
    total = time.monotonic() - began
    if snapshot is not None:
        suite.source += f"; measured: a copy of worker/ taken at the start ({snapshot.name})"
    report(suite, timings, total)
    shutil.rmtree(WORK, ignore_errors=True)
    if snapshot is not None:
        shutil.rmtree(snapshot, ignore_errors=True)


def report(suite: Suite, timings: dict[str, float], total: float) -> None:
    config = suite.config
    now = datetime.now(UTC)
    lines = [
        f"# Benchmark suite, {now:%Y-%m-%d %H:%M} UTC",
        "",
        f"`bench/suite.py{' --quick' if config.quick else ''}`: {config.rounds} round(s), "
        f"medians (ratios: median of the per-round ratios); throughput runs of "
        f"{config.ids:,} ids (xargs+curl: {config.curl_ids:,}), CPU scaled to 1 M ids; "
        f"{total / 60:.1f} min in all; load average at the end "
        f"{' / '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs; "
        f"worker: {suite.source}.",
        "",
        *table(suite),
        "",
    ]
    if suite.problems:
        lines += ["Problems:", "", *(f"- {p}" for p in suite.problems), ""]
    lines += ["Every sample:", "", *samples_table(suite), ""]
    lines += [
        "Time per step (all rounds): "
        + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in timings.items()),
        "",
    ]
    for name, text in suite.extra_output.items():
        lines += [f"## bench/{name}.py", "", "```", text, "```", ""]
    text = "\n".join(lines)
    print("\n" + text)
    path = OUT / f"suite-{now:%Y%m%dT%H%M%SZ}.md"
    path.write_text(text)
    print(f"written to {path.relative_to(BENCH.parent)}")


if __name__ == "__main__":
    main()
