"""The audit log: one JSON object per line, written through structlog by a single writer.

Every record has ``ts`` (RFC 3339, UTC), ``event`` and ``run_id``; the writer flushes after
each record, so a crash loses nothing that was acknowledged. The token never reaches this
module: records are built from ids, statuses and the API's messages only.
"""

from __future__ import annotations

import os
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import orjson
import structlog
from structlog.typing import EventDict, WrappedLogger

FIRST_KEYS = ("ts", "event", "run_id")


def new_run_id() -> str:
    """Sortable and unique enough across pods: UTC time plus 24 random bits."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def default_audit_path(audit_dir: Path, run_id: str) -> Path:
    return audit_dir / f"audit-{run_id}.jsonl"


def _ordered(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    head = {key: event_dict.pop(key) for key in FIRST_KEYS if key in event_dict}
    return {**head, **event_dict}


def _serialize(obj: Any, **_: Any) -> bytes:
    return orjson.dumps(obj, default=str)


class AuditLog:
    """Appends audit records to a JSON Lines file."""

    def __init__(self, path: Path, run_id: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.run_id = run_id
        self._file: BinaryIO = path.open("ab")
        self._log = structlog.wrap_logger(
            structlog.BytesLogger(self._file),
            processors=[
                structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
                _ordered,
                structlog.processors.JSONRenderer(serializer=_serialize),
            ],
            # Never the globally configured (level-filtering) wrapper: audit records are not
            # operational logs, and no log level may drop one.
            wrapper_class=structlog.BoundLogger,
            cache_logger_on_first_use=True,
        ).bind(run_id=run_id)

    def write(self, event: str, **fields: Any) -> None:
        """Write and flush one record."""
        self._log.msg(event, **fields)

    def close(self) -> None:
        """Make the file durable, then close it."""
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
