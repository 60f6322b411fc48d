"""``audit report --html`` (issue #12): one self-contained page a reviewer reads, whose
figures are those of the runs, that names no audience id, and says when the chain is broken."""

from __future__ import annotations

import io
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import write_csv

from worker.cli import main
from worker.commands.run import run_purge
from worker.records.audit import AuditLog
from worker.records.audit_query import check, read_records
from worker.records.evidence import figures, render
from worker.records.report import RunResult
from worker.sandbox import FaultConfig
from worker.settings import Settings

MakeSettings = Callable[..., Settings]

# Distinctive ids: no count, seq, hash or timestamp on the page looks like them.
IDS_42 = [7_000_000_100 + i for i in range(40)]
IDS_77 = [7_000_000_500 + i for i in range(15)]
IDS_99 = [7_000_000_700 + i for i in range(5)]  # a campaign the API does not know: failed
IDS_SECOND = [7_000_000_800 + i for i in range(12)]
BAD = ["42,not-an-id", "x,7000000999", "42,-5"]
DUPLICATES = {42: 3, 77: 1, 99: 0}


# 5xx on a third of the requests, 2 attempts at most (some batches fail), 429 past 20/s.
@pytest.fixture
def faults() -> FaultConfig:
    return FaultConfig(seed=7, error_ratio=0.3, limit_per_second=20)


class Purged:
    def __init__(self, log: Path, results: list[RunResult], inputs: list[int]) -> None:
        self.log, self.results, self.inputs = log, results, inputs


@pytest.fixture
async def purged(make_settings: MakeSettings, tmp_path: Path) -> Purged:
    """Two runs into one log: the first over three campaigns (the API knows no 99: its ids
    fail) with rejected rows and duplicate rows (three of campaign 42, one of 77), the
    second over more ids of 42."""
    rows = [f"42,{i}" for i in IDS_42] + [f"77,{i}" for i in IDS_77] + [f"99,{i}" for i in IDS_99]
    repeats = [f"42,{IDS_42[0]}", f"42,{IDS_42[5]}", f"42,{IDS_42[5]}", f"77,{IDS_77[3]}"]
    first = write_csv(tmp_path / "ids.csv", ["campaign_id,audience_id", *rows, *BAD, *repeats])
    second = write_csv(
        tmp_path / "more.csv", ["campaign_id,audience_id", *(f"42,{i}" for i in IDS_SECOND)]
    )
    results = []
    for n, path in enumerate((first, second)):
        settings = make_settings(batch_size=3, max_attempts=2, state_dir=tmp_path / f"state{n}")
        results.append(await run_purge(settings, str(path), out=io.StringIO()))
    assert settings.audit_log is not None
    return Purged(
        settings.audit_log, results, [*IDS_42, *IDS_77, *IDS_99, *IDS_SECOND, 7_000_000_999]
    )


def page_of(log: Path) -> str:
    records = [record for _, _, record in read_records([log])]
    return render(records, check([log]), paths=[log], generated="2026-11-30T00:00:00+00:00")


def row(page: str, name: str) -> list[int]:
    found = re.search(rf'<tr id="campaign-{name}">(.*?)</tr>', page)
    assert found is not None, f"no row for campaign {name}"
    return [int(n) for n in re.findall(r'<td class="n">(\d+)</td>', found.group(1))]


def figure(page: str, name: str) -> int:
    found = re.search(rf'id="{name}">(\d+)<', page)
    assert found is not None, f"no figure {name}"
    return int(found.group(1))


def test_the_page_shows_the_figures_of_the_runs(purged: Purged) -> None:
    page = page_of(purged.log)
    deleted: Counter[int] = Counter()
    failed: Counter[int] = Counter()
    for result in purged.results:
        deleted.update(result.tally.deleted_by_campaign)
        failed.update(result.tally.failed_by_campaign)
    assert sum(failed.values()) > 0, "the faults should make some ids fail"
    for campaign in (42, 77, 99):
        # ids deleted, ids failed, duplicate rows, ids unconfirmed, delete_all answers
        shown = row(page, str(campaign))
        assert shown[:3] == [deleted[campaign], failed[campaign], DUPLICATES[campaign]]
    total = row(page, "all")
    assert total[:3] == [sum(deleted.values()), sum(failed.values()), sum(DUPLICATES.values())]
    assert figure(page, "rejected") == sum(r.tally.rejected for r in purged.results) == 3
    assert sum(r.tally.duplicates for r in purged.results) == 4
    assert figure(page, "runs") == 2
    assert figure(page, "total-deleted") == sum(deleted.values())
    assert figure(page, "total-failed") == sum(failed.values())
    assert figure(page, "total-retries") == sum(r.tally.retries for r in purged.results) > 0
    for result in purged.results:
        assert result.run_id in page
    assert "Verdict: OK" in page
    assert "<svg" in page


def test_the_page_names_no_audience_id_and_needs_nothing_from_outside(purged: Purged) -> None:
    page = page_of(purged.log)
    assert str(IDS_42[0]) in purged.log.read_text()  # the log does name them
    assert [i for i in purged.inputs if str(i) in page] == []
    assert "<script" not in page.lower()
    assert re.findall(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page, re.I) == []
    assert "@import" not in page
    assert "url(" not in page


def test_a_tampered_log_shows_the_tampered_verdict(purged: Purged) -> None:
    lines = purged.log.read_bytes().splitlines(keepends=True)
    index = next(n for n, line in enumerate(lines) if b'"event":"deleted"' in line)
    lines[index] = lines[index].replace(b'"attempts":', b'"attempts":1', 1)
    purged.log.write_bytes(b"".join(lines))

    page = page_of(purged.log)

    assert "Verdict: TAMPERED" in page
    assert "Do not rely on them" in page


async def test_text_from_the_log_is_escaped(make_settings: MakeSettings, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "<b>bold&amp.csv", ["campaign_id,audience_id", "42,7000000123"])
    await run_purge(make_settings(campaign_id=42), str(path), out=io.StringIO())
    log = tmp_path / "audit.jsonl"

    page = page_of(log)

    assert "<b>bold" not in page
    assert "&lt;b&gt;bold&amp;amp.csv" in page


def test_the_cli_writes_the_page_private_and_exits_0(
    purged: Purged, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "evidence" / "page.html"

    assert main(["audit", "report", "--html", str(out), str(purged.log)]) == 0

    assert capsys.readouterr().out.strip() == f"{out}: OK"
    assert out.stat().st_mode & 0o777 == 0o600
    assert "Verdict: OK" in out.read_text(encoding="utf-8")


def test_the_cli_exits_0_on_a_tampered_log_and_says_so(
    purged: Purged, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    purged.log.write_bytes(purged.log.read_bytes().replace(b'"attempts":', b'"attempts":9', 1))
    out = tmp_path / "page.html"

    assert main(["audit", "report", "--html", str(out), str(purged.log)]) == 0

    assert capsys.readouterr().out.strip() == f"{out}: TAMPERED"


def test_the_cli_exits_2_when_it_cannot_write_or_read(
    purged: Purged, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("x")

    code = main(["audit", "report", "--html", str(blocker / "page.html"), str(purged.log)])

    err = capsys.readouterr().err
    assert code == 2
    assert "cannot write" in err
    assert "Traceback" not in err
    missing = main(["audit", "report", "--html", str(tmp_path / "p.html"), str(tmp_path / "no")])
    assert missing == 2
    assert not (tmp_path / "p.html").exists()


async def test_the_page_shows_the_signature_status_with_the_public_key(
    make_settings: MakeSettings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["audit", "keygen", "--out", str(tmp_path / "keys")]) == 0
    private, public = tmp_path / "keys.key", tmp_path / "keys.pub"
    path = write_csv(tmp_path / "ids.csv", ["campaign_id,audience_id", "42,7000000123"])
    await run_purge(make_settings(sign_key=private), str(path), out=io.StringIO())
    log, out = tmp_path / "audit.jsonl", tmp_path / "page.html"
    capsys.readouterr()

    code = main(["audit", "report", "--html", str(out), "--public-key", str(public), str(log)])

    page = out.read_text(encoding="utf-8")
    assert code == 0
    assert "Ed25519 signatures: verified; 1 signature(s) verified" in page
    assert f"audit verify --public-key {public} {log}" in page
    other = tmp_path / "other"
    assert main(["audit", "keygen", "--out", str(other)]) == 0
    capsys.readouterr()
    wrong = main(["audit", "report", "--html", str(out), "--public-key", f"{other}.pub", str(log)])
    assert wrong == 0
    assert capsys.readouterr().out.strip() == f"{out}: TAMPERED"
    assert "Ed25519 signatures: NOT verified" in out.read_text(encoding="utf-8")


def test_older_per_row_duplicate_records_count_one_row_each() -> None:
    records: list[dict[str, Any]] = [
        {"event": "duplicate", "campaign_id": 42, "line": 5, "audience_id": 7_000_000_123},
        {"event": "duplicate", "campaign_id": 42, "line": 6, "audience_id": 7_000_000_124},
        {"event": "duplicates", "campaign_id": 42, "lines": [7, 8], "audience_ids": [1, 2]},
    ]

    assert figures(records).campaigns[42]["duplicates"] == 4


def test_records_with_odd_timestamps_do_not_stop_the_page() -> None:
    records: list[dict[str, Any]] = [
        {"ts": "2026-11-30T06:00:00Z", "event": "deleted", "campaign_id": 42, "audience_ids": [1]},
        {"ts": "2026-11-30T06:00:05", "event": "deleted", "campaign_id": 42, "audience_ids": [2]},
        {"ts": "yesterday", "event": "failed", "campaign_id": 42, "audience_ids": [3]},
    ]

    found = figures(records)

    assert (found.campaigns[42]["deleted"], found.campaigns[42]["failed"]) == (2, 1)
    assert found.first_ts == found.last_ts


# -- the proof section: a read-back proves only what it read --------------------------------

CHANGED = "the campaign changed while it was listed (7,000 records, then 6,990) (5 passes)"


def verified(checked: int, unproven: str | None = None) -> dict[str, Any]:
    """A ``verified`` record's fields, as the recorder writes them."""
    return {
        "campaign_id": 42,
        "checked": checked,
        "listed": 7000,
        "pages": 7,
        "passes": 5 if unproven else 1,
        "unproven": unproven,
        "still_present": [],
    }


def trail(path: Path, *runs: list[tuple[str, dict[str, Any]]]) -> Path:
    """One audit log (a real chain) of runs appended one after the other, each its records
    between run_started and run_finished."""
    for number, records in enumerate(runs):
        log = AuditLog(path, f"run-{number}")
        log.write("run_started", command="run", input="ids.csv")
        for event, fields in records:
            log.write(event, **fields)
        log.write("run_finished", exit_code=0)
        log.close()
    return path


def deleted(ids: range) -> tuple[str, dict[str, Any]]:
    return "deleted", {
        "campaign_id": 42,
        "batch_id": f"batch-{ids.start}",
        "audience_ids": list(ids),
        "http_status": 200,
    }


def proof(page: str, campaign: int = 42) -> tuple[list[str], str]:
    """The proof row of a campaign: its numeric cells (as text), and its verdict cell."""
    found = re.search(rf'<tr id="proof-{campaign}">(.*?)</tr>', page)
    assert found is not None, f"no proof row for campaign {campaign}"
    cells = re.findall(r"<td(?: class=\"n\")?>(.*?)</td>", found.group(1))
    return cells[1:9], cells[9]


def test_a_complete_read_back_that_found_nothing_says_gone(tmp_path: Path) -> None:
    log = trail(tmp_path / "audit.jsonl", [deleted(range(1, 11)), ("verified", verified(10))])

    numbers, verdict = proof(page_of(log))

    # ids deleted, looked for, still present, listed, read-backs, unproven read-backs
    assert numbers[:6] == ["10", "10", "0", "7000", "1", "0"]
    assert verdict == '<span class="ok">gone</span>'


def test_a_read_back_that_never_listed_the_campaign_completely_is_not_proven(
    tmp_path: Path,
) -> None:
    log = trail(
        tmp_path / "audit.jsonl",
        [deleted(range(1, 11)), ("verified", verified(10, unproven=CHANGED))],
    )

    numbers, verdict = proof(page_of(log))

    assert numbers[4:6] == ["1", "1"]  # one read-back, and it is unproven
    assert "gone" not in verdict
    assert verdict.startswith('<span class="bad">not proven</span>')
    assert "the latest read-back never listed the campaign completely" in verdict


def test_the_latest_read_back_decides_whether_the_campaign_is_proven(
    tmp_path: Path,
) -> None:
    log = trail(
        tmp_path / "audit.jsonl",
        [deleted(range(1, 11)), ("verified", verified(10))],
        [("verified", verified(10, unproven=CHANGED))],
    )

    numbers, verdict = proof(page_of(log))

    assert numbers[4:6] == ["2", "1"]
    assert "not proven" in verdict
    assert "gone" not in verdict
    # An unproven read-back, then a complete one: proven now.
    again = trail(
        tmp_path / "again.jsonl",
        [deleted(range(1, 11)), ("verified", verified(10, unproven=CHANGED))],
        [("verified", verified(10))],
    )
    numbers, verdict = proof(page_of(again))
    assert numbers[4:6] == ["2", "1"]
    assert verdict == '<span class="ok">gone</span>'


def test_ids_found_still_present_then_deleted_and_read_back_are_gone(tmp_path: Path) -> None:
    found = {**verified(10), "still_present": [3, 4]}
    log = trail(
        tmp_path / "audit.jsonl",
        [deleted(range(1, 11)), ("verified", found)],
        [deleted(range(3, 5)), ("verified", verified(10))],
    )

    numbers, verdict = proof(page_of(log))

    assert numbers[1:3] == ["10", "0"]  # the latest read-back: 10 looked for, none there
    assert verdict == '<span class="ok">gone</span>'


def test_a_read_back_of_fewer_ids_than_the_audit_deleted_is_partly_read_back(
    tmp_path: Path,
) -> None:
    # A resumed purge: the second run read back its own ids only.
    log = trail(
        tmp_path / "audit.jsonl",
        [deleted(range(1, 11))],
        [deleted(range(11, 21)), ("verified", verified(10))],
    )

    numbers, verdict = proof(page_of(log))

    assert numbers[:2] == ["20", "10"]
    assert verdict.startswith('<span class="warn">partly read back</span>')
    assert "looked for 10 of the 20 distinct ids deleted" in verdict
    assert "the others were never looked for" in verdict


def test_reading_the_same_ids_back_twice_does_not_cover_ids_never_looked_for(
    tmp_path: Path,
) -> None:
    log = trail(
        tmp_path / "audit.jsonl",
        [deleted(range(1, 11))],
        [deleted(range(11, 21)), ("verified", verified(10))],
        [("verified", verified(10))],  # verify --audit of the second run's file, again
    )

    numbers, verdict = proof(page_of(log))

    assert numbers[1] == "10"  # the most one read-back looked for, not 10 + 10
    assert "partly read back" in verdict


def test_ids_deleted_twice_are_counted_once_and_their_re_deletions_apart(
    tmp_path: Path,
) -> None:
    # A run killed before its checkpoint: the next run sent ids 6-10 again.
    log = trail(
        tmp_path / "audit.jsonl",
        [deleted(range(1, 11))],
        [deleted(range(6, 16)), ("verified", verified(15))],
    )

    page = page_of(log)
    numbers, verdict = proof(page)

    assert numbers[:2] == ["15", "15"]  # distinct ids deleted; distinct ids looked for
    assert verdict == '<span class="ok">gone</span>'
    # ids deleted, failed, duplicate rows, unconfirmed, delete_all answers, deleted again
    assert row(page, "42") == [15, 0, 0, 0, 0, 5]
    assert row(page, "all") == [15, 0, 0, 0, 0, 5]
    assert figure(page, "total-deleted") == 20  # the chart counts ids in deleted records


async def test_a_real_purge_read_back_whole_says_gone(
    make_settings: MakeSettings, tmp_path: Path
) -> None:
    ids = write_csv(tmp_path / "ids.csv", [str(i) for i in range(1, 41)])
    settings = make_settings(campaign_id=42, verify=True)

    result = await run_purge(settings, str(ids), out=io.StringIO())

    assert result.exit_code == 0
    numbers, verdict = proof(page_of(tmp_path / "audit.jsonl"))
    assert numbers[:3] == ["40", "40", "0"]
    assert numbers[4:6] == ["1", "0"]
    assert verdict == '<span class="ok">gone</span>'


# --- several chains --------------------------------------------------------------------------


async def test_a_purge_log_and_its_verify_log_are_two_chains_each_with_its_verdict(
    make_settings: MakeSettings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """verify --audit writes a chain of its own: beside the purge's log on one page it is
    a second chain, verified on its own, not tampering; its read-back proves the ids gone."""
    from worker.commands.verify import describe_file, recorded_deletions, verify

    ids = write_csv(tmp_path / "ids.csv", [str(i) for i in range(1, 41)])
    purge_log = tmp_path / "audit.jsonl"
    purged = await run_purge(make_settings(campaign_id=42), str(ids), out=io.StringIO())
    assert purged.exit_code == 0
    verify_log = tmp_path / "verify.jsonl"
    settings = make_settings(audit_log=verify_log, report=None, failed_out=None)
    described = [describe_file(purge_log)[0]]
    deleted = recorded_deletions([purge_log], None)
    assert await verify(settings, [purge_log], described, deleted, out=io.StringIO()) == 0
    out = tmp_path / "page.html"

    assert main(["audit", "report", "--html", str(out), str(purge_log), str(verify_log)]) == 0

    page = out.read_text()
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"{out}: OK"
    assert "Verdict: OK</p>" in page
    assert "The files hold 2 chains" in page
    assert '<span id="verdict-1">OK</span>' in page
    assert '<span id="verdict-2">OK</span>' in page
    numbers, said = proof(page)
    assert numbers[:3] == [str(deleted.count(42)), str(deleted.count(42)), "0"]
    assert said == '<span class="ok">gone</span>'


def test_a_chain_whose_earlier_file_is_not_given_is_said_not_hidden(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Three files of one chain, the middle one left out: the first is a chain, the last
    continues a file not given, and the page says so (its own verdict, with a warning)."""
    paths = [tmp_path / f"{n}.jsonl" for n in ("first", "second", "third")]
    previous = None
    for number, path in enumerate(paths):
        log = AuditLog(path, f"run-{number}", previous=previous)
        log.write("run_started", command="run")
        log.write("run_finished", exit_code=0)
        previous = log.head()
        log.close()
    out = tmp_path / "page.html"

    assert main(["audit", "report", "--html", str(out), str(paths[0]), str(paths[2])]) == 0

    page = out.read_text()
    assert capsys.readouterr().out.strip() == f"{out}: OK with warnings"
    assert '<span id="verdict-1">OK</span>' in page
    assert '<span id="verdict-2">OK with warnings</span>' in page
    assert (
        f"the chain continues run run-1 at seq 1 in {paths[1]}, which is not among the files "
        "given: what came before it is not checked"
    ) in page


def test_two_files_of_one_chain_are_one_chain_on_the_page(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    log = AuditLog(first, "run-0")
    log.write("run_started", command="run")
    head = log.head()
    log.close()
    later = AuditLog(second, "run-1", previous=head)
    later.write("run_started", command="run")
    later.write("run_finished", exit_code=0)
    later.close()
    out = tmp_path / "page.html"

    assert main(["audit", "report", "--html", str(out), str(second), str(first)]) == 0

    page = out.read_text()
    assert "chains" not in page.split("<h2>Totals", 1)[0]
    assert f"Files in chain order: {first}, {second}" in page


def test_ids_deleted_only_after_the_last_signed_head_are_said_unsigned(tmp_path: Path) -> None:
    """A signing run's records after its last signed head (a crash, or appended later):
    the proof row says how many of the ids deleted no signature vouches for."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from worker.records.signing import Signer

    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, "run-0", signer=Signer(Ed25519PrivateKey.generate()))
    log.write("run_started", command="run")
    log.write(*deleted(range(1, 6))[:1], **deleted(range(1, 6))[1])
    log.sync()  # a checkpoint: head_signed
    log.write(*deleted(range(6, 8))[:1], **deleted(range(6, 8))[1])
    log.write("verified", **verified(7))
    log.close()

    numbers, verdict = proof(page_of(path))

    assert numbers[:3] == ["7", "7", "0"]
    assert verdict.startswith('<span class="bad">unsigned</span>: ')
    assert "gone" not in verdict
    assert "2 of the ids deleted are recorded only after the last signed head" in verdict


def test_a_password_in_an_older_logs_settings_or_error_never_reaches_the_page(
    tmp_path: Path,
) -> None:
    """Logs written before URL settings were redacted hold the password as given: the page,
    made for auditors, masks it wherever the log quotes a URL."""
    log = AuditLog(tmp_path / "audit.jsonl", "run-old")
    log.write(
        "run_started",
        command="run",
        input="ids.csv",
        settings={"pushgateway": "http://ops:OLD-SECRET@gw:9091", "rate": "50/s"},
    )
    log.write("run_finished", exit_code=74, error="cannot push to http://ops:OLD-SECRET@gw:9091")
    log.close()

    page = page_of(log.path)

    assert "OLD-SECRET" not in page
    assert page.count("http://ops:***@gw:9091") == 2
