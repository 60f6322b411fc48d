"""The audit log: one JSON object per line, written by a single writer.

Every record has ``ts`` (RFC 3339, UTC), ``event``, ``run_id``, and the chain fields ``seq``,
``prev_hash`` and ``hash`` (see :mod:`worker.records.audit_query` for the chain's definition and its
verification); the writer flushes after each record, so a crash loses nothing that was
acknowledged. The token never reaches this
module: records are built from ids, statuses and the API's messages only.

The file is created 0600 and the directories the log creates 0700 (a stricter umask still
applies): it lists every id a purge touched. A file that ends with a torn record (a crash
mid-write) is continued after a newline, from its last complete record, with a warning;
``audit verify`` accepts that torn line as a crash's (see :mod:`worker.records.audit_query`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import os
import secrets
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

import orjson
import structlog

from worker.errors import ConfigError, OutputError
from worker.files import make_dirs, open_private
from worker.records.audit_query import ZERO_HASH, head_hmac
from worker.times import utc_text

if TYPE_CHECKING:
    from worker.records.signing import Signer

_TAIL_CHUNK = 1 << 16
# The records a --sign-key signs (Ed25519, see worker.records.signing): a run's last, and
# the chain head at each checkpoint.
SIGNED_EVENTS = ("run_finished", "head_signed")

log = structlog.get_logger("audience_purge.audit")


def new_run_id() -> str:
    """Sortable and unique enough across pods: UTC time plus 24 random bits."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def default_audit_path(audit_dir: Path, run_id: str) -> Path:
    return audit_dir / f"audit-{run_id}.jsonl"


def last_record(path: Path) -> dict[str, Any] | None:
    """The last complete record of an existing audit file (None if there is none)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - (1 << 20)))
            lines = handle.read().splitlines()
    except FileNotFoundError:
        return None
    for line in reversed(lines):
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(record, dict):
            return record
    return None


def _torn_tail(path: Path, size: int) -> int | None:
    """The byte a last line without its newline starts at (a crash mid-write), or None."""
    end = size
    with path.open("rb") as handle:
        while end > 0:
            start = max(0, end - _TAIL_CHUNK)
            handle.seek(start)
            chunk = handle.read(end - start)
            if end == size and chunk.endswith(b"\n"):
                return None
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                return start + newline + 1
            end = start
    return 0 if size else None


def read_key_file(path: Path | None) -> bytes | None:
    """The HMAC key for signing or checking chain heads; errors name the file only."""
    if path is None:
        return None
    try:
        key = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", key="audit_key_file") from None
    if not key:
        raise ConfigError(f"{path} is empty", key="audit_key_file")
    return key


def _nothing() -> None:
    """Nothing to make durable: no record was written."""


class _LazyFile:
    """The audit file, created (or opened for appending) by the first record.

    A run that stops before writing anything leaves no empty file behind, so every audit
    file on disk holds at least one record and can be verified. The first failed write
    (a full disk, a size limit) breaks the file for good: nothing more is appended after a
    record that may be torn, and every later write raises the same :class:`OutputError`.
    """

    def __init__(self, path: Path, after_seq: int) -> None:
        self.path = path
        self._after_seq = after_seq
        self._file: BinaryIO | None = None
        self._broken: OutputError | None = None

    def write(self, data: bytes) -> int:
        with self._guard():
            if self._file is None:
                make_dirs(self.path.parent)
                # It names every id the purge touched: 0600 (see worker.files).
                handle = cast(BinaryIO, open_private(self.path, "ab"))
                self._file = handle
                data = self._past_torn_tail(handle) + data
            return self._file.write(data)

    def _past_torn_tail(self, handle: BinaryIO) -> bytes:
        """A torn last line stays as it is (evidence of the crash), closed by a newline that
        goes out in the same write as our first record; the chain goes on from the last
        complete record before it (see :func:`last_record`)."""
        torn_at = _torn_tail(self.path, os.fstat(handle.fileno()).st_size)
        if torn_at is None:
            return b""
        log.warning(
            "the audit log ended with a torn record (a crash mid-write): a newline now closes "
            "it, and the chain continues from the last complete record",
            path=str(self.path),
            torn_at_byte=torn_at,
            continues_after_seq=self._after_seq,
        )
        return b"\n"

    def flush(self) -> None:
        with self._guard():
            if self._file is not None:
                self._file.flush()

    def sync(self) -> None:
        self.sync_later()()

    def sync_later(self) -> Callable[[], None]:
        """Flush now; return what makes the flushed records durable, which may run in a
        thread while records go on being written (fsync takes what was flushed)."""
        with self._guard():
            if self._file is None or self._file.closed:
                return _nothing
            self._file.flush()
            fd = self._file.fileno()

        def durable() -> None:
            with self._guard():
                os.fsync(fd)
                self._check_still_there(fd)

        return durable

    def _check_still_there(self, fd: int) -> None:
        """A log deleted (or replaced) under the run proves nothing to anyone: an error."""
        ours = os.fstat(fd)
        try:
            named = self.path.stat()
        except FileNotFoundError:
            named = None
        if ours.st_nlink == 0 or named is None or named.st_ino != ours.st_ino:
            raise OSError(errno.ENOENT, "deleted or replaced during the run")

    def close(self) -> None:
        if self._file is None or self._file.closed:
            return
        if self._broken is None:
            self.sync()
        with contextlib.suppress(OSError):
            self._file.close()  # a broken file: what it holds is all it will hold

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        if self._broken is not None:
            raise self._broken
        try:
            yield
        except OSError as exc:
            self._broken = OutputError("the audit log", self.path, exc)
            raise self._broken from None


class _Chain:
    """Numbers each record and links it to the previous one's hash."""

    def __init__(
        self, seq: int, prev_hash: str, key: bytes | None, signer: Signer | None = None
    ) -> None:
        self.seq = seq
        self.prev_hash = prev_hash
        self._key = key
        self._signer = signer

    def seal(self, record: dict[str, Any]) -> bytes:
        """The record's line: its fields, ``seq``, ``prev_hash`` (``head_hmac``; with a
        signer, ``signing_key_id`` and ``head_signature`` on :data:`SIGNED_EVENTS`) and ``hash``.

        The hash covers the JSON the line holds (tuples as lists, paths as text): orjson
        writes a value the same whether it is the original or what a reader parses back,
        so the record is serialised for its hash without a round trip through JSON.
        """
        record["seq"] = self.seq
        record["prev_hash"] = self.prev_hash
        signer = self._signer
        if signer is not None and record.get("event") in (*SIGNED_EVENTS, "run_started"):
            # On run_started it declares the run signed: its run_finished must be.
            record["signing_key_id"] = signer.key_id
        if self._key is not None and record.get("event") == "run_finished":
            record["head_hmac"] = head_hmac(self._key, _normalised(record))
        if signer is not None and record.get("event") in SIGNED_EVENTS:
            record["head_signature"] = signer.sign(_normalised(record))
        body = orjson.dumps(record, default=_plain, option=_OPTIONS | orjson.OPT_SORT_KEYS)
        record["hash"] = hashlib.sha256(body).hexdigest()
        self.seq += 1
        self.prev_hash = record["hash"]
        return orjson.dumps(record, default=_plain, option=_OPTIONS | orjson.OPT_APPEND_NEWLINE)


# Dataclasses through _plain too: orjson would write their fields unsorted under
# OPT_SORT_KEYS, and the hash a reader computes sorts them.
_OPTIONS = orjson.OPT_PASSTHROUGH_DATACLASS


def _plain(value: Any) -> Any:
    """What orjson cannot write itself: a dataclass as a dict, anything else as text."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return str(value)


def _normalised(record: dict[str, Any]) -> dict[str, Any]:
    parsed: dict[str, Any] = orjson.loads(orjson.dumps(record, default=_plain, option=_OPTIONS))
    return parsed


def _now() -> str:
    """RFC 3339, UTC, microseconds: ``2026-11-30T04:56:12.123456Z``."""
    return utc_text(datetime.now(UTC))


class AuditLog:
    """Appends hash-chained audit records to a JSON Lines file.

    A file that already has records is continued (its chain goes on); a new file whose run
    continues an earlier one starts from that file's last hash, named in ``previous``.
    """

    def __init__(
        self,
        path: Path,
        run_id: str,
        *,
        previous: dict[str, Any] | None = None,
        key: bytes | None = None,
        signer: Signer | None = None,
    ) -> None:
        self.path = path
        self.run_id = run_id
        last = last_record(path)
        if last is not None:
            seq, prev_hash = int(last.get("seq", -1)) + 1, str(last.get("hash"))
            self.previous: dict[str, Any] | None = None
        elif previous is not None:
            seq, prev_hash = 0, str(previous["last_hash"])
            self.previous = previous
        else:
            seq, prev_hash = 0, ZERO_HASH
            self.previous = None
        self._chain = _Chain(seq, prev_hash, key, signer)
        self._signer = signer
        self._file = _LazyFile(path, self._chain.seq - 1)
        self._first_seq = self._chain.seq
        self._unsigned_from = self._chain.seq  # the first record no signature covers yet
        self._before_sync: list[Callable[[], None]] = []

    def head(self) -> dict[str, Any]:
        """Where the chain stands: what a continuing file names as ``previous``. The path is
        absolute: a resume from another directory must find the file."""
        return {
            "audit_log": str(self.path.absolute()),
            "run_id": self.run_id,
            "last_seq": self._chain.seq - 1,
            "last_hash": self._chain.prev_hash,
        }

    @property
    def written(self) -> bool:
        """Whether this log has written a record yet."""
        return self._chain.seq > self._first_seq

    def write(self, event: str, **fields: Any) -> None:
        """Write and flush one record (one ``write`` call: a line is never split)."""
        record = {"ts": _now(), "event": event, "run_id": self.run_id, **fields}
        if self.previous is not None and self._chain.seq == 0:
            record["previous"] = self.previous
        self._file.write(self._chain.seal(record))
        self._file.flush()
        if self._signer is not None and event in SIGNED_EVENTS:
            self._unsigned_from = self._chain.seq

    def before_sync(self, write_held: Callable[[], None]) -> None:
        """Have ``write_held`` write the records a writer holds back (grouped duplicate
        rows) at every :meth:`sync`, before the file is made durable."""
        self._before_sync.append(write_held)

    def sync(self) -> None:
        """Write what is held back, then make every record written so far durable (before a
        checkpoint names it)."""
        self.sync_later()()

    def sync_later(self) -> Callable[[], None]:
        """Write what is held back now; return what makes every record written so far
        durable, for a thread (see :meth:`_LazyFile.sync_later`)."""
        for write_held in self._before_sync:
            write_held()
        self._sign_head()
        return self._file.sync_later()

    def _sign_head(self) -> None:
        """With a signer, a ``head_signed`` record for records no signature covers yet: it
        names the head it signs (``signed_seq``, ``signed_hash``) and links to it, so a run
        killed later is signed up to its last checkpoint."""
        if self._signer is None or self._chain.seq <= self._unsigned_from:
            return
        self.write("head_signed", signed_seq=self._chain.seq - 1, signed_hash=self._chain.prev_hash)

    def close(self) -> None:
        """Make the file durable, then close it."""
        self._file.close()
