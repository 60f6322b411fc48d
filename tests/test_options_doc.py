"""The documentation of the settings follows their declarations: README.md's option tables
and config.example.toml say exactly what worker/settings/catalogue.py declares."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from worker.cli import options_tables, with_options_tables
from worker.settings import DECLARATIONS, Settings, load_settings

REPO_ROOT = Path(__file__).resolve().parent.parent
README = REPO_ROOT / "README.md"
EXAMPLE = REPO_ROOT / "config.example.toml"
REGENERATE = "regenerate it with: .venv/bin/python scripts/options_doc.py"
TOML_KEYS = {key for key, declared in DECLARATIONS.items() if declared.toml}
# A key, set (`key = ...`) or shown commented out (`# key = ...`), at the start of a line.
EXAMPLE_KEY = re.compile(r"^(#\s*)?([a-z][a-z0-9_]*)\s*=", re.MULTILINE)


def readme_block(name: str) -> str:
    found = re.search(
        rf"<!-- options:{name} -->\n(.*?)<!-- /options:{name} -->", README.read_text(), re.DOTALL
    )
    assert found, f"README.md has no <!-- options:{name} --> block; add one and {REGENERATE}"
    return found[1]


@pytest.mark.parametrize("name", list(options_tables()))
def test_readme_table_is_the_one_the_declarations_render(name: str) -> None:
    assert readme_block(name) == options_tables()[name], (
        f"README.md's options:{name} table is out of date; {REGENERATE}"
    )


def test_regenerating_rewrites_only_the_blocks() -> None:
    stale = "intro\n<!-- options:run -->\nold table\n<!-- /options:run -->\noutro\n"

    fresh = with_options_tables(stale)

    assert (
        fresh
        == f"intro\n<!-- options:run -->\n{options_tables()['run']}<!-- /options:run -->\noutro\n"
    )


def test_the_run_table_lists_every_run_flag_and_the_commands_own_arguments() -> None:
    table = options_tables()["run"]

    for flag in ("--input PATH\\|-", "--shard INDEX/COUNT", "--config PATH", "--no-retry-failed"):
        assert f"| `{flag}` |" in table
    assert "--stream" not in table


def test_example_config_shows_exactly_the_declared_keys() -> None:
    shown = [key for _, key in EXAMPLE_KEY.findall(EXAMPLE.read_text())]

    assert sorted(set(shown) - TOML_KEYS) == [], "config.example.toml shows undeclared keys"
    assert sorted(TOML_KEYS - set(shown)) == [], "config.example.toml lacks declared keys"
    assert len(shown) == len(set(shown)), "config.example.toml shows a key twice"


def test_example_config_loads_as_the_defaults() -> None:
    assert load_settings({}, {}, EXAMPLE) == Settings()


def test_example_config_with_every_example_uncommented_loads(tmp_path: Path) -> None:
    uncommented = tmp_path / "uncommented.toml"
    uncommented.write_text(
        re.sub(r"^#\s*(?=[a-z][a-z0-9_]*\s*=)", "", EXAMPLE.read_text(), flags=re.MULTILINE)
    )
    keys = set(tomllib.loads(uncommented.read_text()))

    assert keys == TOML_KEYS
    assert isinstance(load_settings({}, {}, uncommented), Settings)


def test_example_config_names_the_environment_variable_of_every_key() -> None:
    text = EXAMPLE.read_text()

    names = [d.env for k, d in DECLARATIONS.items() if k in TOML_KEYS and d.env]

    missing = [name for name in names if name not in text]

    assert missing == []
