"""``audience-purge status``: a run's saved progress, every state directory, or a queue.

State directories are real ones, written by real purges (:func:`run_purge` against the
sandbox); queues are real streams on the session's redis-server.
"""

from __future__ import annotations

import io
import os
import re
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from conftest import write_csv
from processes import finish, start
from queue_helpers import DEAD, GROUP, STREAM, produce, tens

from worker.cli import main
from worker.commands.run import run_purge
from worker.commands.status import STATE_ROOT, show_status
from worker.errors import StateError, UsageError
from worker.sandbox.runner import SandboxHandle
from worker.sending.credentials import Secret
from worker.settings import Settings
from worker.state.checkpoint import LOCK_FILE, STATE_FILE, StateStore

MakeSettings = Callable[..., Settings]


@pytest.fixture
async def rdb(redis_url: str) -> AsyncIterator[Any]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


async def status_json(settings: Settings) -> dict[str, Any]:
    out = io.StringIO()
    assert await show_status(settings, as_json=True, out=out) == 0
    doc: dict[str, Any] = orjson.loads(out.getvalue())
    return doc


async def status_text(settings: Settings) -> str:
    out = io.StringIO()
    assert await show_status(settings, as_json=False, out=out) == 0
    return out.getvalue()


def mixed_input(tmp_path: Path) -> Path:
    """60 ids of campaign 42 (which exists) and 20 of campaign 999 (which does not)."""
    rows = [f"42,{i}" for i in range(1, 61)] + [f"999,{i}" for i in range(1, 21)]
    return write_csv(tmp_path / "ids.csv", ["campaign_id,audience_id", *rows])


# -- one state directory ---------------------------------------------------------------------


async def test_a_finished_purge_shows_its_input_target_campaigns_counts_and_a_free_lock(
    sandbox: SandboxHandle, make_settings: MakeSettings, tmp_path: Path
) -> None:
    path = mixed_input(tmp_path)
    settings = make_settings(state_dir=tmp_path / "state")
    result = await run_purge(settings, str(path), out=io.StringIO())
    assert result.exit_code == 1  # campaign 999 does not exist

    doc = await status_json(settings)

    size = path.stat().st_size
    assert doc["input"] == {
        "name": str(path),
        "size": size,
        "watermark": size,
        "bytes_left": 0,
        "prefix_bytes": size,
        "prefix_lines": 81,
    }
    assert doc["target"] == {"base_url": sandbox.url, "campaign_id": None, "shard": None}
    assert doc["campaigns"] == {"42": {"ids": 60, "failed": 0}, "999": {"ids": 20, "failed": 20}}
    assert (doc["deleted"], doc["failed_left"], doc["pending"]) == (60, 20, 0)
    assert doc["complete"] is True
    assert doc["runs"] == [result.run_id]
    mtime = (tmp_path / "state" / STATE_FILE).stat().st_mtime
    assert doc["last_checkpoint"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(mtime))
    assert 0 <= doc["last_checkpoint_age_s"] < 30
    assert doc["locked"] is False
    assert doc["lock_holder"] == f"PID {os.getpid()} on {socket.gethostname()}"  # the last run

    text = await status_text(settings)
    assert f"{size:,} of {size:,} bytes done (100.0 %), 0 bytes left" in text
    assert f"target      {sandbox.url}, campaigns from the input" in text
    assert "42: 60 ids met, 0 failed; 999: 20 ids met, 20 failed" in text
    assert "60 deleted, 20 failed" in text
    assert "complete    yes" in text
    assert "lock        free: no run now (last held by PID" in text


async def test_an_aborted_purge_is_incomplete_with_the_bytes_left_from_its_watermark(
    sandbox: SandboxHandle, make_settings: MakeSettings, tmp_path: Path
) -> None:
    path = write_csv(tmp_path / "ids.csv", [str(i) for i in range(1, 201)])
    settings = make_settings(state_dir=tmp_path / "state", campaign_id=42, token=Secret("bad"))
    result = await run_purge(settings, str(path), out=io.StringIO())
    assert result.exit_code == 3  # the token is refused: nothing deleted, all left

    doc = await status_json(settings)

    size = path.stat().st_size
    assert doc["complete"] is False
    assert doc["input"]["watermark"] < size
    assert doc["input"]["bytes_left"] == size - doc["input"]["watermark"] > 0
    assert doc["deleted"] == 0
    assert doc["target"]["campaign_id"] == 42
    assert "complete    no" in await status_text(settings)


async def test_a_held_lock_shows_its_holder_and_status_neither_takes_nor_breaks_it(
    sandbox: SandboxHandle, make_settings: MakeSettings, tmp_path: Path
) -> None:
    path = write_csv(tmp_path / "ids.csv", [str(i) for i in range(1, 21)])
    settings = make_settings(state_dir=tmp_path / "state", campaign_id=42)
    await run_purge(settings, str(path), out=io.StringIO())
    holder = StateStore(tmp_path / "state")
    holder.lock()  # as a running purge holds it
    try:
        doc = await status_json(settings)
        text = await status_text(settings)

        with pytest.raises(StateError, match="in use by"):
            StateStore(tmp_path / "state").lock()  # still held after two probes
    finally:
        holder.unlock()

    assert doc["locked"] is True
    assert doc["lock_holder"] == f"PID {os.getpid()} on {socket.gethostname()}"
    assert f"lock        held by PID {os.getpid()} on {socket.gethostname()}: a run" in text
    assert (await status_json(settings))["locked"] is False


async def test_status_never_writes_into_the_state_directory(
    sandbox: SandboxHandle, make_settings: MakeSettings, tmp_path: Path
) -> None:
    path = write_csv(tmp_path / "ids.csv", [str(i) for i in range(1, 21)])
    settings = make_settings(state_dir=tmp_path / "state", campaign_id=42)
    await run_purge(settings, str(path), out=io.StringIO())
    (tmp_path / "state" / LOCK_FILE).unlink()  # a state copied without its lock file
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "state").iterdir()}

    await status_json(settings)

    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "state").iterdir()}
    assert after == before


async def test_a_missing_or_empty_state_directory_is_a_usage_error(
    make_settings: MakeSettings, tmp_path: Path
) -> None:
    with pytest.raises(StateError, match=r"state directory \S*nope does not exist"):
        await show_status(make_settings(state_dir=tmp_path / "nope"), as_json=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(StateError, match="holds no saved progress"):
        await show_status(make_settings(state_dir=tmp_path / "empty"), as_json=False)


async def test_a_corrupt_state_file_is_a_usage_error_naming_it(
    sandbox: SandboxHandle, make_settings: MakeSettings, tmp_path: Path
) -> None:
    path = write_csv(tmp_path / "ids.csv", [str(i) for i in range(1, 21)])
    settings = make_settings(state_dir=tmp_path / "state", campaign_id=42)
    await run_purge(settings, str(path), out=io.StringIO())
    (tmp_path / "state" / STATE_FILE).write_text('{"format": 1, "generation"', encoding="utf-8")

    with pytest.raises(StateError, match=re.escape(str(tmp_path / "state" / STATE_FILE))):
        await show_status(settings, as_json=True)


# -- every state directory -------------------------------------------------------------------


async def test_without_state_dir_every_directory_under_purge_state_gets_one_line(
    sandbox: SandboxHandle,
    make_settings: MakeSettings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    write_csv(tmp_path / "done.csv", [str(i) for i in range(1, 41)])
    write_csv(tmp_path / "aborted.csv", [str(i) for i in range(41, 81)])
    await run_purge(
        make_settings(state_dir=STATE_ROOT / "done-1", campaign_id=42),
        "done.csv",
        out=io.StringIO(),
    )
    await run_purge(
        make_settings(state_dir=STATE_ROOT / "aborted-2", campaign_id=42, token=Secret("bad")),
        "aborted.csv",
        out=io.StringIO(),
    )
    out = io.StringIO()

    code = await show_status(make_settings(state_dir=None), as_json=False, out=out)

    assert code == 0
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{STATE_ROOT / 'aborted-2'}  aborted.csv    0.0 %  deleted 0")
    assert "  stopped  checkpoint " in lines[0]
    assert lines[1].startswith(f"{STATE_ROOT / 'done-1'}  done.csv  100.0 %  deleted 40  failed 0")
    assert "  complete  checkpoint " in lines[1]

    (STATE_ROOT / "broken-3").mkdir()
    (STATE_ROOT / "broken-3" / STATE_FILE).write_text("not json", encoding="utf-8")
    out = io.StringIO()

    code = await show_status(make_settings(state_dir=None), as_json=True, out=out)

    assert code == 2  # every line printed, and the one that could not be read makes it 2
    docs = orjson.loads(out.getvalue())["state_dirs"]
    assert [d["state_dir"] for d in docs] == [
        str(STATE_ROOT / n) for n in ("aborted-2", "broken-3", "done-1")
    ]
    assert "unreadable or corrupt" in docs[1]["error"]
    assert docs[2]["deleted"] == 40


async def test_without_state_dir_and_without_purge_state_here_it_says_so(
    make_settings: MakeSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    with pytest.raises(UsageError, match="no purge-state/ here"):
        await show_status(make_settings(state_dir=None), as_json=False)


# -- a queue ---------------------------------------------------------------------------------


def queue_settings(make_settings: MakeSettings, redis_url: str, **more: Any) -> Settings:
    fields: dict[str, Any] = {"redis_url": redis_url, "stream": STREAM, "state_dir": None}
    return make_settings(**{**fields, **more})


async def test_a_queue_shows_lengths_memory_pending_per_consumer_the_oldest_entry_and_lag(
    make_settings: MakeSettings, redis_url: str, rdb: Any
) -> None:
    entries = await produce(rdb, tens(1, 100))
    await rdb.xgroup_create(STREAM, GROUP, id="0")
    await rdb.xreadgroup(GROUP, "ghost", {STREAM: ">"}, count=3)
    await rdb.xreadgroup(GROUP, "live", {STREAM: ">"}, count=2)
    for n in range(2):
        await rdb.xadd(DEAD, {"campaign_id": "42", "audience_ids": str(n), "dead_reason": "x"})

    doc = await status_json(queue_settings(make_settings, redis_url))

    assert (doc["stream"], doc["exists"], doc["length"]) == (STREAM, True, 10)
    assert (doc["dead_stream"], doc["dead_length"]) == (DEAD, 2)
    assert doc["memory_bytes"] > 0
    assert doc["dead_memory_bytes"] > 0
    group = doc["group"]
    assert (group["name"], group["pending"], group["lag"], group["lag_exact"]) == (
        GROUP,
        5,
        5,
        True,
    )
    assert group["last_delivered_id"] == entries[4]
    assert {c["name"]: c["pending"] for c in group["consumers"]} == {"ghost": 3, "live": 2}
    assert all(c["idle_ms"] >= 0 for c in group["consumers"])
    oldest = group["oldest_pending"]
    assert (oldest["entry_id"], oldest["consumer"], oldest["deliveries"]) == (
        entries[0],
        "ghost",
        1,
    )
    assert 0 <= oldest["age_ms"] < 60_000
    text = await status_text(queue_settings(make_settings, redis_url))
    assert f"stream {STREAM} on {redis_url}" in text
    assert "entries       10 (" in text
    assert f"dead letters  2 on {DEAD}" in text
    assert f"group         {GROUP}: 5 pending, lag 5, last delivered {entries[4]}" in text
    assert "consumer      ghost: 3 pending, idle " in text
    assert f"oldest        {entries[0]} at ghost: added " in text


async def test_a_queue_whose_newest_delivered_entry_was_deleted_shows_an_estimated_lag(
    make_settings: MakeSettings, redis_url: str, rdb: Any
) -> None:
    entries = await produce(rdb, tens(1, 100))
    await rdb.xgroup_create(STREAM, GROUP, id="0")
    await rdb.xreadgroup(GROUP, "c1", {STREAM: ">"}, count=4)
    await rdb.xack(STREAM, GROUP, entries[3])  # acknowledged out of order, and deleted
    await rdb.xdel(STREAM, entries[3])
    (info,) = await rdb.xinfo_groups(STREAM)
    assert info["lag"] is None  # what Redis says then

    group = (await status_json(queue_settings(make_settings, redis_url)))["group"]

    assert (group["pending"], group["lag"], group["lag_exact"]) == (3, 6, False)
    text = await status_text(queue_settings(make_settings, redis_url))
    assert "lag 6 (stream length - pending: Redis gives none after deletions)" in text


async def test_a_queue_without_its_group_yet_says_so_and_a_missing_stream_is_an_error(
    make_settings: MakeSettings, redis_url: str, rdb: Any
) -> None:
    await produce(rdb, tens(1, 30))

    doc = await status_json(queue_settings(make_settings, redis_url))

    assert doc["length"] == 3
    assert doc["group"] == {"name": GROUP, "exists": False}
    assert doc["dead_memory_bytes"] is None
    assert "not created yet (no consumer started)" in await status_text(
        queue_settings(make_settings, redis_url)
    )
    with pytest.raises(UsageError, match=f"stream nope does not exist on {redis_url}"):
        await show_status(queue_settings(make_settings, redis_url, stream="nope"), as_json=True)


async def test_a_state_dir_and_a_stream_together_are_refused(
    make_settings: MakeSettings, redis_url: str, tmp_path: Path
) -> None:
    settings = make_settings(redis_url=redis_url, stream=STREAM, state_dir=tmp_path)

    with pytest.raises(UsageError, match="not both"):
        await show_status(settings, as_json=False)


# -- the command line --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "flags"),
    [
        (
            "status",
            "--json --state-dir --redis --stream --group --dead-stream --log-format --config",
        ),
        (
            "redrive",
            "--reason --since --redis --stream --dead-stream --audit-log --redis-backoff-initial "
            "--redis-backoff-max --dry-run --log-level --log-format --config",
        ),
    ],
)
def test_status_and_redrive_offer_exactly_their_flags(
    command: str, flags: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])

    usage = capsys.readouterr().out.split("\n\n")[0]
    assert sorted(set(re.findall(r"--[a-z-]+", usage)) - {"--help"}) == sorted(flags.split())


@pytest.mark.slow
async def test_the_cli_prints_json_for_a_queue_and_exits_2_on_a_missing_state_dir(
    redis_url: str, rdb: Any, tmp_path: Path
) -> None:
    await produce(rdb, tens(1, 50))

    shown = await finish(
        await start(
            "status", "--redis", redis_url, "--stream", STREAM, "--json", cwd=tmp_path, token=None
        )
    )
    missing = await finish(await start("status", "--state-dir", "gone", cwd=tmp_path, token=None))

    assert shown.code == 0, shown.err
    assert orjson.loads(shown.out)["length"] == 5
    assert missing.code == 2
    assert missing.err.strip().splitlines() == [
        "audience-purge: error: state directory gone does not exist"
    ]
