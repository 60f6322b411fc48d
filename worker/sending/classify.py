"""The one place that decides what an API answer means.

UnleashX documents its error *messages* but not their HTTP statuses, so a 2xx can carry
an error. Every answer is therefore classified by status and message together into one
:class:`Verdict`; the client and the dispatcher only ask this module.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

import orjson

from worker.errors import (
    ApiError,
    FatalError,
    Kind,
    PayloadTooLargeError,
    PermanentError,
    RateLimitedError,
    RetryableError,
)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What an answer means: ``reason`` is ours, ``message`` is the API's own words."""

    kind: Kind
    status: int | None
    reason: str
    message: str | None = None
    wait: float | None = None

    def error(self) -> ApiError:
        """The exception that carries a non-success verdict through retry and dispatch."""
        status, message = self.status, self.message
        match self.kind:
            case Kind.RATE_LIMITED:
                return RateLimitedError(self.reason, wait=self.wait, status=status, message=message)
            case Kind.RETRYABLE:
                return RetryableError(self.reason, wait=self.wait, status=status, message=message)
            case Kind.PERMANENT:
                return PermanentError(self.reason, status=status, message=message)
            case Kind.TOO_LARGE:
                return PayloadTooLargeError(self.reason, status=status, message=message)
            case Kind.FATAL:
                return FatalError(self.reason, status=status, message=message)
        raise ValueError("a deleted verdict is not an error")


# The vendor's documented error messages, normalised (see normalise()).
CAMPAIGN_NOT_EXIST = "campaign not exist"
AUDIENCE_REQUIRED = "audience array is required"
DELETE_ALL_NOT_DRAFT = "all audience can only be deleted when the campaign is in draft status"
DOCUMENTED_ERRORS = {
    CAMPAIGN_NOT_EXIST: "unknown campaign",
    "campaign does not exist": "unknown campaign",
    AUDIENCE_REQUIRED: "empty audience array",
    DELETE_ALL_NOT_DRAFT: "campaign is not in draft status",
}
# The documented success messages; a 2xx is a deletion only with one of these, compared
# whole (case, spacing and a final full stop aside): an answer we do not recognise proves
# nothing.
SUCCESS_MESSAGES = {"audience deleted successfully", "all audience deleted successfully"}
_AUTH_WORDS = ("token", "unauthori", "forbidden", "not authenticated", "api key")
_FALSE_FLAGS = ("status", "success")
_SPACES = re.compile(r"\s+")


def normalise(message: str) -> str:
    """Lower-case, single-spaced, without a trailing full stop: how messages are compared."""
    return _SPACES.sub(" ", message).strip().rstrip(".! ").lower()


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date)."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        if not text.isascii():  # float() reads other scripts' digits too
            return None
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(0.0, seconds)


def _message_of(body: bytes) -> tuple[bool, str | None, Mapping[str, object]]:
    """(parsed?, message, object) from a body that may not be JSON at all."""
    try:
        data = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return False, None, {}
    if not isinstance(data, dict):
        return data is not None, None, {}
    message = data.get("message", data.get("error"))
    return True, message if isinstance(message, str) else None, data


def _declares_failure(data: Mapping[str, object]) -> bool:
    return any(data.get(flag) is False for flag in _FALSE_FLAGS) or data.get("error") not in (
        None,
        False,
        "",
    )


def classify(status: int, body: bytes, headers: Mapping[str, str]) -> Verdict:
    """Classify one HTTP answer to a delete-audience request."""
    parsed, message, data = _message_of(body)
    known = DOCUMENTED_ERRORS.get(normalise(message)) if message else None
    wait = parse_retry_after(headers.get("Retry-After"))
    if known is not None:
        return Verdict(Kind.PERMANENT, status, known, message)
    if 200 <= status < 300:
        if not parsed:
            return Verdict(Kind.RETRYABLE, status, "unparseable success body", message)
        if _declares_failure(data):
            return Verdict(Kind.PERMANENT, status, "API reported failure", message)
        said = normalise(message) if message else ""
        declared = any(data.get(flag) is True for flag in _FALSE_FLAGS)
        # Exactly a documented message: "Audience not deleted successfully" is no deletion.
        if said in SUCCESS_MESSAGES or declared:
            return Verdict(Kind.DELETED, status, "deleted", message)
        if any(word in said for word in _AUTH_WORDS):
            return Verdict(Kind.FATAL, status, f"authentication refused (HTTP {status})", message)
        return Verdict(Kind.PERMANENT, status, "unrecognised success answer", message)
    return _refusal(status, message, wait)


def _refusal(status: int, message: str | None, wait: float | None) -> Verdict:
    """What a non-2xx answer means, for every endpoint alike."""
    if 300 <= status < 400:
        # Redirects are not followed: the token must not travel to another address.
        return Verdict(Kind.FATAL, status, f"redirected (HTTP {status}): check base_url", message)
    if status in (401, 403):
        return Verdict(Kind.FATAL, status, f"authentication refused (HTTP {status})", message)
    if status == 429:
        return Verdict(Kind.RATE_LIMITED, status, "rate limited (HTTP 429)", message, wait)
    if status == 413:
        return Verdict(Kind.TOO_LARGE, status, "payload too large (HTTP 413)", message)
    if status in (408, 425) or status >= 500:
        return Verdict(Kind.RETRYABLE, status, f"server error (HTTP {status})", message, wait)
    if status in (404, 405):
        # Not a documented API error: the URL itself is wrong, and so is every later request.
        return Verdict(
            Kind.FATAL, status, f"endpoint not found (HTTP {status}): check base_url", message
        )
    return Verdict(Kind.PERMANENT, status, f"request refused (HTTP {status})", message)


def classify_read(
    status: int, body: bytes, headers: Mapping[str, str]
) -> Verdict | Mapping[str, object]:
    """Classify one answer to a read (audience-list, campaign-audience-stats): its JSON
    object when it is one and says nothing of failure, else the :class:`Verdict` of why not.
    A documented error message is a refusal whatever the status, as for deletions; a 2xx
    that is not a JSON object is retried (a proxy's page), never read as an empty list."""
    parsed, message, data = _message_of(body)
    known = DOCUMENTED_ERRORS.get(normalise(message)) if message else None
    if known is not None:
        return Verdict(Kind.PERMANENT, status, known, message)
    if 200 <= status < 300:
        if not parsed or not data:
            return Verdict(Kind.RETRYABLE, status, "unparseable answer", message)
        if _declares_failure(data):
            return Verdict(Kind.PERMANENT, status, "API reported failure", message)
        return data
    return _refusal(status, message, parse_retry_after(headers.get("Retry-After")))


# What a listing or a stats answer may say beside its data (compared as normalise() does):
# the vendor documents none, so any other message is an error answered with a 2xx.
READ_MESSAGES = {
    "success",
    "successful",
    "ok",
    "data found",
    "data fetched successfully",
    "audience list",
    "audience list fetched successfully",
    "audience fetched successfully",
    "stats fetched successfully",
}


def _not_data(what: str, why: str, message: str | None = None) -> Verdict:
    """An answer that is no listing (no stats): retried, and never read as data."""
    return Verdict(Kind.RETRYABLE, None, f"{what} answered what is not {why}", message)


def _whole(value: object) -> bool:
    """A JSON integer of 0 or more (``True`` is an int to Python, not to the API)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _says_something_else(data: Mapping[str, object]) -> str | None:
    """The answer's message, if it has one that is not a known way of saying "here it is"."""
    message = data.get("message")
    if message is None or (isinstance(message, str) and normalise(message) in READ_MESSAGES):
        return None
    return message if isinstance(message, str) else repr(message)


def classify_listing(data: Mapping[str, object], number: int, limit: int) -> Verdict | None:
    """None if ``data`` (what :func:`classify_read` let through) is page ``number`` of
    ``limit`` records of an audience-list, else the retryable :class:`Verdict` of why not:
    a message that is not a listing's, ``datalist`` or ``pagination`` missing, totals that
    are not whole numbers (a bool, a string), ``totalPages`` other than
    ``ceil(totalRecords / limit)``, more records than ``limit``, an empty first page of a
    listing that reports records, or a record without a positive integer ``id``."""
    what = "audience-list"
    said = _says_something_else(data)
    if said is not None:
        return _not_data(what, "a listing (its message)", said)
    records, pagination = data.get("datalist"), data.get("pagination")
    if not isinstance(records, list) or not isinstance(pagination, Mapping):
        return _not_data(what, "a listing (no datalist and pagination)")
    total, pages = pagination.get("totalRecords"), pagination.get("totalPages")
    if not _whole(total) or not _whole(pages):
        return _not_data(what, "a listing (totalRecords or totalPages not a whole number)")
    assert isinstance(total, int)
    assert isinstance(pages, int)
    if pages != -(-total // limit) and not (total == 0 and pages == 1):
        return _not_data(
            what, f"a listing ({total:,} records of {limit:,} a page in {pages:,} pages)"
        )
    if len(records) > limit:
        return _not_data(what, f"a page ({len(records):,} records, {limit:,} asked for)")
    if number == 1 and total and not records:
        return _not_data(what, f"a listing (an empty first page of {total:,} records)")
    for item in records:
        if not isinstance(item, Mapping) or not _whole(item.get("id")) or item["id"] == 0:
            return _not_data(what, "a listing (a record without a positive integer id)")
    return None


def classify_stats(data: Mapping[str, object]) -> Verdict | None:
    """None if ``data`` is a campaign-audience-stats answer (a whole ``total_audience``,
    no message of another kind), else the retryable :class:`Verdict` of why not."""
    said = _says_something_else(data)
    if said is not None:
        return _not_data("campaign-audience-stats", "stats (its message)", said)
    if not _whole(data.get("total_audience")):
        return _not_data("campaign-audience-stats", "stats (total_audience not a whole number)")
    return None


def transport_failure(exc: BaseException) -> Verdict:
    """A request that got no HTTP answer (timeout, reset, refused) is worth retrying."""
    name = type(exc).__name__
    return Verdict(Kind.RETRYABLE, None, f"transport error: {name}")
