"""Duplicate rows held back for a grouped ``duplicates`` record are written before any
checkpoint names them: after a kill -9, every duplicate row before the saved watermark is in
the audit log, and the rerun audits the rest.

See purging.py for how each purge is run.
"""

from __future__ import annotations

import signal

import orjson
import pytest
from conftest import duplicate_rows
from purging import (  # noqa: F401  (the *_fixture names are fixtures)
    CAMPAIGN,
    IDS,
    Purge,
    Verify,
    audit_verify_fixture,
    csv_bytes,
    purge_fixture,
    ten_batches_done,
)

from worker.state.checkpoint import STATE_FILE

pytestmark = pytest.mark.slow

ROWS = [audience for audience in IDS for _ in range(2)]  # each id twice: lines 2, 4, ... repeat


async def test_after_kill_9_every_duplicate_row_below_the_watermark_is_audited(
    purge: Purge, audit_verify: Verify
) -> None:
    data = csv_bytes(ROWS)
    (purge.cwd / "ids.csv").write_bytes(data)

    killed = await purge.stopped_when(ten_batches_done, how=signal.SIGKILL)

    assert killed.code == -signal.SIGKILL
    saved = orjson.loads((purge.state_dir() / STATE_FILE).read_bytes())["input"]
    below = data[: saved["watermark"]].count(b"\n")  # rows the state counts as done
    expected = [
        (line, CAMPAIGN, audience)
        for line, audience in enumerate(ROWS[:below], start=1)
        if line % 2 == 0
    ]
    assert 0 < len(expected) < len(IDS)  # the checkpoint got past some, not all
    assert set(expected) <= set(duplicate_rows(purge.records()))

    again = await purge.run()

    assert again.code == 0, again.err
    audited = {line for line, _, _ in duplicate_rows(purge.records())}
    assert audited == set(range(2, len(ROWS) + 1, 2))
    code, report = audit_verify(purge.audit_files())
    assert code == 0, report
