"""The settings catalogue: every setting, declared once on its field (see
:func:`~worker.settings.declare.setting`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

from worker.sending.credentials import Secret, redact_urls, without_userinfo
from worker.settings.declare import (
    DECLARATION,
    RATE_HELP,
    Declaration,
    boolean,
    integer,
    number,
    one_of,
    path,
    rate_spec,
    seconds,
    secret,
    setting,
    text,
)
from worker.settings.rate import RateSpec
from worker.settings.units import deadline as deadline_parser
from worker.settings.units import percentage

DEFAULT_BASE_URL = "https://www.tryunleashx.com/api/v1/global"
DEFAULT_RATE = RateSpec(100, 60.0)  # the vendor's free plan
DEFAULT_METRICS_PORT = 9102

# The subcommands whose flags are settings.
RUN, ENQUEUE, CONSUME, DELETE_ALL = "run", "enqueue", "consume", "delete-all"
SETTING_COMMANDS = (RUN, ENQUEUE, CONSUME, DELETE_ALL)
_API = (RUN, CONSUME, DELETE_ALL)
_SENDING = (RUN, CONSUME)
_QUEUE = (ENQUEUE, CONSUME)
_REDIS = (RUN, ENQUEUE, CONSUME)


@dataclass(frozen=True)
class Settings:
    """Everything a run needs; ``token`` is a :class:`Secret` and never printed."""

    base_url: str = setting(
        DEFAULT_BASE_URL,
        text,
        "API base URL; /delete-audience is appended",
        flag="--base-url URL",
        commands=_API,
        env="UNLEASHX_BASE_URL",
    )
    token: Secret | None = setting(
        None,
        secret,
        "the API token; never in the config file",
        env="UNLEASHX_TOKEN",
        toml=False,
        secret=True,
    )
    token_file: Path | None = setting(
        None,
        path,
        "file holding the API token (instead of UNLEASHX_TOKEN), re-read once after a 401",
        flag="--token-file PATH",
        commands=_API,
        env="UNLEASHX_TOKEN_FILE",
    )
    rate: RateSpec = setting(
        DEFAULT_RATE,
        rate_spec,
        RATE_HELP,
        flag="--rate SPEC",
        commands=_API,
    )
    burst: int = setting(1, integer(1, 1000), "requests allowed back to back before pacing starts")
    rate_margin: float = setting(
        0.015,
        number(0.0, 0.5),
        "share of the rate kept unused against network jitter, 0..0.5 (1.5 %: measured, see "
        "docs/performance.md)",
    )
    concurrency: int = setting(
        64,
        integer(1, 256),
        "requests in flight at most: the adaptive limit's ceiling, or the fixed limit",
        flag="--concurrency N",
        commands=_SENDING,
    )
    concurrency_mode: str = setting(
        "adaptive",
        one_of("adaptive", "fixed"),
        "adaptive (the in-flight limit follows the server: rate x latency, lowered on 429, "
        "5xx, timeouts or slower answers) or fixed (always --concurrency)",
        flag="--concurrency-mode MODE",
        commands=_SENDING,
    )
    batch_size: int = setting(
        100,
        integer(1, 1000),
        "ids per request, or per stream entry for enqueue, 1..1000",
        flag="--batch-size N",
        commands=(RUN, ENQUEUE, CONSUME),
    )
    timeout: float = setting(
        30.0, seconds(0.1, 3600), "seconds per request", flag="--timeout S", commands=_API
    )
    max_attempts: int = setting(
        6,
        integer(1, 100),
        "attempts per batch, first included",
        flag="--max-attempts N",
        commands=_API,
    )
    max_retry_time: float = setting(
        300.0, seconds(0.0, 86400), "seconds one batch may spend on attempts and backoff"
    )
    backoff_initial: float = setting(
        0.5, seconds(0.0, 600), "seconds of the first backoff at most, doubling up to backoff_max"
    )
    backoff_max: float = setting(30.0, seconds(0.0, 3600), "seconds of the longest backoff")
    campaign_id: int | None = setting(
        None,
        integer(1, 2**63 - 1),
        "campaign for rows without a campaign_id column",
        flag="--campaign-id N",
        commands=(RUN, ENQUEUE),
    )
    audit_dir: Path = setting(Path("purge-audit"), path, "where audit logs go, one per run")
    audit_log: Path | None = setting(
        None,
        path,
        "the audit log",
        flag="--audit-log PATH",
        commands=SETTING_COMMANDS,
        shown="purge-audit/audit-RUN_ID.jsonl",
    )
    audit_key_file: Path | None = setting(
        None,
        path,
        "HMAC key file: sign the audit chain head in run_finished",
        flag="--audit-key-file PATH",
        commands=_API,
    )
    sign_key: Path | None = setting(
        None,
        path,
        "Ed25519 private key (audit keygen): sign the audit chain head at each checkpoint "
        "and in run_finished",
        flag="--sign-key PATH",
        env="AUDIENCE_PURGE_SIGN_KEY",
        commands=_API,
    )
    report: Path | None = setting(
        None,
        path,
        "write a JSON summary here; - writes it to stdout (and the human summary to stderr)",
        flag="--report PATH",
        commands=(RUN,),
    )
    failed_out: Path | None = setting(
        None,
        path,
        "write the failed ids here, as a CSV that run --input accepts",
        flag="--failed-out PATH",
        commands=(RUN,),
    )
    results: Path | None = setting(
        None,
        path,
        "write one CSV row per input row here: line, campaign_id, audience_id, outcome "
        "(deleted, failed, rejected, duplicate, still_present), reason, http_status, "
        "attempts, batch_id, run_id",
        flag="--results PATH",
        commands=(RUN,),
    )
    verify: bool = setting(
        False,
        boolean,
        "after the purge, read each campaign back (audience-list) and check that no id "
        "recorded as deleted is still there; one still there fails (reason still_present)",
        flag="--verify",
        commands=(RUN,),
    )
    page_size: int = setting(
        1000,
        integer(1, 10_000),
        "records per audience-list page when selecting or verifying",
        flag="--page-size N",
        commands=(RUN,),
    )
    state_dir: Path | None = setting(
        None,
        path,
        "where progress is kept for resuming",
        flag="--state-dir DIR",
        commands=(RUN,),
        shown="purge-state/NAME-HASH, derived from the input",
    )
    fresh: bool = setting(
        False, boolean, "ignore and replace saved progress", flag="--fresh", commands=(RUN,)
    )
    retry_failed: bool = setting(
        True,
        boolean,
        "on resume, retry the ids that failed in earlier runs; --no-retry-failed leaves them",
        flag="--no-retry-failed",
        commands=(RUN,),
    )
    grace: float = setting(
        20.0,
        seconds(0.0, 3600),
        "seconds in-flight requests get after SIGTERM/SIGINT",
        flag="--grace S",
        commands=_SENDING,
    )
    checkpoint_interval: float = setting(
        1.0, seconds(0.05, 3600), "seconds between two checkpoints of the progress"
    )
    # Kubernetes Indexed Jobs set JOB_COMPLETION_INDEX; the count must be given.
    shard_index: int | None = setting(
        None,
        integer(0, 100_000),
        "this worker's slice of the ids, below shard_count (flag: run --shard INDEX/COUNT)",
        env="JOB_COMPLETION_INDEX",
    )
    shard_count: int | None = setting(
        None,
        integer(1, 100_000),
        "number of shards the ids are split into",
        flag="--shard-count N",
        commands=(RUN,),
        env="AUDIENCE_PURGE_SHARD_COUNT",
    )
    redis_url: str | None = setting(
        None,
        text,
        "Redis for queue mode and a shared rate budget: redis://host:port/db",
        flag="--redis URL",
        commands=_REDIS,
        required=_QUEUE,
        env="AUDIENCE_PURGE_REDIS_URL",
        secret=True,
    )
    redis_backoff_initial: float = setting(
        0.5,
        seconds(0.0, 600),
        "seconds of the first wait at most after a failed Redis call, doubling up to "
        "redis_backoff_max",
        flag="--redis-backoff-initial S",
        commands=_REDIS,
    )
    redis_backoff_max: float = setting(
        5.0,
        seconds(0.0, 3600),
        "seconds of the longest wait between Redis retries",
        flag="--redis-backoff-max S",
        commands=_REDIS,
    )
    redis_outage_max: float = setting(
        0.0,
        seconds(0.0, 31_536_000),
        "seconds consume keeps retrying its reads while Redis is away (connection refused, "
        "timeouts, loading, failing over) before it ends with exit 69; 0: for as long as it "
        "takes",
        flag="--redis-outage-max S",
        commands=(CONSUME,),
    )
    stream: str | None = setting(
        None, text, "stream name", flag="--stream NAME", commands=_QUEUE, required=_QUEUE
    )
    group: str = setting(
        "audience-purge", text, "consumer group", flag="--group NAME", commands=(CONSUME,)
    )
    consumer: str | None = setting(
        None,
        text,
        "consumer name; one process at a time may use a name (a second is refused)",
        flag="--consumer NAME",
        commands=(CONSUME,),
        shown="unique per process: the hostname (the pod name), PID and random",
    )
    dead_stream: str | None = setting(
        None,
        text,
        "dead-letter stream",
        flag="--dead-stream NAME",
        commands=(CONSUME,),
        shown="STREAM:dead",
    )
    dead_letter_max: int = setting(
        100_000,
        integer(0, 1_000_000_000),
        "dead letters kept at most: beyond it the oldest are trimmed (the audit log keeps "
        "their ids); 0 keeps them all",
        flag="--dead-letter-max N",
        commands=(CONSUME,),
    )
    until_empty: bool = setting(
        False,
        boolean,
        "exit 0 once nothing is new or pending for the group (for Jobs)",
        flag="--until-empty",
        commands=(CONSUME,),
    )
    max_deliveries: int = setting(
        5,
        integer(1, 1000),
        "dead-letter an entry delivered more than this many times",
        flag="--max-deliveries N",
        commands=(CONSUME,),
    )
    claim_idle: float = setting(
        600.0,
        seconds(1.0, 86400 * 7),
        "take over entries idle this many seconds; above max_retry_time + timeout",
        flag="--claim-idle S",
        commands=(CONSUME,),
    )
    rate_scope: str = setting(
        "local",
        one_of("local", "shared"),
        "local, or shared by every worker using the same --redis and rate key",
        flag="--rate-scope SCOPE",
        commands=_SENDING,
    )
    rate_key: str | None = setting(
        None,
        text,
        "name of the shared rate budget",
        flag="--rate-key KEY",
        commands=_SENDING,
        shown="derived from the base URL",
    )
    ref: str | None = setting(
        None,
        text,
        "a reference copied into every entry and audit record",
        flag="--ref TEXT",
        commands=(ENQUEUE,),
    )
    force: bool = setting(
        False,
        boolean,
        "enqueue an input again that the stream already holds (or start an interrupted "
        "enqueue over)",
        flag="--force",
        commands=(ENQUEUE,),
    )
    insecure_http: bool = setting(
        False,
        boolean,
        "allow plain http to a non-loopback host (the token is exposed)",
        flag="--insecure-http",
        commands=_API,
    )
    dry_run: bool = setting(
        False,
        boolean,
        "validate and show what would be sent; send nothing; no token needed "
        "(consume and enqueue refuse it)",
        flag="--dry-run",
        commands=(RUN, DELETE_ALL),
    )
    max_deletes: int | None = setting(
        None,
        integer(1, 2**63 - 1),
        "refuse to start (exit 2, nothing sent) when the input holds more valid ids than N "
        "(counted in a pass over the input before anything is sent)",
        flag="--max-deletes N",
        commands=(RUN,),
    )
    expect_count: int | None = setting(
        None,
        integer(0, 2**63 - 1),
        "refuse to start (exit 2, nothing sent) unless the input holds exactly N valid ids "
        "(a truncated or wrong file)",
        flag="--expect-count N",
        commands=(RUN,),
    )
    halt_on_failure_rate: float | None = setting(
        None,
        percentage,
        "stop starting requests when more than P of the last ids (at least 100) failed, "
        "e.g. 5%: in-flight requests finish, the state is saved, exit 1, resumable",
        flag="--halt-on-failure-rate P",
        commands=_SENDING,
    )
    deadline: datetime | None = setting(
        None,
        deadline_parser,
        "stop gracefully at this time (exit 75, resumable): a duration from the start such "
        "as 2h or 1h30m, or an RFC 3339 time such as 2026-12-01T03:00:00Z (see Durations and "
        "times); the ETA is logged, and a warning comes once if the deadline is at risk",
        flag="--deadline WHEN",
        commands=_SENDING,
    )
    progress: str = setting(
        "auto",
        one_of("auto", "bar", "log", "off"),
        "auto (a bar on a terminal, log events otherwise), bar, log or off",
        flag="--progress MODE",
        commands=(RUN,),
    )
    progress_interval: float = setting(
        5.0, seconds(0.1, 3600), "seconds between two progress log events"
    )
    log_level: str = setting(
        "info",
        one_of("debug", "info", "warning", "error"),
        "operational logs on stderr: debug, info, warning or error",
        flag="--log-level LEVEL",
        commands=_API,
    )
    log_format: str = setting(
        "auto",
        one_of("auto", "json", "console"),
        "operational logs on stderr: json (one object per line), console, or auto (console "
        "on a terminal, json otherwise)",
        flag="--log-format FORMAT",
        commands=SETTING_COMMANDS,
    )
    metrics_port: int | None = setting(
        None,
        integer(0, 65535),
        "serve /metrics, /healthz and /readyz on this port; consume serves them on "
        f"{DEFAULT_METRICS_PORT} unless told otherwise (a free port if that one is busy), "
        "run only when asked; 0 turns them off",
        flag="--metrics-port N",
        commands=_SENDING,
        env="AUDIENCE_PURGE_METRICS_PORT",
        shown=f"off (consume: {DEFAULT_METRICS_PORT})",
    )
    metrics_address: str = setting(
        "127.0.0.1",
        text,
        "the address the metrics and health endpoints listen on: loopback by default; in a "
        "container, 0.0.0.0 (Prometheus and the kubelet's probes reach the pod's IP)",
        flag="--metrics-address HOST",
        commands=_SENDING,
        env="AUDIENCE_PURGE_METRICS_ADDRESS",
    )
    pushgateway: str | None = setting(
        None,
        text,
        "push the final metrics to this Prometheus Pushgateway URL when the run ends (for "
        "one-shot Jobs, which end before a scrape)",
        flag="--pushgateway URL",
        commands=_SENDING,
        secret=True,
    )
    metrics_job: str = setting(
        "audience-purge",
        text,
        "the job name the metrics are pushed under (the Kubernetes Job's name, say)",
        flag="--metrics-job NAME",
        commands=_SENDING,
    )

    def public(self) -> dict[str, Any]:
        """The effective settings for the audit log: secrets left out, values printable."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "token":
                continue
            value = getattr(self, f.name)
            if f.name == "base_url":
                value = without_userinfo(value)  # checked: its host shown as it is
            elif isinstance(value, str):
                value = redact_urls(value)  # every other URL-valued setting, now or later
            out[f.name] = (
                value if value is None or isinstance(value, int | float | bool) else str(value)
            )
        return out


# Every setting's declaration by name, in field order.
DECLARATIONS: Mapping[str, Declaration] = MappingProxyType(
    {f.name: f.metadata[DECLARATION] for f in fields(Settings)}
)
# Pairs (low, high) of settings where high must not be smaller than low.
ORDERED = (("backoff_initial", "backoff_max"), ("redis_backoff_initial", "redis_backoff_max"))
