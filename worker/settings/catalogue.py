"""One frozen settings object, resolved once: flags > environment > TOML file > defaults.

Every setting is declared once, on its :class:`Settings` field (see :func:`setting`): its
parser with its bounds, its help, its flag and the subcommands that offer it, its environment
variable, and whether it is a config-file key. The CLI's flags, the config file's validation
and the README's option tables all follow from :data:`DECLARATIONS`. An unknown key, a wrong
type or an out-of-range value raises :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar
from urllib.parse import urlsplit

from worker.errors import ConfigError
from worker.sending.credentials import Secret, redact_url
from worker.sending.ratelimit import RateSpec, parse_rate

DEFAULT_BASE_URL = "https://www.tryunleashx.com/api/v1/global"
DEFAULT_RATE = RateSpec(100, 60.0)  # the vendor's free plan

# The subcommands whose flags are settings.
RUN, ENQUEUE, CONSUME, DELETE_ALL = "run", "enqueue", "consume", "delete-all"
SETTING_COMMANDS = (RUN, ENQUEUE, CONSUME, DELETE_ALL)
_API = (RUN, CONSUME, DELETE_ALL)
_SENDING = (RUN, CONSUME)
_QUEUE = (ENQUEUE, CONSUME)
_REDIS = (RUN, ENQUEUE, CONSUME)

_DECLARATION = "setting"
_T = TypeVar("_T")


@dataclass(frozen=True)
class Declaration:
    """How one setting is given: everything but its name and type, which are its field's."""

    default: Any
    parse: Callable[[Any], Any]
    help: str
    flag: str | None
    metavar: str | None
    commands: tuple[str, ...]
    required: tuple[str, ...]
    env: str | None
    toml: bool
    shown: str | None

    @property
    def switch(self) -> bool:
        """A flag without a value: giving it stores the opposite of the default."""
        return self.flag is not None and self.metavar is None

    @property
    def usage(self) -> str:
        """The flag as typed, ``--batch-size N``; empty for a setting without a flag."""
        return " ".join(part for part in (self.flag, self.metavar) if part)

    @property
    def default_text(self) -> str:
        """The default as documented; empty when there is none to show."""
        if self.shown is not None:
            return self.shown
        if self.default is None:
            return ""
        if isinstance(self.default, bool):
            return str(self.default).lower()
        if isinstance(self.default, float):
            return f"{self.default:g}"
        return str(self.default)

    @property
    def flag_help(self) -> str:
        """The help of the flag: the meaning, then the default and the environment variable."""
        notes = [f"default {self.default_text}"] if self.default_text and not self.switch else []
        if self.env:
            notes.append(f"env {self.env}")
        return f"{self.help} ({'; '.join(notes)})" if notes else self.help


def setting(
    default: _T,
    parse: Callable[[Any], Any],
    help: str,
    *,
    flag: str | None = None,
    commands: Iterable[str] = (),
    required: Iterable[str] = (),
    env: str | None = None,
    toml: bool = True,
    shown: str | None = None,
    secret: bool = False,
) -> _T:
    """Declare a :class:`Settings` field.

    ``parse`` turns a TOML, environment or flag value into the field's type, raising
    ValueError. ``flag`` is ``"--name METAVAR"``, or ``"--name"`` alone for a switch (a boolean
    flag storing the opposite of the default); the subcommands in ``commands`` offer it, and
    those in ``required`` require it. ``shown`` documents a default that the value cannot say,
    such as one derived at run time. A ``secret`` is left out of the repr.
    """
    name, _, metavar = (flag or "").partition(" ")
    declared = Declaration(
        default=default,
        parse=parse,
        help=help,
        flag=name or None,
        metavar=metavar or None,
        commands=tuple(commands),
        required=tuple(required),
        env=env,
        toml=toml,
        shown=shown,
    )
    return field(default=default, repr=not secret, metadata={_DECLARATION: declared})


def _int(low: int, high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, str) and value.strip().lstrip("-").isdigit():
                value = int(value)
            else:
                raise ValueError(f"expected an integer, got {value!r}")
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}, got {value}")
        return int(value)

    return parse


def _float(low: float, high: float) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        if isinstance(value, bool):
            raise ValueError(f"expected a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected a number, got {value!r}") from None
        if not low <= number <= high:
            raise ValueError(f"must be between {low:g} and {high:g}, got {number:g}")
        return number

    return parse


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "0", "false", "no"):
        return value.lower() in ("1", "true", "yes")
    raise ValueError(f"expected true or false, got {value!r}")


def _str(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value.strip()


def _secret(value: Any) -> Secret:
    return Secret(str(value).strip())


def _path(value: Any) -> Path:
    return Path(_str(value)).expanduser()


def _rate(value: Any) -> RateSpec:
    if isinstance(value, RateSpec):
        return value
    return parse_rate(_str(value))


def _choice(*options: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = _str(value).lower()
        if text not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {value!r}")
        return text

    return parse


@dataclass(frozen=True)
class Settings:
    """Everything a run needs; ``token`` is a :class:`Secret` and never printed."""

    base_url: str = setting(
        DEFAULT_BASE_URL,
        _str,
        "API base URL; /delete-audience is appended",
        flag="--base-url URL",
        commands=_API,
        env="UNLEASHX_BASE_URL",
    )
    token: Secret | None = setting(
        None,
        _secret,
        "the API token; never in the config file",
        env="UNLEASHX_TOKEN",
        toml=False,
        secret=True,
    )
    token_file: Path | None = setting(
        None,
        _path,
        "file holding the API token (instead of UNLEASHX_TOKEN), re-read once after a 401",
        flag="--token-file PATH",
        commands=_API,
        env="UNLEASHX_TOKEN_FILE",
    )
    rate: RateSpec = setting(
        DEFAULT_RATE,
        _rate,
        "request rate: N/second, N/s, N/minute or N/hour",
        flag="--rate SPEC",
        commands=_API,
    )
    burst: int = setting(1, _int(1, 1000), "requests allowed back to back before pacing starts")
    rate_margin: float = setting(
        0.03, _float(0.0, 0.5), "share of the rate kept unused against network jitter, 0..0.5"
    )
    concurrency: int = setting(
        8, _int(1, 256), "requests in flight at most", flag="--concurrency N", commands=_SENDING
    )
    batch_size: int = setting(
        100,
        _int(1, 1000),
        "ids per request, or per stream entry for enqueue, 1..1000",
        flag="--batch-size N",
        commands=(RUN, ENQUEUE, CONSUME),
    )
    timeout: float = setting(
        30.0, _float(0.1, 3600), "seconds per request", flag="--timeout S", commands=_API
    )
    max_attempts: int = setting(
        6,
        _int(1, 100),
        "attempts per batch, first included",
        flag="--max-attempts N",
        commands=_API,
    )
    max_retry_time: float = setting(
        300.0, _float(0.0, 86400), "seconds one batch may spend on attempts and backoff"
    )
    backoff_initial: float = setting(
        0.5, _float(0.0, 600), "seconds of the first backoff at most, doubling up to backoff_max"
    )
    backoff_max: float = setting(30.0, _float(0.0, 3600), "seconds of the longest backoff")
    campaign_id: int | None = setting(
        None,
        _int(1, 2**63 - 1),
        "campaign for rows without a campaign_id column",
        flag="--campaign-id N",
        commands=(RUN, ENQUEUE),
    )
    audit_dir: Path = setting(Path("purge-audit"), _path, "where audit logs go, one per run")
    audit_log: Path | None = setting(
        None,
        _path,
        "the audit log",
        flag="--audit-log PATH",
        commands=SETTING_COMMANDS,
        shown="purge-audit/audit-RUN_ID.jsonl",
    )
    audit_key_file: Path | None = setting(
        None,
        _path,
        "HMAC key file: sign the audit chain head in run_finished",
        flag="--audit-key-file PATH",
        commands=_API,
    )
    report: Path | None = setting(
        None, _path, "write a JSON summary here", flag="--report PATH", commands=(RUN,)
    )
    failed_out: Path | None = setting(
        None,
        _path,
        "write the failed ids here, as a CSV that run --input accepts",
        flag="--failed-out PATH",
        commands=(RUN,),
    )
    state_dir: Path | None = setting(
        None,
        _path,
        "where progress is kept for resuming",
        flag="--state-dir DIR",
        commands=(RUN,),
        shown="purge-state/NAME-HASH, derived from the input",
    )
    fresh: bool = setting(
        False, _bool, "ignore and replace saved progress", flag="--fresh", commands=(RUN,)
    )
    retry_failed: bool = setting(
        True,
        _bool,
        "on resume, retry the ids that failed in earlier runs; --no-retry-failed leaves them",
        flag="--no-retry-failed",
        commands=(RUN,),
    )
    grace: float = setting(
        20.0,
        _float(0.0, 3600),
        "seconds in-flight requests get after SIGTERM/SIGINT",
        flag="--grace S",
        commands=_SENDING,
    )
    checkpoint_interval: float = setting(
        1.0, _float(0.05, 3600), "seconds between two checkpoints of the progress"
    )
    # Kubernetes Indexed Jobs set JOB_COMPLETION_INDEX; the count must be given.
    shard_index: int | None = setting(
        None,
        _int(0, 100_000),
        "this worker's slice of the ids, below shard_count (flag: run --shard INDEX/COUNT)",
        env="JOB_COMPLETION_INDEX",
    )
    shard_count: int | None = setting(
        None,
        _int(1, 100_000),
        "number of shards the ids are split into",
        flag="--shard-count N",
        commands=(RUN,),
        env="AUDIENCE_PURGE_SHARD_COUNT",
    )
    redis_url: str | None = setting(
        None,
        _str,
        "Redis for queue mode and a shared rate budget: redis://host:port/db",
        flag="--redis URL",
        commands=_REDIS,
        required=_QUEUE,
        env="AUDIENCE_PURGE_REDIS_URL",
        secret=True,
    )
    redis_backoff_initial: float = setting(
        0.5,
        _float(0.0, 600),
        "seconds of the first wait at most after a failed Redis call, doubling up to "
        "redis_backoff_max",
        flag="--redis-backoff-initial S",
        commands=_REDIS,
    )
    redis_backoff_max: float = setting(
        5.0,
        _float(0.0, 3600),
        "seconds of the longest wait between Redis retries",
        flag="--redis-backoff-max S",
        commands=_REDIS,
    )
    stream: str | None = setting(
        None, _str, "stream name", flag="--stream NAME", commands=_QUEUE, required=_QUEUE
    )
    group: str = setting(
        "audience-purge", _str, "consumer group", flag="--group NAME", commands=(CONSUME,)
    )
    consumer: str | None = setting(
        None,
        _str,
        "consumer name",
        flag="--consumer NAME",
        commands=(CONSUME,),
        shown="the hostname, i.e. the pod name",
    )
    dead_stream: str | None = setting(
        None,
        _str,
        "dead-letter stream",
        flag="--dead-stream NAME",
        commands=(CONSUME,),
        shown="STREAM:dead",
    )
    until_empty: bool = setting(
        False,
        _bool,
        "exit 0 once nothing is new or pending for the group (for Jobs)",
        flag="--until-empty",
        commands=(CONSUME,),
    )
    max_deliveries: int = setting(
        5,
        _int(1, 1000),
        "dead-letter an entry delivered more than this many times",
        flag="--max-deliveries N",
        commands=(CONSUME,),
    )
    claim_idle: float = setting(
        600.0,
        _float(1.0, 86400 * 7),
        "take over entries idle this many seconds; above max_retry_time + timeout",
        flag="--claim-idle S",
        commands=(CONSUME,),
    )
    rate_scope: str = setting(
        "local",
        _choice("local", "shared"),
        "local, or shared by every worker using the same --redis and rate key",
        flag="--rate-scope SCOPE",
        commands=_SENDING,
    )
    rate_key: str | None = setting(
        None,
        _str,
        "name of the shared rate budget",
        flag="--rate-key KEY",
        commands=_SENDING,
        shown="derived from the base URL",
    )
    ref: str | None = setting(
        None,
        _str,
        "a reference copied into every entry and audit record",
        flag="--ref TEXT",
        commands=(ENQUEUE,),
    )
    insecure_http: bool = setting(
        False,
        _bool,
        "allow plain http to a non-loopback host (the token is exposed)",
        flag="--insecure-http",
        commands=_API,
    )
    dry_run: bool = setting(
        False,
        _bool,
        "validate and show what would be sent; send nothing; no token needed",
        flag="--dry-run",
        commands=_API,
    )
    progress: str = setting(
        "auto",
        _choice("auto", "bar", "log", "off"),
        "auto (a bar on a terminal, log events otherwise), bar, log or off",
        flag="--progress MODE",
        commands=(RUN,),
    )
    progress_interval: float = setting(
        5.0, _float(0.1, 3600), "seconds between two progress log events"
    )
    log_level: str = setting(
        "info",
        _choice("debug", "info", "warning", "error"),
        "operational logs on stderr: debug, info, warning or error",
        flag="--log-level LEVEL",
        commands=_API,
    )

    def public(self) -> dict[str, Any]:
        """The effective settings for the audit log: secrets left out, values printable."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "token":
                continue
            value = getattr(self, f.name)
            if f.name == "redis_url" and value is not None:
                value = redact_url(value)
            out[f.name] = (
                value if value is None or isinstance(value, int | float | bool) else str(value)
            )
        return out


# Every setting's declaration by name, in field order.
DECLARATIONS: Mapping[str, Declaration] = MappingProxyType(
    {f.name: f.metadata[_DECLARATION] for f in fields(Settings)}
)
# Pairs (low, high) of settings where high must not be smaller than low.
_ORDERED = (("backoff_initial", "backoff_max"), ("redis_backoff_initial", "redis_backoff_max"))


def read_config_file(path: Path) -> dict[str, Any]:
    """Parse a TOML config file; a missing or malformed file is a ConfigError naming it."""
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def _validated(raw: Mapping[str, Any], origin: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in raw.items():
        declared = DECLARATIONS.get(key)
        if declared is None or not declared.toml:
            if key == "token":
                raise ConfigError(
                    f"{origin}: an API token must not be written in the config file; "
                    "use token_file or UNLEASHX_TOKEN",
                    key=key,
                )
            raise ConfigError(f"{origin}: unknown key", key=key)
        try:
            out[key] = declared.parse(value)
        except ValueError as exc:
            raise ConfigError(f"{origin}: {exc}", key=key) from None
    return out


def check_base_url(url: str, *, insecure_http: bool) -> str:
    """Refuse plain http to anything but loopback, unless explicitly allowed."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{url!r} is not an http(s) URL", key="base_url")
    if parts.scheme == "http" and not insecure_http and not is_loopback(parts.hostname):
        raise ConfigError(
            f"plain http to {parts.hostname} is refused (the token would travel unencrypted); "
            "use https, or --insecure-http if you really mean it",
            key="base_url",
        )
    return url.rstrip("/")


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def load_settings(
    flags: Mapping[str, Any],
    env: Mapping[str, str],
    config_path: Path | None = None,
) -> Settings:
    """Merge defaults, the config file, the environment and the flags into one Settings.

    ``flags`` holds only the options the user actually gave (None means not given).
    """
    merged: dict[str, Any] = {}
    if config_path is not None:
        merged.update(_validated(read_config_file(config_path), str(config_path)))
    from_env = {
        key: env[declared.env]
        for key, declared in DECLARATIONS.items()
        if key != "token" and declared.env and env.get(declared.env)
    }
    merged.update(_validated(from_env, "environment"))
    given = {key: value for key, value in flags.items() if value is not None}
    if "token_file" in given or ("token_file" in merged and "UNLEASHX_TOKEN" not in env):
        token = None
    else:
        token = _secret(env["UNLEASHX_TOKEN"]) if env.get("UNLEASHX_TOKEN") else None
    merged.update(_validated(given, "option"))
    settings = Settings(**merged, token=token)
    for low, high in _ORDERED:
        if getattr(settings, high) < getattr(settings, low):
            raise ConfigError(f"must not be smaller than {low}", key=high)
    check_base_url(settings.base_url, insecure_http=settings.insecure_http)
    _check_combinations(settings)
    return settings


def _check_combinations(settings: Settings) -> None:
    """Values that are each valid but do not fit together."""
    # JOB_COMPLETION_INDEX alone (no count) does not shard: Kubernetes sets it on every
    # Indexed Job, sharded or not.
    if settings.shard_count is not None and settings.shard_index is None:
        raise ConfigError(
            "a shard count needs a shard index (or JOB_COMPLETION_INDEX)", key="shard"
        )
    if (
        settings.shard_index is not None
        and settings.shard_count is not None
        and settings.shard_index >= settings.shard_count
    ):
        raise ConfigError(
            f"index {settings.shard_index} is not below the count {settings.shard_count}",
            key="shard",
        )
    worst = settings.max_retry_time + settings.timeout
    if settings.claim_idle <= worst:
        raise ConfigError(
            f"must exceed the worst-case time of one batch (max_retry_time + timeout = "
            f"{worst:g} s), or live consumers' entries would be taken over",
            key="claim_idle",
        )
    if settings.rate_scope == "shared" and not settings.redis_url:
        raise ConfigError("a shared rate budget needs --redis URL", key="rate_scope")
