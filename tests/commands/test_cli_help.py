"""A CLI that explains itself: every command's ``--help`` ends with examples that parse and
the exit codes it ends with, every argument has a help text, ``--rate`` lists every unit it
takes, and a shell completion script is generated from the same parser."""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from processes import child_env

from worker.cli import main
from worker.commands.parsers import _EXAMPLES, EXIT_MEANINGS, PROG, build_parser, walk
from worker.exit_codes import ExitCode
from worker.settings.rate import UNITS, parse_rate

COMMANDS = [path for path, _ in walk(build_parser())]
SHELL_OPERATORS = ("|", "<", ">", "&&", ";")


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        cwd=cwd,
        env=child_env(None),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_tree_holds_every_command_and_action() -> None:
    assert set(COMMANDS) >= {
        "",
        "run",
        "enqueue",
        "consume",
        "delete-all",
        "sandbox",
        "audit",
        "audit verify",
        "audit summary",
        "audit find",
        "audit keygen",
        "audit report",
        "demo",
        "completion",
    }


@pytest.mark.parametrize("path", COMMANDS)
def test_every_argument_of_every_command_has_a_help_text(path: str) -> None:
    parser = dict(walk(build_parser()))[path]
    missing = []
    for action in parser._actions:
        name = "/".join(action.option_strings) or action.dest
        if not action.help or action.help == argparse.SUPPRESS:
            missing.append(name)
        if isinstance(action, argparse._SubParsersAction):
            # add_parser() without help= lists the command with no line at all
            helped = {choice.dest for choice in action._choices_actions if choice.help}
            missing += sorted(set(action.choices) - helped)

    assert missing == [], f"{PROG} {path}: arguments without help"


@pytest.mark.parametrize("path", COMMANDS)
def test_help_ends_with_two_or_three_examples_then_the_exit_codes(path: str) -> None:
    done = cli(*path.split(), "--help")

    assert done.returncode == 0, done.stderr
    assert "\nexamples:\n" in done.stdout, f"{path}: give it examples in parsers._EXAMPLES"
    examples, codes = done.stdout.split("\nexamples:\n")[-1].split("\n\nexit codes:\n")
    shown = examples.splitlines()
    assert 2 <= len(shown) <= 3, shown
    assert all(line.startswith(f"  {PROG} ") or f"| {PROG} " in line for line in shown)
    listed = [line.split(maxsplit=1) for line in codes.splitlines()]
    numbers = [int(number) for number, _ in listed]
    assert numbers == sorted(numbers)
    assert set(numbers) <= {int(code) for code in ExitCode}
    assert ExitCode.USAGE in numbers  # a bad flag is exit 2 for every command
    assert all(meaning.strip() for _, meaning in listed)


def test_a_purge_lists_every_exit_code_with_its_meaning() -> None:
    done = cli("run", "--help")

    codes = done.stdout.split("\nexit codes:\n")[1]
    assert EXIT_MEANINGS.keys() == set(ExitCode)  # a new code needs a meaning here
    assert codes.splitlines() == [
        f"  {int(code):>3}  {EXIT_MEANINGS[code]}" for code in sorted(ExitCode)
    ]


def example_argv(example: str) -> list[str]:
    """The arguments after the program's name in a shell line, up to a pipe or redirection."""
    words = shlex.split(example)
    words = words[words.index(PROG) + 1 :]
    ends = [n for n, word in enumerate(words) if word in SHELL_OPERATORS]
    return words[: ends[0]] if ends else words


@pytest.mark.parametrize(
    ("path", "example"),
    [(path, example) for path in COMMANDS for example in _EXAMPLES.get(path, ())],
)
def test_every_example_parses_as_the_command_it_illustrates(path: str, example: str) -> None:
    argv = example_argv(example)

    args = build_parser().parse_args(argv)

    assert " ".join(argv[: len(path.split())]) == path
    assert args.command == argv[0]


def test_rate_help_lists_every_unit_the_rate_parser_takes() -> None:
    done = cli("run", "--help")

    text = " ".join(done.stdout.split())
    found = re.search(r"--rate SPEC request rate .*?; UNIT is (.*?) \(default", text)
    assert found, text
    listed = found[1].replace(" or ", ", ").split(", ")
    assert sorted(listed) == sorted(UNITS)
    for unit in listed:  # each one really is taken
        assert parse_rate(f"2/{unit}").period == UNITS[unit]


def test_completion_for_bash_completes_commands_flags_and_files(tmp_path: Path) -> None:
    done = cli("completion", "bash")
    assert done.returncode == 0, done.stderr
    script = tmp_path / "audience-purge.bash"
    script.write_text(done.stdout, encoding="utf-8")
    (tmp_path / "ids.csv").write_text("1\n", encoding="utf-8")

    def complete(*words: str) -> list[str]:
        probe = (
            f"source {shlex.quote(str(script))}; "
            f"COMP_WORDS=({' '.join(map(shlex.quote, (PROG, *words)))}); "
            f"COMP_CWORD={len(words)}; _shtab_audience_purge; "
            'printf "%s\\n" "${COMPREPLY[@]}"'
        )
        ran = subprocess.run(
            ["bash", "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=False
        )
        assert ran.returncode == 0, ran.stderr
        return ran.stdout.split()

    assert complete("ru") == ["run"]
    assert complete("audit", "ver") == ["verify"]
    assert complete("run", "--batch") == ["--batch-size"]
    assert complete("run", "--input", "ids") == ["ids.csv"]
    assert complete("completion", "") == ["bash", "zsh"]


def test_completion_for_zsh_is_a_zsh_completion_function() -> None:
    done = cli("completion", "zsh")

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"#compdef {PROG}\n")
    assert "--batch-size" in done.stdout
    if shutil.which("zsh"):
        checked = subprocess.run(
            ["zsh", "-n"], input=done.stdout, capture_output=True, text=True, check=False
        )
        assert checked.returncode == 0, checked.stderr


def test_completion_without_shtab_installed_exits_2_saying_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "shtab", None)  # import shtab raises ImportError

    code = main(["completion", "bash"])

    assert code == 2
    assert capsys.readouterr().err == (
        "audience-purge: error: shell completion needs the shtab package: pip install shtab\n"
    )


def test_completion_for_an_unknown_shell_exits_2() -> None:
    done = cli("completion", "fish")

    assert done.returncode == 2
    assert "invalid choice: 'fish'" in done.stderr
