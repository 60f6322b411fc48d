"""The command line end to end: ``python -m worker`` in a subprocess against the sandbox.

The sandbox runs in the test's event loop; the child is started with
``asyncio.create_subprocess_exec`` so that loop keeps serving while the child runs.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import read_audit, write_csv

from worker.cli import main
from worker.sandbox import FaultConfig
from worker.sandbox.runner import SandboxHandle

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Completed:
    code: int
    out: str
    err: str


def child_env(token: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNLEASHX_")}
    if token is not None:
        env["UNLEASHX_TOKEN"] = token
    return env


async def start(
    *args: str, cwd: Path, token: str | None, stdin: bool = False
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        *args,
        cwd=cwd,
        env=child_env(token),
        stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finish(proc: asyncio.subprocess.Process, data: bytes | None = None) -> Completed:
    try:
        out, err = await asyncio.wait_for(proc.communicate(data), timeout=30)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Completed(proc.returncode, out.decode(), err.decode())


async def purge(*args: str, cwd: Path, token: str | None, stdin: bytes | None = None) -> Completed:
    proc = await start(*args, cwd=cwd, token=token, stdin=stdin is not None)
    return await finish(proc, stdin)


def run_args(sandbox: SandboxHandle, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "run",
        "--base-url",
        sandbox.url,
        "--rate",
        "1000/second",
        "--audit-log",
        str(tmp_path / "audit.jsonl"),
        "--progress",
        "off",
        *extra,
    ]


def ids_file(tmp_path: Path, ids: range, name: str = "ids.csv") -> Path:
    return write_csv(tmp_path / name, [str(i) for i in ids])


async def wait_until(condition: object, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():  # type: ignore[operator]
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_run_deletes_the_ids_and_writes_the_audit_log(
    sandbox: SandboxHandle, token: str, tmp_path: Path
) -> None:
    path = ids_file(tmp_path, range(1, 51))

    done = await purge(
        *run_args(
            sandbox, tmp_path, "--input", str(path), "--campaign-id", "42", "--batch-size", "10"
        ),
        cwd=tmp_path,
        token=token,
    )

    assert done.code == 0, done.err
    assert "Traceback" not in done.err
    assert not any(sandbox.state.campaigns[42].alive(i) for i in range(1, 51))
    records = read_audit(tmp_path / "audit.jsonl")
    assert records[0]["event"] == "run_started"
    assert records[-1]["event"] == "run_finished"
    assert (records[-1]["exit_code"], records[-1]["deleted"]) == (0, 50)
    assert "done (exit 0)" in done.out
    assert token not in done.out + done.err


async def test_missing_input_file_exits_2_with_one_clear_line(
    sandbox: SandboxHandle, token: str, tmp_path: Path
) -> None:
    done = await purge(
        *run_args(sandbox, tmp_path, "--input", "nope.csv", "--campaign-id", "42"),
        cwd=tmp_path,
        token=token,
    )

    assert done.code == 2
    assert "Traceback" not in done.err
    lines = done.err.strip().splitlines()
    assert len(lines) == 1
    assert "nope.csv" in lines[0]
    assert "does not exist" in lines[0]
    assert sandbox.state.requests_total == 0


async def test_input_without_campaign_column_or_flag_exits_2(
    sandbox: SandboxHandle, token: str, tmp_path: Path
) -> None:
    path = ids_file(tmp_path, range(1, 6))

    done = await purge(
        *run_args(sandbox, tmp_path, "--input", str(path)), cwd=tmp_path, token=token
    )

    assert done.code == 2
    assert "Traceback" not in done.err
    assert "--campaign-id" in done.err
    assert sandbox.state.requests_total == 0


async def test_missing_token_exits_2_naming_unleashx_token(
    sandbox: SandboxHandle, tmp_path: Path
) -> None:
    path = ids_file(tmp_path, range(1, 6))

    done = await purge(
        *run_args(sandbox, tmp_path, "--input", str(path), "--campaign-id", "42"),
        cwd=tmp_path,
        token=None,
    )

    assert done.code == 2
    assert "Traceback" not in done.err
    assert "UNLEASHX_TOKEN" in done.err
    assert sandbox.state.requests_total == 0


async def test_unknown_config_key_exits_2_naming_the_key(
    sandbox: SandboxHandle, token: str, tmp_path: Path
) -> None:
    path = ids_file(tmp_path, range(1, 6))
    config = tmp_path / "purge.toml"
    config.write_text("batch_size = 10\nbatch_sise = 20\n", encoding="utf-8")

    done = await purge(
        *run_args(
            sandbox, tmp_path, "--input", str(path), "--campaign-id", "42", "--config", str(config)
        ),
        cwd=tmp_path,
        token=token,
    )

    assert done.code == 2
    assert "Traceback" not in done.err
    assert "batch_sise" in done.err
    assert sandbox.state.requests_total == 0


async def test_plain_http_to_a_non_loopback_host_exits_2_and_sends_nothing(
    token: str, tmp_path: Path
) -> None:
    path = ids_file(tmp_path, range(1, 6))
    # 192.0.2.1 (TEST-NET-1) is never routed: even a regression could not reach anyone.
    done = await purge(
        "run",
        "--input",
        str(path),
        "--campaign-id",
        "42",
        "--base-url",
        "http://192.0.2.1/api/v1/global",
        "--timeout",
        "1",
        "--max-attempts",
        "1",
        "--progress",
        "off",
        cwd=tmp_path,
        token=token,
    )

    assert done.code == 2
    assert "Traceback" not in done.err
    assert "plain http" in done.err
    assert not (tmp_path / "purge-audit").exists()


async def test_permanent_failure_exits_1_and_writes_failed_out(
    sandbox: SandboxHandle, token: str, tmp_path: Path
) -> None:
    path = write_csv(tmp_path / "ids.csv", ["campaign_id,audience_id", "999,1", "999,2", "42,3"])

    done = await purge(
        *run_args(
            sandbox, tmp_path, "--input", str(path), "--failed-out", str(tmp_path / "failed.csv")
        ),
        cwd=tmp_path,
        token=token,
    )

    assert done.code == 1
    assert "Traceback" not in done.err
    assert (tmp_path / "failed.csv").read_text(encoding="utf-8").splitlines() == [
        "campaign_id,audience_id",
        "999,1",
        "999,2",
    ]
    assert not sandbox.state.campaigns[42].alive(3)


async def test_wrong_token_exits_3(sandbox: SandboxHandle, tmp_path: Path) -> None:
    path = ids_file(tmp_path, range(1, 31))

    done = await purge(
        *run_args(sandbox, tmp_path, "--input", str(path), "--campaign-id", "42"),
        cwd=tmp_path,
        token="wrong-token",
    )

    assert done.code == 3
    assert "Traceback" not in done.err
    assert sandbox.state.campaigns[42].deleted_count == 0
    assert sandbox.state.requests_total <= 8 + 1
    assert "wrong-token" not in done.out + done.err


async def test_input_dash_reads_ids_from_stdin(
    sandbox: SandboxHandle, token: str, tmp_path: Path
) -> None:
    ids = range(1, 26)

    done = await purge(
        *run_args(sandbox, tmp_path, "--input", "-", "--campaign-id", "42"),
        cwd=tmp_path,
        token=token,
        stdin="".join(f"{i}\n" for i in ids).encode(),
    )

    assert done.code == 0, done.err
    assert "Traceback" not in done.err
    assert sandbox.state.receipts[42].received_ids() == list(ids)
    records = read_audit(tmp_path / "audit.jsonl")
    assert records[0]["input"] == "<stdin>"
    assert records[-1]["deleted"] == len(ids)


async def interrupted_run(sandbox: SandboxHandle, token: str, tmp_path: Path) -> Completed:
    """A slow run (5 requests/s, 200 ids) that gets SIGTERM once a deletion is audited."""
    path = ids_file(tmp_path, range(1, 201))
    audit = tmp_path / "audit.jsonl"
    args = run_args(sandbox, tmp_path, "--input", str(path), "--campaign-id", "42")
    args[args.index("--rate") + 1] = "5/second"
    args += ["--batch-size", "1", "--concurrency", "2"]
    proc = await start(*args, cwd=tmp_path, token=token)

    def first_deletion_audited() -> bool:
        return audit.exists() and b'"event":"deleted"' in audit.read_bytes()

    try:
        await wait_until(first_deletion_audited)
    finally:
        proc.send_signal(signal.SIGTERM)
    return await finish(proc)


async def test_sigterm_stops_the_run_with_exit_75_and_a_finished_audit_log(
    sandbox: SandboxHandle, token: str, tmp_path: Path
) -> None:
    done = await interrupted_run(sandbox, token, tmp_path)

    assert done.code == 75, done.err
    assert "Traceback" not in done.err
    finished = read_audit(tmp_path / "audit.jsonl")[-1]
    assert finished["event"] == "run_finished"
    assert finished["interrupted"] is True
    assert finished["exit_code"] == 75
    assert 0 < finished["deleted"] < 200
    assert sandbox.state.campaigns[42].deleted_count == finished["deleted"]


async def test_rerun_after_sigterm_finishes_without_resending_a_confirmed_id(
    sandbox: SandboxHandle, token: str, tmp_path: Path
) -> None:
    done = await interrupted_run(sandbox, token, tmp_path)
    assert done.code == 75, done.err
    confirmed = sandbox.state.campaigns[42].deleted_count

    path = tmp_path / "ids.csv"
    again = await purge(
        *run_args(sandbox, tmp_path, "--input", str(path), "--campaign-id", "42"),
        cwd=tmp_path,
        token=token,
    )

    assert again.code == 0, again.err
    assert sandbox.state.campaigns[42].deleted_count == 200
    assert sandbox.state.receipts[42].resent == 0
    records = read_audit(tmp_path / "audit.jsonl")
    second = [r for r in records if r["run_id"] == records[-1]["run_id"]]
    assert second[0]["resumed"]["runs"] == [records[0]["run_id"]]
    assert second[-1]["deleted"] == 200 - confirmed
    assert main(["audit", "verify", str(tmp_path / "audit.jsonl")]) == 0


async def test_help_works(tmp_path: Path) -> None:
    done = await purge("--help", cwd=tmp_path, token=None)

    assert done.code == 0
    assert "usage: audience-purge" in done.out
    assert "delete-all" in done.out
    assert "Traceback" not in done.err


async def test_delete_all_without_confirm_exits_2_and_sends_nothing(
    sandbox: SandboxHandle, token: str, tmp_path: Path
) -> None:
    done = await purge(
        "delete-all", "--campaign-id", "42", "--base-url", sandbox.url, cwd=tmp_path, token=token
    )

    assert done.code == 2
    assert "Traceback" not in done.err
    assert "--confirm 42" in done.err
    assert sandbox.state.requests_total == 0
    assert sandbox.state.campaigns[42].deleted_count == 0


@pytest.mark.parametrize("faults", [FaultConfig(error_status=200)], ids=["error-status-200"])
async def test_delete_all_on_inprogress_campaign_exits_1_with_the_api_message(
    sandbox: SandboxHandle, token: str, tmp_path: Path
) -> None:
    done = await purge(
        "delete-all",
        "--campaign-id",
        "77",
        "--confirm",
        "77",
        "--base-url",
        sandbox.url,
        "--audit-log",
        str(tmp_path / "audit.jsonl"),
        cwd=tmp_path,
        token=token,
    )

    assert done.code == 1
    assert "Traceback" not in done.err
    assert "only be deleted when the campaign is in draft status" in done.err
    assert sandbox.state.campaigns[77].deleted_count == 0
