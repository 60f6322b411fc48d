"""A token the API echoes in its answer to a read is masked like one in an answer to a
delete (issue #25): a server that puts the token in its message on ``audience-list`` and
``campaign-audience-stats``, met through ``select``, ``run --verify`` and ``verify`` in child
processes, leaves the token in no stream and no file."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from conftest import write_csv
from processes import Completed, finish, start
from proxies import api_in_front_of

from worker.sandbox.runner import SandboxHandle

READS = ("audience-list", "campaign-audience-stats")


@dataclass
class Echoing:
    """Refuses every read of ``endpoint`` with the token in the message (HTTP ``status``),
    counted in ``echoed``; the other reads and the deletes go on to the sandbox (a listing
    reads the stats first, so refusing both would never reach audience-list)."""

    status: int
    endpoint: str
    url: str = ""
    echoed: Counter[str] = field(default_factory=Counter)

    async def __call__(self, endpoint: str, request: web.Request) -> web.Response | None:
        if endpoint != self.endpoint:
            return None
        self.echoed[endpoint] += 1
        said = f"Invalid token {request.headers['token']} for {endpoint}"
        return web.json_response({"status": False, "message": said}, status=self.status)


@pytest.fixture(
    params=[(400, READS[0]), (400, READS[1]), (401, READS[1]), (503, READS[0])],
    ids=lambda p: f"{p[0]}-{p[1]}",
)
async def echoing(sandbox: SandboxHandle, request: pytest.FixtureRequest) -> AsyncIterator[Echoing]:
    server = Echoing(*request.param)
    async with api_in_front_of(sandbox, server) as server.url:
        yield server


def files_holding(root: Path, needle: bytes) -> list[str]:
    return [str(p) for p in sorted(root.rglob("*")) if p.is_file() and needle in p.read_bytes()]


async def test_a_token_echoed_in_answers_to_reads_is_written_and_printed_nowhere(
    echoing: Echoing, token: str, tmp_path: Path
) -> None:
    ids = write_csv(tmp_path / "ids.csv", ["1", "2", "3"])
    common = ("--base-url", echoing.url, "--rate", "1000/second", "--max-attempts", "2")
    outputs = ("--report", "report.json", "--failed-out", "failed.csv")
    commands = [
        ("select", "--campaign-id", "77", "--status", "halted", "--out", "sel.csv", *common),
        ("run", "--input", str(ids), "--campaign-id", "42", "--verify", *common, *outputs),
        ("verify", "--audit", "audit.jsonl", *common, "--audit-log", "verify.jsonl"),
    ]
    done: list[Completed] = []
    for args in commands:
        extra = ("--audit-log", "audit.jsonl") if args[0] == "run" else ()
        proc = await start(*args, *extra, cwd=tmp_path, token=token)
        done.append(await finish(proc, timeout=60))

    assert set(echoing.echoed) == {echoing.endpoint}  # the echo was met
    assert all(c.code != 0 for c in done), [(c.code, c.err[-300:]) for c in done]
    for completed in done:
        assert token not in completed.out + completed.err
        assert "Traceback" not in completed.err
    assert files_holding(tmp_path, token.encode()) == []
    assert "Invalid token *** for" in (tmp_path / "audit.jsonl").read_text()
