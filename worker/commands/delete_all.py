"""``delete-all``: the API's second request shape, guarded by an explicit confirmation.

Deleting every audience record of a campaign is irreversible, so the campaign id must be
typed twice (``--campaign-id N --confirm N``); the API itself only allows it on drafts.
"""

from __future__ import annotations

import asyncio
import sys
from typing import TextIO

from worker.errors import ApiError, Kind, UsageError
from worker.exit_codes import ExitCode
from worker.runtime.runtime import Runtime
from worker.sending.client import Reply, UnleashXClient
from worker.sending.ratelimit import RateGate
from worker.sending.retry import RetryPolicy, with_retries
from worker.settings import Settings


def delete_all_command(settings: Settings, campaign_id: str, confirm: str | None) -> int:
    """``audience-purge delete-all``: refused unless ``--confirm`` repeats the campaign id."""
    try:
        campaign = int(campaign_id)
        repeated = int(confirm) if confirm is not None else None
    except ValueError:
        raise UsageError("--campaign-id and --confirm take a campaign id (an integer)") from None
    return asyncio.run(delete_all(settings, check_confirmation(campaign, repeated)))


def check_confirmation(campaign_id: int | None, confirm: int | None) -> int:
    """The campaign id, if and only if ``--confirm`` repeats it."""
    if campaign_id is None:
        raise UsageError("delete-all needs --campaign-id N")
    if confirm != campaign_id:
        raise UsageError(
            f"delete-all deletes EVERY audience record of campaign {campaign_id} and cannot be "
            f"undone: repeat the id to confirm (--confirm {campaign_id})"
        )
    return campaign_id


async def delete_all(
    settings: Settings, campaign_id: int, *, out: TextIO = sys.stdout, err: TextIO = sys.stderr
) -> int:
    """Send one delete_all request (after retries) and return the exit code."""
    payload = {"campaign_id": campaign_id, "delete_all": True}
    if settings.dry_run:
        print(
            f"dry run: would POST {settings.base_url}/delete-audience {payload}; nothing was sent",
            file=out,
        )
        return ExitCode.OK
    runtime = Runtime(settings, "delete-all")
    async with runtime.recording() as recorder:
        runtime.start(campaign_id=campaign_id)
        client, gate = await runtime.api(concurrency=1)
        attempts, last, error = await _send(client, gate, settings, campaign_id)
        verdict = last.verdict if last else None
        request = {"attempts": attempts, "latency_ms": last.latency_ms if last else None}
        if error is None:
            recorder.deleted_all(campaign_id, verdict, **request)
            message = verdict.message if verdict else ""
            print(f"campaign {campaign_id}: all audience deleted ({message})", file=out)
            code = ExitCode.OK
        else:
            recorder.delete_all_failed(campaign_id, verdict, error, **request)
            said = verdict.message if verdict and verdict.message else error.reason
            print(f"delete-all refused for campaign {campaign_id}: {said}", file=err)
            code = ExitCode.FATAL if error.kind.stops_run else ExitCode.FAILED
        runtime.finish(exit_code=code, requests=attempts, duration_s=runtime.elapsed())
    print(f"audit log: {runtime.audit_path}", file=out)
    return code


async def _send(
    client: UnleashXClient, gate: RateGate, settings: Settings, campaign_id: int
) -> tuple[int, Reply | None, ApiError | None]:
    """(attempts, the last reply, the error that ended it or None on success)."""
    last: Reply | None = None
    attempts = 0

    async def attempt(number: int) -> Reply:
        nonlocal last, attempts
        await gate.acquire()
        attempts = number
        last = await client.delete_all(campaign_id)
        if last.verdict.kind is not Kind.DELETED:
            raise last.verdict.error()
        return last

    try:
        await with_retries(
            attempt, RetryPolicy.from_settings(settings), gate, context={"campaign_id": campaign_id}
        )
    except ApiError as exc:
        return attempts, last, exc
    return attempts, last, None
