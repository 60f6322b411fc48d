"""The failed-out file says why each id failed (issue #12): a ``reason`` column that ``run
--input`` ignores when the file is fed back, this run's reason for a failure of this run,
``still_present`` for an id a read-back found after its deletion, and a pointer to the
earlier runs' audit logs for a failure carried over from them."""

from __future__ import annotations

import csv
import errno
import io
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from conftest import read_audit, write_csv

from worker.commands.run import run_purge
from worker.errors import Kind, OutputError
from worker.input.batching import Batch
from worker.records import failed_out as failed_out_module
from worker.records.audit import AuditLog
from worker.records.failed_out import CARRIED, HEADER, STILL_PRESENT, FailedOut
from worker.records.recorder import Recorder
from worker.sandbox import FaultConfig
from worker.sandbox.runner import SandboxHandle
from worker.sending.classify import Verdict
from worker.settings import Settings

MakeSettings = Callable[..., Settings]
UNKNOWN = 999  # a campaign the sandbox does not have


def failed_out(path: Path) -> list[tuple[int, int, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        header, *rows = list(csv.reader(handle))
    assert tuple(header) == HEADER == ("campaign_id", "audience_id", "reason")
    return sorted((int(c), int(a), reason) for c, a, reason in rows)


def ids_csv(path: Path, pairs: list[tuple[int, int]]) -> Path:
    return write_csv(path, ["campaign_id,audience_id", *(f"{c},{a}" for c, a in pairs)])


@pytest.mark.parametrize("faults", [FaultConfig(error_ratio=1.0)], ids=["every-request-5xx"])
async def test_each_failed_id_says_why_it_failed(
    make_settings: MakeSettings, tmp_path: Path
) -> None:
    path = ids_csv(tmp_path / "ids.csv", [(42, 1), (42, 2), (UNKNOWN, 3)])
    settings = make_settings(max_attempts=1)

    result = await run_purge(settings, str(path), out=io.StringIO())

    assert result.exit_code == 1
    assert settings.failed_out is not None
    listed = failed_out(settings.failed_out)
    assert [(c, a) for c, a, _ in listed] == [(42, 1), (42, 2), (UNKNOWN, 3)]
    reasons = {reason for _, _, reason in listed}
    assert len(reasons) == 1
    assert reasons.pop().startswith("gave up after retries")


@pytest.mark.parametrize("faults", [FaultConfig(error_ratio=1.0)], ids=["every-request-5xx"])
async def test_the_failed_out_file_with_its_reasons_is_taken_back_by_run_input(
    sandbox: SandboxHandle, make_settings: MakeSettings, tmp_path: Path
) -> None:
    pairs = [(42, i) for i in range(1, 31)]
    first = make_settings(max_attempts=1)
    failed = await run_purge(first, str(ids_csv(tmp_path / "ids.csv", pairs)), out=io.StringIO())
    assert failed.exit_code == 1
    assert first.failed_out is not None
    assert len(failed_out(first.failed_out)) == 30
    sandbox.state.replace_faults(FaultConfig())
    again = make_settings(
        audit_log=tmp_path / "again.jsonl",
        failed_out=tmp_path / "again-failed.csv",
        report=tmp_path / "again.json",
        state_dir=tmp_path / "again-state",
    )

    result = await run_purge(again, str(first.failed_out), out=io.StringIO())

    assert result.exit_code == 0, result.summary()
    t = result.tally
    assert (t.rows, t.valid, t.rejected, t.deleted) == (30, 30, 0, 30)
    assert not any(sandbox.state.campaigns[42].alive(i) for _, i in pairs)
    assert failed_out(tmp_path / "again-failed.csv") == []


async def test_earlier_failures_not_sent_again_point_to_the_earlier_runs_and_a_retry_says_why(
    make_settings: MakeSettings, tmp_path: Path
) -> None:
    path = ids_csv(tmp_path / "ids.csv", [(42, 1), (UNKNOWN, 2), (UNKNOWN, 3)])
    settings = make_settings()
    assert (await run_purge(settings, str(path), out=io.StringIO())).exit_code == 1
    assert settings.failed_out is not None
    this_run = [(UNKNOWN, 2, "unknown campaign"), (UNKNOWN, 3, "unknown campaign")]
    assert failed_out(settings.failed_out) == this_run

    left = await run_purge(
        make_settings(retry_failed=False, audit_log=tmp_path / "left.jsonl"),
        str(path),
        out=io.StringIO(),
    )

    assert left.exit_code == 1
    assert failed_out(settings.failed_out) == [(UNKNOWN, 2, CARRIED), (UNKNOWN, 3, CARRIED)]

    retried = await run_purge(
        make_settings(audit_log=tmp_path / "retried.jsonl"), str(path), out=io.StringIO()
    )

    assert retried.exit_code == 1
    assert retried.tally.failed == 2
    assert failed_out(settings.failed_out) == this_run


def test_ids_a_read_back_finds_still_present_are_listed_with_reason_still_present(
    tmp_path: Path,
) -> None:
    audit = AuditLog(tmp_path / "audit.jsonl", "run-1")
    recorder = Recorder(audit)
    listing = FailedOut(tmp_path / "failed.csv", recorder.failed_pairs)
    recorder.subscribe(listing)
    recorder.run_started()
    deleted = Verdict(Kind.DELETED, 200, "deleted")
    recorder.deleted(Batch(42, (1, 2, 3), lines=(2, 3, 4)), deleted, attempts=1, latency_ms=1.0)

    recorder.verified(42, checked=3, still_present=[2, 3], listed=2, pages=1)

    live = failed_out(tmp_path / "failed.csv")  # before the end too: a crash leaves it so
    listing.close()
    audit.close()
    assert (
        live
        == failed_out(tmp_path / "failed.csv")
        == [
            (42, 2, STILL_PRESENT),
            (42, 3, STILL_PRESENT),
        ]
    )


async def test_a_failed_out_file_that_cannot_be_replaced_ends_the_run_with_74_in_its_record(
    make_settings: MakeSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At the end the file is replaced by the ids still failed; a full disk then is the
    run's end (exit 74), and run_finished and the report say so (it is written first)."""

    def full(path: Path, data: bytes, *, durable: bool = True) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(failed_out_module, "write_atomic", full)
    path = write_csv(tmp_path / "ids.csv", ["campaign_id,audience_id", "42,1", "999,2"])
    settings = make_settings()

    with pytest.raises(OutputError, match="cannot write the failed-id file"):
        await run_purge(settings, str(path), out=io.StringIO())

    finished = read_audit(settings.audit_log)[-1]
    assert (finished["event"], finished["exit_code"]) == ("run_finished", 74)
    assert "No space left on device" in finished["error"]
    assert settings.report is not None
    assert orjson.loads(settings.report.read_bytes())["exit_code"] == 74
