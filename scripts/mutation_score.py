"""One module's mutation score from a cosmic-ray session (run by scripts/mutation).

Prints ``<name> <killed>/<total> <score>% <seconds>s`` and, below it, each surviving mutant
as ``  survived line N: <operator>`` with the line of the module it changed, so that each
can be killed by a test or shown equivalent in docs/mutation.md. A mutant the tests could
not run (incompetent: the module no longer imports) counts as killed, as cosmic-ray counts
it; one still pending (the run was stopped) is not counted.
"""

from __future__ import annotations

import sys
from pathlib import Path

from cosmic_ray.work_db import WorkDB, use_db  # type: ignore[import-not-found]
from cosmic_ray.work_item import TestOutcome  # type: ignore[import-not-found]


def main(name: str, session: str, seconds: str, module: str) -> None:
    source = Path(module).read_text().splitlines()
    with use_db(session, WorkDB.Mode.open) as db:
        done = list(db.completed_work_items)
        pending = db.num_work_items - len(done)
    survivors = [item for item, result in done if result.test_outcome == TestOutcome.SURVIVED]
    killed = len(done) - len(survivors)
    score = 100.0 * killed / len(done) if done else 0.0
    note = f" ({pending} not run)" if pending else ""
    print(f"{name} {killed}/{len(done)} {score:.1f}% {seconds}s{note}")
    for item in sorted(survivors, key=lambda i: i.mutations[0].start_pos):
        spec = item.mutations[0]
        line = spec.start_pos[0]
        print(f"  survived line {line}: {spec.operator_name}  | {source[line - 1].strip()}")


if __name__ == "__main__":
    main(*sys.argv[1:5])
