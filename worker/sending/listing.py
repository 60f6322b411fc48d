"""The read side of the API: audience-list pages and campaign-audience-stats.

Each read waits its turn at the run's one :class:`RateGate` (a listing spends the same
per-key budget as the deletions beside it) and is retried under the run's
:class:`RetryPolicy`, exactly like a delete. An answer that is not a listing (or not stats)
by :func:`~worker.sending.classify.classify_listing` (an error message with a 200, totals
that are bools, more records than asked for...) is retried as :class:`NotAListing`, and
never read as "no records": an empty page ends a listing, and an empty read-back would
"prove" every id gone.

A listing is read whole by :func:`read_whole`, for a selection and for a read-back alike.
Paging is by offset, and records added or removed meanwhile shift the pages, so one pass
proves nothing by itself: a listing is *proven* only by two consecutive consistent passes
that list the same ids (see :func:`read_whole` for why that suffices, and the README's
"What verified means" for what it cannot see).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import structlog
from pyroaring import BitMap64

from worker.errors import ApiError, FatalError, RetryableError
from worker.runtime.stopping import unless_stopped
from worker.sending.classify import Verdict, classify_listing, classify_stats
from worker.sending.client import ReadReply, UnleashXClient
from worker.sending.ratelimit import RateGate
from worker.sending.retry import RetryPolicy, with_retries

LIST_ENDPOINT = "audience-list"
STATS_ENDPOINT = "campaign-audience-stats"
STATS_FIELDS = ("total_audience", "coverage", "total_attempt", "total_duration", "successful_calls")
MAX_PASSES = 5  # passes from page 1 before a listing is given up as unproven (2 at least)
log = structlog.get_logger("audience_purge.listing")

Filters = Sequence[tuple[str, str]]


class NotAListing(RetryableError):
    """An answer that is no listing (or no stats): retried, and once the retries are spent,
    the listing is unproven (it is never read as data)."""


@dataclass(frozen=True, slots=True)
class Page:
    """One audience-list page: its records and what it says of the whole listing."""

    records: list[Mapping[str, Any]]
    total_records: int
    total_pages: int


class AudienceReader(Protocol):
    """What a listing needs of :class:`Reader` (a test's in-memory model serves it too)."""

    async def page(
        self, campaign_id: int, number: int, limit: int, filters: Filters = ()
    ) -> Page: ...

    async def stats(self, campaign_id: int, filters: Filters = ()) -> dict[str, Any]: ...


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
        check = partial(classify_listing, number=number, limit=limit)
        data = await self._read(LIST_ENDPOINT, [*params, *filters], check)
        return parse_page(data)

    async def stats(self, campaign_id: int, filters: Filters = ()) -> dict[str, Any]:
        """The campaign's campaign-audience-stats answer (the documented fields only).

        Raises:
            ApiError: the API refused, or kept failing (see :meth:`_read`).
        """
        params = [("campaign_id", str(campaign_id)), *filters]
        data = await self._read(STATS_ENDPOINT, params, classify_stats)
        return {name: data.get(name) for name in STATS_FIELDS}

    async def _read(
        self,
        endpoint: str,
        params: Filters,
        check: Callable[[Mapping[str, Any]], Verdict | None],
    ) -> Mapping[str, Any]:
        """One read under the gate and the retry policy; ``check`` says whether the answer
        is the endpoint's (an answer that is not is retried as :class:`NotAListing`).

        Raises:
            FatalError: authentication refused, redirected, endpoint not found.
            PermanentError: a refusal (``Campaign not exist``).
            RetryableError: still failing when the attempts or the time ran out
                (:class:`NotAListing`: still answering what is not the endpoint's).
        """

        async def attempt(number: int) -> Mapping[str, Any]:
            await unless_stopped(self._gate.acquire(), self.stop)
            self.requests += 1
            reply: ReadReply = await self._client.read(endpoint, params)
            verdict = reply.verdict
            if verdict is None:
                assert reply.data is not None
                if (wrong := check(reply.data)) is None:
                    return reply.data
                raise NotAListing(wrong.reason, message=wrong.message)
            log.debug("read refused", endpoint=endpoint, attempt=number, reason=verdict.reason)
            raise verdict.error()

        return await with_retries(
            attempt, self._policy, self._gate, context={"endpoint": endpoint}, stop=self.stop
        )


@dataclass(frozen=True, slots=True)
class Listing:
    """A listing read from page 1 as many times as it took (``passes``, ``pages`` in all):
    ``listed`` distinct records in its last pass, and why it is not proven (None: it is)."""

    passes: int
    pages: int
    listed: int
    why: str | None


# (pass number from 1, page): every page of every pass, in order.
Take = Callable[[int, Page], None]


@dataclass(slots=True)
class _Pass:
    """One pass from page 1: the ids it listed, its pages, why it is not consistent."""

    ids: BitMap64
    pages: int = 0
    why: str | None = None


async def read_whole(
    reader: AudienceReader,
    campaign_id: int,
    limit: int,
    take: Take,
    filters: Filters = (),
    *,
    passes: int = MAX_PASSES,
) -> Listing:
    """Read the campaign's listing (as filtered) from page 1, each page handed to ``take``,
    until two consecutive passes are consistent (:func:`_one_pass`) and list the same ids,
    or ``passes`` passes did not (the listing is then unproven: :attr:`Listing.why`).

    Why two agreeing passes suffice (ids are never reused, a deleted record never comes
    back): a pass is consistent when campaign-audience-stats and every page report one
    total N, no id is listed twice, and N distinct ids are listed. Records that enter
    the pages already read (an add, or a shift right) can push a record out of them only
    onto the next page, where it would be listed twice; what makes a pass skip a record
    is a record *listed* in it leaving the pages already read (a removal). If one did in
    pass A, A's id set holds an id gone before pass B, so B cannot list the same set.
    Otherwise every record present when A ended was listed by A: A listed N distinct
    ids, all still present, of the N there are. So A and B agreeing mean that A missed no
    record present throughout it.

    Raises:
        ApiError: a read was refused, or kept failing (an answer that is not a listing,
            after its retries, is not raised: it makes the listing unproven).
        Abandoned: the reader was stopped.
    """
    previous: BitMap64 | None = None
    pages = listed = 0
    why = ""
    for number in range(1, passes + 1):
        done = _Pass(BitMap64())
        try:
            await _one_pass(reader, campaign_id, limit, filters, partial(take, number), done)
        except NotAListing as exc:
            said = exc.reason + (f": {exc.message}" if exc.message else "")
            return Listing(number, pages + done.pages, len(done.ids), f"{said} (kept answering so)")
        pages += done.pages
        listed = len(done.ids)
        if done.why is None and previous is not None and previous == done.ids:
            return Listing(number, pages, listed, None)
        why = done.why or (
            "a consistent pass, not yet confirmed by a second"
            if previous is None
            else "two passes in a row listed different records: the campaign changed while "
            "it was listed"
        )
        previous = done.ids if done.why is None else None
        log.info("listing again from page 1", why=why, campaign_id=campaign_id, passes=number)
    return Listing(passes, pages, listed, f"{why} ({passes} passes)")


async def _one_pass(
    reader: AudienceReader,
    campaign_id: int,
    limit: int,
    filters: Filters,
    take: Callable[[Page], None],
    done: _Pass,
) -> None:
    """Stats, then pages from 1, into ``done``; the pass ends at the first sign that it
    is not consistent (``done.why``), else after the ``ceil(N / limit)`` pages its total
    N makes (what the server says of its pages is never followed further)."""
    count = (await reader.stats(campaign_id, filters))["total_audience"]
    number = 0
    while True:
        number += 1
        page = await reader.page(campaign_id, number, limit, filters)
        done.pages += 1
        take(page)
        done.why = _inconsistent(page, number, count, done.ids)
        if done.why is not None:
            return
        if not page.records or number >= -(-count // limit):
            break
    if len(done.ids) != count:
        done.why = f"listed {len(done.ids):,} records of the {count:,} it reports"


def _inconsistent(page: Page, number: int, count: int, ids: BitMap64) -> str | None:
    """Why ``page`` breaks its pass (its ids join ``ids`` otherwise)."""
    if page.total_records != count:
        if number == 1:
            return (
                f"campaign-audience-stats counts {count:,} records and audience-list "
                f"{page.total_records:,}"
            )
        then = page.total_records
        return f"the campaign changed while it was listed ({count:,} records, then {then:,})"
    here = BitMap64(record["id"] for record in page.records)
    if len(here) != len(page.records) or here.intersect(ids):
        return f"page {number:,} repeats a record of its pass (the pages shifted)"
    ids.update(here)
    return None


def parse_page(data: Mapping[str, Any]) -> Page:
    """The records and pagination of an audience-list answer that
    :func:`~worker.sending.classify.classify_listing` passed."""
    pagination = data["pagination"]
    return Page(data["datalist"], pagination["totalRecords"], pagination["totalPages"])


def refused(exc: ApiError, what: str) -> FatalError:
    """A read that failed for good ends the command (a selection or a read-back without it
    proves nothing): a refusal, or retries run out, as the one line the person sees."""
    if isinstance(exc, FatalError):
        return exc
    said = exc.reason + (f": {exc.message}" if exc.message and exc.message != exc.reason else "")
    if exc.kind.transient:
        said = f"still failing after its retries: {said}"
    return FatalError(f"{what}: {said}", status=exc.status, message=exc.message)
