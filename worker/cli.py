"""Command line: parses flags, builds the one Settings object, maps errors to exit codes.

Exit codes (part of the interface, documented in the README):
0 every valid id deleted; 1 finished, some ids failed; 2 usage/config/input error, nothing
sent; 3 aborted on a fatal API condition; 69 Redis unavailable (queue mode, shared budget);
75 interrupted by a signal.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from worker import __version__
from worker.commands.audit import add_audit_parser
from worker.errors import ConfigError, FatalError, ServiceUnavailable, UsageError
from worker.exit_codes import ExitCode
from worker.runtime.logs import configure_logging
from worker.settings import Settings, load_settings

PROG = "audience-purge"


def _sending_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--concurrency", help="requests in flight at most (default 8)")
    parser.add_argument("--batch-size", help="ids per request, 1..1000 (default 100)")
    parser.add_argument(
        "--grace", help="seconds in-flight requests get after SIGTERM/SIGINT (default 20)"
    )


def _scale_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rate-scope", help="local (default), or shared by every worker using --redis"
    )
    parser.add_argument("--rate-key", help="name of the shared budget (default from base URL)")
    parser.add_argument("--redis", dest="redis_url", help="redis://host:port/db (shared budget)")


def _connection_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML config file (see config.example.toml)")
    parser.add_argument("--base-url", help="API base URL (default: the UnleashX production API)")
    parser.add_argument("--token-file", help="file holding the API token (else UNLEASHX_TOKEN)")
    parser.add_argument(
        "--insecure-http",
        action="store_true",
        default=None,
        help="allow plain http to a non-loopback host (the token is exposed)",
    )
    parser.add_argument("--rate", help="request rate: N/second, N/minute (default 100/minute)")
    parser.add_argument("--timeout", help="seconds per request (default 30)")
    parser.add_argument("--max-attempts", help="attempts per batch, first included (default 6)")
    parser.add_argument("--audit-log", help="audit file (default purge-audit/audit-RUN_ID.jsonl)")
    parser.add_argument(
        "--audit-key-file", help="HMAC key file: sign the audit chain head in run_finished"
    )
    parser.add_argument(
        "--dry-run", action="store_true", default=None, help="show what would be sent; send nothing"
    )
    parser.add_argument("--log-level", help="debug, info, warning or error (default info)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Delete UnleashX campaign audience records in bulk: rate-limited, retried, audited."
        ),
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="delete the audience ids listed in a CSV or stdin")
    run.add_argument("--input", required=True, help="CSV file, or - for stdin")
    run.add_argument("--campaign-id", help="campaign for rows without a campaign_id column")
    _connection_flags(run)
    _sending_flags(run)
    run.add_argument("--report", help="write a JSON summary here")
    run.add_argument("--failed-out", help="write failed ids here as CSV (campaign_id,audience_id)")
    run.add_argument("--progress", help="auto, bar, log or off (default auto)")
    run.add_argument(
        "--state-dir", help="where progress is kept (default purge-state/<derived from input>)"
    )
    run.add_argument(
        "--fresh", action="store_true", default=None, help="ignore and replace saved progress"
    )
    run.add_argument(
        "--no-retry-failed",
        dest="retry_failed",
        action="store_false",
        default=None,
        help="on resume, do not retry ids that failed in earlier runs",
    )

    run.add_argument(
        "--shard",
        help="INDEX/COUNT: only this slice of the ids (INDEX defaults to JOB_COMPLETION_INDEX)",
    )
    run.add_argument("--shard-count", help="COUNT of shards, with INDEX from JOB_COMPLETION_INDEX")
    _scale_flags(run)

    enqueue = commands.add_parser("enqueue", help="validate an input and queue it on a stream")
    enqueue.add_argument("--input", required=True, help="CSV file, or - for stdin")
    enqueue.add_argument("--campaign-id", help="campaign for rows without a campaign_id column")
    enqueue.add_argument("--redis", dest="redis_url", required=True, help="redis://host:port/db")
    enqueue.add_argument("--stream", required=True, help="stream name")
    enqueue.add_argument("--batch-size", help="ids per entry, 1..1000 (default 100)")
    enqueue.add_argument("--ref", help="a reference copied into every entry and audit record")
    enqueue.add_argument("--config", type=Path, help="TOML config file")
    enqueue.add_argument("--audit-log", help="audit file (default purge-audit/audit-RUN_ID.jsonl)")

    consume = commands.add_parser("consume", help="delete the ids of a stream's entries")
    consume.add_argument("--redis", dest="redis_url", required=True, help="redis://host:port/db")
    consume.add_argument("--stream", required=True, help="stream name")
    consume.add_argument("--group", help="consumer group (default audience-purge)")
    consume.add_argument("--consumer", help="consumer name (default: the hostname, the pod name)")
    consume.add_argument(
        "--until-empty",
        action="store_true",
        default=None,
        help="exit 0 once nothing is new or pending for the group (for Jobs)",
    )
    consume.add_argument("--max-deliveries", help="dead-letter an entry after this many (5)")
    consume.add_argument("--claim-idle", help="take over entries idle this many seconds (600)")
    consume.add_argument("--dead-stream", help="dead-letter stream (default NAME:dead)")
    _connection_flags(consume)
    _sending_flags(consume)
    consume.add_argument(
        "--rate-scope", help="local (default), or shared by every worker using --redis"
    )
    consume.add_argument("--rate-key", help="name of the shared budget (default from base URL)")

    wipe = commands.add_parser("delete-all", help="delete EVERY audience of a draft campaign")
    wipe.add_argument("--campaign-id", required=True)
    wipe.add_argument("--confirm", help="repeat the campaign id to confirm")
    _connection_flags(wipe)

    sandbox = commands.add_parser("sandbox", help="run the embedded UnleashX simulator")
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

    add_audit_parser(commands)

    demo = commands.add_parser("demo", help="run a real purge against the embedded sandbox")
    demo.add_argument(
        "--dir",
        type=Path,
        default=Path("purge-demo"),
        help="where the demo writes its CSV, audit log and report",
    )
    return parser


RUN_KEYS = (
    "campaign_id",
    "base_url",
    "token_file",
    "insecure_http",
    "rate",
    "timeout",
    "max_attempts",
    "audit_log",
    "audit_key_file",
    "dry_run",
    "log_level",
    "concurrency",
    "batch_size",
    "report",
    "failed_out",
    "progress",
    "state_dir",
    "fresh",
    "retry_failed",
    "grace",
    "shard_count",
    "rate_scope",
    "rate_key",
    "redis_url",
    "stream",
    "group",
    "consumer",
    "until_empty",
    "max_deliveries",
    "claim_idle",
    "dead_stream",
    "ref",
)


def settings_from(args: argparse.Namespace, env: dict[str, str]) -> Settings:
    flags = {key: getattr(args, key, None) for key in RUN_KEYS}
    shard = getattr(args, "shard", None)
    if shard is not None:
        index, _, count = shard.partition("/")
        if not (index.strip().isdigit() and count.strip().isdigit()):
            raise ConfigError(f"expected INDEX/COUNT such as 0/3, got {shard!r}", key="shard")
        flags.update(shard_index=int(index), shard_count=int(count))
    return load_settings(flags, env, args.config)


def _settings(args: argparse.Namespace) -> Settings:
    settings = settings_from(args, dict(os.environ))
    configure_logging(settings.log_level)
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
    except ConfigError as exc:
        return _fail(f"configuration error: {exc}", ExitCode.USAGE)
    except UsageError as exc:
        return _fail(str(exc), ExitCode.USAGE)
    except FatalError as exc:
        return _fail(str(exc), ExitCode.FATAL)
    except ServiceUnavailable as exc:
        return _fail(str(exc), ExitCode.UNAVAILABLE)
    except KeyboardInterrupt:
        return _fail("interrupted", ExitCode.INTERRUPTED)


def _fail(message: str, code: int) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


def entry(*_: Any) -> None:
    sys.exit(main())
