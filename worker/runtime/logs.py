"""Operational logging (retries, progress, warnings) to stderr, configured once at start-up.

The audit log is a separate, dedicated writer (see :mod:`worker.records.audit`); nothing here ever
writes to it. JSON lines when stderr is not a terminal (Kubernetes), colours when it is.
"""

from __future__ import annotations

import logging
import sys

import orjson
import structlog


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is now, so a live progress bar can redirect logs."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(level: str = "info", *, json: bool | None = None) -> None:
    """Set up structlog for stderr; the only module-level state the package keeps."""
    use_json = not sys.stderr.isatty() if json is None else json
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer(
            serializer=lambda o, **_: orjson.dumps(o, default=str).decode()
        )
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(_CurrentStderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
