"""The read side of the API: audience-list pages and campaign-audience-stats.

Each read waits its turn at the run's one :class:`RateGate` (a listing spends the same
per-key budget as the deletions beside it) and is retried under the run's
:class:`RetryPolicy`, exactly like a delete. Answers are checked for the shape the vendor
documents; a page that does not have it is refused rather than read as "no records", since
an empty page ends a listing and an empty read-back would "prove" every id gone.

A listing is read whole by :func:`read_whole`, for a selection and for a read-back alike:
paging is by offset, and records added or deleted meanwhile shift the pages.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from pyroaring import BitMap64

from worker.errors import ApiError, FatalError, PermanentError
from worker.runtime.stopping import unless_stopped
from worker.sending.client import ReadReply, UnleashXClient
from worker.sending.ratelimit import RateGate
from worker.sending.retry import RetryPolicy, with_retries

LIST_ENDPOINT = "audience-list"
STATS_ENDPOINT = "campaign-audience-stats"
STATS_FIELDS = ("total_audience", "coverage", "total_attempt", "total_duration", "successful_calls")
MAX_PASSES = 5  # reads of a listing from page 1 before it is given up as never complete
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


@dataclass(frozen=True, slots=True)
class Listing:
    """A listing read from page 1, as many times as it took (``passes``): ``listed``
    distinct records in its last pass, and why that pass did not see the whole listing
    (None when it did)."""

    passes: int
    pages: int
    listed: int
    why: str | None


async def read_whole(
    read_page: Callable[[int], Awaitable[Page]],
    take: Callable[[Page], None],
    *,
    to_the_end: bool,
    **context: Any,
) -> Listing:
    """Read a listing from page 1, each page handed to ``take``, until one pass saw all of
    it, or :data:`MAX_PASSES` passes did not (``take`` sees the pages of every pass).

    With ``to_the_end``, a pass whose ``totalRecords`` changed still reads on to the last
    page (what it meets counts, and a pass that lasts the whole listing gives a busy
    campaign time to settle before the next); without, it ends at the change, as the
    offsets after it are not those read before (fewer requests)."""
    passes = pages = 0
    while True:
        passes += 1
        number, listed, why = await _one_pass(read_page, take, to_the_end)
        pages += number
        if why is None or passes == MAX_PASSES:
            return Listing(passes, pages, listed, why)
        log.info("listing again from page 1", why=why, **context)


async def _one_pass(
    read_page: Callable[[int], Awaitable[Page]], take: Callable[[Page], None], to_the_end: bool
) -> tuple[int, int, str | None]:
    """Every page once (see :func:`read_whole`): the pages read, the distinct records
    listed, and why the pass did not see the whole listing, if it did not. It did only if
    ``totalRecords`` held and it listed exactly that many distinct records (a record added
    as another went keeps the total but shifts the pages; a server that returns fewer
    records a page than asked for ends early)."""
    listed = BitMap64()
    first = last = None
    number = 0
    while True:
        number += 1
        page = await read_page(number)
        first = page.total_records if first is None else first
        if page.total_records != first:
            last = page.total_records
            if not to_the_end:
                break
        listed.update(record["id"] for record in page.records)
        take(page)
        if not page.records or number >= page.total_pages:
            break
    if last is not None:
        why = f"the campaign changed while it was listed ({first:,} records, then {last:,})"
        return number, len(listed), why
    if len(listed) != first:
        return number, len(listed), f"listed {len(listed):,} records of the {first:,} it reports"
    return number, len(listed), None


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
