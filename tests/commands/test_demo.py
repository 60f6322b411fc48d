"""The demo's "next" commands work as printed, from where the demo ran, after the README's
install (a virtual environment that is not activated: ``audience-purge`` not on PATH)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from processes import child_env

from worker.commands.demo import command_prefix

pytestmark = pytest.mark.slow

INSTALLED = Path(sys.executable).parent / "audience-purge"


def next_commands(out: str) -> list[str]:
    """The commands of the demo's ``next:`` block, one per line."""
    block = out[out.index("\nnext:") + 1 :].splitlines()
    return [line.split(": ", 1)[-1].removeprefix("next:").strip() for line in block]


@pytest.mark.skipif(not INSTALLED.is_file(), reason="the console script is not installed")
def test_the_demo_prints_next_commands_that_work_as_printed(tmp_path: Path) -> None:
    env = child_env(None) | {"PATH": "/usr/bin:/bin"}  # the venv is not activated
    demo = subprocess.run(
        [str(INSTALLED), "demo", "--dir", "demo"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert demo.returncode == 0, demo.stderr

    commands = next_commands(demo.stdout)

    assert len(commands) == 3
    outputs = []
    for command in commands:
        assert command.startswith(f"{shlex.quote(str(INSTALLED))} "), command
        done = subprocess.run(
            shlex.split(command), cwd=tmp_path, env=env, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, (command, done.stdout, done.stderr)
        outputs.append(done.stdout)
    verified, found, sandbox_help = outputs
    assert "chain intact" in verified
    assert "=> audience id 97 was erased" in found
    assert sandbox_help.startswith("usage: audience-purge sandbox")


def fake_install(directory: Path, *, script: bool) -> Path:
    """A bin directory holding a python (and, with ``script``, the console script)."""
    directory.mkdir(parents=True)
    python = directory / "python"
    python.write_text("", encoding="utf-8")
    if script:
        (directory / "audience-purge").write_text("#!/bin/sh\n", encoding="utf-8")
        (directory / "audience-purge").chmod(0o755)
    return python


def test_the_command_is_its_name_when_path_finds_this_installation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    python = fake_install(tmp_path / "venv" / "bin", script=True)
    monkeypatch.setattr(sys, "executable", str(python))
    monkeypatch.setenv("PATH", f"{python.parent}{os.pathsep}/usr/bin")

    assert command_prefix() == "audience-purge"


def test_the_command_is_its_full_path_when_path_finds_another_or_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    python = fake_install(tmp_path / "my venv" / "bin", script=True)
    other = fake_install(tmp_path / "other" / "bin", script=True)
    monkeypatch.setattr(sys, "executable", str(python))

    monkeypatch.setenv("PATH", "/usr/bin")
    unfound = command_prefix()
    monkeypatch.setenv("PATH", str(other.parent))
    another = command_prefix()

    expected = shlex.quote(str(python.parent / "audience-purge"))
    assert unfound == another == expected
    assert shlex.split(expected) == [str(python.parent / "audience-purge")]


def test_the_command_is_python_m_worker_without_a_console_script(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    python = fake_install(tmp_path / "bin", script=False)
    monkeypatch.setattr(sys, "executable", str(python))

    assert command_prefix() == f"{python} -m worker"
