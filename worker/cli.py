"""Command line: parses flags, builds the one Settings object, maps errors to exit codes.

The flags of settings are generated from their declarations (:mod:`worker.settings`), and so
are README.md's option tables (:func:`options_tables`; ``scripts/options_doc.py`` rewrites
them).

Exit codes (part of the interface, documented in the README):
0 every valid id deleted; 1 finished, some ids failed; 2 usage/config/input error, nothing
sent; 3 aborted on a fatal API condition; 69 Redis unavailable (queue mode, shared budget);
70 stopped on an internal error (a bug); 74 a file of the run could not be written; 75
interrupted by a signal. :func:`worker.exit_codes.exit_code_for` is the one mapping.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from worker import __version__
from worker.commands.audit import add_audit_parser
from worker.errors import ConfigError, PurgeError
from worker.exit_codes import exit_code_for
from worker.runtime.logs import configure_logging
from worker.settings import (
    CONSUME,
    DECLARATIONS,
    DELETE_ALL,
    ENQUEUE,
    RUN,
    Declaration,
    Settings,
    load_settings,
)

PROG = "audience-purge"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Delete UnleashX campaign audience records in bulk: rate-limited, retried, audited."
        ),
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command, about in _ABOUT.items():
        _add_arguments(commands.add_parser(command, help=about), command)
    _add_sandbox_arguments(
        commands.add_parser("sandbox", help="run the embedded UnleashX simulator")
    )
    add_audit_parser(commands)
    demo = commands.add_parser("demo", help="run a real purge against the embedded sandbox")
    demo.add_argument(
        "--dir",
        type=Path,
        default=Path("purge-demo"),
        help="where the demo writes its CSV, audit log and report",
    )
    return parser


_ABOUT = {
    RUN: "delete the audience ids listed in a CSV or stdin",
    ENQUEUE: "validate an input and queue it on a stream",
    CONSUME: "delete the ids of a stream's entries",
    DELETE_ALL: "delete EVERY audience of a draft campaign",
}


def _add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    """The command's own arguments, ``--config``, then the flags of its settings."""
    if command in (RUN, ENQUEUE):
        parser.add_argument(
            "--input", required=True, metavar="PATH|-", help="CSV file, or - for stdin"
        )
    if command == RUN:
        parser.add_argument(
            "--shard",
            metavar="INDEX/COUNT",
            help="only this slice of the ids (INDEX defaults to JOB_COMPLETION_INDEX)",
        )
    if command == DELETE_ALL:
        parser.add_argument(
            "--campaign-id", required=True, metavar="N", help="the draft campaign to empty"
        )
        parser.add_argument("--confirm", metavar="N", help="repeat the campaign id to confirm")
    parser.add_argument(
        "--config", type=Path, metavar="PATH", help="TOML config file (see config.example.toml)"
    )
    for name, declared in DECLARATIONS.items():
        _add_setting_flag(parser, command, name, declared)


def _add_setting_flag(
    parser: argparse.ArgumentParser, command: str, name: str, declared: Declaration
) -> None:
    if declared.flag is None or command not in declared.commands:
        return
    help_text = declared.flag_help.replace("%", "%%")
    # A default of None tells load_settings that the flag was not given.
    if declared.switch:
        action = "store_false" if declared.default else "store_true"
        parser.add_argument(declared.flag, dest=name, action=action, default=None, help=help_text)
    else:
        parser.add_argument(
            declared.flag,
            dest=name,
            metavar=declared.metavar,
            required=command in declared.required,
            help=help_text,
        )


def _add_sandbox_arguments(sandbox: argparse.ArgumentParser) -> None:
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=int, default=8080)
    sandbox.add_argument(
        "--campaign",
        action="append",
        default=[],
        metavar="ID:STATUS:FIRST-LAST",
        help="a campaign to serve (repeatable), e.g. 42:draft:1-5000",
    )
    sandbox.add_argument(
        "--token",
        default=None,
        help="token the sandbox accepts (default: $UNLEASHX_TOKEN or 'sandbox')",
    )
    sandbox.add_argument("--seed", type=int, default=0, help="fault injection seed")
    sandbox.add_argument("--error-ratio", type=float, default=0.0, help="share of 5xx answers")
    sandbox.add_argument("--drop-ratio", type=float, default=0.0, help="share of dropped conns")
    sandbox.add_argument("--latency-ms", type=float, default=0.0, help="added latency")
    sandbox.add_argument("--limit-per-second", type=int, default=None)
    sandbox.add_argument("--limit-per-minute", type=int, default=None)
    sandbox.add_argument("--max-batch", type=int, default=None, help="413 above this many ids")
    sandbox.add_argument(
        "--error-status",
        type=int,
        default=400,
        help="HTTP status of the documented API errors (default 400)",
    )


_SHARD = re.compile(r"([0-9]{1,6})\s*/\s*([0-9]{1,6})")  # ASCII digits, as everywhere


def settings_from(args: argparse.Namespace, env: dict[str, str]) -> Settings:
    """The Settings of a parsed command line: its setting flags, ``--shard``, ``--config``."""
    flags = {name: getattr(args, name, None) for name, d in DECLARATIONS.items() if d.flag}
    shard = getattr(args, "shard", None)
    if shard is not None:
        found = _SHARD.fullmatch(shard.strip())
        if found is None:
            raise ConfigError(f"expected INDEX/COUNT such as 0/3, got {shard!r}", key="shard")
        flags.update(shard_index=int(found[1]), shard_count=int(found[2]))
    return load_settings(flags, env, args.config)


def options_tables() -> dict[str, str]:
    """The README's generated tables, by block name (``<!-- options:NAME -->``)."""
    return {RUN: _command_table(RUN), "settings": _settings_table()}


_BLOCK = re.compile(r"(<!-- options:([a-z-]+) -->\n).*?(<!-- /options:\2 -->)", re.DOTALL)


def with_options_tables(readme: str) -> str:
    """``readme`` with each generated block rewritten; an unknown block name is a KeyError."""
    tables = options_tables()
    return _BLOCK.sub(lambda m: m[1] + tables[m[2]] + m[3], readme)


def _command_table(command: str) -> str:
    parser = argparse.ArgumentParser(prog=f"{PROG} {command}", add_help=False)
    _add_arguments(parser, command)
    rows = []
    for action in parser._actions:
        declared = DECLARATIONS.get(action.dest)
        if declared is not None and command in declared.commands:
            usage, meaning = declared.usage, declared.help
            default = "" if declared.switch else _shown(declared)
        else:
            metavar = action.metavar if isinstance(action.metavar, str) else ""
            usage, default = f"{action.option_strings[0]} {metavar}", ""
            meaning = action.help or ""
        rows.append((f"`{usage.strip()}`", "(required)" if action.required else default, meaning))
    return _table(("flag", "default", "meaning"), rows)


def _settings_table() -> str:
    rows = []
    for name, declared in DECLARATIONS.items():
        commands = ", ".join(
            f"{command} (required)" if command in declared.required else command
            for command in declared.commands
        )
        rows.append(
            (
                f"`{name}`" if declared.toml else "",
                f"`{declared.usage}`" if declared.flag else "",
                commands,
                f"`{declared.env}`" if declared.env else "",
                _shown(declared),
                declared.help,
            )
        )
    return _table(("key", "flag", "commands", "env", "default", "meaning"), rows)


def _shown(declared: Declaration) -> str:
    """The default for a Markdown table: values as code, numbers and descriptions as text."""
    text = declared.default_text
    if not text or declared.shown is not None:
        return text
    plain = isinstance(declared.default, int | float) and not isinstance(declared.default, bool)
    return text if plain else f"`{text}`"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |\n"

    return line(header) + "|" + "---|" * len(header) + "\n" + "".join(map(line, rows))


def _settings(args: argparse.Namespace) -> Settings:
    settings = settings_from(args, dict(os.environ))
    configure_logging(settings.log_level, log_format=settings.log_format)
    return settings


def _run(args: argparse.Namespace) -> int:
    from worker.commands.run import run_command

    return run_command(_settings(args), args.input)


def _enqueue(args: argparse.Namespace) -> int:
    from worker.commands.enqueue import enqueue_command

    return enqueue_command(_settings(args), args.input)


def _consume(args: argparse.Namespace) -> int:
    from worker.commands.consume import consume_command

    return consume_command(_settings(args))


def _delete_all(args: argparse.Namespace) -> int:
    from worker.commands.delete_all import delete_all_command

    return delete_all_command(_settings(args), args.campaign_id, args.confirm)


def _sandbox(args: argparse.Namespace) -> int:
    from worker.commands.sandbox import sandbox_command

    return sandbox_command(args)


def _demo(args: argparse.Namespace) -> int:
    from worker.commands.demo import demo_command

    return demo_command(args.dir)


def _audit(args: argparse.Namespace) -> int:
    from worker.commands.audit import AUDIT_COMMANDS

    return AUDIT_COMMANDS[args.audit_command](args)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": _run,
    "delete-all": _delete_all,
    "sandbox": _sandbox,
    "demo": _demo,
    "audit": _audit,
    "enqueue": _enqueue,
    "consume": _consume,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``audience-purge`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (Exception, KeyboardInterrupt) as exc:
        code = exit_code_for(exc)
        if code is None:
            raise
        return _fail(_describe(exc), code)


def _describe(exc: BaseException) -> str:
    """One line for the person at the terminal (the audit log has the run's own record)."""
    if isinstance(exc, ConfigError):
        return f"configuration error: {exc}"
    if isinstance(exc, PurgeError):
        return str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    return (
        f"internal error: {type(exc).__name__}: {exc} (a bug: the run stopped safely; "
        "please report it with the audit log)"
    )


def _fail(message: str, code: int) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code
