"""Data minimisation on the rows that have no id cell to keep (issue #25): a row with too few
cells and a record over the size limit are rejected by their line and hash alone, end to end
through ``run``: the text a person typed in them reaches no file and no stream."""

from __future__ import annotations

import hashlib
from pathlib import Path

from conftest import read_audit
from processes import finish, start

from worker.sandbox.runner import SandboxHandle

NOTE = "+44 7700 900123 call after 5"
OVERSIZED = f"42,5,{NOTE} " * (1_100_000 // len(NOTE))  # over the 1 MiB limit of a record


def files_holding(root: Path, needle: bytes, *, but: Path) -> list[str]:
    files = [p for p in sorted(root.rglob("*")) if p.is_file() and p != but]
    return [str(p) for p in files if needle in p.read_bytes()]


async def test_rows_without_an_id_cell_leave_no_trace_of_their_text(
    sandbox: SandboxHandle, token: str, tmp_path: Path
) -> None:
    rows = [
        "campaign_id,audience_id,note",
        "42,7,fine",
        NOTE,  # line 3: one cell, so no audience_id cell at all
        OVERSIZED,  # line 4: streamed past, never split into cells
        "42,8,fine",
    ]
    path = tmp_path / "ids.csv"
    path.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    done = await finish(
        await start(
            *("run", "--input", str(path), "--base-url", sandbox.url, "--rate", "1000/second"),
            *("--audit-log", str(out / "audit.jsonl"), "--report", str(out / "report.json")),
            *("--failed-out", str(out / "failed.csv"), "--state-dir", str(out / "state")),
            *("--progress", "log", "--log-level", "debug"),
            cwd=tmp_path,
            token=token,
        )
    )

    assert done.code == 0, done.err
    assert sandbox.state.receipts[42].received_ids() == [7, 8]
    rejected = [r for r in read_audit(out / "audit.jsonl") if r["event"] == "rejected"]
    assert [(r["line"], r["reason"], r["audience_raw"]) for r in rejected] == [
        (3, "missing audience_id", None),
        (4, "line too long", None),
    ]
    assert [r["raw_sha256"] for r in rejected] == [
        hashlib.sha256(row.encode()).hexdigest() for row in (NOTE, OVERSIZED)
    ]
    for needle in ("7700 900123", "call after"):
        assert files_holding(tmp_path, needle.encode(), but=path) == []
        assert needle not in done.out + done.err
