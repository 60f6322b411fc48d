"""Specification of worker.sending.classify: what every API answer means."""

from __future__ import annotations

from email.utils import formatdate
from types import SimpleNamespace

import orjson
import pytest

import worker.sending.classify as classify_module
from worker.errors import (
    FatalError,
    Kind,
    PayloadTooLargeError,
    PermanentError,
    RateLimitedError,
    RetryableError,
)
from worker.sending.classify import (
    Verdict,
    classify,
    classify_listing,
    classify_stats,
    normalise,
    parse_retry_after,
    transport_failure,
)

NO_HEADERS: dict[str, str] = {}

DOCUMENTED = [
    ("Campaign not exist", "unknown campaign"),
    ("Audience array is required", "empty audience array"),
    (
        "All audience can only be deleted when the campaign is in draft status",
        "campaign is not in draft status",
    ),
]


def _variants(message: str) -> list[str]:
    words = message.split(" ")
    return [
        message,
        message + ".",
        message.upper(),
        message.lower() + ".",
        "  ".join(words),
        f"  {message}\n",
        " ".join(w.capitalize() for w in words) + "!",
        "\t" + "\t".join(words) + ". ",
    ]


DOCUMENTED_VARIANTS = [
    pytest.param(variant, reason, id=f"{reason}|{variant!r}")
    for message, reason in DOCUMENTED
    for variant in _variants(message)
]
DOCUMENTED_STATUSES = [200, 201, 400, 404, 422, 500]


def body(obj: object) -> bytes:
    return orjson.dumps(obj)


# -- documented error messages ------------------------------------------------------------


@pytest.mark.parametrize("status", DOCUMENTED_STATUSES)
@pytest.mark.parametrize(("message", "reason"), DOCUMENTED_VARIANTS)
def test_documented_error_message_is_permanent_whatever_the_status(
    status: int, message: str, reason: str
) -> None:
    verdict = classify(status, body({"message": message}), NO_HEADERS)

    assert verdict == Verdict(Kind.PERMANENT, status, reason, message)


@pytest.mark.parametrize("status", DOCUMENTED_STATUSES)
@pytest.mark.parametrize(("message", "reason"), DOCUMENTED)
def test_documented_error_message_under_error_key_is_permanent(
    status: int, message: str, reason: str
) -> None:
    verdict = classify(status, body({"error": message}), NO_HEADERS)

    assert verdict == Verdict(Kind.PERMANENT, status, reason, message)


@pytest.mark.parametrize(("message", "reason"), DOCUMENTED)
def test_documented_error_message_with_status_true_is_still_permanent(
    message: str, reason: str
) -> None:
    verdict = classify(200, body({"status": True, "message": message}), NO_HEADERS)

    assert verdict == Verdict(Kind.PERMANENT, 200, reason, message)


def test_documented_error_with_a_space_before_the_trailing_dot_is_permanent() -> None:
    verdict = classify(200, body({"message": "Campaign not exist ."}), NO_HEADERS)

    assert verdict == Verdict(Kind.PERMANENT, 200, "unknown campaign", "Campaign not exist .")


def test_campaign_does_not_exist_wording_is_an_unknown_campaign() -> None:
    verdict = classify(404, body({"message": "Campaign does not exist."}), NO_HEADERS)

    assert verdict == Verdict(Kind.PERMANENT, 404, "unknown campaign", "Campaign does not exist.")


def test_documented_error_ignores_retry_after() -> None:
    verdict = classify(500, body({"message": "Campaign not exist"}), {"Retry-After": "5"})

    assert verdict == Verdict(Kind.PERMANENT, 500, "unknown campaign", "Campaign not exist")


def test_message_that_merely_contains_a_documented_error_is_not_one() -> None:
    message = "Campaign not exist? no: Audience deleted successfully"

    verdict = classify(200, body({"message": message}), NO_HEADERS)

    assert verdict == Verdict(Kind.PERMANENT, 200, "unrecognised success answer", message)


@pytest.mark.parametrize(
    "message",
    [
        "Audience not deleted successfully",
        "Audience deleted successfully? No",
        "Some audience deleted successfully, others not",
    ],
)
def test_a_message_that_merely_contains_the_success_message_is_no_deletion(message: str) -> None:
    verdict = classify(200, body({"message": message}), NO_HEADERS)

    assert verdict == Verdict(Kind.PERMANENT, 200, "unrecognised success answer", message)


# -- normalise ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Campaign not exist", "campaign not exist"),
        ("CAMPAIGN NOT EXIST.", "campaign not exist"),
        ("  Campaign\t not \n exist  ", "campaign not exist"),
        ("Campaign not exist!", "campaign not exist"),
        ("Campaign not exist...", "campaign not exist"),
        ("Campaign not exist. ", "campaign not exist"),
        ("", ""),
    ],
)
def test_normalise(raw: str, expected: str) -> None:
    assert normalise(raw) == expected


# -- successes and 2xx failures -------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 201, 202, 299])
@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"message": "Audience deleted successfully"}, "Audience deleted successfully"),
        ({"message": "All audience deleted successfully"}, "All audience deleted successfully"),
        (
            {"status": True, "message": "Audience deleted successfully"},
            "Audience deleted successfully",
        ),
        ({"success": True}, None),
        ({"status": True, "message": "Done"}, "Done"),
        ({"message": "Audience deleted successfully."}, "Audience deleted successfully."),
    ],
)
def test_success_body_is_deleted(status: int, payload: object, message: str | None) -> None:
    verdict = classify(status, body(payload), NO_HEADERS)

    assert verdict == Verdict(Kind.DELETED, status, "deleted", message)


@pytest.mark.parametrize("status", [200, 201, 204])
@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({}, None),
        ({"message": 42}, None),
        ([], None),
        ({"message": "Campaign not found"}, "Campaign not found"),
        ({"message": "OK"}, "OK"),
    ],
)
def test_unrecognised_success_answer_is_a_permanent_failure_not_a_deletion(
    status: int, payload: object, message: str | None
) -> None:
    verdict = classify(status, body(payload), NO_HEADERS)

    assert verdict == Verdict(Kind.PERMANENT, status, "unrecognised success answer", message)


@pytest.mark.parametrize("text", ["Invalid token", "Unauthorized", "Forbidden: API key revoked"])
def test_success_status_with_an_authentication_message_is_fatal(text: str) -> None:
    verdict = classify(200, body({"message": text}), NO_HEADERS)

    assert verdict == Verdict(Kind.FATAL, 200, "authentication refused (HTTP 200)", text)


def test_success_with_null_error_field_is_deleted() -> None:
    payload = {"message": "Audience deleted successfully", "error": None}

    verdict = classify(200, body(payload), NO_HEADERS)

    assert verdict == Verdict(Kind.DELETED, 200, "deleted", "Audience deleted successfully")


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"status": False}, None),
        ({"success": False}, None),
        ({"status": False, "message": "Something went wrong"}, "Something went wrong"),
        (
            {"success": False, "message": "Audience deleted successfully"},
            "Audience deleted successfully",
        ),
        ({"error": "quota exceeded"}, "quota exceeded"),
        ({"error": {"code": 17}}, None),
        (
            {"message": "Audience deleted successfully", "error": "partial"},
            "Audience deleted successfully",
        ),
    ],
)
def test_2xx_body_declaring_failure_is_permanent(payload: object, message: str | None) -> None:
    verdict = classify(200, body(payload), NO_HEADERS)

    assert verdict == Verdict(Kind.PERMANENT, 200, "API reported failure", message)


@pytest.mark.parametrize("status", [200, 204])
@pytest.mark.parametrize(
    "raw",
    [b"", b"OK", b"<html><body>Deleted</body></html>", b'{"message": "Audience', b"null"],
)
def test_2xx_without_a_json_body_is_retryable(status: int, raw: bytes) -> None:
    verdict = classify(status, raw, {"Retry-After": "3"})

    assert verdict == Verdict(Kind.RETRYABLE, status, "unparseable success body")


# -- redirects, auth, wrong endpoint --------------------------------------------------------


@pytest.mark.parametrize("status", [300, 301, 302, 303, 304, 307, 308])
def test_redirect_is_fatal(status: int) -> None:
    headers = {"Location": "https://elsewhere.example/"}

    verdict = classify(status, b"", headers)

    assert verdict == Verdict(Kind.FATAL, status, f"redirected (HTTP {status}): check base_url")


@pytest.mark.parametrize("status", [401, 403])
@pytest.mark.parametrize(
    ("raw", "message"), [(b"", None), (body({"message": "Unauthenticated."}), "Unauthenticated.")]
)
def test_authentication_refusal_is_fatal(status: int, raw: bytes, message: str | None) -> None:
    verdict = classify(status, raw, NO_HEADERS)

    assert verdict == Verdict(
        Kind.FATAL, status, f"authentication refused (HTTP {status})", message
    )


@pytest.mark.parametrize("status", [404, 405])
@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", None),
        (b"<html>Not Found</html>", None),
        (body({"message": "Route not found"}), "Route not found"),
    ],
)
def test_404_or_405_without_a_documented_message_is_fatal(
    status: int, raw: bytes, message: str | None
) -> None:
    verdict = classify(status, raw, NO_HEADERS)

    assert verdict == Verdict(
        Kind.FATAL, status, f"endpoint not found (HTTP {status}): check base_url", message
    )


# -- retryable, rate limited, too large, other 4xx ------------------------------------------


@pytest.mark.parametrize("status", [408, 425, 500, 502, 503, 504, 599])
@pytest.mark.parametrize(("retry_after", "wait"), [(None, None), ("7", 7.0), ("0.5", 0.5)])
def test_timeout_and_server_errors_are_retryable_with_retry_after(
    status: int, retry_after: str | None, wait: float | None
) -> None:
    headers = {} if retry_after is None else {"Retry-After": retry_after}

    verdict = classify(status, b"<html>Bad Gateway</html>", headers)

    assert verdict == Verdict(Kind.RETRYABLE, status, f"server error (HTTP {status})", None, wait)


def test_server_error_keeps_the_api_message() -> None:
    verdict = classify(500, body({"message": "Server Error"}), NO_HEADERS)

    assert verdict == Verdict(Kind.RETRYABLE, 500, "server error (HTTP 500)", "Server Error")


@pytest.mark.parametrize(
    ("headers", "wait"),
    [
        ({}, None),
        ({"Retry-After": "30"}, 30.0),
        ({"Retry-After": " 2 "}, 2.0),
        ({"Retry-After": "0"}, 0.0),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": ""}, None),
        ({"Retry-After": "-4"}, 0.0),
    ],
)
def test_429_is_rate_limited_with_retry_after_seconds(
    headers: dict[str, str], wait: float | None
) -> None:
    verdict = classify(429, body({"message": "Too Many Attempts."}), headers)

    assert verdict == Verdict(
        Kind.RATE_LIMITED, 429, "rate limited (HTTP 429)", "Too Many Attempts.", wait
    )


def test_429_retry_after_as_http_date_is_seconds_from_now(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = 1_700_000_000.0
    monkeypatch.setattr(classify_module, "time", SimpleNamespace(time=lambda: now))
    headers = {"Retry-After": formatdate(now + 45, usegmt=True)}

    verdict = classify(429, b"", headers)

    assert verdict == Verdict(Kind.RATE_LIMITED, 429, "rate limited (HTTP 429)", None, 45.0)


def test_429_retry_after_date_in_the_past_means_no_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    now = 1_700_000_000.0
    monkeypatch.setattr(classify_module, "time", SimpleNamespace(time=lambda: now))
    headers = {"Retry-After": formatdate(now - 600, usegmt=True)}

    verdict = classify(429, b"", headers)

    assert verdict == Verdict(Kind.RATE_LIMITED, 429, "rate limited (HTTP 429)", None, 0.0)


def test_413_is_too_large() -> None:
    verdict = classify(413, b"<html>Request Entity Too Large</html>", {"Retry-After": "9"})

    assert verdict == Verdict(Kind.TOO_LARGE, 413, "payload too large (HTTP 413)")


@pytest.mark.parametrize("status", [400, 402, 406, 409, 410, 415, 422, 451])
def test_other_4xx_is_permanent(status: int) -> None:
    payload = body({"message": "The campaign id field is required."})

    verdict = classify(status, payload, NO_HEADERS)

    assert verdict == Verdict(
        Kind.PERMANENT,
        status,
        f"request refused (HTTP {status})",
        "The campaign id field is required.",
    )


@pytest.mark.parametrize(
    ("exc", "name"),
    [
        (TimeoutError(), "TimeoutError"),
        (ConnectionResetError(104, "reset"), "ConnectionResetError"),
        (OSError("unreachable"), "OSError"),
    ],
)
def test_transport_failure_is_retryable_without_status(exc: BaseException, name: str) -> None:
    assert transport_failure(exc) == Verdict(Kind.RETRYABLE, None, f"transport error: {name}")


# -- parse_retry_after ----------------------------------------------------------------------

NOW = 1_445_412_420.0  # Wed, 21 Oct 2015 07:27:00 GMT


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("   ", None),
        ("0", 0.0),
        ("120", 120.0),
        (" 5 ", 5.0),
        ("1.5", 1.5),
        ("-3", 0.0),
        ("nan", None),
        ("inf", None),
        ("-inf", None),
        ("soon", None),
        ("\u0663\u0660", None),  # Arabic-Indic "30": float() reads it, HTTP does not
        ("\uff15", None),  # a fullwidth 5
        ("Wed, 32 Foo 2015 99:99:99 GMT", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 60.0),
        ("Wed, 21 Oct 2015 07:26:00 GMT", 0.0),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == expected


# -- Verdict.error --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("verdict", "error_type", "wait"),
    [
        (Verdict(Kind.RATE_LIMITED, 429, "rate limited", "slow down", 3.0), RateLimitedError, 3.0),
        (Verdict(Kind.RETRYABLE, 503, "server error", "down", 1.5), RetryableError, 1.5),
        (Verdict(Kind.RETRYABLE, None, "transport error: TimeoutError"), RetryableError, None),
    ],
)
def test_retryable_verdicts_become_retryable_errors_with_their_wait(
    verdict: Verdict, error_type: type[RetryableError], wait: float | None
) -> None:
    error = verdict.error()

    assert type(error) is error_type
    assert (str(error), error.reason, error.status, error.message, error.wait) == (
        verdict.reason,
        verdict.reason,
        verdict.status,
        verdict.message,
        wait,
    )


@pytest.mark.parametrize(
    ("kind", "error_type"),
    [
        (Kind.PERMANENT, PermanentError),
        (Kind.TOO_LARGE, PayloadTooLargeError),
        (Kind.FATAL, FatalError),
    ],
)
def test_final_verdicts_become_their_errors(kind: Kind, error_type: type[Exception]) -> None:
    verdict = Verdict(kind, 400, "the reason", "the API message")

    error = verdict.error()

    assert type(error) is error_type
    assert (str(error), error.reason, error.status, error.message) == (
        "the reason",
        "the reason",
        400,
        "the API message",
    )


def test_deleted_verdict_is_not_an_error() -> None:
    with pytest.raises(ValueError, match="not an error"):
        Verdict(Kind.DELETED, 200, "deleted").error()


# -- what a listing and a stats answer must be ----------------------------------------------


def listing(records: list[object] | None = None, **pagination: object) -> dict[str, object]:
    """A 3-record page 1 of 10 a page, as audience-list answers it, ``pagination`` changed."""
    shown: list[object] = [{"id": i} for i in (1, 2, 3)] if records is None else records
    return {
        "datalist": shown,
        "pagination": {"totalRecords": 3, "totalPages": 1, **pagination},
    }


def test_a_listing_of_the_documented_shape_is_data() -> None:
    assert classify_listing(listing(), number=1, limit=10) is None
    assert classify_listing({**listing(), "message": "Success."}, number=1, limit=10) is None
    empty = listing([], totalRecords=0, totalPages=0)
    assert classify_listing(empty, number=1, limit=10) is None
    one_empty_page = listing([], totalRecords=0, totalPages=1)  # no records, in one page
    assert classify_listing(one_empty_page, number=1, limit=10) is None
    full = listing([{"id": i} for i in range(1, 11)], totalRecords=10)  # exactly the limit
    assert classify_listing(full, number=1, limit=10) is None
    long = listing(totalRecords=2_991, totalPages=300)  # a page count past the small ints
    assert classify_listing(long, number=1, limit=10) is None


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (
            {**listing([], totalRecords=0, totalPages=0), "message": "Something went wrong"},
            "its message",
        ),
        (listing([], totalRecords=False, totalPages=False), "not a whole number"),
        (listing(totalRecords=True, totalPages=True), "not a whole number"),
        (listing(totalRecords="3"), "not a whole number"),
        (listing([], totalRecords=-1, totalPages=0), "not a whole number"),
        ({**listing(), "message": 5}, "5"),  # a message that is not text, shown as it is
        ({"pagination": {"totalRecords": 3, "totalPages": 1}}, "no datalist"),
        ({"datalist": []}, "no datalist"),
        (listing(totalPages=10**9), "3 records of 10 a page in 1,000,000,000 pages"),
        (listing(totalRecords=11), "11 records of 10 a page in 1 pages"),
        (listing([], totalRecords=0, totalPages=2), "0 records of 10 a page in 2 pages"),
        (
            listing([{"id": i} for i in range(1, 12)], totalRecords=11, totalPages=2),
            "11 records, 10 asked",
        ),
        (listing([], totalRecords=3), "an empty first page of 3 records"),
        (listing([{"id": True}], totalRecords=1), "without a positive integer id"),
        (listing([{"id": 0}], totalRecords=1), "without a positive integer id"),
        (listing([{"id": -4}], totalRecords=1), "without a positive integer id"),
        (listing(["7"], totalRecords=1), "without a positive integer id"),
    ],
)
def test_an_answer_that_is_not_a_listing_is_retried_never_read(
    answer: dict[str, object], why: str
) -> None:
    verdict = classify_listing(answer, number=1, limit=10)

    assert verdict is not None
    assert verdict.kind is Kind.RETRYABLE
    assert verdict.reason.startswith("audience-list answered what is not ")
    assert why in verdict.reason + (verdict.message or "")


def test_a_page_past_the_first_may_be_empty() -> None:
    assert classify_listing(listing([]), number=2, limit=10) is None


@pytest.mark.parametrize(
    ("answer", "data"),
    [
        ({"total_audience": 50, "coverage": 1.5}, True),
        ({"total_audience": 0, "message": "ok"}, True),
        ({"total_audience": False}, False),
        ({"total_audience": "50"}, False),
        ({"total_audience": -1}, False),
        ({"total_audience": True}, False),
        ({"coverage": 1.5}, False),
        ({"total_audience": 50, "message": "Something went wrong, try later"}, False),
    ],
)
def test_stats_are_data_only_with_a_whole_total(answer: dict[str, object], data: bool) -> None:
    verdict = classify_stats(answer)

    assert (verdict is None) is data
    if verdict is not None:
        assert verdict.kind is Kind.RETRYABLE
