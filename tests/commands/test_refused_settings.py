"""Setting values refused at the command line: ``python -m worker`` in a subprocess exits 2
with one line naming the setting, before anything is sent.

The sandbox runs in the test's event loop; the child is started with
``asyncio.create_subprocess_exec`` so that loop keeps serving while the child runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import write_csv
from processes import Completed, finish, start

from worker.sandbox.runner import SandboxHandle

pytestmark = pytest.mark.slow


async def dry_run(tmp_path: Path, *flags: str) -> Completed:
    ids = write_csv(tmp_path / "ids.csv", ["1", "2", "3"])
    proc = await start("run", "--dry-run", "--input", str(ids), *flags, cwd=tmp_path, token=None)
    return await finish(proc)


@pytest.mark.parametrize(
    ("flag", "value", "key"),
    [
        ("--campaign-id", "\u0664\u0662", "campaign_id"),  # Arabic-Indic 42
        ("--batch-size", "\u0665", "batch_size"),  # Arabic-Indic 5
        ("--rate", "\u0665/s", "rate"),
        ("--timeout", "\u0663\u0660", "timeout"),  # Arabic-Indic 30
    ],
)
async def test_a_flag_in_other_digits_than_0_to_9_exits_2_with_one_line_naming_it(
    tmp_path: Path, flag: str, value: str, key: str
) -> None:
    flags = [flag, value] if flag == "--campaign-id" else [flag, value, "--campaign-id", "42"]

    done = await dry_run(tmp_path, *flags)

    assert done.code == 2
    assert done.out == ""
    assert len(done.err.splitlines()) == 1
    assert done.err.startswith(f"audience-purge: error: {flag}: ")
    assert "(digits 0-9)" in done.err


async def test_a_campaign_id_with_leading_zeros_in_range_is_that_campaign(tmp_path: Path) -> None:
    done = await dry_run(tmp_path, "--campaign-id", "0000000000000000000021")

    assert done.code == 0
    assert "campaign 21: 3 ids in 1 request" in done.out


async def test_a_campaign_id_of_5000_digits_exits_2_with_the_range_not_a_python_limit(
    tmp_path: Path,
) -> None:
    done = await dry_run(tmp_path, "--campaign-id", "9" * 5000)

    assert done.code == 2
    assert done.err == (
        "audience-purge: error: --campaign-id: must be between 1 "
        "and 9223372036854775807, got a number of 5000 digits\n"
    )


async def test_a_base_url_that_urllib_and_the_http_client_read_apart_exits_2_and_sends_nothing(
    sandbox: SandboxHandle, token: str, tmp_path: Path
) -> None:
    # urllib reads host 127.0.0.1 (the sandbox) and would pass it as loopback; yarl, which
    # aiohttp sends with, reads the backslash as the end of the host.
    hostile = sandbox.url.replace("http://", "http://evil.example\\@", 1)
    ids = write_csv(tmp_path / "ids.csv", ["1", "2", "3"])
    proc = await start(
        "run",
        "--input",
        str(ids),
        "--campaign-id",
        "42",
        "--base-url",
        hostile,
        "--max-attempts",
        "1",
        "--progress",
        "off",
        cwd=tmp_path,
        token=token,
    )
    done = await finish(proc)

    assert done.code == 2
    assert done.err.splitlines() == [
        "audience-purge: error: --base-url: the URL holds a space, a "
        f"control character or a backslash (character {hostile.index(chr(92)) + 1})"
    ]
    assert sandbox.state.requests_total == 0
    assert not (tmp_path / "purge-audit").exists()


@pytest.mark.parametrize("shard", ["\u0660/\u0663", "1/\u0663", "1/3/5", "x/3"])
async def test_a_shard_in_other_digits_or_shapes_exits_2_naming_it(
    tmp_path: Path, shard: str
) -> None:
    done = await dry_run(tmp_path, "--campaign-id", "42", "--shard", shard)

    assert done.code == 2
    assert done.err.startswith("audience-purge: error: --shard: expected INDEX/COUNT ")


async def test_delete_all_refuses_a_campaign_id_in_other_digits(tmp_path: Path) -> None:
    proc = await start(
        "delete-all",
        "--campaign-id",
        "\u0664\u0662",
        "--confirm",
        "42",
        "--dry-run",
        cwd=tmp_path,
        token=None,
    )
    done = await finish(proc)

    assert done.code == 2
    assert "(digits 0-9)" in done.err
