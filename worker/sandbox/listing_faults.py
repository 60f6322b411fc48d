"""Listing faults: audience-list answers that would fool a read-back or a selection.

Each reproduces a way a listing can lie, so that ``select``, ``run --verify`` and ``verify``
can be rehearsed against it (``--listing-fault MODE``, ``--listing-fault-times N``: the
first N answers it applies to; every one without). They apply to audience-list only:
campaign-audience-stats keeps telling the truth, which is what exposes most of them.
"""

from __future__ import annotations

from math import ceil
from typing import Any

from worker.sandbox.filters import AudienceFilter
from worker.sandbox.model import Campaign

ENDLESS_PAGES = 10**9
FOREIGN_OFFSET = 10**9  # a padded page's foreign record: an id this far past the campaign's
ERROR_MESSAGE = "Something went wrong, try later"
# What each does is ``sandbox --help``'s (worker.commands.parsers.LISTING_FAULT_HELP, which
# the parser keeps there so that --help never loads the sandbox).
LISTING_FAULTS = ("churn", "error-200", "bool-totals", "endless", "oversized", "padded")


def applies(mode: str, page: int) -> bool:
    """Whether ``mode`` changes the answer for page ``page`` (churn and padded need a page
    before it)."""
    return page >= 2 if mode in ("churn", "padded") else True


def churn(campaign: Campaign, where: AudienceFilter) -> None:
    """Remove the listing's first record and add a record that matches after the last."""
    first = next(campaign.matching(where), None)
    if first is not None:
        campaign.delete([first])
    added = campaign.next_id()
    while not campaign.admits(where, added):
        added += 1
    campaign.add(added)


def listing_ids(
    mode: str | None, campaign: Campaign, where: AudienceFilter, page: int, limit: int
) -> tuple[list[int], int]:
    """The ids page ``page`` of ``limit`` lists under ``mode`` (None: no fault), and the
    total it reports."""
    skip = (page - 1) * limit
    ids, total = campaign.page(where, skip, limit)
    if mode == "oversized":
        ids, total = campaign.page(where, skip, limit + 1)
    elif mode == "endless" and not ids:
        ids, total = campaign.page(where, 0, limit)
    elif mode == "padded":
        ids = _padded(campaign, where, page, limit, ids, total)
    return ids, total


def _padded(
    campaign: Campaign, where: AudienceFilter, page: int, limit: int, ids: list[int], total: int
) -> list[int]:
    if page == 2 and ids:
        before, _ = campaign.page(where, limit - 1, 1)
        ids = before + ids[1:]
    if page == ceil(total / limit) and len(ids) < limit:
        ids = [*ids, campaign.last + FOREIGN_OFFSET]
    return ids


def answer(mode: str | None, body: dict[str, Any]) -> dict[str, Any]:
    """The audience-list answer ``body`` as ``mode`` changes its shape."""
    pagination = body["pagination"]
    if mode == "error-200":
        return {
            "message": ERROR_MESSAGE,
            "datalist": [],
            "pagination": {**pagination, "totalRecords": 0, "totalPages": 0},
        }
    if mode == "bool-totals":
        falsified = {**pagination, "totalRecords": False, "totalPages": False}
        return {**body, "datalist": [], "pagination": falsified}
    if mode == "endless":
        return {**body, "pagination": {**pagination, "totalPages": ENDLESS_PAGES}}
    return body
