"""``audience-purge sandbox``: serve the embedded UnleashX simulator in the foreground."""

from __future__ import annotations

import argparse
import errno
import os
import socket
from dataclasses import fields

from worker.errors import UsageError
from worker.runtime.logs import configure_logging
from worker.sandbox import FaultConfig, SandboxConfig, parse_campaign_spec, serve

# A bind refused because of the address, or because of the port; any other OSError is not
# about the flags and stays what it is.
_HOST_ERRORS = (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT)
_PORT_ERRORS = (errno.EADDRINUSE, errno.EACCES, errno.EPERM)


def sandbox_command(args: argparse.Namespace) -> int:
    """Serve until interrupted; a bad campaign spec or fault value, or an address that
    cannot be listened on (a busy port), is a usage error of one line naming the flag."""
    configure_logging("info")
    try:
        campaigns = tuple(parse_campaign_spec(spec) for spec in args.campaign)
    except ValueError as exc:
        raise UsageError(f"--campaign: {exc}") from None
    try:
        faults = FaultConfig(
            seed=args.seed,
            error_ratio=args.error_ratio,
            drop_ratio=args.drop_ratio,
            latency_ms=args.latency_ms,
            limit_per_second=args.limit_per_second,
            limit_per_minute=args.limit_per_minute,
            max_batch=args.max_batch,
            error_status=args.error_status,
            ack_without_delete=args.ack_without_delete,
            listing_fault=args.listing_fault,
            listing_fault_times=args.listing_fault_times,
        )
    except ValueError as exc:
        raise UsageError(_as_flag(str(exc))) from None
    token = args.token or os.environ.get("UNLEASHX_TOKEN") or "sandbox"
    config = SandboxConfig(campaigns=campaigns, token=token, faults=faults, seed=args.seed)
    try:
        serve(config, args.host, args.port)
    except OSError as exc:
        if not isinstance(exc, socket.gaierror) and exc.errno not in _HOST_ERRORS + _PORT_ERRORS:
            raise
        raise UsageError(_cannot_listen(args.host, args.port, exc)) from None
    return 0


def _as_flag(message: str) -> str:
    """A FaultConfig message (``error_ratio must be ...``) naming the flag instead."""
    name, _, rest = message.partition(" ")
    if name in {f.name for f in fields(FaultConfig)}:
        return f"--{name.replace('_', '-')}: {rest}"
    return message


def _cannot_listen(host: str, port: int, exc: OSError) -> str:
    """One line for a failed bind, naming the flag to change."""
    reason = os.strerror(exc.errno) if exc.errno in _HOST_ERRORS + _PORT_ERRORS else exc.strerror
    if exc.errno not in _PORT_ERRORS:
        return f"--host {host}: cannot listen there: {reason}"
    return f"--port {port}: cannot listen on {host}:{port}: {reason}"
