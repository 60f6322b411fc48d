"""Sharding (``run --shard I/C``, Kubernetes Indexed Jobs): shard_of splits ids evenly and
stably, and C shard runs over one input delete every valid id exactly once between them."""

from __future__ import annotations

import hashlib
import io
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import duplicate_rows, read_audit, write_csv

from worker.cli import build_parser, main, settings_from
from worker.commands.run import run_purge
from worker.errors import ConfigError
from worker.input.batching import shard_of
from worker.sandbox.runner import SandboxHandle
from worker.settings import Settings, load_settings
from worker.state.checkpoint import default_state_dir

MakeSettings = Callable[..., Settings]


def id_groups() -> dict[str, list[int]]:
    """100 000 distinct ids shaped like real ones: a dense auto-increment range, a sparse
    stride, and random 63-bit values."""
    rng = random.Random(20240601)
    dense = list(range(1, 40_001))
    stride = list(range(10_000_000, 10_000_000 + 30_000 * 1000, 1000))
    wide = rng.sample(range(2**40, 2**63), 30_000)
    return {"dense": dense, "stride": stride, "wide": wide}


ALL_IDS = [i for ids in id_groups().values() for i in ids]


# -- shard_of --------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 3, 7])
def test_shard_of_puts_every_id_in_exactly_one_shard_in_range(count: int) -> None:
    shards: list[set[int]] = [set() for _ in range(count)]

    for audience_id in ALL_IDS:
        shard = shard_of(audience_id, count)
        assert 0 <= shard < count
        shards[shard].add(audience_id)

    assert sum(len(s) for s in shards) == len(set(ALL_IDS)) == 100_000
    assert set().union(*shards) == set(ALL_IDS)


@pytest.mark.parametrize("group", ["dense", "stride", "wide"])
@pytest.mark.parametrize("count", [1, 3, 7])
def test_shard_of_spreads_ids_evenly(count: int, group: str) -> None:
    ids = id_groups()[group]

    sizes = Counter(shard_of(i, count) for i in ids)

    fair = len(ids) / count
    assert sorted(sizes) == list(range(count))
    assert all(abs(n - fair) <= 0.03 * fair for n in sizes.values()), sizes


def test_shard_of_is_deterministic_across_calls_and_machines() -> None:
    sample = [1, 2, 3, 42, 1000, 123_456_789, 2**63 - 1]

    first = [shard_of(i, 7) for i in sample]

    assert [shard_of(i, 7) for i in sample] == first
    # Pinned: pods running different releases of the worker must agree on every id.
    assert [shard_of(i, 3) for i in sample] == [
        (((i * 0x9E3779B97F4A7C15) % 2**64) >> 32) % 3 for i in sample
    ]
    assert first == [(((i * 0x9E3779B97F4A7C15) % 2**64) >> 32) % 7 for i in sample]


# -- run --shard I/C end to end --------------------------------------------------------------


def shard_input(tmp_path: Path) -> tuple[Path, set[tuple[int, int]]]:
    valid = {(42, i) for i in range(1, 301)} | {(77, i) for i in range(1, 151)}
    lines = ["campaign_id,audience_id", *(f"{c},{i}" for c, i in sorted(valid))]
    lines += ["42,abc", "x,5", "42,-3", "42,7", "77,9"]  # three rejected rows, two duplicates
    return write_csv(tmp_path / "ids.csv", lines), valid


def of(records: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [r for r in records if r["event"] == event]


@pytest.mark.parametrize("count", [1, 3, 7])
async def test_shard_runs_delete_every_valid_id_exactly_once_between_them(
    sandbox: SandboxHandle, make_settings: MakeSettings, tmp_path: Path, count: int
) -> None:
    path, valid = shard_input(tmp_path)
    audits = []

    for index in range(count):
        settings = make_settings(
            shard_index=index,
            shard_count=count,
            state_dir=tmp_path / f"state-{index}",
            audit_log=tmp_path / f"audit-{index}.jsonl",
            failed_out=tmp_path / f"failed-{index}.csv",
            report=tmp_path / f"report-{index}.json",
        )
        result = await run_purge(settings, str(path), out=io.StringIO())
        assert result.exit_code == 0, result.summary()
        audits.append(read_audit(tmp_path / f"audit-{index}.jsonl"))

    deleted = [
        [(r["campaign_id"], i) for r in of(records, "deleted") for i in r["audience_ids"]]
        for records in audits
    ]
    for index, pairs in enumerate(deleted):
        assert {shard_of(i, count) for _, i in pairs} <= {index}
    assert sum(len(pairs) for pairs in deleted) == len(valid)
    assert set().union(*map(set, deleted)) == valid
    assert sandbox.state.receipts[42].received_ids() == list(range(1, 301))
    assert sandbox.state.receipts[77].received_ids() == list(range(1, 151))
    assert sandbox.state.receipts[42].resent == sandbox.state.receipts[77].resent == 0
    rejected = [[r["raw_sha256"] for r in of(records, "rejected")] for records in audits]
    hashed = [hashlib.sha256(line).hexdigest() for line in (b"42,abc", b"x,5", b"42,-3")]
    assert rejected == [hashed] + [[]] * (count - 1)
    duplicates = {
        (campaign, audience): index
        for index, records in enumerate(audits)
        for _, campaign, audience in duplicate_rows(records)
    }
    assert duplicates == {(42, 7): shard_of(7, count), (77, 9): shard_of(9, count)}
    starts = [records[0] for records in audits]
    assert [(s["settings"]["shard_index"], s["settings"]["shard_count"]) for s in starts] == [
        (index, count) for index in range(count)
    ]
    assert len({s["run_id"] for s in starts}) == count
    assert all({r["run_id"] for r in records} == {records[0]["run_id"]} for records in audits)
    finished = [records[-1] for records in audits]
    assert sum(f["deleted"] for f in finished) == len(valid)


def test_each_shard_keeps_its_own_default_state_dir() -> None:
    dirs = {
        default_state_dir("ids.csv", 42, "https://api", shard)
        for shard in ("", "0/3", "1/3", "2/3", "0/7")
    }

    assert len(dirs) == 5


# -- selecting the shard: flag, environment, refusals ----------------------------------------


def run_settings(argv: list[str], env: dict[str, str]) -> Settings:
    return settings_from(build_parser().parse_args(["run", "--input", "ids.csv", *argv]), env)


def test_job_completion_index_with_a_shard_count_selects_the_same_shard_as_the_flag() -> None:
    flag = run_settings(["--shard", "2/3"], {})
    env = load_settings({}, {"JOB_COMPLETION_INDEX": "2", "AUDIENCE_PURGE_SHARD_COUNT": "3"})
    count_flag = run_settings(["--shard-count", "3"], {"JOB_COMPLETION_INDEX": "2"})

    assert (flag.shard_index, flag.shard_count) == (2, 3)
    assert (env.shard_index, env.shard_count) == (2, 3)
    assert (count_flag.shard_index, count_flag.shard_count) == (2, 3)


def test_the_shard_flag_wins_over_the_environment() -> None:
    env = {"JOB_COMPLETION_INDEX": "2", "AUDIENCE_PURGE_SHARD_COUNT": "3"}

    settings = run_settings(["--shard", "1/7"], env)

    assert (settings.shard_index, settings.shard_count) == (1, 7)


def test_job_completion_index_alone_does_not_shard() -> None:
    settings = load_settings({}, {"JOB_COMPLETION_INDEX": "4"})

    assert settings.shard_count is None


@pytest.mark.parametrize(
    ("flags", "env", "message"),
    [
        ({"shard_index": 3, "shard_count": 3}, {}, "index 3 is not below the count 3"),
        ({"shard_index": 9, "shard_count": 7}, {}, "index 9 is not below the count 7"),
        (
            {},
            {"JOB_COMPLETION_INDEX": "3", "AUDIENCE_PURGE_SHARD_COUNT": "3"},
            "index 3 is not below the count 3",
        ),
        ({"shard_count": 3}, {}, "needs a shard index"),
        ({}, {"AUDIENCE_PURGE_SHARD_COUNT": "3"}, "needs a shard index"),
    ],
    ids=["flag-index-equal", "flag-index-above", "env-index-equal", "flag-count", "env-count"],
)
def test_an_impossible_shard_is_a_config_error_naming_shard(
    flags: dict[str, Any], env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as refused:
        load_settings(flags, env)

    assert refused.value.key == "shard"
    assert str(refused.value).startswith("shard: ")


@pytest.mark.parametrize("spec", ["2/x", "2", "/3", "-1/3", "a/b"])
def test_a_malformed_shard_flag_is_a_config_error_naming_shard(spec: str) -> None:
    with pytest.raises(ConfigError, match="expected INDEX/COUNT") as refused:
        run_settings([f"--shard={spec}"], {})

    assert refused.value.key == "shard"


def test_run_with_a_shard_index_not_below_the_count_exits_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("JOB_COMPLETION_INDEX", "AUDIENCE_PURGE_SHARD_COUNT"):
        monkeypatch.delenv(name, raising=False)
    path = write_csv(tmp_path / "ids.csv", ["1"])

    code = main(["run", "--input", str(path), "--campaign-id", "42", "--shard", "3/3"])

    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["audience-purge: error: --shard: index 3 is not below the count 3"]
