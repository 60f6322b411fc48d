"""An id repeated inside one block of plain single-column lines, after the first block, is
sent once and audited as a duplicate (issue #25): the fast path takes a whole block at once
only when none of its ids repeats, so a repeat inside it must send the block row by row."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import duplicate_rows, read_audit, write_csv

from worker.commands.run import run_purge
from worker.input import sources
from worker.sandbox.runner import SandboxHandle
from worker.settings import Settings

IDS = 3000
REPEATED = 2000  # on line 2000 and again on line 2001, deep inside the input's third block


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> int:
    """Read in blocks of 4 KiB: the 3001 lines (about 14 KB) are four blocks."""
    monkeypatch.setattr(sources, "BLOCK", 4096)
    return 4096


async def test_an_id_repeated_inside_a_later_block_is_sent_once_and_audited_as_a_repeat(
    sandbox: SandboxHandle,
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    small_blocks: int,
) -> None:
    lines = [str(i) for i in range(1, IDS + 1)]
    lines.insert(REPEATED, str(REPEATED))  # line REPEATED + 1 repeats line REPEATED
    path = write_csv(tmp_path / "ids.csv", lines)
    offset = len("\n".join(lines[:REPEATED]))  # where the repeat starts, in bytes
    assert small_blocks * 2 < offset < small_blocks * 3 - 100  # the third block, not its edge
    settings = make_settings(campaign_id=42, batch_size=100)

    result = await run_purge(settings, str(path))

    assert result.exit_code == 0, result.summary()
    received = sandbox.state.receipts[42].received_ids()
    assert sorted(received) == list(range(1, IDS + 1))  # each id once: the repeat not sent
    assert (result.tally.deleted, result.tally.duplicates) == (IDS, 1)
    assert duplicate_rows(read_audit(settings.audit_log)) == [(REPEATED + 1, 42, REPEATED)]
