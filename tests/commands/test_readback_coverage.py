"""A read-back covers the whole purge, or says it does not.

The real CLI, as an operator runs it: a purge started in one directory with the default
(relative) audit directory and an absolute ``--state-dir``, stopped, then resumed from
another directory with ``--verify``. The resumed run must read back the ids every run of
the purge deleted; when an earlier run's audit file cannot be found, the read-back is
partial: exit 1, and the summary, the report and the evidence page say how many ids of
earlier runs were not checked.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import orjson
import pytest
from processes import Completed, eventually, finish, start

from worker.records.audit_query import check, read_records
from worker.records.evidence import render
from worker.sandbox import FaultConfig
from worker.sandbox.runner import SandboxHandle

CAMPAIGN = 42
IDS = range(1, 301)


class Purge:
    """One purge command with an absolute input and state directory, run from any directory."""

    def __init__(self, sandbox: SandboxHandle, token: str, root: Path) -> None:
        self.sandbox, self.token, self.root = sandbox, token, root
        self.input = root / "ids.csv"
        self.input.write_text("".join(f"{i}\n" for i in IDS))
        self.config = root / "purge.toml"
        self.config.write_text("checkpoint_interval = 0.1\nbackoff_initial = 0.01\n")
        self.state = root / "state"

    def args(self, *extra: str, rate: str) -> list[str]:
        return [
            "run",
            "--input",
            str(self.input),
            "--campaign-id",
            str(CAMPAIGN),
            "--base-url",
            self.sandbox.url,
            "--config",
            str(self.config),
            "--state-dir",
            str(self.state),
            "--rate",
            rate,
            "--concurrency",
            "2",
            "--batch-size",
            "5",
            "--progress",
            "off",
            *extra,
        ]

    async def stopped_after_some_deletes(self, cwd: Path) -> list[int]:
        """A slow run from ``cwd``, stopped by SIGTERM once it recorded a few deletions;
        the ids its audit file records as deleted."""
        proc = await start(*self.args(rate="20/second"), cwd=cwd, token=self.token)
        try:
            await eventually(lambda: len(deleted_ids(cwd)) >= 15, what="some deletions")
        finally:
            proc.send_signal(signal.SIGTERM)
        done = await finish(proc)
        assert done.code == 75, done.err
        return deleted_ids(cwd)

    async def resumed_with_verify(self, cwd: Path) -> Completed:
        report = self.root / "report.json"
        return await finish(
            await start(
                *self.args("--verify", "--report", str(report), rate="1000/second"),
                cwd=cwd,
                token=self.token,
            )
        )

    def report(self) -> dict[str, Any]:
        data = orjson.loads((self.root / "report.json").read_bytes())
        assert isinstance(data, dict)
        return data


def audit_files(cwd: Path) -> list[Path]:
    return sorted((cwd / "purge-audit").glob("*.jsonl"))


def deleted_ids(cwd: Path) -> list[int]:
    """The ids the complete records of the audit files in ``cwd/purge-audit`` record as
    deleted."""
    ids: list[int] = []
    for path in audit_files(cwd):
        for line in path.read_bytes().split(b"\n")[:-1]:
            record = orjson.loads(line)
            if record["event"] == "deleted":
                ids += record["audience_ids"]
    return sorted(ids)


@pytest.fixture
def places(tmp_path: Path) -> tuple[Path, Path]:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    return first, second


async def test_a_resume_from_another_directory_reads_back_the_earlier_runs_ids(
    sandbox: SandboxHandle, token: str, tmp_path: Path, places: tuple[Path, Path]
) -> None:
    """The first run's deletes were acknowledged and not applied: the resumed run, from
    elsewhere, finds them still present (it did not send them again: they are done)."""
    here, elsewhere = places
    purge = Purge(sandbox, token, tmp_path)
    sandbox.state.replace_faults(FaultConfig(ack_without_delete=1.0))
    acknowledged = await purge.stopped_after_some_deletes(here)
    sandbox.state.replace_faults(FaultConfig())

    done = await purge.resumed_with_verify(elsewhere)

    assert done.code == 1, done.out + done.err
    assert purge.report()["still_present"] == len(acknowledged)
    assert purge.report()["verified"] == len(IDS)
    alive = [i for i in IDS if sandbox.state.campaigns[CAMPAIGN].alive(i)]
    assert alive == acknowledged
    assert purge.report()["partial"] is None


async def test_an_earlier_runs_missing_file_makes_the_read_back_partial(
    sandbox: SandboxHandle, token: str, tmp_path: Path, places: tuple[Path, Path]
) -> None:
    here, elsewhere = places
    purge = Purge(sandbox, token, tmp_path)
    earlier = await purge.stopped_after_some_deletes(here)
    (lost,) = audit_files(here)
    lost.unlink()

    done = await purge.resumed_with_verify(elsewhere)

    said = f"partly read back: {len(earlier)} ids of earlier runs not checked"
    assert done.code == 1, done.out + done.err
    assert said in done.out
    assert str(lost) in done.out
    report = purge.report()
    assert report["partial"]["unchecked"] == len(earlier)
    assert report["partial"]["missing"] == [str(lost)]
    assert report["still_present"] == 0
    assert report["verified"] == len(IDS) - len(earlier)
    (latest,) = audit_files(elsewhere)
    page = render(
        (r for _, _, r in read_records([latest])),
        check([latest]),
        paths=[latest],
        generated="now",
    )
    assert said in page
    cells = page.split(f'<tr id="proof-{CAMPAIGN}">', 1)[1].split("</tr>", 1)[0]
    assert "gone" not in cells


async def test_a_resume_from_the_same_directory_is_read_back_whole(
    sandbox: SandboxHandle, token: str, tmp_path: Path, places: tuple[Path, Path]
) -> None:
    here, _ = places
    purge = Purge(sandbox, token, tmp_path)
    await purge.stopped_after_some_deletes(here)

    done = await purge.resumed_with_verify(here)

    assert done.code == 0, done.out + done.err
    assert purge.report()["verified"] == len(IDS)
    assert purge.report()["partial"] is None
    assert "partly read back" not in done.out
