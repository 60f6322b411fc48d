"""What ``--results`` and ``--failed-out`` may name, checked before ``run_started`` and
before anything is sent: ``-`` is not stdout there (only ``--report``, ``select --out`` and
``audit report --html`` take it), and something that is not a regular file is neither
unlinked nor written to (it could never be replaced by the finished file). Real runs against
the sandbox on loopback; that a symlink is written through is in test_results_paths.py and
test_failed_out_paths.py; every output of every command is in test_output_matrix.py."""

from __future__ import annotations

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
from worker.sandbox.runner import SandboxHandle
from worker.settings import Settings

MakeSettings = Callable[..., Settings]
# (setting, what the messages call the file, its flag)
OUTPUTS = [
    ("results", "the results file", "--results"),
    ("failed_out", "the failed-out file", "--failed-out"),
]


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


@pytest.mark.parametrize(("setting", "what", "flag"), OUTPUTS)
@pytest.mark.parametrize("kind", ["directory", "fifo", "device-through-a-symlink"])
async def test_an_output_that_is_not_a_regular_file_is_refused_and_left_alone(
    sandbox: SandboxHandle,
    make_settings: MakeSettings,
    tmp_path: Path,
    kind: str,
    setting: str,
    what: str,
    flag: str,
) -> None:
    path = write_csv(tmp_path / "ids.csv", ["1", "2", "3"])
    output = in_the_way(kind, tmp_path / "out.csv")
    settings = make_settings(campaign_id=42, **{setting: output})

    with pytest.raises(UsageError) as refused:
        await run_purge(settings, str(path), out=io.StringIO())

    assert str(refused.value) == (
        f"{what} {output} is not a regular file (a directory, a device, a pipe): name a file"
    )
    assert exit_code_for(refused.value) == ExitCode.USAGE
    assert sandbox.state.requests_total == 0
    assert settings.audit_log is not None
    assert not settings.audit_log.exists()  # no run_started, no run_finished
    assert not list(tmp_path.glob("*.partial"))
    assert output.is_dir() or output.is_fifo() or output.is_char_device()  # not unlinked
    if kind == "directory":
        assert not list(output.iterdir())


@pytest.mark.parametrize(("setting", "what", "flag"), OUTPUTS)
async def test_a_dash_is_refused_since_only_report_takes_stdout(
    sandbox: SandboxHandle,
    make_settings: MakeSettings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    setting: str,
    what: str,
    flag: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    path = write_csv(tmp_path / "ids.csv", ["1", "2", "3"])
    settings = make_settings(campaign_id=42, **{setting: Path("-")})

    with pytest.raises(UsageError) as refused:
        await run_purge(settings, str(path), out=io.StringIO())

    assert str(refused.value) == (
        f"{flag} - would write a file named -: only --report, select --out and audit report "
        "--html take - (stdout); "
        f"name a file for {what}"
    )
    assert exit_code_for(refused.value) == ExitCode.USAGE
    assert sandbox.state.requests_total == 0
    assert not (tmp_path / "-").exists()
    assert not list(tmp_path.glob("-.*"))
