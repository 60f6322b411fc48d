"""The results file (issue #12, ``--results``): one CSV row per input row, with its outcome,
against the real sandbox on loopback; the still-present patch through the recorder."""

from __future__ import annotations

import csv
import errno
import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import orjson
import pytest
from conftest import read_audit, write_csv

import worker.input.planning as planning
import worker.records.results as results_module
from worker.commands.run import run_purge
from worker.errors import Kind, OutputError, UsageError
from worker.exit_codes import ExitCode, exit_code_for
from worker.input.batching import Batch
from worker.input.validate import Rejected, Row
from worker.records.audit import AuditLog
from worker.records.recorder import ID_CELL_CHARS, Recorder
from worker.records.results import DUPLICATE, HEADER, STILL_PRESENT, ResultsFile
from worker.sandbox import FaultConfig
from worker.sandbox.runner import SandboxHandle
from worker.sending.classify import Verdict
from worker.sending.credentials import Secret
from worker.settings import Settings

MakeSettings = Callable[..., Settings]
Result = dict[str, str]
CHAOS = FaultConfig(
    seed=3, error_ratio=0.2, drop_ratio=0.1, limit_per_second=40, retry_after_on_5xx=True
)


def results_of(path: Path) -> list[Result]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames or ()) == HEADER
        return list(reader)


def by_line(rows: list[Result]) -> list[Result]:
    return sorted(rows, key=lambda r: int(r["line"]))


def settled_in(audit: Path) -> dict[tuple[int, int], dict[str, Any]]:
    """(campaign, id) → the ``deleted`` or ``failed`` record that settled it."""
    return {
        (r["campaign_id"], i): r
        for r in read_audit(audit)
        if r["event"] in ("deleted", "failed")
        for i in r["audience_ids"]
    }


def row(
    line: object,
    campaign: object,
    audience: object,
    outcome: str,
    reason: str = "",
    *,
    status: object = "",
    attempts: object = "",
    batch: str = "",
    run: str,
) -> Result:
    """A results row as csv reads it back (every cell a string)."""
    cells = (line, campaign, audience, outcome, reason, status, attempts, batch, run)
    return dict(zip(HEADER, map(str, cells), strict=True))


def sent_row(line: int, record: dict[str, Any], audience: int) -> Result:
    """The row of an id that the audit's ``deleted`` or ``failed`` ``record`` settled."""
    return row(
        line,
        record["campaign_id"],
        audience,
        record["event"],
        record.get("reason", ""),
        status=record["http_status"] if record["http_status"] is not None else "",
        attempts=record["attempts"],
        batch=record["batch_id"],
        run=record["run_id"],
    )


@pytest.fixture
def results(tmp_path: Path) -> Path:
    return tmp_path / "out" / "results.csv"


async def test_every_input_row_has_one_row_with_its_outcome_and_fields(
    sandbox: SandboxHandle, make_settings: MakeSettings, tmp_path: Path, results: Path
) -> None:
    rows = ["42,101", "42,102", "999,7", "42,abc", "42,101", "42,103", "999,8"]
    path = write_csv(tmp_path / "ids.csv", ["campaign_id,audience_id", *rows])
    settings = make_settings(results=results, batch_size=10)

    result = await run_purge(settings, str(path), out=io.StringIO())

    assert result.exit_code == 1
    run = result.run_id
    kept = Batch(42, (101, 102, 103)).batch_id
    refused = Batch(999, (7, 8)).batch_id
    assert by_line(results_of(results)) == [
        row(2, 42, 101, "deleted", status=200, attempts=1, batch=kept, run=run),
        row(3, 42, 102, "deleted", status=200, attempts=1, batch=kept, run=run),
        row(
            4, 999, 7, "failed", "unknown campaign", status=400, attempts=1, batch=refused, run=run
        ),
        row(5, "", "abc", "rejected", "audience_id not an integer", run=run),
        row(6, 42, 101, "duplicate", DUPLICATE, run=run),
        row(7, 42, 103, "deleted", status=200, attempts=1, batch=kept, run=run),
        row(
            8, 999, 8, "failed", "unknown campaign", status=400, attempts=1, batch=refused, run=run
        ),
    ]
    assert not sandbox.state.campaigns[42].alive(101)
    assert [p.name for p in results.parent.iterdir()] == ["results.csv"]  # no spool left
    assert results.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("faults", [FaultConfig(error_ratio=1.0)], ids=["every-request-5xx"])
async def test_a_batch_that_gave_up_after_retries_fails_with_the_reason_and_attempts(
    make_settings: MakeSettings, tmp_path: Path, results: Path
) -> None:
    path = write_csv(tmp_path / "ids.csv", [str(i) for i in range(1, 16)])
    settings = make_settings(campaign_id=42, results=results, max_attempts=2)

    result = await run_purge(settings, str(path), out=io.StringIO())

    assert result.exit_code == 1
    assert settings.audit_log is not None
    settled = settled_in(settings.audit_log)
    rows = by_line(results_of(results))
    assert rows == [sent_row(n, settled[(42, n)], n) for n in range(1, 16)]
    assert {(r["outcome"], r["attempts"]) for r in rows} == {("failed", "2")}
    assert all(r["reason"].startswith("gave up after retries") for r in rows)
    assert all(r["http_status"].startswith("5") for r in rows)


async def test_a_rejected_row_keeps_only_its_line_id_cell_cut_to_64_and_reason(
    make_settings: MakeSettings, tmp_path: Path, results: Path
) -> None:
    cell = "A" * 200
    path = write_csv(
        tmp_path / "ids.csv",
        ["campaign_id,audience_id,note", f"42,{cell},call Jane on +44 7700 900123", "42,5,ok"],
    )
    settings = make_settings(results=results)

    result = await run_purge(settings, str(path), out=io.StringIO())

    assert result.exit_code == 0
    rejected = [r for r in results_of(results) if r["outcome"] == "rejected"]
    assert rejected == [
        row(
            2, "", cell[:ID_CELL_CHARS], "rejected", "audience_id not an integer", run=result.run_id
        )
    ]
    text = results.read_text(encoding="utf-8")
    assert "Jane" not in text
    assert "7700" not in text
    assert "A" * (ID_CELL_CHARS + 1) not in text


async def test_lines_are_the_inputs_on_the_fast_chunk_path_of_a_big_plain_file(
    make_settings: MakeSettings,
    tmp_path: Path,
    results: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    chunks: list[int] = []
    original = planning._plan_chunk

    def counting(plan: Any, chunk: Any, *args: Any) -> Iterator[Batch]:
        chunks.append(len(chunk.audience_ids))
        return original(plan, chunk, *args)

    monkeypatch.setattr(planning, "_plan_chunk", counting)
    ids = [str(10**9 + 7 * n) for n in range(50_000)]
    ids[20_000] = "0042"  # a block that goes row by row, and a duplicate in another
    ids[30_000] = ids[29_000]
    path = write_csv(tmp_path / "ids.csv", ids)
    settings = make_settings(campaign_id=42, results=results, batch_size=500, concurrency=8)

    result = await run_purge(settings, str(path), out=io.StringIO())

    assert result.exit_code == 0
    assert sum(chunks) > 30_000  # all but three blocks of ~6,000 lines
    rows = results_of(results)
    assert sorted(int(r["line"]) for r in rows) == list(range(1, 50_001))
    assert all(ids[int(r["line"]) - 1] == r["audience_id"] for r in rows)
    outcomes = [r["outcome"] for r in by_line(rows)]
    assert outcomes.count("deleted") == 49_998
    assert (outcomes[20_000], outcomes[30_000]) == ("rejected", "duplicate")
    assert settings.audit_log is not None
    settled = settled_in(settings.audit_log)
    sent = [r for r in rows if r["outcome"] == "deleted"]
    assert all(settled[(42, int(r["audience_id"]))]["batch_id"] == r["batch_id"] for r in sent)


@pytest.mark.parametrize("faults", [FaultConfig(max_batch=7)], ids=["max-batch-7"])
async def test_batches_split_by_a_413_keep_each_id_on_its_line(
    sandbox: SandboxHandle, make_settings: MakeSettings, tmp_path: Path, results: Path
) -> None:
    lines = ["campaign_id,audience_id"]
    for n in range(1, 61):
        lines.append(f"42,{1000 + n}")
        if n % 4 == 0:
            lines.append("42,x")  # lines and ids drift apart
    path = write_csv(tmp_path / "ids.csv", lines)
    settings = make_settings(results=results, batch_size=20, concurrency=1)

    result = await run_purge(settings, str(path), out=io.StringIO())

    assert result.exit_code == 0
    assert sandbox.state.by_status[413] >= 1
    assert settings.audit_log is not None
    settled = settled_in(settings.audit_log)
    deleted = [r for r in results_of(results) if r["outcome"] == "deleted"]
    assert by_line(deleted) == [
        sent_row(n, settled[(42, int(lines[n - 1][3:]))], int(lines[n - 1][3:]))
        for n in range(2, len(lines) + 1)
        if lines[n - 1] != "42,x"
    ]
    assert all(len(settled[(42, int(r["audience_id"]))]["audience_ids"]) <= 7 for r in deleted)


@pytest.mark.parametrize("faults", [CHAOS], ids=["chaos"])
async def test_a_chaotic_run_still_gives_each_row_exactly_one_row(
    make_settings: MakeSettings, tmp_path: Path, results: Path
) -> None:
    path = write_csv(tmp_path / "ids.csv", [str(i) for i in range(1, 401)])
    settings = make_settings(campaign_id=42, results=results, max_attempts=8)

    result = await run_purge(settings, str(path), out=io.StringIO())

    assert result.exit_code == 0, result.summary()
    assert result.tally.retries > 0
    assert settings.audit_log is not None
    settled = settled_in(settings.audit_log)
    assert by_line(results_of(results)) == [sent_row(n, settled[(42, n)], n) for n in range(1, 401)]


async def test_rows_a_stopped_run_did_not_settle_have_their_row_in_the_next_runs_file(
    sandbox: SandboxHandle, make_settings: MakeSettings, tmp_path: Path, token: str
) -> None:
    path = write_csv(tmp_path / "ids.csv", [str(i) for i in range(1, 101)])
    first = make_settings(
        campaign_id=42, token=Secret("wrong-token"), results=tmp_path / "first.csv"
    )

    stopped = await run_purge(first, str(path), out=io.StringIO())

    assert stopped.exit_code == ExitCode.FATAL
    assert first.audit_log is not None
    refused = settled_in(first.audit_log)
    early = results_of(tmp_path / "first.csv")
    assert 0 < len(early) < 100
    assert by_line(early) == sorted(
        (sent_row(n, refused[(42, n)], n) for _, n in refused), key=lambda r: int(r["line"])
    )
    again = make_settings(
        campaign_id=42, audit_log=tmp_path / "again.jsonl", results=tmp_path / "again.csv"
    )

    done = await run_purge(again, str(path), out=io.StringIO())

    assert done.exit_code == 0
    later = results_of(tmp_path / "again.csv")
    assert sorted(int(r["line"]) for r in later) == list(range(1, 101))
    assert {r["outcome"] for r in later} == {"deleted"}
    assert {r["run_id"] for r in later} == {done.run_id}


@pytest.mark.parametrize("faults", [FaultConfig(error_ratio=1.0)], ids=["every-request-5xx"])
async def test_a_resumed_run_gives_the_earlier_failures_it_retries_rows_without_a_line(
    sandbox: SandboxHandle, make_settings: MakeSettings, tmp_path: Path
) -> None:
    path = write_csv(tmp_path / "ids.csv", [str(i) for i in range(1, 26)])
    first = make_settings(campaign_id=42, max_attempts=1, results=tmp_path / "first.csv")
    assert (await run_purge(first, str(path), out=io.StringIO())).exit_code == 1
    assert {r["outcome"] for r in results_of(tmp_path / "first.csv")} == {"failed"}
    sandbox.state.replace_faults(FaultConfig())
    again = make_settings(
        campaign_id=42, audit_log=tmp_path / "again.jsonl", results=tmp_path / "again.csv"
    )

    done = await run_purge(again, str(path), out=io.StringIO())

    assert done.exit_code == 0
    assert done.tally.already_done == 0
    settled = settled_in(tmp_path / "again.jsonl")
    rows = sorted(results_of(tmp_path / "again.csv"), key=lambda r: int(r["audience_id"]))
    assert rows == [sent_row("", settled[(42, n)], n) for n in range(1, 26)]  # type: ignore[arg-type]


async def test_a_dry_run_writes_no_results_file(
    sandbox: SandboxHandle, make_settings: MakeSettings, tmp_path: Path, results: Path
) -> None:
    path = write_csv(tmp_path / "ids.csv", ["1", "2", "abc"])
    results.parent.mkdir()
    results.write_text("an earlier run's results\n")
    settings = make_settings(campaign_id=42, results=results, dry_run=True, token=None)

    planned = await run_purge(settings, str(path), out=io.StringIO())

    assert planned.exit_code == 0
    assert results.read_text() == "an earlier run's results\n"
    assert [p.name for p in results.parent.iterdir()] == ["results.csv"]


@pytest.mark.parametrize("other", ["input", "failed_out", "report", "audit_log"])
async def test_a_results_path_that_is_the_input_or_another_output_is_refused(
    sandbox: SandboxHandle, make_settings: MakeSettings, tmp_path: Path, other: str
) -> None:
    path = write_csv(tmp_path / "ids.csv", ["1", "2", "3"])
    settings = make_settings(campaign_id=42)
    same = path if other == "input" else getattr(settings, other)
    settings = make_settings(campaign_id=42, results=same)

    with pytest.raises(
        UsageError, match=r"--results .* is the same file as|is the same file as --results"
    ):
        await run_purge(settings, str(path), out=io.StringIO())

    assert path.read_text() == "1\n2\n3\n"
    assert sandbox.state.requests_total == 0


async def test_a_results_file_that_cannot_be_created_stops_the_run_before_anything_is_sent(
    sandbox: SandboxHandle, make_settings: MakeSettings, tmp_path: Path
) -> None:
    path = write_csv(tmp_path / "ids.csv", ["1", "2", "3"])
    not_a_directory = write_csv(tmp_path / "plain-file", ["x"])
    settings = make_settings(campaign_id=42, results=not_a_directory / "results.csv")

    with pytest.raises(OutputError, match="cannot write the results file") as raised:
        await run_purge(settings, str(path), out=io.StringIO())

    assert exit_code_for(raised.value) == ExitCode.IO_ERROR
    assert sandbox.state.requests_total == 0


class FillingUp:
    """A text file that fails with ENOSPC once ``room`` characters were written to it."""

    def __init__(self, handle: IO[str], room: int) -> None:
        self._handle = handle
        self._room = room

    def write(self, text: str) -> int:
        if len(text) > self._room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self._room -= len(text)
        return self._handle.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)

    def __enter__(self) -> FillingUp:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.close()


def filling_up(monkeypatch: pytest.MonkeyPatch, room: int) -> None:
    opened = results_module.open_private

    def opening(path: Path, mode: str, **kwargs: Any) -> Any:
        return FillingUp(opened(path, mode, **kwargs), room)

    monkeypatch.setattr(results_module, "open_private", opening)


async def test_a_results_file_that_fills_the_disk_mid_run_ends_it_with_exit_74(
    sandbox: SandboxHandle,
    make_settings: MakeSettings,
    tmp_path: Path,
    results: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    filling_up(monkeypatch, room=2_000)
    path = write_csv(tmp_path / "ids.csv", [str(i) for i in range(1, 2001)])
    settings = make_settings(campaign_id=42, results=results, batch_size=10)

    with pytest.raises(OutputError, match=r"cannot write the results file .*\(ENOSPC\)"):
        await run_purge(settings, str(path), out=io.StringIO())

    assert settings.audit_log is not None
    last = read_audit(settings.audit_log)[-1]
    assert (last["event"], last["exit_code"]) == ("run_finished", 74)
    assert sandbox.state.receipts[42].received_ids()
    assert len(sandbox.state.receipts[42].received_ids()) < 2000
    assert not results.exists()
    [spool] = results.parent.iterdir()
    assert spool.name.endswith(".partial")


async def test_a_results_file_that_cannot_be_put_in_place_raises_and_keeps_every_row(
    make_settings: MakeSettings,
    tmp_path: Path,
    results: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    opening = ResultsFile.__init__

    def then_blocked(self: ResultsFile, path: Path, run_id: str) -> None:
        opening(self, path, run_id)
        (path / "in-the-way").mkdir(parents=True)  # after the checks: a directory in the way

    monkeypatch.setattr(ResultsFile, "__init__", then_blocked)
    path = write_csv(tmp_path / "ids.csv", [str(i) for i in range(1, 31)])
    settings = make_settings(campaign_id=42, results=results)

    with pytest.raises(OutputError, match="cannot write the results file"):
        await run_purge(settings, str(path), out=io.StringIO())

    [spool] = [p for p in results.parent.iterdir() if p.name.endswith(".partial")]
    assert sorted(int(r["line"]) for r in results_of(spool)) == list(range(1, 31))
    # The file is put in place before run_finished, which says the run ended with 74.
    finished = read_audit(settings.audit_log)[-1]
    assert finished["event"] == "run_finished"
    assert finished["exit_code"] == 74
    assert "cannot write the results file" in finished["error"]
    assert settings.report is not None
    assert orjson.loads(settings.report.read_bytes())["exit_code"] == 74
    # Every deletion was audited and checkpointed: the same command has nothing to resend.
    again = await run_purge(
        make_settings(campaign_id=42, audit_log=tmp_path / "again.jsonl"),
        str(path),
        out=io.StringIO(),
    )
    assert (again.tally.requests, again.exit_code) == (0, 0)
    assert again.already_complete is not None  # the final checkpoint was written


# -- the observer, through the recorder ------------------------------------------------------

DELETED = Verdict(Kind.DELETED, 200, "deleted", "Audience deleted successfully")


@pytest.fixture
def recording(tmp_path: Path) -> Iterator[tuple[Recorder, ResultsFile]]:
    audit = AuditLog(tmp_path / "audit.jsonl", "run-1")
    results = ResultsFile(tmp_path / "results.csv", "run-1")
    recorder = Recorder(audit, [results])
    yield recorder, results
    audit.close()


def test_ids_a_read_back_finds_still_present_end_as_still_present(
    recording: tuple[Recorder, ResultsFile], tmp_path: Path
) -> None:
    recorder, results = recording
    batch = Batch(42, (1, 2, 3), lines=(2, 3, 4))
    recorder.run_started()
    recorder.deleted(batch, DELETED, attempts=1, latency_ms=1.0)
    recorder.deleted(Batch(77, (2,), lines=(5,)), DELETED, attempts=3, latency_ms=1.0)

    recorder.verified(42, checked=3, still_present=[2, 9], listed=2, pages=1)
    results.close()

    bid, other = batch.batch_id, Batch(77, (2,)).batch_id
    assert results_of(tmp_path / "results.csv") == [
        row(2, 42, 1, "deleted", status=200, attempts=1, batch=bid, run="run-1"),
        row(3, 42, 2, STILL_PRESENT, STILL_PRESENT, status=200, attempts=1, batch=bid, run="run-1"),
        row(4, 42, 3, "deleted", status=200, attempts=1, batch=bid, run="run-1"),
        row(5, 77, 2, "deleted", status=200, attempts=3, batch=other, run="run-1"),
        row("", 42, 9, STILL_PRESENT, STILL_PRESENT, run="run-1"),  # deleted by no row here
    ]


def test_a_reason_with_commas_and_quotes_stays_one_cell(
    recording: tuple[Recorder, ResultsFile], tmp_path: Path
) -> None:
    recorder, results = recording
    batch = Batch(42, (1, 2), lines=(7, 9))
    refused = Verdict(Kind.PERMANENT, 400, 'refused: "bad", really', "no")
    recorder.run_started()

    recorder.failed(
        batch, refused, refused.error(), reason=refused.reason, attempts=1, latency_ms=2.0
    )
    results.close()

    assert results_of(tmp_path / "results.csv") == [
        row(
            n,
            42,
            i,
            "failed",
            refused.reason,
            status=400,
            attempts=1,
            batch=batch.batch_id,
            run="run-1",
        )
        for n, i in ((7, 1), (9, 2))
    ]


def test_an_unconfirmed_batch_has_no_row(
    recording: tuple[Recorder, ResultsFile], tmp_path: Path
) -> None:
    recorder, results = recording
    recorder.run_started()
    recorder.unconfirmed(Batch(42, (1, 2), lines=(2, 3)), "cancelled in flight")

    results.close()

    assert results_of(tmp_path / "results.csv") == []


def test_a_run_refused_before_it_began_leaves_the_earlier_results_file(
    recording: tuple[Recorder, ResultsFile], tmp_path: Path
) -> None:
    _, results = recording
    (tmp_path / "results.csv").write_text("an earlier run's results\n")

    results.close()

    assert (tmp_path / "results.csv").read_text() == "an earlier run's results\n"
    assert not list(tmp_path.glob("*.partial"))


def test_a_broken_results_file_does_not_keep_run_finished_out_of_the_audit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    filling_up(monkeypatch, room=len(",".join(HEADER)) + 2)
    audit = AuditLog(tmp_path / "audit.jsonl", "run-1")
    results = ResultsFile(tmp_path / "results.csv", "run-1")
    recorder = Recorder(audit, [results])
    recorder.run_started()
    with pytest.raises(OutputError):
        recorder.rejected(Rejected(2, "abc", "audience_id not an integer", audience_raw="abc"))

    recorder.duplicate(Row(3, 42, 7))
    recorder.run_finished(exit_code=74)
    results.close()
    audit.close()

    events = [r["event"] for r in read_audit(tmp_path / "audit.jsonl")]
    assert events == ["run_started", "rejected", "duplicates", "run_finished"]
