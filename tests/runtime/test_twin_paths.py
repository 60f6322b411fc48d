"""Output paths on the twin paths (issue #25), through the CLI in a child process: standard
input redirected from the file an output names, and an output that is a FIFO. Each refusal
must come before anything is sent or written, and neither can hang: a child that blocks is
killed after a few seconds and the test fails there, not at the suite's timeout."""

from __future__ import annotations

import asyncio
import errno
import os
import sys
from pathlib import Path

import pytest
from conftest import write_csv
from processes import Completed, child_env, finish

from worker import files
from worker.errors import UsageError
from worker.files import check_distinct
from worker.sandbox.runner import SandboxHandle

IDS = ["campaign_id,audience_id", "42,1", "42,2", "42,3"]
HANG = 10.0  # seconds: a refusal takes well under one; a child blocked on a FIFO never ends


async def purge(
    sandbox: SandboxHandle, token: str, cwd: Path, *args: str, stdin: Path | None = None
) -> Completed:
    """``python -m worker run ARGS`` with its stdin redirected from ``stdin`` (/dev/null if
    None); killed, and the test failed, if it has not ended within ``HANG`` seconds."""
    with open(stdin or os.devnull, "rb") as source:
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "worker", "run", "--base-url", sandbox.url, *args),
            *("--audit-log", "audit.jsonl", "--report", "report.json", "--state-dir", "state"),
            cwd=cwd,
            env=child_env(token),
            stdin=source,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            return await finish(proc, timeout=HANG)
        except TimeoutError:
            pytest.fail(f"the run did not end within {HANG} s: it blocked instead of refusing")


async def test_failed_out_naming_the_file_behind_stdin_is_refused_before_anything(
    sandbox: SandboxHandle, token: str, tmp_path: Path
) -> None:
    ids = write_csv(tmp_path / "ids.csv", IDS)
    before = ids.read_bytes()

    done = await purge(
        sandbox, token, tmp_path, "--input", "-", "--failed-out", "ids.csv", stdin=ids
    )

    assert done.code == 2, done.err
    assert "--failed-out ids.csv is the same file as the input (-)" in done.err
    assert "Traceback" not in done.err
    assert ids.read_bytes() == before
    assert sandbox.state.requests_total == 0
    assert not (tmp_path / "audit.jsonl").exists()
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize("flag", ["--results", "--failed-out"])
async def test_an_output_that_is_a_fifo_is_refused_at_once_and_left_alone(
    sandbox: SandboxHandle, token: str, tmp_path: Path, flag: str
) -> None:
    write_csv(tmp_path / "ids.csv", IDS)
    fifo = tmp_path / "out.csv"
    os.mkfifo(fifo)
    # A reader holds the FIFO open, so a run that opened it to write would not block there
    # but go on and write: what it wrote is read back below.
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        done = await purge(sandbox, token, tmp_path, "--input", "ids.csv", flag, "out.csv")
        written = os.read(reader, 1 << 16)
    finally:
        os.close(reader)

    assert done.code == 2, done.err
    assert "out.csv is not a regular file (a directory, a device, a pipe): name a file" in done.err
    assert written == b""
    assert fifo.is_fifo()  # neither replaced nor unlinked
    assert sandbox.state.requests_total == 0
    assert not (tmp_path / "audit.jsonl").exists()


def test_an_input_whose_name_sorts_before_a_dash_is_a_file_not_stdin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write_csv(tmp_path / "+ids.csv", IDS)

    with pytest.raises(UsageError, match=r"--failed-out \+ids.csv is the same file as the input"):
        check_distinct({"the input": "+ids.csv"}, {"--failed-out": Path("+ids.csv")})


def test_a_closed_stdin_is_no_file_an_output_can_be(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.fstat

    def closed(fd: int) -> os.stat_result:
        if fd == 0:
            raise OSError(errno.EBADF, "Bad file descriptor")
        return real(fd)

    monkeypatch.setattr(files.os, "fstat", closed)

    # nothing to refuse:
    check_distinct({"the input": "-"}, {"--failed-out": tmp_path / "failed.csv"})
