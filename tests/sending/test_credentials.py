"""The token: refused with a clear line when it cannot travel in a header, never shown."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import structlog
from aiohttp import web
from conftest import write_csv

from worker.cli import main
from worker.commands.run import run_purge
from worker.errors import ConfigError
from worker.sandbox.runner import SandboxHandle
from worker.sending.credentials import Secret, TokenSource, without_userinfo
from worker.settings import Settings

SECRET_PART = "s3cr3t-part"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """The CLI configures structlog globally; put the previous configuration back."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.mark.parametrize(
    ("content", "position"),
    [
        (f"T\n{SECRET_PART}", 2),  # printf 'T\nx': two lines
        (f"{SECRET_PART} more", 12),
        (f"{SECRET_PART}\t", None),  # trailing whitespace is stripped: fine
        (f"{SECRET_PART}\x00x", 12),
        (f"{SECRET_PART}é", 12),
    ],
)
def test_a_token_file_with_a_break_or_a_control_character_inside_is_refused_by_position(
    tmp_path: Path, content: str, position: int | None
) -> None:
    path = tmp_path / "token"
    path.write_text(content, encoding="utf-8")

    if position is None:
        assert TokenSource(None, path).current() == Secret(content.strip())
        return
    with pytest.raises(ConfigError) as caught:
        TokenSource(None, path)

    message = str(caught.value)
    assert str(path) in message
    assert f"(character {position})" in message
    assert SECRET_PART not in message


def test_an_environment_token_with_a_space_inside_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"UNLEASHX_TOKEN: the token holds .*character 4"):
        TokenSource(Secret("abc def"), None)


def test_a_rotated_token_file_with_a_broken_token_keeps_the_current_one(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("good-token\n", encoding="utf-8")
    tokens = TokenSource(None, path)
    path.write_text("new\ntoken\n", encoding="utf-8")

    assert tokens.rotate() is False
    assert tokens.current() == Secret("good-token")


@pytest.mark.usefixtures("restore_logging")
def test_run_with_a_two_line_token_file_exits_2_with_one_line_and_sends_nothing(
    sandbox: SandboxHandle,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("UNLEASHX_TOKEN", raising=False)
    token = tmp_path / "token"
    token.write_bytes(b"T\n" + SECRET_PART.encode())
    ids = write_csv(tmp_path / "ids.csv", ["1", "2", "3"])

    code = main(
        [
            "run",
            "--input",
            str(ids),
            "--campaign-id",
            "42",
            "--base-url",
            sandbox.url,
            "--token-file",
            str(token),
            "--state-dir",
            str(tmp_path / "state"),
            "--audit-log",
            str(tmp_path / "audit.jsonl"),
        ]
    )

    err = capsys.readouterr().err
    assert code == 2
    assert err.splitlines() == [
        f"audience-purge: error: token: token file {token}: the token "
        "holds a line break, a space or a character that is not printable ASCII "
        "(character 2); a token is one word on one line"
    ]
    assert sandbox.state.requests_total == 0
    assert not (tmp_path / "audit.jsonl").exists()


@pytest.mark.parametrize("status", [400, 401, 500])
async def test_a_token_the_server_echoes_is_written_nowhere(
    make_settings: Callable[..., Settings], tmp_path: Path, status: int
) -> None:
    token = f"tok-{SECRET_PART}"

    async def echo(request: web.Request) -> web.Response:
        said = f"Invalid token: {request.headers['token']} (got {request.headers['token']})"
        return web.json_response({"message": said}, status=status)

    app = web.Application()
    app.router.add_post("/api/delete-audience", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    ids = write_csv(tmp_path / "ids.csv", ["1", "2", "3"])
    settings = make_settings(
        base_url=f"http://127.0.0.1:{port}/api", token=Secret(token), campaign_id=42, max_attempts=2
    )
    out = io.StringIO()
    try:
        result = await run_purge(settings, str(ids), out=out)
    finally:
        await runner.cleanup()

    assert result.exit_code in (1, 3)
    assert settings.audit_log is not None
    assert settings.report is not None
    audit = settings.audit_log.read_text()
    assert "Invalid token: *** (got ***)" in audit
    for written in (audit, settings.report.read_text(), out.getvalue()):
        assert SECRET_PART not in written


def test_a_base_url_with_credentials_is_masked_in_the_effective_settings() -> None:
    settings = Settings(base_url="https://ops:hunter2@api.example.com/api/v1/global")

    assert settings.public()["base_url"] == "https://ops:***@api.example.com/api/v1/global"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "https://ops:hunter2@api.example.com/users/@me",
            "https://ops:***@api.example.com/users/@me",
        ),
        ("https://hunter2@api.example.com/a@b", "https://***@api.example.com/a@b"),
        ("https://ops:hun@ter2@api.example.com/api", "https://ops:***@api.example.com/api"),
        ("https://api.example.com/users/@me", "https://api.example.com/users/@me"),
    ],
)
def test_a_base_url_is_masked_in_its_userinfo_only_so_the_host_stays_shown(
    url: str, shown: str
) -> None:
    assert without_userinfo(url) == shown


def test_a_base_url_whose_authority_parsers_disagree_on_is_masked_whole() -> None:
    # urllib drops the tab, so the authority it reports is not the text's: mask to the last @.
    assert without_userinfo("https://ops:hun\tter2@api.example.com/a@b") == "https://ops:***@b"
