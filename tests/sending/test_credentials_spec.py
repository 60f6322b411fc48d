"""Specification of worker.sending.credentials at its edges (issue #25: mutants showed what no
test pinned): which characters a token may hold, why a token file cannot be read, the one
re-read of a rotated token file (and that both tokens stay masked), and URLs with nothing to
mask."""

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
