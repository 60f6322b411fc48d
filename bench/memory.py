"""Peak RSS of a purge at 1 M and 10 M ids (issue #3: <= 150 MB, and 10 M <= 1.5 x 1 M).

Generates the inputs once under bench/out/, starts the sandbox in its own process with no
rate limit, runs ``audience-purge run`` at a high rate and prints each run's peak RSS,
time and throughput, then the ratio. Usage: python bench/memory.py [--sizes 1000000 10000000]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from _common import Sandbox, fast_purge, run_worker, write_ids

OUT = Path(__file__).resolve().parent / "out"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    args = parser.parse_args()
    results = {}
    for size in args.sizes:
        path = write_ids(OUT / f"ids-{size}.csv", size)
        work = OUT / f"run-{size}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        sandbox = Sandbox(size)
        try:
            measured = run_worker(fast_purge(path, sandbox.url), cwd=work)
            deleted = sandbox.deleted()
        finally:
            sandbox.close()
        results[size] = measured
        print(
            f"{size:>10} ids: exit {measured.exit_code}, "
            f"peak RSS {measured.peak_rss_mb:6.1f} MB, "
            f"{measured.seconds:6.1f} s, {size / measured.seconds:,.0f} ids/s, "
            f"deleted at the sandbox {deleted}",
            flush=True,
        )
    if len(results) >= 2:
        small, large = min(results), max(results)
        ratio = results[large].peak_rss_mb / results[small].peak_rss_mb
        print(
            f"RSS ratio {large:,} / {small:,} ids: {ratio:.2f} (target <= 1.5); "
            f"peak at {large:,}: {results[large].peak_rss_mb:.1f} MB (target <= 150)"
        )


if __name__ == "__main__":
    main()
