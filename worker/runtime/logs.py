"""Operational logging (retries, progress, warnings) to stderr, configured once at start-up.

The audit log is a separate, dedicated writer (see :mod:`worker.records.audit`); nothing here
ever writes to it. ``--log-format``: JSON lines (one object per line, for a log shipper) or
a console rendering; ``auto`` picks the console on a terminal and JSON otherwise.

Libraries log through the standard ``logging`` module (asyncio's "Task exception was never
retrieved", aiohttp, redis): their records go through the same renderer, so every line on
stderr is one JSON object when JSON is on. Fields bound with ``structlog.contextvars``
(``run_id``, ``command``, ``shard``) appear on every line, the libraries' included.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import orjson
import structlog
from structlog.typing import Processor

from worker.sending.credentials import redact_urls


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is now, so a live progress bar can redirect logs."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _renderer(log_format: str) -> Processor:
    use_json = log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())
    if use_json:
        return structlog.processors.JSONRenderer(
            serializer=lambda o, **_: orjson.dumps(o, default=str).decode()
        )
    return structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())


def _redact(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
    """Every text of a log line without a URL's user and password (see redact_urls)."""
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = redact_urls(value)
    return event


def configure_logging(
    level: str = "info", *, json: bool | None = None, log_format: str = "auto"
) -> None:
    """Set up structlog, and route the standard library's logging through it, for stderr."""
    if json is not None:
        log_format = "json" if json else "console"
    renderer = _renderer(log_format)
    threshold = logging.getLevelNamesMapping()[level.upper()]
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, _redact, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.PrintLoggerFactory(_CurrentStderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
    # Libraries' debug and info chatter stays out unless our own level is debug.
    library = logging.DEBUG if threshold <= logging.DEBUG else max(threshold, logging.WARNING)
    _bridge_stdlib(shared, renderer, library)


def _bridge_stdlib(shared: list[Processor], renderer: Processor, threshold: int) -> None:
    """One handler on the root logger that renders library records like our own."""
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            *shared,
            structlog.stdlib.add_logger_name,
            structlog.processors.format_exc_info,  # a traceback is a field, not extra lines
            _redact,
        ],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(_CurrentStderr())
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_audience_purge", False)]:
        root.removeHandler(old)
    handler._audience_purge = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(threshold)
