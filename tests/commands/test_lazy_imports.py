"""Start-up cost: a command imports only what it runs with (issue #11).

``--version`` and ``--help`` build the parser and nothing else; a plain ``run`` (local
rate, no metrics) loads neither Redis, nor Prometheus, nor aiohttp's server, nor the
sandbox. Checked by the modules loaded when the process exits, not by timing, so the test
holds on a loaded machine.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from conftest import write_csv

from tests.processes import child_env
from worker.sandbox.runner import SandboxHandle

# Runs the console script's entry point and, at exit, prints the loaded top-level modules.
BOOT = (
    "import atexit, sys\n"
    "atexit.register(lambda: print('MODULES', *sorted(sys.modules), file=sys.stderr))\n"
    "sys.argv[0] = 'audience-purge'\n"
    "from worker.__main__ import entry\n"
    "entry()\n"
)
# What the run path needs and the parser does not.
RUNTIME = ("aiohttp", "asyncio", "structlog", "rich", "tenacity", "pyroaring", "orjson")
# What only some commands need: a fleet (redis), metrics, the embedded server.
# cryptography: only --sign-key and audit verify --public-key.
OPTIONAL = (
    "redis",
    "prometheus_client",
    "aiohttp.web",
    "worker.sandbox",
    "worker.queue",
    "cryptography",
)


async def loaded(*args: str, cwd: Path, token: str | None = None) -> tuple[int, set[str]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        BOOT,
        *args,
        cwd=cwd,
        env=child_env(token),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    line = next(x for x in err.decode().splitlines() if x.startswith("MODULES "))
    assert proc.returncode is not None
    return proc.returncode, set(line.split()[1:])


def under(modules: set[str], package: str) -> list[str]:
    return sorted(m for m in modules if m == package or m.startswith(package + "."))


@pytest.mark.parametrize(
    "args",
    [("--version",), ("--help",), ("run", "--help"), ("audit", "verify", "--help")],
    ids=" ".join,
)
async def test_help_and_version_import_no_command(args: tuple[str, ...], tmp_path: Path) -> None:
    code, modules = await loaded(*args, cwd=tmp_path)

    assert code == 0
    assert "worker.commands.parsers" in modules  # the BOOT hook saw the real parse
    for package in (*RUNTIME, *OPTIONAL):
        assert not under(modules, package), f"{' '.join(args)} imports {package}"


@pytest.mark.parametrize("args", [("--help",), ("run", "--help")], ids=" ".join)
async def test_help_reads_no_package_metadata(args: tuple[str, ...], tmp_path: Path) -> None:
    """The version (importlib.metadata, ~15 ms) is read by --version only."""
    code, modules = await loaded(*args, cwd=tmp_path)

    assert code == 0
    assert "worker.commands.parsers" in modules
    assert not under(modules, "importlib.metadata")


async def test_a_plain_run_imports_no_fleet_metrics_or_server(
    sandbox: SandboxHandle, token: str, tmp_path: Path
) -> None:
    path = write_csv(tmp_path / "ids.csv", [str(i) for i in range(101, 111)])

    code, modules = await loaded(
        "run",
        *("--input", str(path), "--campaign-id", "42", "--base-url", sandbox.url),
        *("--rate", "100/s", "--progress", "off"),
        cwd=tmp_path,
        token=token,
    )

    assert code == 0
    assert sandbox.state.campaigns[42].deleted_count == 10  # it did run, and send
    for package in RUNTIME:
        assert under(modules, package), f"a run without {package}? the check is blind"
    for package in OPTIONAL:
        assert not under(modules, package), f"a plain run imports {package}"
