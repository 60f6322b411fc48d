"""The state names every audit file of its purge (``audit_files``), so that a read-back
finds them from any directory; a state of an older version names what it can."""

from __future__ import annotations

from pathlib import Path

import orjson

from worker.records.audit import AuditLog
from worker.records.purge_logs import Partial, whole_purge
from worker.state.checkpoint import STATE_FILE, Checkpoint, StateStore

ENTRY = {"run_id": "run-a", "path": "/srv/purge-audit/audit-run-a.jsonl", "deleted": 15}


def saved(tmp_path: Path, point: Checkpoint) -> StateStore:
    store = StateStore(tmp_path / "state")
    store.save(point)
    return store


def test_the_audit_files_are_kept_in_the_state(tmp_path: Path) -> None:
    store = saved(tmp_path, Checkpoint("ids.csv", audit_files=[ENTRY]))

    assert store.load().audit_files == [ENTRY]


def test_a_state_of_an_older_version_names_its_head_and_last_runs_files_ids_unknown(
    tmp_path: Path,
) -> None:
    point = Checkpoint(
        "ids.csv",
        run_ids=["run-a", "run-b"],
        audit={"audit_log": "purge-audit/a.jsonl", "run_id": "run-a", "last_hash": "f" * 64},
        audit_pending="purge-audit/b.jsonl",
    )
    store = saved(tmp_path, point)
    document = orjson.loads(store.path.read_bytes())
    del document["audit_files"]
    (store.directory / STATE_FILE).write_bytes(orjson.dumps(document))

    assert store.load().audit_files == [
        {"run_id": "run-a", "path": "purge-audit/a.jsonl", "deleted": None},
        {"run_id": "run-b", "path": "purge-audit/b.jsonl", "deleted": None},
    ]


def test_a_file_of_an_older_state_not_found_makes_the_read_back_partial_count_unknown(
    tmp_path: Path,
) -> None:
    latest = AuditLog(tmp_path / "latest.jsonl", "run-c")
    latest.write("run_started", command="run")
    latest.close()
    old = {"run_id": "run-b", "path": "purge-audit/b.jsonl", "deleted": None}

    files, partial = whole_purge(latest.path, [old])

    assert files == [latest.path]
    assert partial == Partial([str(Path("purge-audit/b.jsonl").absolute())], None)
    assert partial.text().startswith("partly read back: the ids of earlier runs in ")
