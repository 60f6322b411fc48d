"""``delete-all``: the API's second request shape, guarded by an explicit confirmation.

Deleting every audience record of a campaign is irreversible, so the campaign id must be
typed twice (``--campaign-id N --confirm N``); the API itself only allows it on drafts.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import TextIO

import structlog

from worker import __version__
from worker.errors import ApiError, FatalError, UsageError
from worker.exit_codes import ExitCode
from worker.records.audit import AuditLog, default_audit_path, new_run_id, read_key_file
from worker.sending.classify import Kind, Verdict
from worker.sending.client import Reply, UnleashXClient, http_session
from worker.sending.credentials import TokenSource
from worker.sending.ratelimit import LocalRateGate
from worker.sending.retry import RetryPolicy, with_retries
from worker.settings import Settings

log = structlog.get_logger("audience_purge.delete_all")


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
    tokens = TokenSource(settings.token, None if settings.token else settings.token_file)
    run_id = new_run_id()
    audit = AuditLog(
        settings.audit_log or default_audit_path(settings.audit_dir, run_id),
        run_id,
        key=read_key_file(settings.audit_key_file),
    )
    started = time.monotonic()
    try:
        audit.write(
            "run_started",
            version=__version__,
            command="delete-all",
            settings=settings.public(),
            campaign_id=campaign_id,
        )
        code, verdict, attempts, latency = await _send(settings, tokens, campaign_id)
        fields = {
            "campaign_id": campaign_id,
            "http_status": verdict.status if verdict else None,
            "attempts": attempts,
            "latency_ms": latency,
            "message": verdict.message if verdict else None,
        }
        if code == 0:
            audit.write("deleted_all", **fields)
            print(
                f"campaign {campaign_id}: all audience deleted "
                f"({verdict.message if verdict else ''})",
                file=out,
            )
        else:
            reason = verdict.reason if verdict else "no answer"
            audit.write("failed", **fields, reason=reason, retryable=code != 1)
            print(
                f"delete-all refused for campaign {campaign_id}: "
                f"{verdict.message if verdict and verdict.message else reason}",
                file=err,
            )
        audit.write(
            "run_finished",
            exit_code=code,
            requests=attempts,
            duration_s=round(time.monotonic() - started, 3),
        )
        print(f"audit log: {audit.path}", file=out)
        return code
    finally:
        audit.close()


async def _send(
    settings: Settings, tokens: TokenSource, campaign_id: int
) -> tuple[int, Verdict | None, int, float | None]:
    last: Reply | None = None
    attempts = 0
    gate = LocalRateGate(settings.rate.scaled(1 - settings.rate_margin), settings.burst)
    async with http_session(settings.timeout, 1) as session:
        client = UnleashXClient(session, settings.base_url, tokens)

        async def attempt(number: int) -> Reply:
            nonlocal last, attempts
            await gate.acquire()
            attempts = number
            last = await client.delete_all(campaign_id)
            if last.verdict.kind is not Kind.DELETED:
                raise last.verdict.error()
            return last

        try:
            reply = await with_retries(
                attempt,
                RetryPolicy.from_settings(settings),
                gate,
                context={"campaign_id": campaign_id},
            )
        except FatalError:
            code = ExitCode.FATAL
        except ApiError:
            code = ExitCode.FAILED
        else:
            return ExitCode.OK, reply.verdict, attempts, reply.latency_ms
    return code, last.verdict if last else None, attempts, last.latency_ms if last else None
