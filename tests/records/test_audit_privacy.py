"""The audit log lists every id a purge touched: the files and directories it creates are
its owner's only (0600 and 0700), whatever the umask lets through."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from worker.records.audit import AuditLog


@pytest.fixture(params=[0o022, 0o077], ids=["umask-022", "umask-077"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """The process umask for one test (put back afterwards: it is process-wide)."""
    mask = int(request.param)
    saved = os.umask(mask)
    try:
        yield mask
    finally:
        os.umask(saved)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_audit_file_is_created_0600_and_its_new_directories_0700(
    tmp_path: Path, umask: int
) -> None:
    path = tmp_path / "purge-audit" / "2026" / "audit.jsonl"
    log = AuditLog(path, "run-a")

    log.write("run_started", command="run")
    log.close()

    assert oct(mode(path)) == oct(0o600)
    assert [oct(mode(d)) for d in (path.parent.parent, path.parent)] == [oct(0o700)] * 2


def test_an_existing_directory_keeps_its_mode(tmp_path: Path, umask: int) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    log = AuditLog(shared / "audit.jsonl", "run-a")

    log.write("run_started", command="run")
    log.close()

    assert (oct(mode(shared)), oct(mode(shared / "audit.jsonl"))) == (oct(0o755), oct(0o600))
