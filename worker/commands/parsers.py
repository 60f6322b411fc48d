"""The command line's grammar: every command, its flags, its examples and its exit codes.

Apart from :mod:`worker.cli` (which runs a command) and from the commands themselves so that
building the parser, all that ``--help`` and ``--version`` need, imports none of what the
commands run with (aiohttp, redis, structlog, rich). The flags of settings are generated from
their declarations (:mod:`worker.settings`).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import worker
from worker.exit_codes import ExitCode
from worker.settings import CONSUME, DECLARATIONS, DELETE_ALL, ENQUEUE, RUN, Declaration

PROG = "audience-purge"


class _Version(argparse.Action):
    """``--version``, as argparse's own, but the version is read only when asked for (from
    the package metadata: not worth its import to every ``--help``)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **_: Any) -> None:
        super().__init__(
            option_strings,
            dest=argparse.SUPPRESS,
            default=argparse.SUPPRESS,
            nargs=0,
            help="show program's version number and exit",
        )

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        print(f"{PROG} {worker.__version__}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Delete UnleashX campaign audience records in bulk: rate-limited, retried, audited."
        ),
    )
    parser.add_argument("--version", action=_Version)
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help=f"{PROG} COMMAND --help says more"
    )
    for command, about in _ABOUT.items():
        add_arguments(commands.add_parser(command, help=about), command)
    _add_sandbox_arguments(
        commands.add_parser("sandbox", help="run the embedded UnleashX simulator")
    )
    _add_audit_parser(commands)
    _add_status_parser(commands)
    _add_redrive_parser(commands)
    _add_select_parser(commands)
    _add_verify_parser(commands)
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
        f"{PROG} audit verify --public-key audit-sign.pub purge-audit/*.jsonl",
        f"{PROG} audit verify --json purge-audit/*.jsonl | jq .ok",
    ),
    "audit keygen": (
        f"{PROG} audit keygen --out audit-sign",
        f"{PROG} audit keygen --out keys/purge-2026-11",
    ),
    "audit summary": (
        f"{PROG} audit summary purge-audit/*.jsonl",
        f"{PROG} audit summary --json purge-audit/*.jsonl",
    ),
    "audit find": (
        f"{PROG} audit find 97 purge-audit/*.jsonl",
        f"{PROG} audit find 97 --campaign-id 42 --json purge-audit/*.jsonl",
        f"{PROG} audit find --line 1234 purge-audit/audit-20260301T101500Z-1a2b3c.jsonl",
    ),
    "audit report": (
        f"{PROG} audit report --html evidence.html purge-audit/*.jsonl",
        f"{PROG} audit report --html evidence.html --public-key audit-sign.pub purge-audit/*.jsonl",
    ),
    "demo": (f"{PROG} demo", f"{PROG} demo --dir /tmp/purge-demo"),
    "select": (
        f"{PROG} select --campaign-id 42 --status completed --older-than 180d --out old.csv",
        f"{PROG} select --campaign-id 42 --status halted --attempt 3 --out - | wc -l",
    ),
    "verify": (
        f"{PROG} verify --audit purge-audit/audit-20260301T101500Z-1a2b3c.jsonl",
        f"{PROG} verify --audit purge-audit/*.jsonl --campaign-id 42 --failed-out still.csv",
    ),
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
_FOUND = {
    ExitCode.OK: "the id (or --line) is in a record",
    ExitCode.FAILED: "the id (or --line) is in no record",
}
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
        ExitCode.OK: "intact (verify), printed (summary), found (find), written (report)",
        ExitCode.FAILED: "tampering found (verify), or nothing found (find)",
        **_READ,
        **_BUG,
    },
    "audit verify": {**_VERIFIED, **_READ, **_BUG},
    "audit summary": {ExitCode.OK: "the totals are printed", **_READ, **_BUG},
    "audit find": {**_FOUND, **_READ, **_BUG},
    "audit report": {
        ExitCode.OK: "the page is written (whatever verdict it shows: TAMPERED included)",
        ExitCode.USAGE: "a usage error, a file that cannot be read, or OUT cannot be written",
        **_BUG,
    },
    "audit keygen": {
        ExitCode.OK: "the key pair is written",
        ExitCode.USAGE: "a key file already exists (nothing is overwritten), or cannot be written",
        **_BUG,
    },
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
    "select": {
        ExitCode.OK: "the selection is written (even an empty one)",
        ExitCode.USAGE: "usage or configuration error, a record the rule cannot be checked "
        "on, a listing not proven in 5 passes, or a selected record whose id run would "
        "reject: nothing was written",
        ExitCode.FATAL: "the API refused the listing (bad token, unknown campaign), or it "
        "kept failing",
        ExitCode.IO_ERROR: "the selection could not be written",
        ExitCode.INTERRUPTED: "interrupted by SIGINT/SIGTERM: nothing was written",
        **_BUG,
    },
    "verify": {
        ExitCode.OK: "none of the ids recorded as deleted is still in its campaign",
        ExitCode.FAILED: "some are still there (the audit log, report and --failed-out list "
        "them, reason still_present), or a campaign could not be read completely (it kept "
        "changing, or listed fewer records than it reports)",
        ExitCode.USAGE: "usage or configuration error, or an audit log that cannot be read",
        ExitCode.FATAL: "the API refused the listing (bad token, unknown campaign), or it "
        "kept failing",
        ExitCode.IO_ERROR: "a file of the run could not be written",
        ExitCode.INTERRUPTED: "interrupted by SIGINT/SIGTERM: re-run to verify",
        **_BUG,
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


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    """The command's own arguments, ``--config``, then the flags of its settings."""
    if command == ENQUEUE:
        parser.add_argument(
            "--input", required=True, metavar="PATH|-", help="CSV file, or - for stdin"
        )
    if command == RUN:
        parser.add_argument(
            "--input",
            metavar="PATH|-",
            help="CSV file, or - for stdin (required unless --select)",
        )
        parser.add_argument(
            "--select",
            action="store_true",
            help="purge the records of --campaign-id that the rule flags below select: "
            "collected first (audience-list) into --selection, then deleted",
        )
        parser.add_argument(
            "--selection",
            type=Path,
            metavar="PATH",
            help="where --select keeps what it collected (default: "
            "purge-selections/select-CAMPAIGN-RULEHASH.csv); a re-run resumes from it",
        )
        add_rule_arguments(parser)
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
    if declared.flag is not None and command in declared.commands:
        _flag(parser, name, declared, required=command in declared.required)


def _flag(
    parser: argparse.ArgumentParser,
    name: str,
    declared: Declaration,
    *,
    required: bool,
    text: str | None = None,
) -> None:
    """A setting's flag: its destination is the setting's name, so the CLI's settings
    resolution (flags > environment > ``--config`` > defaults) reads it."""
    assert declared.flag is not None, name
    help_text = (declared.flag_help if text is None else text).replace("%", "%%")
    # A default of None tells load_settings that the flag was not given.
    if declared.switch:
        action = "store_false" if declared.default else "store_true"
        parser.add_argument(declared.flag, dest=name, action=action, default=None, help=help_text)
    else:
        parser.add_argument(
            declared.flag, dest=name, metavar=declared.metavar, required=required, help=help_text
        )


# The sandbox's listing faults (worker.sandbox.listing_faults), as --help explains them.
LISTING_FAULT_HELP = {
    "churn": "before a page 2 or later is served, the listing's first record is removed and "
    "a matching one is added after the last (the total holds, one record goes unlisted)",
    "error-200": "HTTP 200 with an error message, no records and totals of 0",
    "bool-totals": "no records, with totalRecords and totalPages false",
    "endless": "totalPages 1,000,000,000, and a page past the end repeats page 1",
    "oversized": "each page holds one record more than the limit asked for",
    "padded": "page 2 holds page 1's last record in place of its own first, and the last page "
    "adds a record of no campaign (the count of distinct ids holds)",
}


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
        "--seed",
        type=int,
        default=0,
        metavar="N",
        help="seed of the fault injection and of the synthetic audience records (their "
        "statuses, attempts and last_attempt times; default 0)",
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
        "--ack-without-delete",
        type=float,
        default=0.0,
        metavar="SHARE",
        help="share of delete requests answered with success but not applied, 0..1: what "
        "run --verify must catch (default 0)",
    )
    sandbox.add_argument(
        "--listing-fault",
        choices=tuple(LISTING_FAULT_HELP),
        default=None,
        metavar="MODE",
        help="make audience-list lie, to rehearse a listing that must not prove anything: "
        + "; ".join(f"{mode}: {what}" for mode, what in LISTING_FAULT_HELP.items())
        + " (campaign-audience-stats stays true; default: none)",
    )
    sandbox.add_argument(
        "--listing-fault-times",
        type=int,
        default=None,
        metavar="N",
        help="serve --listing-fault to the first N answers it applies to only (default: every one)",
    )
    sandbox.add_argument(
        "--error-status",
        type=int,
        default=400,
        metavar="STATUS",
        help="HTTP status of the documented API errors (default 400)",
    )


STATUS_NAMES = ("fresh", "completed", "halted", "inqueue")  # audience-list codes 0..3


def _attempts(text: str) -> int:
    """``--attempt N``: a number of attempts in ASCII digits (``int()`` would read ``"٢"``
    as 2, as no API does)."""
    value = text.strip()
    if not (value.isascii() and value.isdigit()) or len(value) > 9:
        raise argparse.ArgumentTypeError(
            f"expected a number of attempts (digits 0-9), got {text!r}"
        )
    return int(value)


def add_rule_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of a selection rule (``select``, ``run --select``): each narrows it."""
    parser.add_argument(
        "--status",
        action="append",
        choices=STATUS_NAMES,
        metavar="STATUS",
        help="audience status: " + ", ".join(STATUS_NAMES) + " (repeatable: any of them)",
    )
    parser.add_argument(
        "--call-status",
        action="append",
        metavar="TEXT",
        help="the record's call_status, exactly (repeatable: any of them)",
    )
    parser.add_argument(
        "--attempt",
        action="append",
        type=_attempts,
        metavar="N",
        help="the record's number of attempts, exactly (repeatable: any of them)",
    )
    age = parser.add_mutually_exclusive_group()
    age.add_argument(
        "--older-than",
        metavar="AGE",
        help="last attempt more than AGE ago: 180d, 12w, 36h, 90m, 1h30m (m is minutes; days "
        "are 24 h; months in days: 183d; see Durations and times)",
    )
    age.add_argument(
        "--last-attempt-before",
        metavar="TIME",
        help="last attempt before TIME: 2026-06-01, or RFC 3339 such as 2026-06-01T00:00:00Z "
        "(without an offset UTC, as the API's times are read; see Durations and times)",
    )
    parser.add_argument(
        "--include-never-attempted",
        action="store_true",
        help="with an age rule, also select records never attempted (no last_attempt); "
        "by default an age rule leaves them out",
    )


def _setting_flags(
    parser: argparse.ArgumentParser,
    names: Iterable[str],
    *,
    required: Iterable[str] = (),
    helps: Mapping[str, str] | None = None,
) -> None:
    """The flags of declared settings, for a command that is not in their ``commands``
    (``status``, ``redrive``), then ``--config``."""
    must = set(required)
    for name in names:
        _flag(parser, name, DECLARATIONS[name], required=name in must, text=(helps or {}).get(name))
    parser.add_argument(
        "--config", type=Path, metavar="PATH", help="TOML config file (see config.example.toml)"
    )


class _IntermixedParser(argparse.ArgumentParser):
    """An ``audit`` action's parser: its positionals may stand on both sides of its options.

    ``audit find 97 --campaign-id 42 FILE...`` and ``audit find --line 5 FILE...`` (no
    AUDIENCE_ID) both parse: argparse alone cuts the positionals at each option, and an
    optional AUDIENCE_ID before one or more files then takes the files after an option for
    extra arguments.
    """

    _in_a_pass = False

    def parse_known_args(  # type: ignore[override]  # one body for typeshed's two overloads
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if self._in_a_pass:  # parse_known_intermixed_args parses in two passes
            return super().parse_known_args(args, namespace)
        self._in_a_pass = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._in_a_pass = False


def _chain_check_arguments(parser: argparse.ArgumentParser, *, public_key: str) -> None:
    """What ``audit verify`` and ``audit report`` both check: the files of a chain, and the
    keys of its heads."""
    parser.add_argument(
        "paths",
        nargs="+",
        type=Path,
        metavar="PATH",
        help="audit files, in any order (they are put in chain order by their links)",
    )
    parser.add_argument(
        "--audit-key-file",
        type=Path,
        metavar="PATH",
        help="HMAC key file: also check the signed chain heads",
    )
    parser.add_argument("--public-key", type=Path, metavar="PATH", help=public_key)


def _add_audit_parser(commands: Any) -> None:
    """The ``audit`` command and its actions, on the CLI's subcommand parser."""
    audit = commands.add_parser("audit", help="verify, summarise or search audit logs")
    audit_commands = audit.add_subparsers(
        dest="audit_command",
        required=True,
        metavar="ACTION",
        help="audience-purge audit ACTION --help says more",
        parser_class=_IntermixedParser,
    )
    verify = audit_commands.add_parser("verify", help="check the hash chain of audit logs")
    _chain_check_arguments(
        verify,
        public_key="Ed25519 public key (audit keygen's .pub): check every head_signature; a log "
        "without one is an error",
    )
    verify.add_argument(
        "--json",
        action="store_true",
        help="print the verdict as one JSON object: ok, warnings, errors, head, files",
    )
    keygen = audit_commands.add_parser(
        "keygen", help="make an Ed25519 key pair to sign audit logs (--sign-key) and check them"
    )
    keygen.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="PREFIX",
        help="write PREFIX.key (the private key, 0600: for --sign-key) and PREFIX.pub (the "
        "public key, for the auditor: audit verify --public-key); never overwrites",
    )
    summary = audit_commands.add_parser("summary", help="totals per event, campaign and run")
    summary.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="audit files")
    summary.add_argument("--json", action="store_true", help="print JSON instead of text")
    report = audit_commands.add_parser(
        "report", help="write one self-contained HTML page of evidence for a reviewer"
    )
    _chain_check_arguments(
        report,
        public_key="Ed25519 public key (audit keygen's .pub): also check and show the signatures",
    )
    report.add_argument(
        "--html",
        type=Path,
        required=True,
        metavar="OUT",
        help="the page to write (0600, replaced at once): counts only, no audience id",
    )
    find = audit_commands.add_parser(
        "find", help="every record that mentions an audience id, or is about an input line"
    )
    # Not type=int: with --line, the first of two or more files lands here (find_command
    # puts it back with the others).
    find.add_argument(
        "audience_id",
        nargs="?",
        metavar="AUDIENCE_ID",
        help="the audience id to look for (not with --line)",
    )
    find.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="audit files")
    find.add_argument(
        "--line",
        type=int,
        metavar="N",
        help="instead of an id: the records about input line N (a rejected row or a "
        "duplicate), of every run (a line number is per input and per run)",
    )
    find.add_argument("--campaign-id", type=int, metavar="N", help="only records of this campaign")
    find.add_argument(
        "--json",
        action="store_true",
        help="print the records as JSON Lines, each with file and file_line (where it stands)",
    )


def _add_status_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "status", help="show where a purge stands: its saved progress, or its queue"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object, for scripts")
    _setting_flags(
        parser,
        ("state_dir", "redis_url", "stream", "group", "dead_stream", "log_format"),
        helps={
            "state_dir": "a run's state directory (default: list every one under ./purge-state)",
            "stream": "the stream of a queue (with --redis) instead of a state directory",
        },
    )


def _add_redrive_parser(commands: Any) -> None:
    parser = commands.add_parser("redrive", help="move dead-lettered entries back to their stream")
    parser.add_argument(
        "--reason",
        metavar="TEXT",
        help="only dead letters whose reason contains TEXT (any case), e.g. 'delete failed'",
    )
    parser.add_argument(
        "--since",
        metavar="DURATION|TIME",
        help="only dead letters dead-lettered in the last DURATION (90s, 30m, 2h, 1d, 1h30m) "
        "or since TIME (RFC 3339 with its offset, e.g. 2026-11-26T06:00:00Z; see Durations "
        "and times)",
    )
    _setting_flags(
        parser,
        (
            "redis_url",
            "stream",
            "dead_stream",
            "audit_log",
            "redis_backoff_initial",
            "redis_backoff_max",
            "dry_run",
            "log_level",
            "log_format",
        ),
        required=("redis_url", "stream"),
        helps={"dry_run": "list the dead letters that would move; move nothing"},
    )


_LISTING = ("base_url", "token_file", "rate", "timeout", "max_attempts", "page_size")
_LISTING_TAIL = ("insecure_http", "log_level", "log_format")
# What the settings of deletions mean for a command that only reads.
_READ_HELPS = {
    "base_url": "API base URL; /audience-list and /campaign-audience-stats are appended",
    "max_attempts": "attempts per read (page or stats), first included",
}


def _add_select_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "select", help="list the audience records a rule selects, as a CSV run --input takes"
    )
    add_rule_arguments(parser)
    parser.add_argument(
        "--out",
        default="-",
        metavar="PATH|-",
        help="the CSV to write (default -: stdout): campaign_id, audience_id and the fields "
        "the rule was checked on",
    )
    _setting_flags(
        parser,
        ("campaign_id", *_LISTING, *_LISTING_TAIL),
        required=("campaign_id",),
        helps={"campaign_id": "the campaign to select from", **_READ_HELPS},
    )


def _add_verify_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "verify", help="read campaigns back to prove the ids an audit log deleted are gone"
    )
    parser.add_argument(
        "--audit",
        nargs="+",
        required=True,
        type=Path,
        metavar="PATH",
        help="audit logs whose deleted ids to look for (a purge's files, in any order)",
    )
    _setting_flags(
        parser,
        (
            "campaign_id",
            *_LISTING,
            "audit_log",
            "audit_key_file",
            "sign_key",
            "report",
            "failed_out",
            *_LISTING_TAIL,
        ),
        helps={"campaign_id": "only this campaign of the audit logs", **_READ_HELPS},
    )
