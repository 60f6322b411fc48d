"""``audience-purge`` with the local rate gate of today (``new``) or of before issue #11
(``old``: the aiolimiter leaky bucket, read from git history), for bench/rate.py.

Everything else is the working tree's, so that two runs differ by the gate alone.
Usage: python bench/_with_gate.py new|old ARGS...  (ARGS as for ``audience-purge``)
"""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

# The last commit whose worker/sending/ratelimit.py is the aiolimiter gate.
OLD_GATE_COMMIT = "ee8b3cfac2db6d49c68d7645bd9337b453299b70"
REPO = Path(__file__).resolve().parent.parent


def old_gate_module() -> types.ModuleType:
    """Import the old ratelimit.py from git history (needs git and aiolimiter)."""
    source = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{OLD_GATE_COMMIT}:worker/sending/ratelimit.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    module = types.ModuleType("bench_old_ratelimit")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, f"{OLD_GATE_COMMIT[:7]}:ratelimit.py", "exec"), module.__dict__)
    return module


def main() -> None:
    which, args = sys.argv[1], sys.argv[2:]
    sys.path.insert(0, str(REPO))
    if which == "old":
        from worker.sending import shared_rate

        shared_rate.LocalRateGate = old_gate_module().LocalRateGate
    elif which != "new":
        raise SystemExit(f"gate must be new or old, not {which!r}")
    from worker.__main__ import entry

    sys.argv = ["audience-purge", *args]
    entry()


if __name__ == "__main__":
    main()
