"""The steps of scripts/mutation around cosmic-ray's own: ``skip``, ``reopen``, ``score``.

``reopen SESSION`` makes the survivors of a session pending again, so that ``cosmic-ray
exec`` runs only them, with the tests as they are now (killed ones stay killed: tests are
added, not taken away). ``skip SESSION MODULE`` marks as skipped, before any test runs, the
mutants that change a type annotation: every module has ``from __future__ import
annotations``, so annotations are never evaluated and such a mutant (``str | None`` made
``str + None``) is equivalent by construction. ``score NAME SESSION SECONDS MODULE`` prints
``<name> <killed>/<total> <score>% <seconds>s`` and each surviving mutant as `` survived
line N: <operator> | <the line>``, so that each is killed by a test or shown equivalent in
docs/mutation.md. A mutant the tests could not run (incompetent: the module no longer
imports) counts as killed, as cosmic-ray counts it; a skipped one not at all.
"""

from __future__ import annotations

import ast
import sqlite3
import sys
from pathlib import Path

from cosmic_ray.work_db import WorkDB, use_db  # type: ignore[import-not-found]
from cosmic_ray.work_item import (  # type: ignore[import-not-found]
    TestOutcome,
    WorkerOutcome,
    WorkResult,
)

Span = tuple[tuple[int, int], tuple[int, int]]


def annotation_spans(module: Path) -> list[Span]:
    """Where the module's annotations are: of arguments, returns and annotated names."""
    tree = ast.parse(module.read_text())
    nodes: list[ast.expr] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.arg | ast.AnnAssign) and node.annotation is not None:
            nodes.append(node.annotation)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.returns:
            nodes.append(node.returns)
    return [
        ((n.lineno, n.col_offset), (n.end_lineno or n.lineno, n.end_col_offset or 0)) for n in nodes
    ]


def skip(session: str, module: str) -> None:
    spans = annotation_spans(Path(module))
    skipped = 0
    with use_db(session, WorkDB.Mode.open) as db:
        for item in list(db.work_items):
            start = tuple(item.mutations[0].start_pos)
            if any(first <= start < last for first, last in spans):
                db.set_result(
                    item.job_id,
                    WorkResult(
                        worker_outcome=WorkerOutcome.SKIPPED,
                        output="a type annotation: never evaluated",
                    ),
                )
                skipped += 1
    print(f"{skipped} mutants of annotations skipped", file=sys.stderr)


def reopen(session: str) -> None:
    with sqlite3.connect(session) as db:
        gone = db.execute("DELETE FROM work_results WHERE test_outcome = 'SURVIVED'").rowcount
    print(f"{gone} survivors to run again", file=sys.stderr)


def score(name: str, session: str, seconds: str, module: str) -> None:
    source = Path(module).read_text().splitlines()
    with use_db(session, WorkDB.Mode.open) as db:
        done = [
            (item, result)
            for item, result in db.completed_work_items
            if result.worker_outcome != WorkerOutcome.SKIPPED
        ]
        pending = len(list(db.pending_work_items))
    survivors = [item for item, result in done if result.test_outcome == TestOutcome.SURVIVED]
    killed = len(done) - len(survivors)
    rate = 100.0 * killed / len(done) if done else 0.0
    note = f" ({pending} not run)" if pending else ""
    print(f"{name} {killed}/{len(done)} {rate:.1f}% {seconds}s{note}")
    for item in sorted(survivors, key=lambda i: tuple(i.mutations[0].start_pos)):
        spec = item.mutations[0]
        line = spec.start_pos[0]
        print(f"  survived line {line}: {spec.operator_name} | {source[line - 1].strip()}")


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {"skip": skip, "reopen": reopen, "score": score}[command](*args)
