"""The version is written once, in pyproject.toml: the package reads it from its installed
metadata, and says so plainly when it was never installed."""

from __future__ import annotations

import importlib.metadata
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

import worker
from worker.cli import main

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


@pytest.fixture(autouse=True)
def read_afresh() -> Iterator[None]:
    worker._version.cache_clear()
    yield
    worker._version.cache_clear()


def test_the_version_is_pyprojects() -> None:
    declared = tomllib.loads(PYPROJECT.read_text())["project"]["version"]

    assert worker.__version__ == declared


def test_the_version_comes_from_the_installed_metadata(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(importlib.metadata, "version", lambda name: f"9.8.7+{name}")

    with pytest.raises(SystemExit) as exited:
        main(["--version"])

    assert exited.value.code == 0
    assert capsys.readouterr().out == "audience-purge 9.8.7+audience-purge\n"


def test_a_source_tree_never_installed_has_a_version_that_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def missing(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)

    assert worker.__version__ == "0.0.0+unknown"


def test_other_attributes_are_still_missing() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'version'"):
        worker.version  # noqa: B018
