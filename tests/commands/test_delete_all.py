"""delete-all against the real sandbox: drafts are emptied, everything else is refused."""

from __future__ import annotations

import asyncio
import io
import os
import re
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from conftest import read_audit

from worker import cli
from worker.commands.delete_all import check_confirmation, delete_all
from worker.errors import UsageError
from worker.sandbox import FaultConfig
from worker.sandbox.runner import SandboxHandle
from worker.settings import Settings

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
DRAFT_ONLY = "All audience can only be deleted when the campaign is in draft status"

MakeSettings = Callable[..., Settings]


def audit_of(settings: Settings) -> list[dict[str, Any]]:
    assert settings.audit_log is not None
    return read_audit(settings.audit_log)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """The CLI configures structlog globally; put the previous configuration back."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


async def test_delete_all_on_a_draft_campaign_deletes_every_id_and_is_audited(
    sandbox: SandboxHandle, make_settings: MakeSettings
) -> None:
    settings = make_settings()
    out, err = io.StringIO(), io.StringIO()

    code = await delete_all(settings, 42, out=out, err=err)

    assert code == 0
    draft = sandbox.state.campaigns[42]
    assert draft.alive_count == 0
    assert draft.deleted_count == draft.total
    assert sandbox.state.campaigns[77].deleted_count == 0
    assert sandbox.state.requests_total == 1
    records = audit_of(settings)
    assert [r["event"] for r in records] == ["run_started", "deleted_all", "run_finished"]
    run_id = records[0]["run_id"]
    for record in records:
        assert list(record)[:3] == ["ts", "event", "run_id"]
        assert RFC3339_UTC.match(record["ts"])
        assert record["run_id"] == run_id
    assert "token" not in records[0]["settings"]
    assert records[0]["command"] == "delete-all"
    assert records[0]["campaign_id"] == 42
    done = records[1]
    assert done == {
        "ts": done["ts"],
        "event": "deleted_all",
        "run_id": run_id,
        "campaign_id": 42,
        "http_status": 200,
        "attempts": 1,
        "latency_ms": done["latency_ms"],
        "message": "All audience deleted successfully",
    }
    assert records[2]["exit_code"] == 0
    assert "all audience deleted" in out.getvalue()
    assert err.getvalue() == ""


async def test_delete_all_on_an_inprogress_campaign_is_refused_with_the_api_message(
    sandbox: SandboxHandle, make_settings: MakeSettings
) -> None:
    settings = make_settings()
    out, err = io.StringIO(), io.StringIO()

    code = await delete_all(settings, 77, out=out, err=err)

    assert code == 1
    assert sandbox.state.campaigns[77].deleted_count == 0
    assert sandbox.state.campaigns[42].deleted_count == 0
    assert sandbox.state.requests_total == 1
    assert DRAFT_ONLY in err.getvalue()
    records = audit_of(settings)
    assert [r["event"] for r in records] == ["run_started", "failed", "run_finished"]
    failed = records[1]
    assert failed == {
        "ts": failed["ts"],
        "event": "failed",
        "run_id": records[0]["run_id"],
        "campaign_id": 77,
        "http_status": 400,
        "attempts": 1,
        "latency_ms": failed["latency_ms"],
        "message": DRAFT_ONLY,
        "reason": "campaign is not in draft status",
        "retryable": False,
    }
    assert records[2]["exit_code"] == 1


@pytest.mark.parametrize(("campaign", "confirm"), [(42, None), (42, 43), (None, 42)])
def test_check_confirmation_refuses_unless_the_id_is_repeated(
    campaign: int | None, confirm: int | None
) -> None:
    with pytest.raises(UsageError):
        check_confirmation(campaign, confirm)


def test_check_confirmation_returns_the_repeated_id() -> None:
    assert check_confirmation(42, 42) == 42


@pytest.mark.parametrize("confirm", [[], ["--confirm", "43"]], ids=["missing", "wrong"])
async def test_cli_delete_all_without_matching_confirmation_exits_2_and_sends_nothing(
    sandbox: SandboxHandle,
    token: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    restore_logging: None,
    confirm: list[str],
) -> None:
    monkeypatch.setenv("UNLEASHX_TOKEN", token)
    argv = [
        "delete-all",
        "--campaign-id",
        "42",
        *confirm,
        "--base-url",
        sandbox.url,
        "--audit-log",
        str(tmp_path / "audit.jsonl"),
    ]

    # In a thread with its own event loop, so this loop keeps serving the sandbox.
    code = await asyncio.to_thread(cli.main, argv)

    assert code == 2
    assert sandbox.state.requests_total == 0
    assert sandbox.state.campaigns[42].deleted_count == 0
    err = capsys.readouterr().err
    assert "--confirm 42" in err
    assert "Traceback" not in err


async def test_delete_all_dry_run_sends_nothing(
    sandbox: SandboxHandle, make_settings: MakeSettings
) -> None:
    settings = make_settings(token=None, dry_run=True)
    out = io.StringIO()

    code = await delete_all(settings, 42, out=out, err=io.StringIO())

    assert code == 0
    assert sandbox.state.requests_total == 0
    assert sandbox.state.campaigns[42].deleted_count == 0
    assert "nothing was sent" in out.getvalue()
    assert 'with the body {"campaign_id":42,"delete_all":true};' in out.getvalue()


def signal_self_after(seconds: float) -> None:
    """SIGTERM to this process, as Kubernetes sends it; the run's handlers take it."""
    asyncio.get_running_loop().call_later(seconds, os.kill, os.getpid(), signal.SIGTERM)


async def test_sigterm_during_the_request_cancels_it_after_the_grace_and_exits_75(
    sandbox: SandboxHandle, make_settings: MakeSettings
) -> None:
    sandbox.state.replace_faults(FaultConfig(latency_ms=3000))
    settings = make_settings(grace=0.3)
    loop = asyncio.get_running_loop()
    began = loop.time()
    signal_self_after(0.2)

    code = await delete_all(settings, 42, out=io.StringIO(), err=io.StringIO())

    assert code == 75
    assert loop.time() - began < 1.5  # 0.2 s + 0.3 s of grace, not the 3 s answer
    records = audit_of(settings)
    assert [r["event"] for r in records] == ["run_started", "unconfirmed", "run_finished"]
    assert (records[1]["campaign_id"], records[1]["reason"], records[1]["attempts"]) == (
        42,
        "cancelled in flight: outcome unknown",
        1,
    )
    assert (records[2]["exit_code"], records[2]["interrupted"]) == (75, True)


async def test_sigterm_between_attempts_starts_no_retry_and_exits_75(
    sandbox: SandboxHandle, make_settings: MakeSettings
) -> None:
    sandbox.state.replace_faults(FaultConfig(error_ratio=1.0, retry_after_on_5xx=True))
    settings = make_settings(grace=10.0, max_attempts=10)
    signal_self_after(0.3)  # during the 1 s Retry-After wait

    code = await delete_all(settings, 42, out=io.StringIO(), err=io.StringIO())

    assert code == 75
    assert sandbox.state.requests_total == 1
    assert sandbox.state.campaigns[42].deleted_count == 0
    records = audit_of(settings)
    assert [r["event"] for r in records] == ["run_started", "unconfirmed", "run_finished"]
    assert records[1]["reason"] == "stopped before a retry could settle it"
    assert records[-1]["interrupted"] is True
