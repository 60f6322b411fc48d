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
import asyncio
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from worker import __version__
from worker.commands.audit import add_audit_parser
from worker.errors import ConfigError, PurgeError, UsageError
from worker.exit_codes import ExitCode, exit_code_for
from worker.records.report import STDOUT, print_json, print_summary
from worker.runtime.logs import configure_logging
from worker.settings import (
    CONSUME,
    DECLARATIONS,
    DELETE_ALL,
    ENQUEUE,
    RUN,
    Declaration,
    Settings,
)
from worker.settings.resolve import as_given, refused, resolve_settings

PROG = "audience-purge"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Delete UnleashX campaign audience records in bulk: rate-limited, retried, audited."
        ),
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help=f"{PROG} COMMAND --help says more"
    )
    for command, about in _ABOUT.items():
        _add_arguments(commands.add_parser(command, help=about), command)
    _add_sandbox_arguments(
        commands.add_parser("sandbox", help="run the embedded UnleashX simulator")
    )
    add_audit_parser(commands)
    _add_status_and_redrive(commands)
    demo = commands.add_parser("demo", help="run a real purge against the embedded sandbox")
    demo.add_argument(
        "--dir",
        type=Path,
        default=Path("purge-demo"),
        metavar="DIR",
        help="where the demo writes its CSV, audit log and report",
    )
    completion = commands.add_parser("completion", help="print a shell completion script")
    completion.add_argument("shell", choices=SHELLS, help="the shell: " + " or ".join(SHELLS))
    _explain(parser)
    return parser


_ABOUT = {
    RUN: "delete the audience ids listed in a CSV or stdin",
    ENQUEUE: "validate an input and queue it on a stream",
    CONSUME: "delete the ids of a stream's entries",
    DELETE_ALL: "delete EVERY audience of a draft campaign",
}

SHELLS = ("bash", "zsh")

# The end of each command's --help, by its path ("" is the program, "audit verify" an
# action): two or three examples (tests/commands/test_cli_help.py parses each), then the
# exit codes it ends with.
_EXAMPLES: dict[str, tuple[str, ...]] = {
    "": (
        f"{PROG} demo",
        f"{PROG} run --input ids.csv --campaign-id 42 --dry-run",
        f"{PROG} audit verify purge-audit/*.jsonl",
    ),
    RUN: (
        f"{PROG} run --input ids.csv --campaign-id 42 --dry-run",
        f"{PROG} run --input ids.csv --campaign-id 42 --report report.json --failed-out failed.csv",
        f"cut -d, -f2 export.csv | {PROG} run --input - --campaign-id 42 --json | jq .deleted",
    ),
    ENQUEUE: (
        f"{PROG} enqueue --input ids.csv --campaign-id 42 --redis redis://localhost:6379/0 "
        "--stream purge",
        f"{PROG} enqueue --input - --redis redis://localhost:6379/0 --stream purge "
        "--ref TICKET-123 < ids.csv",
    ),
    CONSUME: (
        f"{PROG} consume --redis redis://localhost:6379/0 --stream purge --until-empty",
        f"{PROG} consume --redis redis://localhost:6379/0 --stream purge --rate 100/minute "
        "--rate-scope shared",
    ),
    DELETE_ALL: (
        f"{PROG} delete-all --campaign-id 42 --confirm 42 --dry-run",
        f"{PROG} delete-all --campaign-id 42 --confirm 42",
    ),
    "sandbox": (
        f"{PROG} sandbox --port 8080 --campaign 42:draft:1-5000 --token rehearsal",
        f"{PROG} sandbox --campaign 42:draft:1-100000 --error-ratio 0.05 --drop-ratio 0.01 "
        "--limit-per-minute 100",
    ),
    "audit": (
        f"{PROG} audit verify purge-audit/*.jsonl",
        f"{PROG} audit find 97 --campaign-id 42 purge-audit/*.jsonl",
    ),
    "audit verify": (
        f"{PROG} audit verify purge-audit/*.jsonl",
        f"{PROG} audit verify --audit-key-file audit.key purge-audit/*.jsonl",
        f"{PROG} audit verify --json purge-audit/*.jsonl | jq .ok",
    ),
    "audit summary": (
        f"{PROG} audit summary purge-audit/*.jsonl",
        f"{PROG} audit summary --json purge-audit/*.jsonl",
    ),
    "audit find": (
        f"{PROG} audit find 97 purge-audit/*.jsonl",
        f"{PROG} audit find 97 --campaign-id 42 --json purge-audit/*.jsonl",
    ),
    "demo": (f"{PROG} demo", f"{PROG} demo --dir /tmp/purge-demo"),
    "status": (
        f"{PROG} status",
        f"{PROG} status --state-dir purge-state/ids-1a2b3c4d5e6f --json | jq .input.bytes_left",
        f"{PROG} status --redis redis://redis:6379/0 --stream purge",
    ),
    "redrive": (
        f"{PROG} redrive --redis redis://redis:6379/0 --stream purge --dry-run",
        f"{PROG} redrive --redis redis://redis:6379/0 --stream purge --reason 'delete failed' "
        "--since 2h",
    ),
    "completion": (
        f"{PROG} completion bash > ~/.local/share/bash-completion/completions/{PROG}",
        f'{PROG} completion zsh > "${{fpath[1]}}/_{PROG}"',
    ),
}

# What each exit code means for a command that deletes; every ExitCode has one.
EXIT_MEANINGS: dict[ExitCode, str] = {
    ExitCode.OK: "every valid id deleted (rejected rows and duplicates do not change this)",
    ExitCode.FAILED: "finished, but some ids failed (the audit log says which and why)",
    ExitCode.USAGE: "usage, configuration or input error, found before anything was sent",
    ExitCode.FATAL: "aborted on a fatal API answer (bad token, wrong endpoint); re-run once fixed",
    ExitCode.UNAVAILABLE: "Redis could not be reached at start: nothing was read or sent",
    ExitCode.INTERNAL: "stopped safely on an internal error (a bug); re-run once fixed",
    ExitCode.IO_ERROR: "a file of the run could not be written (a full disk, say); re-run once "
    "fixed",
    ExitCode.INTERRUPTED: "interrupted by SIGINT/SIGTERM; re-run the same command to continue",
}
_BUG = {ExitCode.INTERNAL: "an internal error (a bug)"}
_READ = {ExitCode.USAGE: "a usage error, or a file that cannot be read"}
_VERIFIED = {
    ExitCode.OK: "the chain is intact (WARNING: lines are what a crash leaves)",
    ExitCode.FAILED: "tampering found (TAMPERED: lines)",
}
_FOUND = {ExitCode.OK: "the id is in a record", ExitCode.FAILED: "the id is in no record"}
# The commands that end otherwise than a purge: each code they end with, and its meaning.
_OWN_CODES: dict[str, Mapping[ExitCode, str]] = {
    ENQUEUE: {
        **{c: m for c, m in EXIT_MEANINGS.items() if c not in (ExitCode.FAILED, ExitCode.FATAL)},
        ExitCode.OK: "every valid id queued",
    },
    DELETE_ALL: {
        **{c: m for c, m in EXIT_MEANINGS.items() if c is not ExitCode.UNAVAILABLE},
        ExitCode.OK: "every audience record of the campaign deleted",
        ExitCode.FAILED: "the API refused (the campaign is not a draft, say): its message is "
        "on stderr",
        ExitCode.USAGE: "usage or configuration error, or --confirm does not repeat the "
        "campaign id: nothing was sent",
        ExitCode.INTERRUPTED: "interrupted by SIGINT/SIGTERM (a request cut off is audited as "
        "unconfirmed)",
    },
    "sandbox": {
        ExitCode.OK: "stopped by SIGINT/SIGTERM",
        ExitCode.USAGE: "a bad flag value, or the address or port cannot be listened on",
        **_BUG,
    },
    "audit": {
        ExitCode.OK: "intact (verify), printed (summary), found (find)",
        ExitCode.FAILED: "tampering found (verify), or the id is in no record (find)",
        **_READ,
        **_BUG,
    },
    "audit verify": {**_VERIFIED, **_READ, **_BUG},
    "audit summary": {ExitCode.OK: "the totals are printed", **_READ, **_BUG},
    "audit find": {**_FOUND, **_READ, **_BUG},
    "status": {
        ExitCode.OK: "the state or the queue is shown",
        ExitCode.USAGE: "no such (or an unreadable) state directory or stream",
        ExitCode.UNAVAILABLE: "Redis could not be reached",
        **_BUG,
    },
    "redrive": {
        ExitCode.OK: "the dead letters asked for were moved back (or listed, with --dry-run)",
        ExitCode.USAGE: "usage or configuration error: nothing was moved",
        ExitCode.UNAVAILABLE: "Redis could not be reached: nothing was moved",
        ExitCode.INTERNAL: EXIT_MEANINGS[ExitCode.INTERNAL],
        ExitCode.IO_ERROR: "the audit log could not be written: moving stopped",
        ExitCode.INTERRUPTED: "interrupted by SIGINT/SIGTERM: re-run to move the rest",
    },
    "completion": {
        ExitCode.OK: "the script is on stdout",
        ExitCode.USAGE: "a shell it cannot complete for",
        **_BUG,
    },
}


def walk(
    parser: argparse.ArgumentParser, path: str = ""
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """``parser`` and every command under it, each with its path (``audit verify``)."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, command in action.choices.items():
                yield from walk(command, f"{path} {name}".strip())


def _explain(parser: argparse.ArgumentParser) -> None:
    """End the help of every command with examples and exit codes; a command's description
    is the help its parent lists it with."""
    for path, command in walk(parser):
        command.formatter_class = argparse.RawDescriptionHelpFormatter
        command.epilog = _epilog(path)
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):
                about = {choice.dest: choice.help for choice in action._choices_actions}
                for name, sub in action.choices.items():
                    sub.description = sub.description or about.get(name)


def _epilog(path: str) -> str:
    examples = _EXAMPLES.get(path, ())
    codes = _OWN_CODES.get(path, EXIT_MEANINGS)
    lines = ["examples:", *(f"  {example}" for example in examples), ""] if examples else []
    lines.append("exit codes:")
    lines += [f"  {int(code):>3}  {meaning}" for code, meaning in sorted(codes.items())]
    return "\n".join(lines)


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
        parser.add_argument(
            "--json",
            action="store_true",
            help="print the final summary as one JSON object on stdout, and nothing else there "
            "(the human summary, or a dry run's plan, goes to stderr)",
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
    sandbox.add_argument(
        "--host",
        default="127.0.0.1",
        metavar="HOST",
        help="address to listen on (default 127.0.0.1: this machine only)",
    )
    sandbox.add_argument(
        "--port",
        type=int,
        default=8080,
        metavar="PORT",
        help="port to listen on (default 8080; 0 picks a free one, printed at start)",
    )
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
        metavar="TOKEN",
        help="token the sandbox accepts (default: $UNLEASHX_TOKEN or 'sandbox')",
    )
    sandbox.add_argument(
        "--seed", type=int, default=0, metavar="N", help="fault injection seed (default 0)"
    )
    sandbox.add_argument(
        "--error-ratio",
        type=float,
        default=0.0,
        metavar="SHARE",
        help="share of requests answered with a 5xx, 0..1 (default 0)",
    )
    sandbox.add_argument(
        "--drop-ratio",
        type=float,
        default=0.0,
        metavar="SHARE",
        help="share of requests whose connection is dropped unanswered, 0..1 (default 0)",
    )
    sandbox.add_argument(
        "--latency-ms",
        type=float,
        default=0.0,
        metavar="MS",
        help="milliseconds added before each answer (default 0)",
    )
    for unit in ("second", "minute"):
        sandbox.add_argument(
            f"--limit-per-{unit}",
            type=int,
            default=None,
            metavar="N",
            help=f"answer 429 with Retry-After above N requests in any {unit} (a sliding "
            "window; default: no limit)",
        )
    sandbox.add_argument(
        "--max-batch",
        type=int,
        default=None,
        metavar="N",
        help="answer 413 to a request of more than N ids (default: no limit)",
    )
    sandbox.add_argument(
        "--error-status",
        type=int,
        default=400,
        metavar="STATUS",
        help="HTTP status of the documented API errors (default 400)",
    )


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
    settings, given_as = _resolved(args, dict(os.environ))
    args.given_as = given_as  # for _describe: a later error names the value as it was given
    configure_logging(settings.log_level, log_format=settings.log_format)
    return settings


def _run(args: argparse.Namespace) -> int:
    from worker.commands.run import run_command

    settings = _settings(args)
    if args.json or settings.report == STDOUT:
        return _run_for_a_pipe(settings, args)
    return run_command(settings, args.input)


def _run_for_a_pipe(settings: Settings, args: argparse.Namespace) -> int:
    """``run --json`` or ``--report -``: stdout carries one JSON document and nothing else;
    the plan of a dry run and the human summary go to stderr."""
    from worker.commands.run import run_purge

    if args.json and settings.report == STDOUT:
        raise UsageError("--json and --report - both write to stdout: choose one")
    result = asyncio.run(run_purge(settings, args.input, out=sys.stderr))
    if not settings.dry_run:
        print_summary(result, sys.stderr)
    if args.json:
        print_json(result, sys.stdout)
    return result.exit_code


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


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": _run,
    "delete-all": _delete_all,
    "sandbox": _sandbox,
    "demo": _demo,
    "audit": _audit,
    "enqueue": _enqueue,
    "consume": _consume,
    "completion": _completion,
}


# -- status and redrive: their parsers and dispatch (worker/commands/status.py, redrive.py) --


def _add_status_and_redrive(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from worker.commands.redrive import add_redrive_parser
    from worker.commands.status import add_status_parser

    add_status_parser(commands)
    add_redrive_parser(commands)


def _status(args: argparse.Namespace) -> int:
    from worker.commands.status import status_command

    return status_command(args, _settings(args))


def _redrive(args: argparse.Namespace) -> int:
    from worker.commands.redrive import redrive_command

    return redrive_command(args, _settings(args))


COMMANDS.update(status=_status, redrive=_redrive)


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
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code
