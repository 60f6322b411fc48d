"""What ``--failed-out`` may name, checked when the file is opened, before ``run_started``
and before anything is sent: ``-`` is not stdout there (only ``--report`` takes it),
something that is not a regular file is not unlinked nor written to, and a symlink is
written through. Real runs against the sandbox on loopback."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import write_csv
from test_results_paths import in_the_way

from worker.commands.run import run_purge
from worker.errors import UsageError
from worker.exit_codes import ExitCode, exit_code_for
from worker.records.failed_out import HEADER
from worker.sandbox.runner import SandboxHandle
from worker.settings import Settings

MakeSettings = Callable[..., Settings]
UNKNOWN = 999  # a campaign the sandbox does not have


@pytest.mark.parametrize("kind", ["directory", "fifo", "device-through-a-symlink"])
async def test_a_failed_out_path_that_is_not_a_regular_file_is_refused_and_left_alone(
    sandbox: SandboxHandle, make_settings: MakeSettings, tmp_path: Path, kind: str
) -> None:
    path = write_csv(tmp_path / "ids.csv", ["1", "2", "3"])
    failed = in_the_way(kind, tmp_path / "failed.csv")
    settings = make_settings(campaign_id=42, failed_out=failed)

    with pytest.raises(UsageError) as refused:
        await run_purge(settings, str(path), out=io.StringIO())

    assert str(refused.value) == (
        f"the failed-out file {failed} is not a regular file (a directory, a device, a pipe): "
        "name a file"
    )
    assert exit_code_for(refused.value) == ExitCode.USAGE
    assert sandbox.state.requests_total == 0
    assert settings.audit_log is not None
    assert not settings.audit_log.exists()  # no run_started, no run_finished
    assert failed.is_dir() or failed.is_fifo() or failed.is_char_device()  # not unlinked


async def test_a_dash_is_refused_as_failed_out_since_only_report_takes_stdout(
    sandbox: SandboxHandle,
    make_settings: MakeSettings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    path = write_csv(tmp_path / "ids.csv", ["1", "2", "3"])
    settings = make_settings(campaign_id=42, failed_out=Path("-"))

    with pytest.raises(UsageError) as refused:
        await run_purge(settings, str(path), out=io.StringIO())

    assert str(refused.value) == (
        "--failed-out - would write a file named -: only --report takes - (stdout); "
        "name a file for the failed-out file"
    )
    assert exit_code_for(refused.value) == ExitCode.USAGE
    assert sandbox.state.requests_total == 0
    assert not (tmp_path / "-").exists()


async def test_a_failed_out_symlink_is_written_through_and_stays_a_symlink(
    make_settings: MakeSettings, tmp_path: Path
) -> None:
    path = write_csv(tmp_path / "ids.csv", ["campaign_id,audience_id", "42,1", f"{UNKNOWN},2"])
    (tmp_path / "kept").mkdir()
    target = tmp_path / "kept" / "failed.csv"
    target.write_text("an earlier run's list\n")
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
    assert target.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in target.parent.iterdir()] == ["failed.csv"]
