"""Inputs that are not regular files: /dev/null, FIFOs, /dev/fd/N, stdin in every form, and
a regular file that grows while it is read. Each is read exactly once, and never hangs."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from processes import child_env

from worker.errors import InputError
from worker.input.sources import ByteSource, InputDigest, open_input, read_rows
from worker.input.validate import Rejected, Row

CAMPAIGN = 7
DATA = b"audience_id\n101\n102\n103\n"
ROWS = [Row(2, CAMPAIGN, 101), Row(3, CAMPAIGN, 102), Row(4, CAMPAIGN, 103)]
EMPTY = "the input is empty: no header and no audience ids"


async def read_from(source: ByteSource) -> tuple[list[Row | Rejected], InputDigest]:
    digest = InputDigest()
    items = [
        item
        async for block in read_rows(source, digest, default_campaign=CAMPAIGN)
        for item in block
    ]
    return items, digest


@dataclass
class Read:
    """What reading a whole input gave, and what the source said of itself."""

    items: list[Row | Rejected]
    digest: InputDigest
    name: str
    size: int | None
    survey: tuple[str | None, int | None]


async def open_and_read(path: str) -> Read:
    """Open, survey and read ``path`` within a bound: a hang fails the test."""

    async def run() -> Read:
        source = await open_input(path)
        try:
            survey = await source.survey()
            items, digest = await read_from(source)
        finally:
            source.close()
        return Read(items, digest, source.name, source.size, survey)

    return await asyncio.wait_for(run(), timeout=10)


@contextlib.contextmanager
def writer(path: str | int, data: bytes) -> Iterator[None]:
    """Write ``data`` to a FIFO path or a pipe's write end from a thread, then close it."""

    def write() -> None:
        with open(path, "wb") as pipe, contextlib.suppress(BrokenPipeError):
            pipe.write(data)

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join(timeout=10)
        if isinstance(path, str):  # a reader still blocked opening the FIFO gets its end
            with contextlib.suppress(OSError):
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))


@contextlib.contextmanager
def stdin_from(handle: io.BufferedReader, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(handle))
    try:
        yield
    finally:
        sys.stdin.close()


# -- character devices -------------------------------------------------------------------------


async def test_dev_null_is_an_empty_input_not_a_hang() -> None:
    with pytest.raises(InputError, match=EMPTY):
        await open_and_read(os.devnull)


async def test_stdin_from_dev_null_is_an_empty_input_not_a_hang(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with stdin_from(open(os.devnull, "rb"), monkeypatch), pytest.raises(InputError, match=EMPTY):
        await open_and_read("-")


# -- FIFOs and pipes: read once ----------------------------------------------------------------


async def test_a_fifo_is_read_once_and_never_opened_again(tmp_path: Path) -> None:
    fifo = tmp_path / "ids.fifo"
    os.mkfifo(fifo)

    with writer(str(fifo), DATA):
        read = await open_and_read(str(fifo))

    assert read.items == ROWS
    assert (read.size, read.survey) == (None, (None, None))
    assert read.digest.sha256 == hashlib.sha256(DATA).hexdigest()


async def test_dev_fd_of_a_pipe_is_read_once_like_process_substitution() -> None:
    read_end, write_end = os.pipe()
    try:
        with writer(write_end, DATA):
            read = await open_and_read(f"/dev/fd/{read_end}")
    finally:
        os.close(read_end)

    assert read.items == ROWS
    assert (read.size, read.survey) == (None, (None, None))
    assert read.digest.bytes_read == len(DATA)


# -- stdin redirected from a regular file -------------------------------------------------------


async def test_stdin_from_a_regular_file_is_read_as_that_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ids.csv"
    path.write_bytes(DATA)

    with stdin_from(path.open("rb"), monkeypatch):
        read = await open_and_read("-")

    assert read.items == ROWS
    assert (read.name, read.size, read.survey) == (
        "<stdin>",
        len(DATA),
        (hashlib.sha256(DATA).hexdigest(), 4),
    )


async def test_stdin_from_a_file_already_part_read_gives_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ids.csv"
    path.write_bytes(b"skipped by the caller\n" + DATA)
    handle = path.open("rb", buffering=0)
    os.lseek(handle.fileno(), len(b"skipped by the caller\n"), os.SEEK_SET)

    with stdin_from(io.BufferedReader(handle), monkeypatch):
        read = await open_and_read("-")

    assert read.items == ROWS
    assert (read.size, read.survey) == (
        len(DATA),
        (hashlib.sha256(DATA).hexdigest(), 4),
    )


async def test_stdin_that_is_a_directory_is_an_input_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CPython itself refuses to start with a directory on stdin; an embedder may not."""
    fd = os.open(tmp_path, os.O_RDONLY)

    class Directory(io.RawIOBase):
        def fileno(self) -> int:
            return fd

    class Stdin:
        buffer = Directory()

    monkeypatch.setattr(sys, "stdin", Stdin())
    try:
        with pytest.raises(InputError, match=r"^input <stdin> is a directory, not a CSV file$"):
            await open_input("-")
    finally:
        os.close(fd)


async def test_closed_stdin_is_an_input_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", None)

    with pytest.raises(InputError, match=r"^input - \(stdin\) is closed$"):
        await open_input("-")


# -- a regular file that grows -------------------------------------------------------------------


async def test_a_growing_file_is_read_up_to_its_size_at_the_start(tmp_path: Path) -> None:
    path = tmp_path / "ids.csv"
    path.write_bytes(DATA)
    source = await open_input(str(path))
    try:
        with path.open("ab") as appender:
            appender.write(b"104\n105\n" * 20_000)
        survey = await source.survey()
        items, digest = await read_from(source)
    finally:
        source.close()

    assert items == ROWS
    assert (source.size, digest.bytes_read, digest.sha256) == (
        len(DATA),
        len(DATA),
        hashlib.sha256(DATA).hexdigest(),
    )
    assert survey == (hashlib.sha256(DATA).hexdigest(), 4)


# -- the command line ------------------------------------------------------------------------------


DRY_RUN = (sys.executable, "-m", "worker", "run", "--dry-run", "--campaign-id", "7")


def dry_run(
    tmp_path: Path, path: str, *, stdin: int | None = subprocess.DEVNULL
) -> subprocess.CompletedProcess[str]:
    """``run --dry-run`` in a child process, killed if it does not end within the bound."""
    return subprocess.run(
        [*DRY_RUN, "--input", path],
        cwd=tmp_path,
        env=child_env(None),
        stdin=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


PLAN = "total: 3 ids in 1 campaign"


@pytest.mark.slow
def test_cli_dev_null_exits_2_saying_the_input_is_empty(tmp_path: Path) -> None:
    done = dry_run(tmp_path, os.devnull)

    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"audience-purge: error: {EMPTY}\n"


@pytest.mark.slow
def test_cli_stdin_from_dev_null_exits_2_saying_the_input_is_empty(tmp_path: Path) -> None:
    with open(os.devnull, "rb") as null:
        done = dry_run(tmp_path, "-", stdin=null.fileno())

    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"audience-purge: error: {EMPTY}\n"


@pytest.mark.slow
def test_cli_stdin_from_a_file_is_planned(tmp_path: Path) -> None:
    path = tmp_path / "ids.csv"
    path.write_bytes(DATA)

    with path.open("rb") as handle:
        done = dry_run(tmp_path, "-", stdin=handle.fileno())

    assert (done.returncode, done.stderr) == (0, "")
    assert PLAN in done.stdout


@pytest.mark.slow
def test_cli_fifo_is_planned(tmp_path: Path) -> None:
    fifo = tmp_path / "ids.fifo"
    os.mkfifo(fifo)

    with writer(str(fifo), DATA):
        done = dry_run(tmp_path, str(fifo))

    assert (done.returncode, done.stderr) == (0, "")
    assert PLAN in done.stdout


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_cli_process_substitution_is_planned_not_empty(tmp_path: Path) -> None:
    """The producer writes line by line: a second reader of the pipe would take some."""
    script = (
        'exec "$@" --input <(printf "audience_id\\n"; '
        'for i in $(seq 101 150); do printf "$i\\n"; sleep 0.01; done)'
    )

    done = subprocess.run(
        ["bash", "-c", script, "bash", *DRY_RUN],
        cwd=tmp_path,
        env=child_env(None),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert (done.returncode, done.stderr) == (0, "")
    assert "total: 50 ids in 1 campaign" in done.stdout


@pytest.mark.slow
def test_cli_directory_exits_2(tmp_path: Path) -> None:
    done = dry_run(tmp_path, str(tmp_path))

    assert (done.returncode, done.stdout) == (2, "")
    assert (
        done.stderr == f"audience-purge: error: input {tmp_path} is a directory, not a CSV file\n"
    )


@pytest.mark.slow
def test_cli_utf16_exits_2_saying_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "ids.csv"
    path.write_bytes(DATA.decode().encode("utf-16"))

    done = dry_run(tmp_path, str(path))

    assert (done.returncode, done.stdout) == (2, "")
    assert "looks like UTF-16" in done.stderr
    assert "save it as UTF-8" in done.stderr
