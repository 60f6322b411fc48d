"""``purge_files``: the audit files of a whole purge, found from its latest file by the
``previous`` links a resumed run writes, so that a read-back covers every run's deletions."""

from __future__ import annotations

import io
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import read_audit, write_csv

from worker.commands.run import run_purge
from worker.records.audit import AuditLog
from worker.records.purge_logs import (
    Partial,
    PurgeFiles,
    deleted_by_campaign,
    purge_files,
    whole_purge,
)
from worker.records.report import RunResult
from worker.sandbox.runner import SandboxHandle
from worker.settings import Settings
from worker.settings.rate import RateSpec

MakeSettings = Callable[..., Settings]
IDS = range(1, 201)


@pytest.fixture
def ids(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "ids.csv", [str(i) for i in IDS])


async def stopped_by_the_deadline(
    make_settings: MakeSettings, ids: Path, audit_log: Path, **overrides: Any
) -> RunResult:
    """A run of the purge whose --deadline has passed: exit 75, its state left to resume."""
    settings = make_settings(
        campaign_id=42,
        audit_log=audit_log,
        deadline=datetime.now(UTC) - timedelta(seconds=1),
        **overrides,
    )
    result = await run_purge(settings, str(ids), out=io.StringIO())
    assert result.exit_code == 75
    return result


async def resumed(make_settings: MakeSettings, ids: Path, audit_log: Path) -> RunResult:
    """The same purge run again to its end, writing ``audit_log``."""
    result = await run_purge(
        make_settings(campaign_id=42, audit_log=audit_log), str(ids), out=io.StringIO()
    )
    assert result.exit_code == 0
    return result


async def test_a_resumed_purges_files_are_found_from_its_latest_oldest_first(
    make_settings: MakeSettings, ids: Path, tmp_path: Path
) -> None:
    first, second, third = (tmp_path / f"{n}.jsonl" for n in ("first", "second", "third"))
    await stopped_by_the_deadline(make_settings, ids, first)
    await stopped_by_the_deadline(make_settings, ids, second)
    await resumed(make_settings, ids, third)

    assert purge_files(third) == PurgeFiles([first, second, third])
    assert purge_files(second) == PurgeFiles([first, second])
    assert purge_files(first) == PurgeFiles([first])


async def test_the_files_found_hold_every_id_the_purge_deleted(
    make_settings: MakeSettings, ids: Path, tmp_path: Path, sandbox: SandboxHandle
) -> None:
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    # 40 requests at 10/s: the deadline stops the run about half way (with 2 s of slack
    # either side for a loaded machine).
    slow = make_settings(
        campaign_id=42,
        audit_log=first,
        batch_size=5,
        rate=RateSpec(10, 1.0),
        deadline=datetime.now(UTC) + timedelta(seconds=2),
    )
    stopped = await run_purge(slow, str(ids), out=io.StringIO())
    assert stopped.exit_code == 75
    assert 0 < stopped.tally.deleted < len(IDS)
    again = await resumed(make_settings, ids, second)

    found = purge_files(second)

    assert found.files == [first, second]
    assert again.tally.deleted < len(IDS)  # the last run's own file misses the first's ids
    assert deleted_by_campaign(found.files).count(42) == len(IDS)
    assert not any(sandbox.state.campaigns[42].alive(i) for i in IDS)


async def test_runs_appended_to_one_fixed_audit_log_are_all_in_that_file(
    make_settings: MakeSettings, ids: Path, tmp_path: Path
) -> None:
    log = tmp_path / "audit.jsonl"
    await stopped_by_the_deadline(make_settings, ids, log)
    await resumed(make_settings, ids, log)
    assert [r["event"] for r in read_audit(log)].count("run_started") == 2

    assert purge_files(log) == PurgeFiles([log])


async def test_a_missing_earlier_file_ends_the_walk_and_is_named(
    make_settings: MakeSettings, ids: Path, tmp_path: Path
) -> None:
    first, second, third = (tmp_path / f"{n}.jsonl" for n in ("first", "second", "third"))
    await stopped_by_the_deadline(make_settings, ids, first)
    await stopped_by_the_deadline(make_settings, ids, second)
    await resumed(make_settings, ids, third)
    first.unlink()

    found = purge_files(third)

    assert (found.files, found.missing, found.complete) == ([second, third], first, False)
    assert found.reason is not None
    assert f"{second} continues {first}, which cannot be read" in found.reason


async def test_a_link_names_the_file_it_continues_by_absolute_path(
    make_settings: MakeSettings,
    ids: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Written from a relative --audit-log, the link still holds: a resume or a read-back
    from another directory follows it."""
    monkeypatch.chdir(tmp_path)
    await stopped_by_the_deadline(make_settings, ids, Path("first.jsonl"))
    await resumed(make_settings, ids, Path("second.jsonl"))
    link = read_audit(Path("second.jsonl"), chain=True)[0]["previous"]
    assert link["audit_log"] == str(tmp_path / "first.jsonl")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    found = purge_files(tmp_path / "second.jsonl")
    assert found == PurgeFiles([tmp_path / "first.jsonl", tmp_path / "second.jsonl"])


def test_a_relative_link_of_an_older_version_is_found_beside_the_file_linking_to_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Older versions wrote the link as given (relative to the run's directory): from
    another directory, the file of that name beside the one that links to it is taken,
    once it holds the record the link names."""
    (tmp_path / "purge-audit").mkdir()
    first = tmp_path / "purge-audit" / "first.jsonl"
    earlier = AuditLog(first, "run-a")
    earlier.write("run_started", command="run")
    head = earlier.head()
    earlier.close()
    later = AuditLog(
        tmp_path / "purge-audit" / "second.jsonl",
        "run-b",
        previous={**head, "audit_log": "purge-audit/first.jsonl"},
    )
    later.write("run_started", command="run")
    later.close()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    found = purge_files(later.path)

    assert found == PurgeFiles([first, later.path])


async def test_another_file_at_the_linked_path_is_not_taken_for_the_one_continued(
    make_settings: MakeSettings, ids: Path, tmp_path: Path
) -> None:
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    await stopped_by_the_deadline(make_settings, ids, first)
    await resumed(make_settings, ids, second)
    first.unlink()
    other = AuditLog(first, "another-purge")
    other.write("run_started", command="run")
    other.close()

    found = purge_files(second)

    assert (found.files, found.missing) == ([second], first)
    assert found.reason is not None
    assert "does not hold the record it continues" in found.reason


def test_a_link_back_to_a_file_already_found_ends_the_walk(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    looped = AuditLog(
        path,
        "run-b",
        previous={"audit_log": str(path), "run_id": "run-a", "last_seq": 0, "last_hash": "f" * 64},
    )
    looped.write("run_started", command="run")
    looped.close()

    found = purge_files(path)

    assert (found.files, found.missing) == ([path], path)
    assert found.reason is not None
    assert "(a loop)" in found.reason


def test_the_file_asked_about_must_be_readable(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        purge_files(tmp_path / "nope.jsonl")


# --- the files the state names ---------------------------------------------------------------


def audit_file(path: Path, run_id: str, ids: list[int]) -> dict[str, Any]:
    """A run's audit file deleting ``ids``; its entry as the state keeps it."""
    log = AuditLog(path, run_id)
    log.write("run_started", command="run")
    log.write("deleted", campaign_id=42, batch_id="b", audience_ids=ids)
    log.close()
    return {"run_id": run_id, "path": str(path), "deleted": len(ids)}


def test_the_files_the_state_names_are_read_back_even_without_a_link(tmp_path: Path) -> None:
    earlier = audit_file(tmp_path / "a" / "first.jsonl", "run-a", [1, 2, 3])
    latest = tmp_path / "b" / "second.jsonl"
    audit_file(latest, "run-b", [4])

    files, partial = whole_purge(latest, [earlier])

    assert (files, partial) == ([tmp_path / "a" / "first.jsonl", latest], None)


def test_a_file_the_state_names_that_is_gone_or_replaced_makes_it_partial(
    tmp_path: Path,
) -> None:
    gone = audit_file(tmp_path / "gone.jsonl", "run-a", [1, 2, 3])
    (tmp_path / "gone.jsonl").unlink()
    replaced = audit_file(tmp_path / "replaced.jsonl", "run-b", [4, 5])
    (tmp_path / "replaced.jsonl").unlink()
    audit_file(tmp_path / "replaced.jsonl", "another-purge", [6])  # another file there now
    latest = tmp_path / "latest.jsonl"
    audit_file(latest, "run-c", [7])

    files, partial = whole_purge(latest, [gone, replaced])

    assert files == [latest]
    assert partial == Partial([gone["path"], replaced["path"]], 5)
    assert partial.text() == (
        f"partly read back: 5 ids of earlier runs not checked ({gone['path']}, "
        f"{replaced['path']} cannot be found)"
    )


def test_a_run_that_recorded_no_deletion_is_no_loss_when_its_file_is_gone(
    tmp_path: Path,
) -> None:
    never_written = {"run_id": "run-a", "path": str(tmp_path / "none.jsonl"), "deleted": 0}
    latest = tmp_path / "latest.jsonl"
    audit_file(latest, "run-b", [7])

    assert whole_purge(latest, [never_written]) == ([latest], None)
