"""``audience-purge sandbox``: serve the embedded UnleashX simulator in the foreground."""

from __future__ import annotations

import argparse
import os

from worker.errors import UsageError
from worker.runtime.logs import configure_logging
from worker.sandbox import FaultConfig, SandboxConfig, parse_campaign_spec, serve


def sandbox_command(args: argparse.Namespace) -> int:
    """Serve until interrupted; a bad campaign spec or fault value is a usage error."""
    configure_logging("info")
    try:
        campaigns = tuple(parse_campaign_spec(spec) for spec in args.campaign)
        faults = FaultConfig(
            seed=args.seed,
            error_ratio=args.error_ratio,
            drop_ratio=args.drop_ratio,
            latency_ms=args.latency_ms,
            limit_per_second=args.limit_per_second,
            limit_per_minute=args.limit_per_minute,
            max_batch=args.max_batch,
            error_status=args.error_status,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    token = args.token or os.environ.get("UNLEASHX_TOKEN") or "sandbox"
    serve(SandboxConfig(campaigns=campaigns, token=token, faults=faults), args.host, args.port)
    return 0
