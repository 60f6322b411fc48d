"""Command line: runs the command parsed, builds the one Settings object, maps errors to
exit codes.

The grammar (commands, flags, examples, exit codes) is :mod:`worker.commands.parsers`; a
command's modules are imported only when it runs, so ``--help`` and ``--version`` load none
of them. README.md's option tables are generated here (:func:`options_tables`;
``scripts/options_doc.py`` rewrites them).

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
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from worker.commands.parsers import PROG, add_arguments, build_parser, walk
from worker.errors import ConfigError, PurgeError, UsageError
from worker.exit_codes import exit_code_for
from worker.sending.credentials import redact_urls
from worker.settings import DECLARATIONS, RUN, Declaration, Settings
from worker.settings.resolve import as_given, refused, resolve_settings

if TYPE_CHECKING:
    from worker.input.selecting import Selecting

_SHARD = re.compile(r"([0-9]{1,6})\s*/\s*([0-9]{1,6})")  # ASCII digits, as everywhere


def settings_from(args: argparse.Namespace, env: dict[str, str]) -> Settings:
    """The Settings of a parsed command line: its setting flags, ``--shard``, ``--config``."""
    return _resolved(args, env)[0]


def _resolved(args: argparse.Namespace, env: dict[str, str]) -> tuple[Settings, dict[str, str]]:
    """:func:`settings_from`, and how each setting given was given (for later errors)."""
    flags = {name: getattr(args, name, None) for name, d in DECLARATIONS.items() if d.flag}
    typed = {name: d.flag for name, d in DECLARATIONS.items() if d.flag}
    shard = getattr(args, "shard", None)
    if shard is not None:
        found = _SHARD.fullmatch(shard.strip())
        if found is None:
            raise refused("shard", "--shard", f"expected INDEX/COUNT such as 0/3, got {shard!r}")
        flags.update(shard_index=int(found[1]), shard_count=int(found[2]))
        typed.update(shard_index="--shard", shard_count="--shard")
    return resolve_settings(flags, env, args.config, flag_names=typed)


def options_tables() -> dict[str, str]:
    """The README's generated tables, by block name (``<!-- options:NAME -->``)."""
    return {RUN: _command_table(RUN), "settings": _settings_table()}


_TIMES = "#durations-and-times"  # the README section on worker.times's grammar
_BLOCK = re.compile(r"(<!-- options:([a-z-]+) -->\n).*?(<!-- /options:\2 -->)", re.DOTALL)


def with_options_tables(readme: str) -> str:
    """``readme`` with each generated block rewritten; an unknown block name is a KeyError."""
    tables = options_tables()
    return _BLOCK.sub(lambda m: m[1] + tables[m[2]] + m[3], readme)


def _command_table(command: str) -> str:
    parser = argparse.ArgumentParser(prog=f"{PROG} {command}", add_help=False)
    add_arguments(parser, command)
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
        return "| " + " | ".join(_linked(cell.replace("|", "\\|")) for cell in cells) + " |\n"

    return line(header) + "|" + "---|" * len(header) + "\n" + "".join(map(line, rows))


def _linked(cell: str) -> str:
    """A cell whose help points at the README's grammar of durations and times, linked."""
    return cell.replace("see Durations and times", f"see [Durations and times]({_TIMES})")


def _settings(args: argparse.Namespace) -> Settings:
    from worker.runtime.logs import configure_logging

    settings, given_as = _resolved(args, dict(os.environ))
    args.given_as = given_as  # for _describe: a later error names the value as it was given
    configure_logging(settings.log_level, log_format=settings.log_format)
    return settings


def _run(args: argparse.Namespace) -> int:
    from worker.commands.run import run_command
    from worker.records.report import STDOUT

    _input_or_select(args)
    settings = _settings(args)
    selecting = _selecting(args, settings)
    if args.json or settings.report == STDOUT:
        return _run_for_a_pipe(settings, args, selecting)
    return run_command(settings, _input(args, selecting), selecting)


def _selecting(args: argparse.Namespace, settings: Settings) -> Selecting | None:
    """``run --select``'s rule and selection file, its age cutoff taken now."""
    if not args.select:
        return None
    from datetime import UTC, datetime

    from worker.input.selecting import Selecting, rule_from

    shard = (
        None if settings.shard_count is None else f"{settings.shard_index}/{settings.shard_count}"
    )
    rule = rule_from(args, settings.campaign_id, datetime.now(UTC))
    return Selecting.of(rule, args.selection, shard)


def _input(args: argparse.Namespace, selecting: Selecting | None) -> str:
    return str(args.input) if selecting is None else str(selecting.path)


def _run_for_a_pipe(
    settings: Settings, args: argparse.Namespace, selecting: Selecting | None
) -> int:
    """``run --json`` or ``--report -``: stdout carries one JSON document and nothing else;
    the plan of a dry run and the human summary go to stderr."""
    import asyncio

    from worker.commands.run import run_purge
    from worker.records.report import STDOUT, print_json, print_summary

    if args.json and settings.report == STDOUT:
        raise UsageError("--json and --report - both write to stdout: choose one")
    result = asyncio.run(
        run_purge(settings, _input(args, selecting), out=sys.stderr, selecting=selecting)
    )
    if not settings.dry_run:
        print_summary(result, sys.stderr)
    if args.json:
        print_json(result, sys.stdout)
    return result.exit_code


def _input_or_select(args: argparse.Namespace) -> None:
    """``run`` reads ``--input`` or selects by rule (``--select``): exactly one of them.

    Raises:
        UsageError: neither or both, or rule flags without ``--select``.
    """
    from worker.input.selecting import rule_given

    if args.select and args.input is not None:
        raise UsageError("--input and --select both say what to delete: choose one")
    if not args.select:
        if args.input is None:
            raise UsageError("say what to delete: --input PATH (or - for stdin), or --select")
        if rule_given(args) or args.selection is not None:
            raise UsageError("rule flags (--status, --older-than, ...) select only with --select")


def _select(args: argparse.Namespace) -> int:
    from worker.commands.select import select_command

    return select_command(_settings(args), args)


def _verify(args: argparse.Namespace) -> int:
    from worker.commands.verify import verify_command

    return verify_command(_settings(args), args.audit)


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


def _completion(args: argparse.Namespace) -> int:
    """A completion script for ``args.shell``, generated from the parser by shtab: files
    offered where a flag takes a path, directories where it takes a DIR."""
    try:
        import shtab
    except ImportError:
        raise UsageError("shell completion needs the shtab package: pip install shtab") from None
    parser = build_parser()
    for _, command in walk(parser):
        for action in command._actions:
            if action.metavar in ("PATH", "PATH|-") or action.type is Path:
                action.complete = shtab.FILE  # type: ignore[attr-defined]
            elif action.metavar == "DIR":
                action.complete = shtab.DIRECTORY  # type: ignore[attr-defined]
    sys.stdout.write(shtab.complete(parser, shell=args.shell))
    return 0


def _audit(args: argparse.Namespace) -> int:
    from worker.commands.audit import AUDIT_COMMANDS

    return AUDIT_COMMANDS[args.audit_command](args)


def _status(args: argparse.Namespace) -> int:
    from worker.commands.status import status_command

    return status_command(args, _settings(args))


def _redrive(args: argparse.Namespace) -> int:
    from worker.commands.redrive import redrive_command

    return redrive_command(args, _settings(args))


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": _run,
    "delete-all": _delete_all,
    "sandbox": _sandbox,
    "demo": _demo,
    "audit": _audit,
    "enqueue": _enqueue,
    "consume": _consume,
    "completion": _completion,
    "status": _status,
    "redrive": _redrive,
    "select": _select,
    "verify": _verify,
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
        return _fail(_describe(exc, getattr(args, "given_as", {})), code)


def _describe(exc: BaseException, given_as: Mapping[str, str]) -> str:
    """One line for the person at the terminal (the audit log has the run's own record); a
    setting is named the way it was given (``--metrics-port``, not ``metrics_port``)."""
    if isinstance(exc, ConfigError):
        return str(as_given(exc, given_as))
    if isinstance(exc, PurgeError):
        return str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    return (
        f"internal error: {type(exc).__name__}: {exc} (a bug: the run stopped safely; "
        "please report it with the audit log)"
    )


def _fail(message: str, code: int) -> int:
    print(f"{PROG}: error: {redact_urls(message)}", file=sys.stderr)
    return code
