"""Progress reporting: structured events off a terminal, a bar on one."""

from __future__ import annotations

import io
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
import structlog
from conftest import write_csv

from worker.commands.run import run_purge
from worker.runtime.logs import configure_logging
from worker.settings import Settings
from worker.settings.rate import RateSpec


@pytest.fixture
def json_logging(capfd: pytest.CaptureFixture[str]) -> Iterator[None]:
    configure_logging("info", json=True)
    yield
    structlog.reset_defaults()


@pytest.mark.usefixtures("json_logging")
async def test_log_mode_emits_progress_events_with_counts_on_stderr(
    make_settings: Callable[..., Settings], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    path = write_csv(tmp_path / "ids.csv", [str(i) for i in range(1, 31)])
    settings = make_settings(
        campaign_id=42,
        batch_size=5,
        rate=RateSpec(20, 1.0),
        progress="log",
        progress_interval=0.1,
    )

    result = await run_purge(settings, str(path), out=io.StringIO())

    events = [
        orjson.loads(line) for line in capfd.readouterr().err.splitlines() if '"progress"' in line
    ]
    assert result.exit_code == 0
    assert len(events) >= 2
    assert events[-1]["deleted"] == 30
    assert events[-1]["requests"] == 6
    assert all(e["deleted"] <= f["deleted"] for e, f in itertools.pairwise(events))


async def test_bar_mode_renders_the_counts_on_stderr_not_stdout(
    make_settings: Callable[..., Settings], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    path = write_csv(tmp_path / "ids.csv", [str(i) for i in range(1, 31)])
    settings = make_settings(campaign_id=42, batch_size=10, progress="bar")
    out = io.StringIO()

    await run_purge(settings, str(path), out=out)

    captured = capfd.readouterr()
    assert "purging" in captured.err
    assert "deleted 30" in captured.err
    assert "purging" not in captured.out + out.getvalue()
