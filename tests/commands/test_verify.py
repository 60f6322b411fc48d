"""``audience-purge verify`` end to end: a real purge, then its audit log read back against
the sandbox through the CLI.

``cli.main`` installs its signal handlers, which only the main thread may do, so these
tests are synchronous and the sandbox serves from a thread of its own; the signal test
runs the CLI in a child process instead, beside the usual in-loop sandbox.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import hashlib
import os
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog
from conftest import DRAFT, LIVE, read_audit, write_csv
from processes import eventually, finish, start

from worker import cli
from worker.records.audit import AuditLog
from worker.sandbox import FaultConfig, SandboxConfig, running_sandbox
from worker.sandbox.runner import SandboxHandle

Sandbox = Callable[..., SandboxHandle]


@contextmanager
def sandbox_thread(config: SandboxConfig) -> Iterator[SandboxHandle]:
    """The sandbox on loopback, served by an event loop in a thread of its own."""
    ready = threading.Event()
    started: list[SandboxHandle] = []
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def serve() -> None:
        async with running_sandbox(config) as handle:
            started.append(handle)
            ready.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(10), "the sandbox did not start"
    try:
        yield started[0]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


@pytest.fixture
def sandboxes(token: str) -> Iterator[Sandbox]:
    """Start sandboxes (campaigns 42 and 77, each fresh) that take the test's token."""
    with ExitStack() as stack:

        def make(faults: FaultConfig | None = None) -> SandboxHandle:
            config = SandboxConfig((DRAFT, LIVE), token, faults or FaultConfig())
            return stack.enter_context(sandbox_thread(config))

        yield make


@pytest.fixture(autouse=True)
def cli_environment(token: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The token in UNLEASHX_TOKEN, no other setting from the environment, files under
    tmp_path; structlog's configuration (the CLI sets it) put back afterwards."""
    for name in [*os.environ]:
        if name.startswith(("UNLEASHX_", "AUDIENCE_")) or name == "JOB_COMPLETION_INDEX":
            monkeypatch.delenv(name)
    monkeypatch.setenv("UNLEASHX_TOKEN", token)
    monkeypatch.chdir(tmp_path)
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def purge(sandbox: SandboxHandle, tmp_path: Path, rows: Iterable[tuple[int, int]]) -> Path:
    """A real purge of ``rows`` (campaign, id) through the CLI; its audit log."""
    ids = write_csv(
        tmp_path / "ids.csv", ["campaign_id,audience_id", *(f"{c},{a}" for c, a in rows)]
    )
    audit = tmp_path / "purge-audit.jsonl"
    code = cli.main(
        [
            "run",
            "--input",
            str(ids),
            "--base-url",
            sandbox.url,
            "--rate",
            "1000/s",
            "--batch-size",
            "100",
            "--progress",
            "off",
            "--audit-log",
            str(audit),
            "--state-dir",
            str(tmp_path / "state"),
        ]
    )
    assert code == 0
    return audit


def verify(sandbox: SandboxHandle, tmp_path: Path, *audits: Path, extra: Iterable[str] = ()) -> int:
    return cli.main(
        [
            "verify",
            "--audit",
            *map(str, audits),
            "--base-url",
            sandbox.url,
            "--rate",
            "1000/s",
            "--audit-log",
            str(tmp_path / "verify-audit.jsonl"),
            "--report",
            str(tmp_path / "report.json"),
            "--failed-out",
            str(tmp_path / "still.csv"),
            *extra,
        ]
    )


def verify_records(tmp_path: Path, event: str | None = None) -> list[dict[str, Any]]:
    records = read_audit(tmp_path / "verify-audit.jsonl")
    return [r for r in records if event is None or r["event"] == event]


def report(tmp_path: Path) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads((tmp_path / "report.json").read_bytes())
    return data


def still_csv(tmp_path: Path) -> list[tuple[int, int]]:
    """The failed-out file's pairs; each says still_present when the file has reasons."""
    with (tmp_path / "still.csv").open(newline="", encoding="utf-8") as handle:
        header, *rows = list(csv.reader(handle))
    assert header[:2] == ["campaign_id", "audience_id"]
    if header[2:] == ["reason"]:
        assert {row[2] for row in rows} <= {"still_present"}
    return [(int(row[0]), int(row[1])) for row in rows]


def pairs(campaign: int, ids: Iterable[int]) -> list[tuple[int, int]]:
    return [(campaign, i) for i in ids]


# -- the verdicts ------------------------------------------------------------------------


def test_a_clean_purge_verifies_with_exit_0_and_a_verified_record_per_campaign(
    sandboxes: Sandbox, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sandbox = sandboxes()
    audit = purge(sandbox, tmp_path, pairs(42, range(1, 3001)))
    capsys.readouterr()

    code = verify(sandbox, tmp_path, audit)

    assert code == 0
    records = verify_records(tmp_path)
    assert [r["event"] for r in records] == [
        "run_started",
        "audience_stats",
        "verified",
        "run_finished",
    ]
    started, stats, verified, finished = records
    assert started["command"] == "verify"
    assert started["audit_files"] == [
        {
            "path": str(audit),
            "bytes": audit.stat().st_size,
            "sha256": hashlib.sha256(audit.read_bytes()).hexdigest(),
            "records": len(audit.read_bytes().splitlines()),
        }
    ]
    assert (started["campaigns"], started["recorded_deleted"]) == ([42], {"42": 3000})
    assert (stats["moment"], stats["stats"]["total_audience"]) == ("after", 7000)
    assert {k: v for k, v in verified.items() if k not in ("ts", "run_id")} == {
        "event": "verified",
        "campaign_id": 42,
        "checked": 3000,
        "listed": 7000,
        "pages": 14,
        "passes": 2,
        "unproven": None,
        "still_present": [],
    }
    assert (finished["exit_code"], finished["verified"], finished["still_present"]) == (0, 3000, 0)
    assert still_csv(tmp_path) == []
    out = capsys.readouterr().out
    assert "campaign 42: 3,000 ids recorded as deleted, 0 still present" in out
    assert "(listed 7,000 records in 14 pages, 2 passes)" in out


def test_ids_the_campaign_still_holds_exit_1_and_go_to_failed_out_and_the_audit(
    sandboxes: Sandbox, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    audit = purge(sandboxes(), tmp_path, pairs(42, range(1, 201)))
    untouched = sandboxes()  # the same campaigns, nothing deleted: every id is still there

    code = verify(untouched, tmp_path, audit)

    assert code == 1
    [verified] = verify_records(tmp_path, "verified")
    assert verified["still_present"] == list(range(1, 201))
    assert still_csv(tmp_path) == pairs(42, range(1, 201))
    [finished] = verify_records(tmp_path, "run_finished")
    assert (finished["exit_code"], finished["still_present"], finished["failed_left"]) == (
        1,
        200,
        200,
    )
    out = capsys.readouterr().out
    assert ": 200 ids still present (exit 1)" in out
    assert "campaign 42: 200 ids recorded as deleted, 200 still present" in out


def test_every_id_still_present_is_found_across_small_pages(
    sandboxes: Sandbox, tmp_path: Path
) -> None:
    scattered = range(4, 10_001, 4)
    audit = purge(sandboxes(), tmp_path, pairs(42, scattered))

    code = verify(sandboxes(), tmp_path, audit, extra=["--page-size", "100"])

    assert code == 1
    [verified] = verify_records(tmp_path, "verified")
    assert (verified["checked"], verified["pages"], verified["listed"]) == (2500, 200, 10_000)
    assert verified["still_present"] == list(scattered)
    assert still_csv(tmp_path) == pairs(42, scattered)


def has_fault(name: str) -> bool:
    return name in {f.name for f in dataclasses.fields(FaultConfig)}


@pytest.mark.skipif(
    not has_fault("ack_without_delete"), reason="the sandbox has no ack_without_delete yet"
)
def test_deletes_acknowledged_but_not_applied_are_caught(
    sandboxes: Sandbox, tmp_path: Path
) -> None:
    faults: dict[str, Any] = {"ack_without_delete": 1.0}  # a field the sandbox may lack
    sandbox = sandboxes(FaultConfig(**faults))
    audit = purge(sandbox, tmp_path, pairs(42, range(1, 101)))
    assert sandbox.state.campaigns[42].deleted_count == 0

    code = verify(sandbox, tmp_path, audit)

    assert code == 1
    [verified] = verify_records(tmp_path, "verified")
    assert verified["still_present"] == list(range(1, 101))
    assert still_csv(tmp_path) == pairs(42, range(1, 101))


def test_campaign_id_reads_back_that_campaign_only(sandboxes: Sandbox, tmp_path: Path) -> None:
    audit = purge(sandboxes(), tmp_path, [*pairs(42, range(1, 11)), *pairs(77, range(1, 6))])
    untouched = sandboxes()

    code = verify(untouched, tmp_path, audit, extra=["--campaign-id", "77"])

    assert code == 1
    [verified] = verify_records(tmp_path, "verified")
    assert (verified["campaign_id"], verified["still_present"]) == (77, [1, 2, 3, 4, 5])
    assert still_csv(tmp_path) == pairs(77, range(1, 6))
    # 77's stats, then two passes of a stats read and 5 pages: no more
    assert untouched.state.requests_total == 1 + 2 * (1 + 5)


def test_stats_recorded_before_the_purge_are_compared_with_now(
    sandboxes: Sandbox, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sandbox = sandboxes()
    sandbox.state.campaigns[42].delete(range(1, 1101))  # 100 more than acknowledged
    log = AuditLog(tmp_path / "purge.jsonl", "run-purge")
    log.write("run_started", command="run")
    log.write("audience_stats", campaign_id=42, moment="before", stats={"total_audience": 10_000})
    log.write("deleted", campaign_id=42, batch_id="b", audience_ids=list(range(1, 1001)))
    log.write("run_finished", exit_code=0)
    log.close()
    capsys.readouterr()

    assert verify(sandbox, tmp_path, log.path) == 0

    data = report(tmp_path)
    assert (data["total_audience_before"], data["total_audience_after"]) == (10_000, 8900)
    assert data["audience"]["42"]["difference"] == -100
    assert data["audience"]["42"]["explanation"].startswith("100 more removed than acknowledged")
    assert (data["verified"], data["still_present"], data["exit_code"]) == (1000, 0, 0)
    assert data["campaigns"]["42"]["checked"] == 1000
    assert "10,000 before the purge, 8,900 now: 100 more removed" in capsys.readouterr().out


def test_report_dash_writes_the_report_alone_on_stdout_and_the_summary_on_stderr(
    sandboxes: Sandbox, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sandbox = sandboxes()
    audit = purge(sandbox, tmp_path, pairs(42, range(1, 11)))
    capsys.readouterr()

    assert verify(sandbox, tmp_path, audit, extra=["--report", "-"]) == 0

    shown = capsys.readouterr()
    data = orjson.loads(shown.out)
    assert (data["verified"], data["still_present"], data["exit_code"]) == (10, 0, 0)
    assert "campaign 42: 10 ids recorded as deleted, 0 still present" in shown.err


# -- refusals -----------------------------------------------------------------------------


def assert_refused(tmp_path: Path, sandbox: SandboxHandle, code: int) -> None:
    assert code == 2
    assert sandbox.state.requests_total == 0
    assert not (tmp_path / "verify-audit.jsonl").exists()


def test_a_missing_audit_file_exits_2_and_requests_nothing(
    sandboxes: Sandbox, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sandbox = sandboxes()

    assert_refused(tmp_path, sandbox, verify(sandbox, tmp_path, tmp_path / "nope.jsonl"))

    assert "nope.jsonl cannot be read" in capsys.readouterr().err


def test_a_tampered_audit_file_exits_2_and_requests_nothing(
    sandboxes: Sandbox, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    audit = purge(sandboxes(), tmp_path, pairs(42, range(1, 11)))
    # Hide id 7 from the proof: the record's hash no longer matches its content.
    audit.write_bytes(audit.read_bytes().replace(b"[1,2,3,4,5,6,7,", b"[1,2,3,4,5,6,"))
    sandbox = sandboxes()
    capsys.readouterr()

    assert_refused(tmp_path, sandbox, verify(sandbox, tmp_path, audit))

    err = capsys.readouterr().err
    assert "its chain does not verify" in err
    assert "hash does not match" in err


def test_an_audit_file_without_deletions_exits_2(
    sandboxes: Sandbox, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    audit = purge(sandboxes(), tmp_path, pairs(42, range(1, 11)))
    sandbox = sandboxes()
    capsys.readouterr()

    assert_refused(
        tmp_path, sandbox, verify(sandbox, tmp_path, audit, extra=["--campaign-id", "5"])
    )

    assert "record no deletion of campaign 5" in capsys.readouterr().err


def test_an_output_that_is_an_audit_file_exits_2_and_leaves_it_untouched(
    sandboxes: Sandbox, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    audit = purge(sandboxes(), tmp_path, pairs(42, range(1, 11)))
    before = audit.read_bytes()
    sandbox = sandboxes()
    capsys.readouterr()

    code = verify(sandbox, tmp_path, audit, extra=["--failed-out", str(audit)])

    assert_refused(tmp_path, sandbox, code)
    assert audit.read_bytes() == before
    assert "it would be overwritten" in capsys.readouterr().err


def test_a_wrong_token_exits_3_and_the_token_is_in_no_output(
    sandboxes: Sandbox,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    audit = purge(sandboxes(), tmp_path, pairs(42, range(1, 11)))
    wrong = "tok-wrong-5f3a9c0d1e2b"
    monkeypatch.setenv("UNLEASHX_TOKEN", wrong)
    capsys.readouterr()

    code = verify(sandboxes(), tmp_path, audit)

    assert code == 3
    [finished] = verify_records(tmp_path, "run_finished")
    assert finished["exit_code"] == 3
    assert "401" in finished["fatal_reason"] or "token" in finished["fatal_reason"].lower()
    assert verify_records(tmp_path, "verified") == []
    shown = capsys.readouterr()
    for text in (
        shown.out,
        shown.err,
        (tmp_path / "verify-audit.jsonl").read_text(),
        (tmp_path / "report.json").read_text(),
        (tmp_path / "still.csv").read_text(),
    ):
        assert wrong not in text


def test_an_unknown_campaign_exits_3_after_its_stats_failure_is_recorded(
    sandboxes: Sandbox, tmp_path: Path
) -> None:
    log = AuditLog(tmp_path / "purge.jsonl", "run-purge")
    log.write("deleted", campaign_id=999, batch_id="b", audience_ids=[1, 2])
    log.close()

    code = verify(sandboxes(), tmp_path, log.path)

    assert code == 3
    [stats] = verify_records(tmp_path, "audience_stats")
    assert stats["stats"] is None
    assert "Campaign not exist" in stats["error"]
    [finished] = verify_records(tmp_path, "run_finished")
    assert "cannot list campaign 999" in finished["fatal_reason"]


# -- signals ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("faults", [FaultConfig(latency_ms=200)], ids=["slow-pages"])
async def test_sigterm_stops_the_read_back_with_exit_75(
    sandbox: SandboxHandle, token: str, tmp_path: Path
) -> None:
    log = AuditLog(tmp_path / "purge.jsonl", "run-purge")
    log.write("deleted", campaign_id=42, batch_id="b", audience_ids=[1, 2])
    log.close()
    proc = await start(
        "verify",
        "--audit",
        str(log.path),
        "--base-url",
        sandbox.url,
        "--rate",
        "1000/s",
        "--page-size",
        "100",
        "--audit-log",
        str(tmp_path / "verify-audit.jsonl"),
        cwd=tmp_path,
        token=token,
    )
    await eventually(lambda: sandbox.state.requests_total >= 3, what="listing under way")
    proc.send_signal(signal.SIGTERM)

    done = await finish(proc)

    assert done.code == 75, done.err
    records = verify_records(tmp_path)
    assert records[-1]["event"] == "run_finished"
    assert (records[-1]["exit_code"], records[-1]["interrupted"]) == (75, True)
    assert [r for r in records if r["event"] == "verified"] == []
    assert sandbox.state.requests_total < 101  # it stopped well before the 100 pages


# -- files cut short ----------------------------------------------------------------------


def cut_after_deleted(audit: Path, records: int, to: Path) -> tuple[Path, int]:
    """The audit log's lines up to its ``records``-th deleted record, as ``head -N`` writes
    them to ``to``; and N."""
    lines = audit.read_bytes().splitlines(keepends=True)
    seen = 0
    for number, line in enumerate(lines, start=1):
        seen += orjson.loads(line)["event"] == "deleted"
        if seen == records:
            to.write_bytes(b"".join(lines[:number]))
            return to, number
    raise AssertionError(f"fewer than {records} deleted records in {audit}")


def test_a_truncated_audit_file_is_read_back_with_a_warning_that_the_proof_covers_only_it(
    sandboxes: Sandbox, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sandbox = sandboxes()
    audit = purge(sandbox, tmp_path, pairs(42, range(1, 3001)))
    cut, lines = cut_after_deleted(audit, 3, tmp_path / "cut.jsonl")
    [run_id] = {r["run_id"] for r in read_audit(audit)}
    capsys.readouterr()

    code = verify(sandbox, tmp_path, cut)

    assert code == 0  # the 300 ids the cut file records are gone
    out = capsys.readouterr().out
    verdict, warning = out.splitlines()[:2]
    assert verdict.endswith(
        "every id recorded as deleted is gone (exit 0); but the proof covers only what the "
        "files record: 1 run in them has no run_finished (a crash, or a truncated file), so "
        "the deletions recorded may be incomplete"
    )
    assert warning == (
        f"WARNING: {cut}:{lines}: run {run_id} has no run_finished after seq {lines - 1} "
        "(a crash, a run still going, or a truncated file): the deletions it records may be "
        "incomplete"
    )
    incomplete = [
        {
            "file": str(cut),
            "run_id": run_id,
            "line": lines,
            "last_seq": lines - 1,
            "continued_by": None,
        }
    ]
    [finished] = verify_records(tmp_path, "run_finished")
    data = report(tmp_path)
    for said in (finished, data):
        assert (said["verified"], said["incomplete_runs"]) == (300, incomplete)
        assert said["caveat"].startswith("the proof covers only what the files record: 1 run")


def test_a_complete_audit_file_gets_no_warning(
    sandboxes: Sandbox, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sandbox = sandboxes()
    audit = purge(sandbox, tmp_path, pairs(42, range(1, 301)))
    capsys.readouterr()

    assert verify(sandbox, tmp_path, audit) == 0

    out = capsys.readouterr().out
    assert "WARNING" not in out
    assert "covers only" not in out
    assert out.splitlines()[0].endswith(": every id recorded as deleted is gone (exit 0)")
    [finished] = verify_records(tmp_path, "run_finished")
    data = report(tmp_path)
    for said in (finished, data):
        assert (said["incomplete_runs"], said["caveat"]) == ([], None)


def crashed_and_resumed(tmp_path: Path) -> tuple[Path, Path]:
    """Run a, killed after deleting ids 1-100 (no run_finished), and run b, which resumed
    it in a file of its own and deleted ids 101-200."""
    first = AuditLog(tmp_path / "a.jsonl", "run-a")
    first.write("run_started", command="run")
    first.write("deleted", campaign_id=42, batch_id="b1", audience_ids=list(range(1, 101)))
    first.close()
    second = AuditLog(tmp_path / "b.jsonl", "run-b", previous=first.head())
    second.write("run_started", command="run")
    second.write("deleted", campaign_id=42, batch_id="b2", audience_ids=list(range(101, 201)))
    second.write("run_finished", exit_code=0)
    second.close()
    return first.path, second.path


def test_a_crashed_run_that_a_given_file_continued_is_warned_about_but_no_caveat(
    sandboxes: Sandbox, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sandbox = sandboxes()
    sandbox.state.campaigns[42].delete(range(1, 201))
    first, second = crashed_and_resumed(tmp_path)

    assert verify(sandbox, tmp_path, second, first) == 0

    out = capsys.readouterr().out
    assert f"WARNING: {first}:2: run run-a has no run_finished after seq 1 (a crash); " in out
    assert f"run run-b in {second} continued it" in out
    assert "covers only" not in out
    data = report(tmp_path)
    assert data["caveat"] is None
    assert data["incomplete_runs"][0]["continued_by"] == {"run_id": "run-b", "file": str(second)}


def test_a_crashed_run_without_the_file_that_continued_it_is_a_caveat(
    sandboxes: Sandbox, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sandbox = sandboxes()
    sandbox.state.campaigns[42].delete(range(1, 201))
    first, _ = crashed_and_resumed(tmp_path)

    assert verify(sandbox, tmp_path, first) == 0

    out = capsys.readouterr().out
    assert f"WARNING: {first}:2: run run-a has no run_finished after seq 1 (a crash, " in out
    assert "the proof covers only what the files record: 1 run in them" in out
    assert report(tmp_path)["incomplete_runs"][0]["continued_by"] is None


def test_a_file_continuing_one_not_given_is_read_back_partly_exit_1(
    sandboxes: Sandbox, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The ids the earlier file recorded were never looked for: not proven gone. Here
    they are even still there, which a read-back of the later file alone cannot see."""
    sandbox = sandboxes()
    sandbox.state.campaigns[42].delete(range(101, 201))
    first, second = crashed_and_resumed(tmp_path)

    assert verify(sandbox, tmp_path, second) == 1

    out = capsys.readouterr().out
    said = (
        f"partly read back: the ids of earlier runs in {first.absolute()} were not checked "
        "(not among the files given: add them to --audit)"
    )
    assert out.splitlines()[0].endswith(": partly read back (exit 1)")
    assert f"  {said}" in out.splitlines()
    [finished] = verify_records(tmp_path, "run_finished")
    for record in (finished, report(tmp_path)):
        assert record["partial"] == {
            "unchecked": None,
            "missing": [str(first.absolute())],
            "reason": said,
        }
        assert record["still_present"] == 0


def test_files_given_with_the_one_they_continue_are_read_back_whole(
    sandboxes: Sandbox, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sandbox = sandboxes()
    sandbox.state.campaigns[42].delete(range(1, 201))
    first, second = crashed_and_resumed(tmp_path)

    assert verify(sandbox, tmp_path, second, first) == 0

    assert "partly read back" not in capsys.readouterr().out
    assert report(tmp_path)["partial"] is None


def test_an_audit_file_with_no_record_is_warned_about(
    sandboxes: Sandbox, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sandbox = sandboxes()
    audit = purge(sandbox, tmp_path, pairs(42, range(1, 11)))
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    capsys.readouterr()

    assert verify(sandbox, tmp_path, audit, empty) == 0

    out = capsys.readouterr().out
    assert f"WARNING: {empty}:1: no complete record (a run killed before its first" in out
    assert "1 run in them has no run_finished" in out
    assert report(tmp_path)["incomplete_runs"] == [
        {"file": str(empty), "run_id": None, "line": 1, "last_seq": None, "continued_by": None}
    ]
