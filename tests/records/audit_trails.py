"""Helpers of the audit-chain tests: runs written by the real ``AuditLog``, crashed or not,
and the edits an attacker (or a crash) makes to their files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

from worker.records.audit import AuditLog
from worker.records.audit_query import Problem, check
from worker.records.signing import Checker, Signer, load_checker, load_signer, new_key_pair

DELETED_MESSAGE = "Audience deleted successfully"
BATCHES = ((101, 102, 103), (104, 105), (106,))


def write_run(
    path: Path,
    run_id: str = "run-a",
    *,
    batches: tuple[tuple[int, ...], ...] = BATCHES,
    finish: bool = True,
    key: bytes | None = None,
    previous: dict[str, Any] | None = None,
) -> AuditLog:
    """run_started, one ``deleted`` record per batch, then (unless crashed) run_finished."""
    log = AuditLog(path, run_id, previous=previous, key=key)
    log.write("run_started", command="run", input="ids.csv")
    for number, ids in enumerate(batches):
        log.write(
            "deleted",
            campaign_id=42,
            batch_id=f"batch-{number}",
            audience_ids=list(ids),
            http_status=200,
            message=DELETED_MESSAGE,
        )
    if finish:
        log.write("run_finished", exit_code=0, deleted=sum(len(ids) for ids in batches))
    log.close()
    return log


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def rewrite(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(lines))


def write_records(path: Path, records: list[dict[str, Any]]) -> None:
    rewrite(path, [orjson.dumps(record) + b"\n" for record in records])


def last_hash(path: Path) -> str:
    return str(orjson.loads(lines_of(path)[-1])["hash"])


def head_of(path: Path) -> dict[str, Any]:
    """What a run continuing ``path`` names as ``previous``: its last complete record."""
    last = orjson.loads(lines_of(path)[-1])
    return {
        "audit_log": str(path),
        "run_id": last["run_id"],
        "last_seq": last["seq"],
        "last_hash": last["hash"],
    }


def errors_of(paths: list[Path], key: bytes | None = None) -> list[Problem]:
    return check(paths, key).errors


def warnings_of(paths: list[Path], key: bytes | None = None) -> list[tuple[Path, int, str]]:
    """The warnings of a trail that must verify (no error), as (file, line, reason)."""
    verdict = check(paths, key)
    assert verdict.errors == []
    return [(w.path, w.line, w.reason) for w in verdict.warnings]


_TEAR = """
import resource, signal, sys
from pathlib import Path
from worker.errors import OutputError
from worker.records.audit import AuditLog

path, run_id, limit = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
log = AuditLog(path, run_id)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
try:
    log.write("deleted", campaign_id=42, batch_id="torn", audience_ids=[107, 108],
              http_status=200, message="Audience deleted successfully")
except OutputError:
    sys.exit(0)
sys.exit("the write was not cut")
"""


def tear_next_record(path: Path, run_id: str, keep: int) -> int:
    """Let ``AuditLog`` write one more record of ``run_id``, cut by the kernel after ``keep``
    bytes (a file-size limit: a real write that stops midway, as in a crash); returns the
    byte the torn record starts at."""
    size = path.stat().st_size
    subprocess.run(
        [sys.executable, "-c", _TEAR, str(path), run_id, str(size + keep)],
        check=True,
        timeout=60,
    )
    assert path.stat().st_size == size + keep
    return size


def signing_keys(folder: Path) -> tuple[Signer, Checker]:
    """A fresh Ed25519 pair in ``folder`` (the private key 0600), loaded as the run and the
    auditor load them."""
    private, public = new_key_pair()
    (folder / "audit.key").write_bytes(private)
    (folder / "audit.key").chmod(0o600)
    (folder / "audit.pub").write_bytes(public)
    return load_signer(folder / "audit.key"), load_checker(folder / "audit.pub")
