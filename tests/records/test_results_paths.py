"""A ``--results`` symlink is written through (what else it may name: test_output_paths.py)."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path

from conftest import write_csv

from worker.commands.run import run_purge
from worker.records.results import HEADER
from worker.settings import Settings

MakeSettings = Callable[..., Settings]


async def test_a_results_symlink_is_written_through_and_stays_a_symlink(
    make_settings: MakeSettings, tmp_path: Path
) -> None:
    path = write_csv(tmp_path / "ids.csv", ["1", "2", "3"])
    (tmp_path / "kept").mkdir()
    target = tmp_path / "kept" / "results.csv"
    link = tmp_path / "results.csv"
    link.symlink_to(target)  # dangling until the run writes the file
    settings = make_settings(campaign_id=42, results=link)

    result = await run_purge(settings, str(path), out=io.StringIO())

    assert result.exit_code == 0
    assert link.is_symlink()
    assert link.readlink() == target
    with target.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(r["audience_id"] for r in rows) == ["1", "2", "3"]
    assert {r["outcome"] for r in rows} == {"deleted"}
    assert target.read_text(encoding="utf-8").splitlines()[0] == ",".join(HEADER)
    assert target.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in target.parent.iterdir()] == ["results.csv"]  # no spool left
