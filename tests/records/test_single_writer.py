"""The recorder is the single writer: no other module writes audit records, builds an
audit log or changes a tally (issue 7: one sink, many observers)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "worker"
RECORDER = PACKAGE / "records" / "recorder.py"
TALLY = PACKAGE / "records" / "tally.py"
AUDIT = PACKAGE / "records" / "audit.py"
RUNTIME = PACKAGE / "runtime" / "runtime.py"


def modules() -> Iterator[tuple[Path, ast.Module]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path, ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def names_in(node: ast.AST) -> list[str]:
    """The attribute and variable names of a dotted expression, outermost last."""
    out: list[str] = []
    while isinstance(node, ast.Attribute):
        out.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        out.append(node.id)
    return out[::-1]


def audit_writes(tree: ast.Module) -> list[int]:
    """Lines calling ``<...audit...>.write(...)``: a record written around the recorder."""
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "write"
        and any("audit" in name.lower() for name in names_in(node.func.value))
    ]


def constructions(tree: ast.Module, cls: str) -> list[int]:
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and names_in(node.func)[-1:] == [cls]
    ]


def tally_changes(tree: ast.Module) -> list[int]:
    """Lines assigning to an attribute of a tally (``x.tally.deleted += 1``, ``t.rows = 0``)."""
    lines = []
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        for target in targets:
            while isinstance(target, ast.Subscript):
                target = target.value  # tally.failure_reasons[reason] += n
            chain = names_in(target)
            if isinstance(target, ast.Attribute) and any("tally" in n for n in chain[:-1]):
                lines.append(node.lineno)
    return lines


def test_only_the_recorder_writes_audit_records() -> None:
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{line}"
        for path, tree in modules()
        if path not in (RECORDER, AUDIT)
        for line in audit_writes(tree)
    ]
    assert offenders == [], "audit records written around the Recorder"


def test_only_the_runtime_builds_the_audit_log_and_only_the_recorder_builds_a_tally() -> None:
    built = {
        (cls, path.relative_to(PACKAGE.parent).as_posix())
        for path, tree in modules()
        for cls in ("AuditLog", "Tally", "Recorder")
        if constructions(tree, cls)
    }
    assert built == {
        ("AuditLog", "worker/runtime/runtime.py"),
        ("Tally", "worker/records/recorder.py"),
        ("Recorder", "worker/runtime/runtime.py"),
    }


def test_no_module_but_the_recorder_and_the_tally_itself_changes_a_tally() -> None:
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{line}"
        for path, tree in modules()
        if path not in (RECORDER, TALLY)
        for line in tally_changes(tree)
    ]
    assert offenders == [], "tallies changed around the Recorder"


@pytest.mark.parametrize(
    ("source", "finder"),
    [
        ("recorder.audit.write('acknowledged', entry_id='1-0')", audit_writes),
        ("self._audit.write('x')", audit_writes),
        ("recorder.tally.dead_lettered += 1", tally_changes),
        ("recorder.tally.input_read = True", tally_changes),
        ("self.recorder.tally.failure_reasons['x'] += 2", tally_changes),
    ],
)
def test_the_checks_see_the_writes_they_forbid(source: str, finder: object) -> None:
    assert callable(finder)
    assert finder(ast.parse(source)) == [1]


def test_the_checks_leave_reads_alone() -> None:
    tree = ast.parse("n = recorder.tally.deleted\nout.write(str(n))\nsummary(t.rows)")
    assert (audit_writes(tree), tally_changes(tree)) == ([], [])
