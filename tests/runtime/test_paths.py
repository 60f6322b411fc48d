"""The run's files are never one another: a collision is exit 2 and nothing is touched."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import write_csv

from worker.commands.run import run_purge
from worker.errors import UsageError
from worker.files import check_distinct
from worker.sandbox.runner import SandboxHandle
from worker.settings import Settings

MakeSettings = Callable[..., Settings]
IDS = ["campaign_id,audience_id", "42,1", "42,2", "42,3"]


@pytest.fixture
def ids(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "ids.csv", IDS)


@pytest.mark.parametrize("output", ["failed_out", "audit_log", "report"])
async def test_an_output_naming_the_input_is_refused_and_the_input_stays_whole(
    sandbox: SandboxHandle, make_settings: MakeSettings, ids: Path, output: str
) -> None:
    before = ids.read_bytes()
    settings = make_settings(**{output: ids})

    with pytest.raises(UsageError, match=r"is the same file as the input"):
        await run_purge(settings, str(ids))

    assert ids.read_bytes() == before
    assert sandbox.state.requests_total == 0
    assert settings.state_dir is not None
    assert not settings.state_dir.exists()


async def test_a_symlink_to_the_input_is_the_input(
    sandbox: SandboxHandle, make_settings: MakeSettings, ids: Path, tmp_path: Path
) -> None:
    link = tmp_path / "failed.csv"
    link.unlink(missing_ok=True)
    link.symlink_to(ids)
    settings = make_settings(failed_out=link)

    with pytest.raises(UsageError, match="same file as the input"):
        await run_purge(settings, str(ids))

    assert ids.read_text() == "\n".join(IDS) + "\n"


async def test_two_outputs_on_one_path_are_refused(
    make_settings: MakeSettings, ids: Path, tmp_path: Path
) -> None:
    settings = make_settings(report=tmp_path / "out.json", failed_out=tmp_path / "out.json")

    with pytest.raises(UsageError, match=r"--failed-out .* is the same file as --report"):
        await run_purge(settings, str(ids))


async def test_an_output_inside_the_state_directory_is_refused(
    make_settings: MakeSettings, ids: Path, tmp_path: Path
) -> None:
    settings = make_settings(report=tmp_path / "state" / "state.json")

    with pytest.raises(UsageError, match="is inside the state directory"):
        await run_purge(settings, str(ids))


def test_distinct_files_pass(tmp_path: Path) -> None:
    source = write_csv(tmp_path / "ids.csv", IDS)
    check_distinct(
        {"the input": str(source)},
        {
            "--audit-log": tmp_path / "a.jsonl",
            "--report": tmp_path / "r.json",
            "--failed-out": tmp_path / "f.csv",
            "state": tmp_path / "state",
        },
    )


def test_a_hard_link_to_the_input_is_the_input(tmp_path: Path) -> None:
    source = write_csv(tmp_path / "ids.csv", IDS)
    (tmp_path / "other.csv").hardlink_to(source)

    with pytest.raises(UsageError, match="same file as the input"):
        check_distinct({"the input": str(source)}, {"--failed-out": tmp_path / "other.csv"})
