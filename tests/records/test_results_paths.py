"""What ``--results`` may name, checked when the file is opened, before ``run_started`` and
before anything is sent: ``-`` is not stdout there (only ``--report`` takes it), something
that is not a regular file could never be replaced by the finished file, and a symlink is
written through. Real runs against the sandbox on loopback."""

from __future__ import annotations

import csv
import io
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import write_csv

from worker.commands.run import run_purge
from worker.errors import UsageError
from worker.exit_codes import ExitCode, exit_code_for
from worker.records.results import HEADER
from worker.sandbox.runner import SandboxHandle
from worker.settings import Settings

MakeSettings = Callable[..., Settings]


def in_the_way(kind: str, path: Path) -> Path:
    """Make ``path`` something that is not a regular file: ``kind`` says what.

    The device is a node of our own (the null device's numbers) beside it, never a system
    one: a run that took it for a file to replace would unlink it.
    """
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    else:  # a device, named through a symlink
        device = path.with_name(f"{path.name}.device")
        try:
            os.mknod(device, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        except PermissionError:
            pytest.skip("creating a device node needs CAP_MKNOD")
        path.symlink_to(device)
    return path


@pytest.mark.parametrize("kind", ["directory", "fifo", "device-through-a-symlink"])
async def test_a_results_path_that_is_not_a_regular_file_is_refused_before_anything_is_sent(
    sandbox: SandboxHandle, make_settings: MakeSettings, tmp_path: Path, kind: str
) -> None:
    path = write_csv(tmp_path / "ids.csv", ["1", "2", "3"])
    results = in_the_way(kind, tmp_path / "results.csv")
    settings = make_settings(campaign_id=42, results=results)

    with pytest.raises(UsageError) as refused:
        await run_purge(settings, str(path), out=io.StringIO())

    assert str(refused.value) == (
        f"the results file {results} is not a regular file (a directory, a device, a pipe): "
        "name a file"
    )
    assert exit_code_for(refused.value) == ExitCode.USAGE
    assert sandbox.state.requests_total == 0
    assert settings.audit_log is not None
    assert not settings.audit_log.exists()  # no run_started, no run_finished
    assert not list(tmp_path.glob("*.partial"))
    if kind == "directory":
        assert not list(results.iterdir())


async def test_a_dash_is_refused_as_results_since_only_report_takes_stdout(
    sandbox: SandboxHandle,
    make_settings: MakeSettings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    path = write_csv(tmp_path / "ids.csv", ["1", "2", "3"])
    settings = make_settings(campaign_id=42, results=Path("-"))

    with pytest.raises(UsageError) as refused:
        await run_purge(settings, str(path), out=io.StringIO())

    assert str(refused.value) == (
        "--results - would write a file named -: only --report takes - (stdout); "
        "name a file for the results file"
    )
    assert exit_code_for(refused.value) == ExitCode.USAGE
    assert sandbox.state.requests_total == 0
    assert not (tmp_path / "-").exists()
    assert not list(tmp_path.glob("-.*"))


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
