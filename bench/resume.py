"""Resume speed (issue #3): a 10 M-id purge killed at 90 % must reach its first new request
within 3 s of being started again.

Runs a purge against the sandbox (own process, no rate limit), SIGKILLs it once the sandbox
has deleted 90 % of the ids, then starts the same command again and reads, from the new
run's audit log, when its first ``sending`` record (the write-ahead intent of its first
request) was written. Prints that delay, the resumed run's total time and peak RSS, and how
many ids were sent twice. Usage: python bench/resume.py [--ids 10000000] [--at 0.9]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import time
from datetime import datetime
from pathlib import Path

from _common import PYTHON, TOKEN, Sandbox, fast_purge, run_worker, write_ids

OUT = Path(__file__).resolve().parent / "out"


def first_sending_ts(audit_dir: Path, after: set[Path]) -> float | None:
    for path in sorted(set(audit_dir.glob("audit-*.jsonl")) - after):
        with path.open("rb") as handle:
            for line in handle:
                if b'"event":"sending"' in line:
                    ts = json.loads(line)["ts"].replace("Z", "+00:00")
                    return datetime.fromisoformat(ts).timestamp()
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ids", type=int, default=10_000_000)
    parser.add_argument("--at", type=float, default=0.9, help="share deleted before the kill")
    args = parser.parse_args()
    path = write_ids(OUT / f"ids-{args.ids}.csv", args.ids)
    work = OUT / "resume"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    sandbox = Sandbox(args.ids)
    try:
        command = fast_purge(path, sandbox.url)
        env = {**os.environ, "UNLEASHX_TOKEN": TOKEN}
        first = subprocess.Popen(
            [PYTHON, "-m", "worker", *command],
            cwd=work,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        target = int(args.ids * args.at)
        while sandbox.deleted() < target and first.poll() is None:
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait()
        killed_at = sandbox.deleted()
        before = set((work / "purge-audit").glob("audit-*.jsonl"))
        started = time.time()
        resumed = run_worker(command, cwd=work)
        first_request = first_sending_ts(work / "purge-audit", before)
        state = sandbox.state()
    finally:
        sandbox.close()
    received = state["received"]["42"]  # type: ignore[index]
    deleted = state["campaigns"]["42"]["deleted_count"]  # type: ignore[index]
    delay = None if first_request is None else first_request - started
    print(f"killed with {killed_at:,} of {args.ids:,} ids deleted ({killed_at / args.ids:.1%})")
    print(
        f"resumed run: first new request {delay:.2f} s after start (target <= 3 s)"
        if delay is not None
        else "resumed run sent nothing"
    )
    print(
        f"resumed run: exit {resumed.exit_code}, {resumed.seconds:.1f} s in all, "
        f"peak RSS {resumed.peak_rss_mb:.1f} MB; deleted at the sandbox {deleted:,}; "
        f"ids sent twice {received['resent']:,}"
    )


if __name__ == "__main__":
    main()
