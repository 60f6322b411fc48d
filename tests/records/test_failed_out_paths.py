"""A ``--failed-out`` symlink is written through (what else it may name: test_output_paths.py)."""

from __future__ import annotations

import errno
import io
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import write_csv

from worker.commands.run import run_purge
from worker.errors import OutputError
from worker.records import failed_out
from worker.records.failed_out import HEADER, FailedOut
from worker.settings import Settings

MakeSettings = Callable[..., Settings]
UNKNOWN = 999  # a campaign the sandbox does not have


async def test_a_failed_out_symlink_is_written_through_and_stays_a_symlink(
    make_settings: MakeSettings, tmp_path: Path
) -> None:
    path = write_csv(tmp_path / "ids.csv", ["campaign_id,audience_id", "42,1", f"{UNKNOWN},2"])
    (tmp_path / "kept").mkdir()
    target = tmp_path / "kept" / "failed.csv"
    target.write_text(",".join(HEADER) + "\n42,7,unknown campaign\n")  # an earlier run's
    target.chmod(0o640)
    link = tmp_path / "failed.csv"
    link.symlink_to(target)
    settings = make_settings(failed_out=link)

    result = await run_purge(settings, str(path), out=io.StringIO())

    assert result.exit_code == 1
    assert link.is_symlink()
    assert link.readlink() == target
    assert target.read_text(encoding="utf-8").splitlines() == [
        ",".join(HEADER),
        f"{UNKNOWN},2,unknown campaign",
    ]
    assert target.stat().st_mode & 0o777 == 0o640  # replaced, not chmodded
    assert [p.name for p in target.parent.iterdir()] == ["failed.csv"]


def test_a_failed_out_file_that_cannot_be_put_in_place_leaves_nothing_beside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "failed.csv"

    def refuse(src: object, dst: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(failed_out.os, "replace", refuse)

    with pytest.raises(OutputError):
        FailedOut(target)

    assert sorted(p.name for p in tmp_path.iterdir()) == []
