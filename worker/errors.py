"""The audience-purge error tree.

Every error the package raises on purpose derives from :class:`PurgeError`.
Only the CLI maps them to exit codes::

    PurgeError
    ├── UsageError            bad flags, config or input, found before anything was sent (exit 2)
    │   ├── ConfigError       a config key is unknown, mistyped or out of range
    │   ├── InputError        the input cannot be opened or has no id column
    │   └── StateError        the saved progress is unusable, or belongs to another input
    ├── ApiError              something the API said or did not say
    │   ├── RetryableError    worth another attempt (5xx, 429, timeouts, dropped connections)
    │   │   └── RateLimitedError   a 429: every sender pauses, not only this one
    │   ├── PermanentError    the API refused the batch for good (unknown campaign, ...)
    │   ├── PayloadTooLargeError   a 413: the batch is split in halves and retried
    │   └── FatalError        the run cannot go on (bad token, wrong endpoint) (exit 3)
    ├── ServiceUnavailable    Redis did not answer at start: nothing was read or sent (exit 69)
    └── OutputError           a file the run writes (audit, state, report, failed-out) could
                              not be written: the run stopped safely (exit 74)

Any other exception is a bug: the run stops the same way and exits 70.

Every :class:`ApiError` carries the :class:`Kind` of answer that caused it; what may be
retried, now or by a later run, and what stops the run is read from the kind, nowhere else.

Messages never contain the API token: errors are built from statuses and API messages only.
"""

from __future__ import annotations

import enum
import errno
from typing import ClassVar


class Kind(enum.Enum):
    """What an API answer means (decided by :mod:`worker.sending.classify`)."""

    DELETED = "deleted"
    RETRYABLE = "retryable"
    RATE_LIMITED = "rate_limited"
    PERMANENT = "permanent"
    TOO_LARGE = "too_large"
    FATAL = "fatal"

    @property
    def transient(self) -> bool:
        """Worth another attempt now, within this batch's retry budget."""
        return self in (Kind.RETRYABLE, Kind.RATE_LIMITED)

    @property
    def stops_run(self) -> bool:
        """No new request may start: every later one would meet the same answer."""
        return self is Kind.FATAL

    @property
    def retryable(self) -> bool:
        """A later attempt may succeed (the audit's ``retryable``): a transient failure, or a
        fatal one once its cause is fixed; never a refusal of the batch itself."""
        return self.transient or self.stops_run


class PurgeError(Exception):
    """Base of every deliberate audience-purge error."""


class UsageError(PurgeError):
    """The run was refused before anything was sent."""


class ConfigError(UsageError):
    """A configuration value is unknown, mistyped or out of range."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key


class InputError(UsageError):
    """The input cannot be read as an audience id list."""


class StateError(UsageError):
    """The state directory cannot be used to resume (corrupt, or the input changed)."""


class ApiError(PurgeError):
    """An API answer (or its absence) that is not a success."""

    kind: ClassVar[Kind] = Kind.PERMANENT

    def __init__(
        self, reason: str, *, status: int | None = None, message: str | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.message = message


class RetryableError(ApiError):
    """Another attempt may succeed; ``wait`` is the server's requested delay, if any."""

    kind = Kind.RETRYABLE

    def __init__(
        self,
        reason: str,
        *,
        status: int | None = None,
        message: str | None = None,
        wait: float | None = None,
    ) -> None:
        super().__init__(reason, status=status, message=message)
        self.wait = wait


class RateLimitedError(RetryableError):
    """HTTP 429: the shared rate gate pauses every sender."""

    kind = Kind.RATE_LIMITED


class PermanentError(ApiError):
    """The API refused this batch; retrying cannot help."""

    kind = Kind.PERMANENT


class PayloadTooLargeError(ApiError):
    """HTTP 413: the batch must be split."""

    kind = Kind.TOO_LARGE


class FatalError(ApiError):
    """The run must stop: no new request may start."""

    kind = Kind.FATAL


class OutputError(PurgeError):
    """Writing one of the run's files failed (a full disk, a size limit, a lost directory)."""

    def __init__(self, what: str, path: object, exc: OSError) -> None:
        code = errno.errorcode.get(exc.errno or 0, "")
        reason = f"{exc.strerror or exc}" + (f" ({code})" if code else "")
        super().__init__(f"cannot write {what} {path}: {reason}")
        self.path = path
        self.errno = exc.errno


class ServiceUnavailable(PurgeError):
    """A service the run needs (Redis) could not be reached at start."""
