"""Re-running the command adds the run's rows to the results file an earlier run of the purge
left, after its rows (copied as they were), so the file keeps every run's record; it is
still put in place at once and private. A file at the path that is not a results file is
refused before anything is sent, never overwritten. Real runs against the sandbox on
loopback; the still-present patch through the recorder."""

from __future__ import annotations

import contextlib
import csv
import errno
import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from conftest import write_csv

import worker.records.results as results_module
from worker.commands.run import run_purge
from worker.errors import Kind, OutputError, UsageError
from worker.exit_codes import ExitCode, exit_code_for
from worker.input.batching import Batch
from worker.records.audit import AuditLog
from worker.records.recorder import Recorder
from worker.records.results import HEADER, STILL_PRESENT, ResultsFile
from worker.sandbox import FaultConfig
from worker.sandbox.runner import SandboxHandle
from worker.sending.classify import Verdict
from worker.settings import Settings

MakeSettings = Callable[..., Settings]
Result = dict[str, str]


def results_of(path: Path) -> list[Result]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames or ()) == HEADER
        return list(reader)


@pytest.fixture
def results(tmp_path: Path) -> Path:
    return tmp_path / "out" / "results.csv"


@pytest.mark.parametrize("faults", [FaultConfig(error_ratio=1.0)], ids=["every-request-5xx"])
async def test_a_rerun_adds_its_rows_after_the_earlier_runs_rows(
    sandbox: SandboxHandle, make_settings: MakeSettings, tmp_path: Path, results: Path
) -> None:
    path = write_csv(tmp_path / "ids.csv", [str(i) for i in range(1, 26)])
    settings = make_settings(campaign_id=42, max_attempts=1, results=results)
    first = await run_purge(settings, str(path), out=io.StringIO())
    assert first.exit_code == 1
    earlier = results.read_bytes()
    sandbox.state.replace_faults(FaultConfig())

    again = await run_purge(settings, str(path), out=io.StringIO())

    assert again.exit_code == 0
    assert results.read_bytes().startswith(earlier)  # the earlier rows, as they were
    rows = results_of(results)
    assert [(r["outcome"], r["run_id"]) for r in rows] == [("failed", first.run_id)] * 25 + [
        ("deleted", again.run_id)
    ] * 25
    assert sorted(int(r["line"]) for r in rows[:25]) == list(range(1, 26))
    assert sorted(int(r["audience_id"]) for r in rows[25:]) == list(range(1, 26))
    assert {r["line"] for r in rows[25:]} == {""}  # retried earlier failures
    assert results.read_text(encoding="utf-8").count(",".join(HEADER)) == 1
    assert results.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in results.parent.iterdir()] == ["results.csv"]


async def test_a_rerun_with_nothing_left_to_do_leaves_the_file_as_it_was(
    make_settings: MakeSettings, tmp_path: Path, results: Path
) -> None:
    path = write_csv(tmp_path / "ids.csv", ["1", "2", "3"])
    settings = make_settings(campaign_id=42, results=results)
    assert (await run_purge(settings, str(path), out=io.StringIO())).exit_code == 0
    earlier = results.read_bytes()

    again = await run_purge(settings, str(path), out=io.StringIO())

    assert again.exit_code == 0
    assert again.tally.deleted == 0
    assert results.read_bytes() == earlier
    assert [p.name for p in results.parent.iterdir()] == ["results.csv"]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "campaign_id,audience_id\n42,1\n",
        "line,campaign_id,audience_id\n",
        ",".join((*HEADER, "note")) + "\r\n",
        "notes on the purge\n" + ",".join(HEADER) + "\n",
    ],
    ids=["empty", "an-id-list", "a-shorter-header", "a-longer-header", "header-not-first"],
)
async def test_a_file_at_the_results_path_that_is_not_a_results_file_is_refused_and_kept(
    sandbox: SandboxHandle, make_settings: MakeSettings, tmp_path: Path, results: Path, text: str
) -> None:
    path = write_csv(tmp_path / "ids.csv", ["1", "2", "3"])
    results.parent.mkdir()
    results.write_bytes(text.encode())
    settings = make_settings(campaign_id=42, results=results)

    with pytest.raises(UsageError, match="is not a results file") as refused:
        await run_purge(settings, str(path), out=io.StringIO())

    assert f"the results file {results} " in str(refused.value)
    assert exit_code_for(refused.value) == ExitCode.USAGE
    assert sandbox.state.requests_total == 0
    assert settings.audit_log is not None
    assert not settings.audit_log.exists()
    assert results.read_bytes() == text.encode()
    assert [p.name for p in results.parent.iterdir()] == ["results.csv"]


class Full:
    """A binary file on a full disk: every write fails with ENOSPC."""

    def __init__(self, handle: IO[bytes]) -> None:
        self._handle = handle

    def write(self, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)

    def __enter__(self) -> Full:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.close()


async def test_rows_that_cannot_be_added_leave_the_earlier_file_as_it_was_and_keep_the_spool(
    make_settings: MakeSettings, tmp_path: Path, results: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_csv(tmp_path / "ids.csv", ["1", "2", "3"])
    assert (
        await run_purge(
            make_settings(campaign_id=42, results=results), str(path), out=io.StringIO()
        )
    ).exit_code == 0
    earlier = results.read_bytes()
    replacing = results_module.replacing

    @contextlib.contextmanager
    def full(target: Path, **kwargs: Any) -> Iterator[Any]:
        with replacing(target, **kwargs) as handle:
            yield Full(handle)  # the file that replaces it

    monkeypatch.setattr(results_module, "replacing", full)
    more = write_csv(tmp_path / "more.csv", ["4", "5"])
    settings = make_settings(campaign_id=42, results=results, state_dir=tmp_path / "more")

    with pytest.raises(OutputError, match=r"cannot write the results file .*\(ENOSPC\)"):
        await run_purge(settings, str(more), out=io.StringIO())

    assert results.read_bytes() == earlier
    [spool] = [p for p in results.parent.iterdir() if p.name != "results.csv"]
    assert spool.name.endswith(".partial")
    assert sorted(r["audience_id"] for r in results_of(spool)) == ["4", "5"]


# -- the observer, through the recorder ------------------------------------------------------

DELETED = Verdict(Kind.DELETED, 200, "deleted", "Audience deleted successfully")


def run_of(tmp_path: Path, run_id: str) -> tuple[Recorder, ResultsFile, AuditLog]:
    audit = AuditLog(tmp_path / f"{run_id}.jsonl", run_id)
    results = ResultsFile(tmp_path / "results.csv", run_id)
    return Recorder(audit, [results]), results, audit


def test_a_read_back_patches_only_this_runs_rows_and_copies_the_earlier_ones(
    tmp_path: Path,
) -> None:
    recorder, results, audit = run_of(tmp_path, "run-1")
    recorder.run_started()
    recorder.deleted(Batch(42, (1, 2, 3), lines=(2, 3, 4)), DELETED, attempts=1, latency_ms=1.0)
    results.close()
    audit.close()
    earlier = (tmp_path / "results.csv").read_bytes()
    recorder, results, audit = run_of(tmp_path, "run-2")
    recorder.run_started()
    recorder.deleted(Batch(42, (5,), lines=(6,)), DELETED, attempts=2, latency_ms=1.0)

    recorder.verified(42, checked=4, still_present=[2, 5], listed=2, pages=1)
    results.close()
    audit.close()

    assert (tmp_path / "results.csv").read_bytes().startswith(earlier)
    first, second = Batch(42, (1, 2, 3)).batch_id, Batch(42, (5,)).batch_id
    assert [list(r.values()) for r in results_of(tmp_path / "results.csv")] == [
        ["2", "42", "1", "deleted", "", "200", "1", first, "run-1"],
        ["3", "42", "2", "deleted", "", "200", "1", first, "run-1"],  # as run-1 wrote it
        ["4", "42", "3", "deleted", "", "200", "1", first, "run-1"],
        ["6", "42", "5", STILL_PRESENT, STILL_PRESENT, "200", "2", second, "run-2"],
        ["", "42", "2", STILL_PRESENT, STILL_PRESENT, "", "", "", "run-2"],  # no row in run-2
    ]
    assert (tmp_path / "results.csv").stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "results.csv",
        "run-1.jsonl",
        "run-2.jsonl",
    ]


def test_an_earlier_file_whose_last_line_lost_its_end_keeps_that_row_whole(
    tmp_path: Path,
) -> None:
    earlier = ",".join(HEADER) + "\r\n" + "2,42,1,deleted,,200,1,b1,run-1"  # edited by hand
    (tmp_path / "results.csv").write_bytes(earlier.encode())
    recorder, results, audit = run_of(tmp_path, "run-2")
    recorder.run_started()
    recorder.deleted(Batch(42, (5,), lines=(6,)), DELETED, attempts=1, latency_ms=1.0)

    results.close()
    audit.close()

    batch = Batch(42, (5,)).batch_id
    assert [list(r.values()) for r in results_of(tmp_path / "results.csv")] == [
        ["2", "42", "1", "deleted", "", "200", "1", "b1", "run-1"],
        ["6", "42", "5", "deleted", "", "200", "1", batch, "run-2"],
    ]
