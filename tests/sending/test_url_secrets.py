"""A password in any URL-valued setting (base URL, Redis, Pushgateway) reaches no file and
no stream: not stdout or stderr, the audit log (whose run_started.settings is chained and
may be signed, so it could never be redacted later), the report, the results and failed-out
files, the state, the evidence page. The Pushgateway gets it as HTTP basic auth. Real CLI
runs against the sandbox on loopback."""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestServer
from conftest import write_csv
from processes import Completed, closed_port, finish, start

from worker.cli import _fail
from worker.exit_codes import ExitCode
from worker.runtime.logs import configure_logging
from worker.sandbox.runner import SandboxHandle
from worker.sending.credentials import redact_urls, split_userinfo

SECRET = "S3cr3t-pw"
USERINFO = f"ops:{SECRET}@"


class Gateway:
    """A Pushgateway that keeps each push's path and Authorization header."""

    def __init__(self) -> None:
        self.pushes: list[tuple[str, str | None]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.pushes.append((request.path, request.headers.get("Authorization")))
        return web.Response(status=200)


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[Gateway, int]]:
    kept = Gateway()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", kept.handle)
    async with TestServer(app, host="127.0.0.1") as server:
        assert server.port is not None
        yield kept, server.port


def with_userinfo(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{USERINFO}{rest}"


def leaks(root: Path, *streams: Completed) -> list[str]:
    """Every file under ``root`` and every stream that holds the secret."""
    found = [str(p) for p in root.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    found += [f"stream {i}" for i, s in enumerate(streams) if SECRET in s.out + s.err]
    return found


async def test_no_url_password_reaches_any_file_or_stream_and_the_push_authenticates(
    sandbox: SandboxHandle, token: str, tmp_path: Path, gateway: tuple[Gateway, int]
) -> None:
    kept, port = gateway
    ids = write_csv(tmp_path / "ids.csv", ["1", "2", "3", "x"])
    audit = tmp_path / "audit.jsonl"
    urls = [
        "--base-url",
        with_userinfo(sandbox.url),
        "--redis",
        f"redis://{USERINFO}127.0.0.1:{closed_port()}/0",
    ]
    run = await finish(
        await start(
            *("run", "--input", str(ids), "--campaign-id", "42", *urls, "--rate", "1000/s"),
            *("--pushgateway", f"http://{USERINFO}127.0.0.1:{port}"),
            *("--report", str(tmp_path / "report.json"), "--results", str(tmp_path / "r.csv")),
            *("--failed-out", str(tmp_path / "failed.csv"), "--audit-log", str(audit)),
            *("--state-dir", str(tmp_path / "state"), "--log-level", "debug"),
            *("--log-format", "json", "--verify"),
            cwd=tmp_path,
            token=token,
        )
    )
    assert run.code == ExitCode.OK, run.err  # the row "x" is rejected: in results.csv
    verify = await finish(
        await start(
            *("verify", "--audit", str(audit), "--base-url", with_userinfo(sandbox.url)),
            *("--rate", "1000/s", "--report", str(tmp_path / "verify.json")),
            *("--audit-log", str(tmp_path / "verify.jsonl"), "--log-level", "debug"),
            cwd=tmp_path,
            token=token,
        )
    )
    assert verify.code == ExitCode.OK, verify.err
    page = await finish(
        await start(
            *("audit", "report", str(audit), str(tmp_path / "verify.jsonl")),
            *("--html", str(tmp_path / "evidence.html")),
            cwd=tmp_path,
            token=None,
        )
    )
    assert page.code == ExitCode.OK, page.err
    # A Redis that cannot be reached, named with its password: the error line masks it.
    shared = await finish(
        await start(
            *("run", "--input", str(ids), "--campaign-id", "42", *urls, "--rate-scope"),
            *("shared", "--redis-backoff-max", "0.2", "--state-dir", str(tmp_path / "s2")),
            *("--audit-log", str(tmp_path / "shared.jsonl")),
            cwd=tmp_path,
            token=token,
        )
    )
    assert shared.code != ExitCode.OK

    assert leaks(tmp_path, run, verify, page, shared) == []
    assert "ops:***@127.0.0.1" in audit.read_text()  # the settings say where, not how
    expected = "Basic " + base64.b64encode(f"ops:{SECRET}".encode()).decode()
    assert [auth for _, auth in kept.pushes] == [expected]
    assert kept.pushes[0][0].startswith("/metrics/job/audience-purge")


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
        ("redis://:***@h:6379/0", "redis://:***@h:6379/0"),  # as redact_url showed it
        ("http://u:p@ss/w@h/x", "http://u:***@h/x"),
        ("http://token@h/x", "http://***@h/x"),
        ("push to http://u:pw@h:9091 failed", "push to http://u:***@h:9091 failed"),
        ("http://h/x", "http://h/x"),
        ('{"url": "https://a:b@h"}', '{"url": "https://a:***@h"}'),
    ],
)
def test_the_one_redaction_masks_every_userinfo_in_a_text(text: str, shown: str) -> None:
    assert redact_urls(text) == shown


def test_the_userinfo_is_split_off_for_basic_auth() -> None:
    assert split_userinfo("http://ops:p%40ss@h:9091/x") == ("http://h:9091/x", ("ops", "p@ss"))
    assert split_userinfo("http://h:9091") == ("http://h:9091", None)


def test_a_log_line_masks_a_url_password_ours_and_the_libraries(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("info", log_format="json")
    structlog.get_logger("test").warning("pushing", to=f"http://{USERINFO}h:9091")
    logging.getLogger("aiohttp.client").warning("cannot reach http://%sh/x", USERINFO)

    err = capsys.readouterr().err
    assert SECRET not in err
    assert err.count("http://ops:***@h") == 2


def test_an_error_line_masks_a_url_password(capsys: pytest.CaptureFixture[str]) -> None:
    assert _fail(f"cannot reach redis://{USERINFO}h:6379/0", ExitCode.UNAVAILABLE) == 69

    assert (
        capsys.readouterr().err == "audience-purge: error: cannot reach redis://ops:***@h:6379/0\n"
    )
