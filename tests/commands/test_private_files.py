"""What a run writes is its operator's only: files 0600, directories 0700, under any umask."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import write_csv

from worker.commands.run import run_purge
from worker.files import open_private, write_atomic
from worker.sandbox import FaultConfig
from worker.sandbox.runner import SandboxHandle
from worker.settings import Settings


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=[0o022, 0o002, 0o077], ids=["umask-022", "umask-002", "umask-077"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    before = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(before)


@pytest.mark.parametrize("faults", [FaultConfig(error_ratio=1.0)], ids=["every-request-5xx"])
async def test_a_runs_files_are_0600_and_its_new_directories_0700(
    sandbox: SandboxHandle,
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    umask: int,
) -> None:
    out = tmp_path / "out" / "deep"
    settings = make_settings(
        campaign_id=42,
        max_attempts=1,
        report=out / "report.json",
        failed_out=out / "failed.csv",
        state_dir=tmp_path / "state" / "purge",
    )
    ids = write_csv(tmp_path / "ids.csv", ["1", "2", "3"])

    result = await run_purge(settings, str(ids))

    assert result.exit_code == 1
    state = tmp_path / "state" / "purge"
    files = [out / "report.json", out / "failed.csv", *state.iterdir()]
    assert {f.name: mode(f) for f in files} == {f.name: 0o600 for f in files}
    directories = [tmp_path / "out", out, tmp_path / "state", state]
    assert {str(d): mode(d) for d in directories} == {str(d): 0o700 for d in directories}


def test_write_atomic_never_writes_through_a_leftover_temporary_file_with_a_wider_mode(
    tmp_path: Path,
) -> None:
    target = tmp_path / "report.json"
    leftover = tmp_path / ".report.json.tmp"
    leftover.write_bytes(b"half")
    leftover.chmod(0o666)

    write_atomic(target, b"{}\n")

    assert (target.read_bytes(), mode(target)) == (b"{}\n", 0o600)
    assert (leftover.read_bytes(), mode(leftover)) == (b"half", 0o666)  # a fresh name is used
    assert sorted(p.name for p in tmp_path.iterdir()) == [".report.json.tmp", "report.json"]


def test_a_stricter_umask_wins_over_the_private_modes(tmp_path: Path) -> None:
    before = os.umask(0o277)
    try:
        with open_private(tmp_path / "f", "w") as handle:
            handle.write("x")
    finally:
        os.umask(before)
    assert mode(tmp_path / "f") == 0o400
