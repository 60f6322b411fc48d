"""Specification of worker.sending.credentials at its edges (issue #25: mutants showed what no
test pinned): which characters a token may hold, why a token file cannot be read, the one
re-read of a rotated token file (and that both tokens stay masked), URLs with nothing to
mask, and the userinfo of URLs inside a text or handed over as HTTP basic auth."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.errors import ConfigError
from worker.sending.credentials import (
    Secret,
    TokenSource,
    check_token,
    read_token_file,
    redact_url,
    redact_urls,
    split_userinfo,
)


def test_secrets_are_equal_only_when_their_values_are() -> None:
    assert Secret("a") == Secret("a")
    assert Secret("a") != Secret("b")
    assert Secret("b") != Secret("a")
    assert Secret("a") != "a"


@pytest.mark.parametrize("token", ["!", "~", "!tok~", "A-z_0.9"])
def test_every_printable_ascii_character_but_space_may_be_in_a_token(token: str) -> None:
    assert check_token(Secret(token), "test") == Secret(token)


@pytest.mark.parametrize(("token", "position"), [("a b", 2), ("ab\x7f", 3), ("\x1fab", 1)])
def test_a_space_or_a_control_character_is_refused_by_its_position(
    token: str, position: int
) -> None:
    with pytest.raises(ConfigError, match=rf"\(character {position}\)"):
        check_token(Secret(token), "test")


def test_a_missing_token_file_is_named_with_the_system_reason(tmp_path: Path) -> None:
    path = tmp_path / "missing"

    with pytest.raises(ConfigError) as refused:
        read_token_file(path)

    assert (
        str(refused.value)
        == f"token_file: cannot read token file {path}: No such file or directory"
    )


def test_a_token_file_that_is_not_utf8_is_named_as_such(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_bytes(b"tok-\xff\xfe")

    with pytest.raises(ConfigError) as refused:
        read_token_file(path)

    assert str(refused.value) == f"token_file: cannot read token file {path}: it is not UTF-8 text"


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("tok-first\n")
    return path


def test_a_rotated_token_file_is_read_again_once_and_both_tokens_stay_masked(
    token_file: Path,
) -> None:
    source = TokenSource(None, token_file)
    token_file.write_text("tok-second\n")

    assert source.rotate() is True
    assert source.current() == Secret("tok-second")
    assert source.redact("tok-first then tok-second") == "*** then ***"

    token_file.write_text("tok-third\n")
    assert source.rotate() is False  # once only: a token that keeps failing is not chased
    assert source.current() == Secret("tok-second")


def test_a_token_file_that_did_not_change_is_no_rotation(token_file: Path) -> None:
    source = TokenSource(None, token_file)

    assert source.rotate() is False
    assert source.current() == Secret("tok-first")


def test_a_token_file_that_cannot_be_read_again_is_no_rotation(token_file: Path) -> None:
    source = TokenSource(None, token_file)
    token_file.unlink()

    assert source.rotate() is False
    assert source.current() == Secret("tok-first")


def test_a_token_from_the_environment_cannot_rotate() -> None:
    source = TokenSource(Secret("tok-env"), None)

    assert source.rotate() is False
    assert source.redact(None) is None


@pytest.mark.parametrize("url", ["redis://localhost:6379/0", "user:pw@host", ""])
def test_a_url_without_credentials_is_shown_as_it_is(url: str) -> None:
    assert redact_url(url) == url


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("redis://ops:pw@cache:6379/0", "redis://ops:***@cache:6379/0"),
        ("redis://:p@w/d@cache/0", "redis://:***@cache/0"),  # the last @ ends the userinfo
        ("at https://tok@api.x/v1 then", "at https://***@api.x/v1 then"),
        (
            "a=http://u:1@h1/ b='http://v:2@h2'",
            "a=http://u:***@h1/ b='http://v:***@h2'",
        ),
        ("Redis://u:p@h", "Redis://u:***@h"),
        ("mail ops@example.com, see http://h/a", "mail ops@example.com, see http://h/a"),
        ("no url: u:p@h", "no url: u:p@h"),
    ],
)
def test_the_userinfo_of_every_url_in_a_text_is_masked_and_nothing_else(
    text: str, shown: str
) -> None:
    assert redact_urls(text) == shown


@pytest.mark.parametrize(
    ("url", "bare", "auth"),
    [
        ("http://ops:S3cr%40t@gw:9091/push", "http://gw:9091/push", ("ops", "S3cr@t")),
        ("http://ops:p@w@gw", "http://gw", ("ops", "p@w")),
        ("http://tok@gw/", "http://gw/", ("tok", "")),
        ("http://gw:9091/a@b", "http://gw:9091/a@b", None),  # an @ in the path is no userinfo
        ("ops:pw@gw", "ops:pw@gw", None),
    ],
)
def test_split_userinfo_gives_the_url_without_it_and_the_decoded_user_and_password(
    url: str, bare: str, auth: tuple[str, str] | None
) -> None:
    assert split_userinfo(url) == (bare, auth)
