"""``delete-all``: the API's second request shape, guarded by an explicit confirmation.

Deleting every audience record of a campaign is irreversible, so the campaign id must be
typed twice (``--campaign-id N --confirm N``); the API itself only allows it on drafts.
"""

from __future__ import annotations

import asyncio
import sys
from typing import TextIO

import orjson

from worker.errors import ApiError, Kind, UsageError
from worker.exit_codes import ExitCode
from worker.input.validate import MAX_ID
from worker.records.recorder import Recorder
from worker.runtime.runtime import Runtime
from worker.runtime.stopping import Abandoned, unless_stopped
from worker.sending.client import Reply, UnleashXClient
from worker.sending.credentials import without_userinfo
from worker.sending.ratelimit import RateGate
from worker.sending.retry import RetryPolicy, with_retries
from worker.settings import Settings
from worker.settings.declare import integer


def delete_all_command(settings: Settings, campaign_id: str, confirm: str | None) -> int:
    """``audience-purge delete-all``: refused unless ``--confirm`` repeats the campaign id."""
    as_id = integer(1, MAX_ID)
    try:
        campaign = as_id(campaign_id)
        repeated = as_id(confirm) if confirm is not None else None
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
    if settings.dry_run:
        # The body exactly as the client serializes it, not a Python dict.
        body = orjson.dumps({"campaign_id": campaign_id, "delete_all": True}).decode()
        print(
            f"dry run: would POST {without_userinfo(settings.base_url)}/delete-audience "
            f"with the body {body}; nothing was sent",
            file=out,
        )
        return ExitCode.OK
    runtime = Runtime(settings, "delete-all")
    async with runtime.recording() as recorder:
        runtime.start(campaign_id=campaign_id)
        client, gate = await runtime.api(concurrency=1)
        request = _Request(client, gate, RetryPolicy.from_settings(settings), campaign_id)
        interrupted = await runtime.supervise(request.send(), request.stop)
        code = _outcome(request, recorder, interrupted=interrupted, out=out, err=err)
        runtime.finish(
            exit_code=code,
            interrupted=interrupted,
            requests=request.attempts,
            duration_s=runtime.elapsed(),
        )
    print(f"audit log: {runtime.audit_path}", file=out)
    return code


def _outcome(
    request: _Request, recorder: Recorder, *, interrupted: bool, out: TextIO, err: TextIO
) -> ExitCode:
    """Record the request's end and say it; the exit code."""
    campaign_id = request.campaign_id
    last = request.last
    verdict = last.verdict if last else None
    fields = {"attempts": request.attempts, "latency_ms": last.latency_ms if last else None}
    if not request.answered:  # stopped, or cut off in flight: nothing settles it
        reason = request.cut_off
        recorder.delete_all_unconfirmed(campaign_id, reason, attempts=request.attempts)
        print(f"delete-all for campaign {campaign_id} interrupted: {reason}", file=err)
        return ExitCode.INTERRUPTED
    error = request.error
    if error is None:
        recorder.deleted_all(campaign_id, verdict, **fields)
        print(
            f"campaign {campaign_id}: all audience deleted ({verdict.message if verdict else ''})",
            file=out,
        )
        return ExitCode.OK
    recorder.delete_all_failed(campaign_id, verdict, error, **fields)
    said = verdict.message if verdict and verdict.message else error.reason
    print(f"delete-all refused for campaign {campaign_id}: {said}", file=err)
    if error.kind.stops_run:
        return ExitCode.FATAL
    return ExitCode.INTERRUPTED if interrupted else ExitCode.FAILED


class _Request:
    """The one delete_all request, with its retries; ``stop`` lets no new attempt start."""

    def __init__(
        self, client: UnleashXClient, gate: RateGate, policy: RetryPolicy, campaign_id: int
    ) -> None:
        self._client = client
        self._gate = gate
        self._policy = policy
        self.campaign_id = campaign_id
        self.attempts = 0
        self.last: Reply | None = None
        self.error: ApiError | None = None
        self.answered = False
        # Why it ended without an answer that settles it (the outcome is unknown).
        self.cut_off = "cancelled in flight: outcome unknown"
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def send(self) -> None:
        context: dict[str, object] = {"campaign_id": self.campaign_id}
        try:
            await with_retries(
                self._attempt, self._policy, self._gate, context=context, stop=self._stop
            )
        except ApiError as exc:
            self.error = exc
        except Abandoned:
            self.cut_off = "stopped before a retry could settle it"
            return
        self.answered = True

    async def _attempt(self, number: int) -> Reply:
        await unless_stopped(self._gate.acquire(), self._stop)
        self.attempts = number
        self.last = await self._client.delete_all(self.campaign_id)
        if self.last.verdict.kind is not Kind.DELETED:
            raise self.last.verdict.error()
        return self.last
