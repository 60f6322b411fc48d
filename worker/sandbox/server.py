"""The sandbox HTTP app: the UnleashX campaign-audience endpoints plus a test control plane.

Request pipeline for API routes (``faults_middleware``): count → fault draw → latency → drop →
401 → 429 limit → injected 5xx → the handler, which validates the body. Every API request goes
through all of it, reads and update-campaign as much as delete-audience: the vendor's rate limit is
per API key and counts every request, and a 5xx or a dropped connection can meet any of them.
Injected 5xx and drops happen *before* anything is applied, so a retried request is the only way
its ids get deleted (or a campaign's status changed). A valid delete with ids may then be
acknowledged without being applied (``ack_without_delete``): the one fault a client sees only by
reading the campaign back. Control routes under ``/_sandbox`` bypass faults, auth and the limit.

audience-list pages by offset over the surviving records that match the filters (``filters``),
in ascending id order: page P of limit L holds the matches at positions (P-1)*L .. P*L-1 *at the
time of the request*, so deleting records of page 1 moves later records onto earlier pages, as
with any offset-paginated API. A page past the end is empty. A listing fault
(``listing_faults``) makes audience-list lie. campaign-audience-stats sums the same matches:
``successful_calls`` counts answered calls and ``coverage`` is ``successful_calls /
total_attempt * 100`` (2 decimals, 0 without attempts), as the vendor defines them.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from math import ceil

from aiohttp import web

from worker.sandbox.control import CONTROL_PREFIX, add_control_routes, json_object
from worker.sandbox.faults import SERVER_ERROR_MESSAGES, FaultConfig
from worker.sandbox.filters import AudienceFilter, parse_filter
from worker.sandbox.listing_faults import answer, churn, listing_ids
from worker.sandbox.model import CAMPAIGN_STATUSES, Campaign, CampaignSpec
from worker.sandbox.records import headers, record
from worker.sandbox.state import STATE_KEY, SandboxState

DELETE_ROUTE = "delete-audience"
MAX_PAGE_LIMIT = 10_000
MAX_BODY_BYTES = 64 * 1024 * 1024
DELETED = "Audience deleted successfully"

NOT_EXIST = "Campaign not exist"
AUDIENCE_REQUIRED = "Audience array is required"
DRAFT_ONLY = "All audience can only be deleted when the campaign is in draft status"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class SandboxConfig:
    """Campaigns, the accepted API token, faults, and where the API is mounted.

    ``seed`` seeds the synthetic records; None takes the fault seed, so that one ``--seed``
    reproduces a whole rehearsal. Faults swapped at runtime never change the records.
    """

    campaigns: tuple[CampaignSpec, ...]
    token: str
    faults: FaultConfig = field(default_factory=FaultConfig)
    base_path: str = "/api/v1/global"
    seed: int | None = None

    def __post_init__(self) -> None:
        ids = [spec.id for spec in self.campaigns]
        if len(ids) != len(set(ids)):
            raise ValueError("campaign ids must be unique")
        if not self.token:
            raise ValueError("token must not be empty")
        if not self.base_path.startswith("/") or self.base_path.startswith(CONTROL_PREFIX):
            raise ValueError(f"base_path must start with / and not {CONTROL_PREFIX}")
        object.__setattr__(self, "base_path", self.base_path.rstrip("/"))

    @property
    def records_seed(self) -> int:
        return self.faults.seed if self.seed is None else self.seed


CONFIG_KEY = web.AppKey("sandbox_config", SandboxConfig)


def _message(text: str, status: int, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"message": text}, status=status, headers=headers)


def _json_int(value: object) -> int | None:
    """A JSON integer; bools are ints to Python but not to the API."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _query_int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


@web.middleware
async def faults_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Apply injected faults, auth and the rate limit, and count outcomes, for every API route."""
    if request.path.startswith(CONTROL_PREFIX):
        return await handler(request)
    state = request.app[STATE_KEY]
    state.requests_total += 1
    verdict = state.injector.decide()
    faults = state.faults
    if faults.latency_ms:
        await asyncio.sleep(faults.latency_ms / 1000)
    if verdict.drop and request.transport is not None:
        state.dropped += 1
        request.transport.abort()
        return web.Response(status=499)
    try:
        response = await _guarded(request, handler, verdict.server_error)
    except web.HTTPException as exc:
        state.by_status[exc.status] += 1
        raise
    state.by_status[response.status] += 1
    return response


async def _guarded(
    request: web.Request, handler: Handler, server_error: int | None
) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    config = request.app[CONFIG_KEY]
    if not secrets.compare_digest(request.headers.get("token", ""), config.token):
        return _message("Unauthorized", 401)
    # admit_delete is named for history: it admits every API request (tests wrap it by name).
    wait = state.admit_delete()
    if wait is not None:
        return _message("Too Many Requests", 429, {"Retry-After": str(wait)})
    if server_error is not None:
        headers = {"Retry-After": "1"} if state.faults.retry_after_on_5xx else None
        return _message(SERVER_ERROR_MESSAGES[server_error], server_error, headers)
    return await handler(request)


async def delete_audience(request: web.Request) -> web.Response:
    """POST delete-audience: hard-delete listed ids, or all ids of a draft campaign."""
    state = request.app[STATE_KEY]
    faults = state.faults
    body = await json_object(request)
    if body is None:
        return _message("Invalid JSON body", 400)
    audience = body.get("audience")
    if isinstance(audience, list):
        state.max_audience_len = max(state.max_audience_len, len(audience))
        if faults.max_batch is not None and len(audience) > faults.max_batch:
            return _message("Payload Too Large", 413)
    ids = _int_list(audience)
    campaign_id = _json_int(body.get("campaign_id"))
    campaign = state.campaigns.get(campaign_id) if campaign_id is not None else None
    if campaign is None:
        if campaign_id is not None and ids:
            state.record_received(campaign_id, ids)
        return _message(NOT_EXIST, faults.error_status)
    if body.get("delete_all") is True:
        if campaign.status != "draft":
            return _message(DRAFT_ONLY, faults.error_status)
        campaign.delete_all()
        return _message("All audience deleted successfully", 200)
    if not isinstance(audience, list) or not audience:
        return _message(AUDIENCE_REQUIRED, faults.error_status)
    if ids is None:
        return _message("Audience must be an array of integers", 400)
    state.record_received(campaign.id, ids)
    if state.injector.ack_without_delete():
        state.record_acked_not_applied(campaign.id, ids)
    else:
        campaign.delete(ids)
    return _message(DELETED, 200)


def _int_list(value: object) -> list[int] | None:
    if not isinstance(value, list):
        return None
    if all(isinstance(item, int) and not isinstance(item, bool) for item in value):
        return value
    return None


def _campaign(request: web.Request, campaign_id: int | None) -> Campaign | None:
    if campaign_id is None:
        return None
    return request.app[STATE_KEY].campaigns.get(campaign_id)


def _listing_filter(request: web.Request) -> AudienceFilter:
    """The request's filters.

    Raises:
        web.HTTPBadRequest: a filter value is invalid; the JSON message names the filter.
    """
    try:
        return parse_filter(request.query)
    except ValueError as exc:
        raise web.HTTPBadRequest(
            text=json.dumps({"message": str(exc)}), content_type="application/json"
        ) from None


async def audience_list(request: web.Request) -> web.Response:
    """GET audience-list: one page (by offset) of the surviving records that match the filters."""
    campaign = _campaign(request, _query_int(request.query.get("campaign_id")))
    if campaign is None:
        return _message(NOT_EXIST, request.app[STATE_KEY].faults.error_status)
    page = _query_int(request.query.get("page", "1"))
    limit = _query_int(request.query.get("limit", "10"))
    if page is None or limit is None or page < 1 or not 1 <= limit <= MAX_PAGE_LIMIT:
        return _message(f"page must be >= 1 and limit between 1 and {MAX_PAGE_LIMIT}", 400)
    where = _listing_filter(request)
    fault = request.app[STATE_KEY].listing_fault(page)
    if fault == "churn":
        churn(campaign, where)
    ids, total = listing_ids(fault, campaign, where, page, limit)
    seed, simple = campaign.seed, where.is_new
    body = {
        "datalist": [record(campaign.id, i, seed=seed, simple=simple) for i in ids],
        "headers": headers(simple=simple),
        "pagination": {
            "totalRecords": total,
            "totalPages": ceil(total / limit),
            "currentPage": page,
            "limit": limit,
        },
    }
    return web.json_response(answer(fault, body))


async def audience_stats(request: web.Request) -> web.Response:
    """GET campaign-audience-stats: exact sums over the surviving records that match."""
    campaign = _campaign(request, _query_int(request.query.get("campaign_id")))
    if campaign is None:
        return _message(NOT_EXIST, request.app[STATE_KEY].faults.error_status)
    totals = campaign.totals(_listing_filter(request))
    coverage = round(100 * totals.successful / totals.attempts, 2) if totals.attempts else 0.0
    return web.json_response(
        {
            "total_audience": totals.count,
            "coverage": coverage,
            "total_attempt": totals.attempts,
            "total_duration": totals.duration,
            "successful_calls": totals.successful,
        }
    )


async def update_campaign(request: web.Request) -> web.Response:
    """POST update-campaign: change a campaign's status (gates delete_all)."""
    body = await json_object(request)
    if body is None:
        return _message("Invalid JSON body", 400)
    campaign = _campaign(request, _json_int(body.get("campaign_id")))
    if campaign is None:
        return _message(NOT_EXIST, request.app[STATE_KEY].faults.error_status)
    status = body.get("campaign_status")
    if status not in CAMPAIGN_STATUSES:
        return _message(f"campaign_status must be one of {', '.join(CAMPAIGN_STATUSES)}", 400)
    campaign.status = str(status)
    return _message("Campaign updated successfully", 200)


def create_app(
    config: SandboxConfig, *, clock: Callable[[], float] = time.monotonic
) -> web.Application:
    """Build the sandbox app; ``clock`` drives the rate limiter (tests may pass a fake one)."""
    app = web.Application(middlewares=[faults_middleware], client_max_size=MAX_BODY_BYTES)
    app[CONFIG_KEY] = config
    app[STATE_KEY] = SandboxState(
        config.campaigns, config.faults, clock, records_seed=config.records_seed
    )
    base = config.base_path
    app.router.add_post(f"{base}/delete-audience", delete_audience, name=DELETE_ROUTE)
    app.router.add_get(f"{base}/audience-list", audience_list)
    app.router.add_get(f"{base}/campaign-audience-stats", audience_stats)
    app.router.add_post(f"{base}/update-campaign", update_campaign)
    add_control_routes(app)
    return app
