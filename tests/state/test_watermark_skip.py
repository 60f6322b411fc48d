"""Resume past the hashed window: rows between the verified prefix and the watermark are
skipped, not re-read as duplicates of themselves nor sent again.

A checkpoint hashes the input exactly up to its watermark only while the bytes before it
are still kept (``KEEP_BYTES``); past that window the verified prefix ends at an earlier
block boundary, and the rows between it and the watermark are dropped unparsed. Shrinking
the window makes a small file reach that path.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
from conftest import read_audit, write_csv

from worker.commands.run import run_purge
from worker.input import sources
from worker.sandbox.runner import SandboxHandle
from worker.settings import Settings
from worker.settings.rate import RateSpec
from worker.state.checkpoint import STATE_FILE

MakeSettings = Callable[..., Settings]
IDS = range(1, 10_001)
NOTE = "x" * 24  # rows of about 30 bytes


async def test_rows_between_the_verified_prefix_and_the_watermark_are_skipped_on_resume(
    sandbox: SandboxHandle,
    make_settings: MakeSettings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Small blocks, and only the one being read kept: the reader, a few batches ahead of
    # the watermark, has left the watermark's block behind when a checkpoint is taken.
    monkeypatch.setattr(sources, "BLOCK", 1024)
    monkeypatch.setattr(sources, "KEEP_BYTES", 1)
    path = write_csv(tmp_path / "ids.csv", ["audience_id,note", *(f"{i},{NOTE}" for i in IDS)])
    settings = make_settings(
        campaign_id=42, batch_size=20, rate=RateSpec(200, 1.0), checkpoint_interval=0.05
    )
    asyncio.get_running_loop().call_later(1.0, os.kill, os.getpid(), signal.SIGTERM)

    first = await run_purge(settings, str(path))

    assert first.exit_code == 75
    assert settings.state_dir is not None
    saved = orjson.loads((settings.state_dir / STATE_FILE).read_bytes())["input"]
    assert saved["prefix_bytes"] < saved["watermark"]  # the path under test is reached
    done_before = first.tally.deleted

    again = await run_purge(replace(settings, audit_log=tmp_path / "again.jsonl"), str(path))

    assert again.exit_code == 0
    records = read_audit(tmp_path / "again.jsonl")
    assert [r for r in records if r["event"] == "duplicates"] == []
    assert again.tally.deleted == len(IDS) - done_before
    assert sandbox.state.receipts[42].resent == 0
    assert [i for i in IDS if sandbox.state.campaigns[42].alive(i)] == []
