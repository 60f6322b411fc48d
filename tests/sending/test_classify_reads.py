"""Specification of worker.sending.classify for reads (audience-list,
campaign-audience-stats) and at the edges of every status range: an answer is read as data
only when it is a 2xx JSON object that declares no failure; anything else is a verdict, by
the same rules as a delete's (issue #25: these paths had no test of their own)."""

from __future__ import annotations

import orjson
import pytest

from worker.errors import Kind
from worker.sending.classify import Verdict, classify, classify_read

NO_HEADERS: dict[str, str] = {}
PAGE = {"status": True, "datalist": [{"id": 7}], "total": 1}


@pytest.mark.parametrize("status", [200, 203, 299])
def test_a_2xx_json_object_is_the_answer_itself(status: int) -> None:
    assert classify_read(status, orjson.dumps(PAGE), NO_HEADERS) == PAGE


def test_an_answer_without_a_message_is_read_as_data() -> None:
    answer = {"total_audience": 12}

    assert classify_read(200, orjson.dumps(answer), NO_HEADERS) == answer


@pytest.mark.parametrize("status", [200, 400, 500])
def test_a_documented_error_on_a_read_is_permanent_whatever_the_status(status: int) -> None:
    raw = orjson.dumps({"message": "Campaign not exist", "datalist": []})

    assert classify_read(status, raw, NO_HEADERS) == Verdict(
        Kind.PERMANENT, status, "unknown campaign", "Campaign not exist"
    )


@pytest.mark.parametrize("raw", [b"", b"<html>proxy</html>", b"null", b"{}", b"[]", b"[1]"])
def test_a_2xx_that_is_not_a_json_object_with_content_is_retried(raw: bytes) -> None:
    verdict = classify_read(200, raw, NO_HEADERS)

    assert verdict == Verdict(Kind.RETRYABLE, 200, "unparseable answer")


@pytest.mark.parametrize(
    "answer", [{"status": False, "datalist": []}, {"success": False}, {"error": "no"}]
)
def test_a_2xx_declaring_failure_is_permanent_not_an_empty_listing(answer: object) -> None:
    verdict = classify_read(200, orjson.dumps(answer), NO_HEADERS)

    assert isinstance(verdict, Verdict)
    assert (verdict.kind, verdict.reason) == (Kind.PERMANENT, "API reported failure")


@pytest.mark.parametrize(
    ("status", "kind", "reason"),
    [
        (100, Kind.PERMANENT, "request refused (HTTP 100)"),
        (199, Kind.PERMANENT, "request refused (HTTP 199)"),
        (300, Kind.FATAL, "redirected (HTTP 300): check base_url"),
        (399, Kind.FATAL, "redirected (HTTP 399): check base_url"),
        (400, Kind.PERMANENT, "request refused (HTTP 400)"),
        (401, Kind.FATAL, "authentication refused (HTTP 401)"),
        (425, Kind.RETRYABLE, "server error (HTTP 425)"),
        (499, Kind.PERMANENT, "request refused (HTTP 499)"),
        (500, Kind.RETRYABLE, "server error (HTTP 500)"),
    ],
)
def test_every_status_range_ends_where_it_says_for_reads_and_deletes(
    status: int, kind: Kind, reason: str
) -> None:
    success = orjson.dumps({"message": "Audience deleted successfully", **PAGE})

    for verdict in (
        classify(status, success, NO_HEADERS),
        classify_read(status, success, NO_HEADERS),
    ):
        assert isinstance(verdict, Verdict)
        assert (verdict.kind, verdict.status, verdict.reason) == (kind, status, reason)


def test_a_flag_that_is_one_rather_than_true_proves_no_deletion() -> None:
    verdict = classify(200, orjson.dumps({"success": 1}), NO_HEADERS)

    assert (verdict.kind, verdict.reason) == (Kind.PERMANENT, "unrecognised success answer")


def test_an_error_field_that_is_false_declares_no_failure() -> None:
    raw = orjson.dumps({"error": False, "message": "Audience deleted successfully"})

    assert classify(200, raw, NO_HEADERS).kind is Kind.DELETED
    assert classify_read(200, raw, NO_HEADERS) == orjson.loads(raw)


def test_a_verdict_is_a_value_that_nothing_can_change_in_place() -> None:
    verdict = classify(500, orjson.dumps({"message": "down"}), NO_HEADERS)

    with pytest.raises(AttributeError):
        verdict.message = "changed"  # type: ignore[misc]
    assert {verdict: 1}[Verdict(Kind.RETRYABLE, 500, "server error (HTTP 500)", "down")] == 1
