"""The read side of the API: audience-list pages and campaign-audience-stats.

Each read waits its turn at the run's one :class:`RateGate` (a listing spends the same
per-key budget as the deletions beside it) and is retried under the run's
:class:`RetryPolicy`, exactly like a delete. Answers are checked for the shape the vendor
documents; a page that does not have it is refused rather than read as "no records", since
an empty page ends a listing and an empty read-back would "prove" every id gone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from worker.errors import ApiError, FatalError, PermanentError
from worker.runtime.stopping import unless_stopped
from worker.sending.client import ReadReply, UnleashXClient
from worker.sending.ratelimit import RateGate
from worker.sending.retry import RetryPolicy, with_retries

LIST_ENDPOINT = "audience-list"
STATS_ENDPOINT = "campaign-audience-stats"
STATS_FIELDS = ("total_audience", "coverage", "total_attempt", "total_duration", "successful_calls")
log = structlog.get_logger("audience_purge.listing")

Filters = Sequence[tuple[str, str]]


class MalformedAnswer(PermanentError):
    """An answer without the documented shape: what it holds cannot be trusted."""


@dataclass(frozen=True, slots=True)
class Page:
    """One audience-list page: its records and what it says of the whole listing."""

    records: list[Mapping[str, Any]]
    total_records: int
    total_pages: int


class Reader:
    """audience-list and campaign-audience-stats, rate-limited and retried."""

    def __init__(
        self,
        client: UnleashXClient,
        gate: RateGate,
        policy: RetryPolicy,
        *,
        stop: asyncio.Event | None = None,
    ) -> None:
        self._client = client
        self._gate = gate
        self._policy = policy
        # Set to stop: no read starts, and one waiting at the gate or in a backoff ends
        # (Abandoned).
        self.stop = stop if stop is not None else asyncio.Event()
        self.requests = 0

    async def page(self, campaign_id: int, number: int, limit: int, filters: Filters = ()) -> Page:
        """Page ``number`` (from 1) of ``limit`` records of the campaign, as filtered.

        Raises:
            ApiError: the API refused, or kept failing (see :meth:`_read`).
        """
        params = [("campaign_id", str(campaign_id)), ("page", str(number)), ("limit", str(limit))]
        data = await self._read(LIST_ENDPOINT, [*params, *filters])
        return parse_page(data)

    async def stats(self, campaign_id: int, filters: Filters = ()) -> dict[str, Any]:
        """The campaign's campaign-audience-stats answer (the documented fields only)."""
        data = await self._read(STATS_ENDPOINT, [("campaign_id", str(campaign_id)), *filters])
        if not isinstance(data.get("total_audience"), int):
            raise MalformedAnswer("campaign-audience-stats answered without total_audience")
        return {name: data.get(name) for name in STATS_FIELDS}

    async def _read(self, endpoint: str, params: Filters) -> Mapping[str, Any]:
        """One read under the gate and the retry policy.

        Raises:
            FatalError: authentication refused, redirected, endpoint not found.
            PermanentError: a refusal (``Campaign not exist``) or a malformed answer.
            RetryableError: still failing when the attempts or the time ran out.
        """

        async def attempt(number: int) -> Mapping[str, Any]:
            await unless_stopped(self._gate.acquire(), self.stop)
            self.requests += 1
            reply: ReadReply = await self._client.read(endpoint, params)
            if reply.verdict is not None:
                log.debug(
                    "read refused", endpoint=endpoint, attempt=number, reason=reply.verdict.reason
                )
                raise reply.verdict.error()
            assert reply.data is not None
            return reply.data

        return await with_retries(
            attempt, self._policy, self._gate, context={"endpoint": endpoint}, stop=self.stop
        )


def parse_page(data: Mapping[str, Any]) -> Page:
    """The records and pagination of an audience-list answer.

    Raises:
        MalformedAnswer: no ``datalist`` list of objects with integer ``id``, or no
            ``pagination`` with integer ``totalRecords`` and ``totalPages``.
    """
    records = data.get("datalist")
    pagination = data.get("pagination")
    if not isinstance(records, list) or not isinstance(pagination, Mapping):
        raise MalformedAnswer("audience-list answered without datalist and pagination")
    total, pages = pagination.get("totalRecords"), pagination.get("totalPages")
    if not isinstance(total, int) or not isinstance(pages, int) or min(total, pages) < 0:
        raise MalformedAnswer("audience-list pagination lacks totalRecords or totalPages")
    for item in records:
        if not isinstance(item, Mapping) or not _count(item.get("id")) or item["id"] == 0:
            raise MalformedAnswer("audience-list returned a record without a positive integer id")
    return Page(records, total, pages)


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def refused(exc: ApiError, what: str) -> FatalError:
    """A read that failed for good ends the command (a selection or a read-back without it
    proves nothing): a refusal, or retries run out, as the one line the person sees."""
    if isinstance(exc, FatalError):
        return exc
    said = exc.reason + (f": {exc.message}" if exc.message and exc.message != exc.reason else "")
    if exc.kind.transient:
        said = f"still failing after its retries: {said}"
    return FatalError(f"{what}: {said}", status=exc.status, message=exc.message)
