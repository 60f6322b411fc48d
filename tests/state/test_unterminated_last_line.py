"""A finished input whose last line had no newline, then rows added: a line continued is a
changed row (refused), a line ended and rows added after it is resumed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import read_audit

from worker.commands.run import run_purge
from worker.errors import StateError
from worker.sandbox.runner import SandboxHandle
from worker.settings import Settings


async def test_bytes_that_continue_the_last_line_are_a_changed_input(
    sandbox: SandboxHandle, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    ids = tmp_path / "ids.csv"
    ids.write_bytes(b"1\n2")
    first = await run_purge(make_settings(campaign_id=42), str(ids))
    assert first.tally.deleted == 2
    with ids.open("ab") as handle:
        handle.write(b"3\n")  # the file is now 1, 23: row 2 became 23
    with pytest.raises(StateError, match="continue that line"):
        await run_purge(make_settings(campaign_id=42, audit_log=tmp_path / "b.jsonl"), str(ids))
    received = sandbox.state.snapshot(ids=True)["campaigns"]
    assert isinstance(received, dict)
    assert received["42"]["received_ids"] == [1, 2]


async def test_rows_added_after_ending_the_last_line_are_resumed(
    sandbox: SandboxHandle, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    ids = tmp_path / "ids.csv"
    ids.write_bytes(b"1\n2")
    await run_purge(make_settings(campaign_id=42), str(ids))
    with ids.open("ab") as handle:
        handle.write(b"\n3\nx\n")
    second_log = tmp_path / "b.jsonl"
    again = await run_purge(make_settings(campaign_id=42, audit_log=second_log), str(ids))
    assert (again.tally.deleted, again.tally.rejected) == (1, 1)
    received = sandbox.state.snapshot(ids=True)["campaigns"]
    assert isinstance(received, dict)
    assert received["42"]["received_ids"] == [1, 2, 3]
    [rejected] = [r for r in read_audit(second_log) if r["event"] == "rejected"]
    assert rejected["line"] == 4  # 1, 2, 3, x: the line numbers are the file's
    # And the state is whole again: the same command has nothing left to do.
    third = await run_purge(make_settings(campaign_id=42, audit_log=tmp_path / "c.jsonl"), str(ids))
    assert (third.tally.requests, third.tally.rows, third.exit_code) == (0, 0, 0)


async def test_a_crlf_file_ended_and_continued_resumes_too(
    sandbox: SandboxHandle, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    ids = tmp_path / "ids.csv"
    ids.write_bytes(b"audience_id\r\n1\r\n2")
    await run_purge(make_settings(campaign_id=42), str(ids))
    with ids.open("ab") as handle:
        handle.write(b"\r\n3\r\n")
    again = await run_purge(make_settings(campaign_id=42, audit_log=tmp_path / "b.jsonl"), str(ids))
    assert (again.tally.deleted, again.tally.rejected, again.exit_code) == (1, 0, 0)
