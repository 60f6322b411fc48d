"""One frozen settings object, resolved once: flags > environment > TOML file > defaults.

Every key of the config file is declared in :data:`KEYS` with its parser; an unknown key, a
wrong type or an out-of-range value raises :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from worker.errors import ConfigError
from worker.sending.credentials import Secret, redact_url
from worker.sending.ratelimit import RateSpec, parse_rate

DEFAULT_BASE_URL = "https://www.tryunleashx.com/api/v1/global"
DEFAULT_RATE = RateSpec(100, 60.0)  # the vendor's free plan


@dataclass(frozen=True)
class Settings:
    """Everything a run needs; ``token`` is a :class:`Secret` and never printed."""

    base_url: str = DEFAULT_BASE_URL
    token: Secret | None = field(default=None, repr=False)
    token_file: Path | None = None
    rate: RateSpec = DEFAULT_RATE
    burst: int = 1
    rate_margin: float = 0.03
    concurrency: int = 8
    batch_size: int = 100
    timeout: float = 30.0
    max_attempts: int = 6
    max_retry_time: float = 300.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    campaign_id: int | None = None
    audit_dir: Path = Path("purge-audit")
    audit_log: Path | None = None
    audit_key_file: Path | None = None
    report: Path | None = None
    failed_out: Path | None = None
    state_dir: Path | None = None
    fresh: bool = False
    retry_failed: bool = True
    grace: float = 20.0
    checkpoint_interval: float = 1.0
    shard_index: int | None = None
    shard_count: int | None = None
    redis_url: str | None = field(default=None, repr=False)
    stream: str | None = None
    group: str = "audience-purge"
    consumer: str | None = None
    dead_stream: str | None = None
    until_empty: bool = False
    max_deliveries: int = 5
    claim_idle: float = 600.0
    rate_scope: str = "local"
    rate_key: str | None = None
    ref: str | None = None
    insecure_http: bool = False
    dry_run: bool = False
    progress: str = "auto"
    progress_interval: float = 5.0
    log_level: str = "info"

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


KEYS: dict[str, Callable[[Any], Any]] = {
    "base_url": _str,
    "token_file": _path,
    "rate": _rate,
    "burst": _int(1, 1000),
    "rate_margin": _float(0.0, 0.5),
    "concurrency": _int(1, 256),
    "batch_size": _int(1, 1000),
    "timeout": _float(0.1, 3600),
    "max_attempts": _int(1, 100),
    "max_retry_time": _float(0.0, 86400),
    "backoff_initial": _float(0.0, 600),
    "backoff_max": _float(0.0, 3600),
    "campaign_id": _int(1, 2**63 - 1),
    "audit_dir": _path,
    "audit_log": _path,
    "audit_key_file": _path,
    "report": _path,
    "failed_out": _path,
    "state_dir": _path,
    "fresh": _bool,
    "retry_failed": _bool,
    "grace": _float(0.0, 3600),
    "checkpoint_interval": _float(0.05, 3600),
    "shard_index": _int(0, 100_000),
    "shard_count": _int(1, 100_000),
    "redis_url": _str,
    "stream": _str,
    "group": _str,
    "consumer": _str,
    "dead_stream": _str,
    "until_empty": _bool,
    "max_deliveries": _int(1, 1000),
    "claim_idle": _float(1.0, 86400 * 7),
    "rate_scope": _choice("local", "shared"),
    "rate_key": _str,
    "ref": _str,
    "insecure_http": _bool,
    "dry_run": _bool,
    "progress": _choice("auto", "bar", "log", "off"),
    "progress_interval": _float(0.1, 3600),
    "log_level": _choice("debug", "info", "warning", "error"),
}
ENV_KEYS = {
    "UNLEASHX_BASE_URL": "base_url",
    "UNLEASHX_TOKEN_FILE": "token_file",
    "AUDIENCE_PURGE_REDIS_URL": "redis_url",
    # Kubernetes Indexed Jobs set JOB_COMPLETION_INDEX; the count must be given.
    "JOB_COMPLETION_INDEX": "shard_index",
    "AUDIENCE_PURGE_SHARD_COUNT": "shard_count",
}


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
        parser = KEYS.get(key)
        if parser is None:
            if key == "token":
                raise ConfigError(
                    f"{origin}: an API token must not be written in the config file; "
                    "use token_file or UNLEASHX_TOKEN",
                    key=key,
                )
            raise ConfigError(f"{origin}: unknown key", key=key)
        try:
            out[key] = parser(value)
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
    merged.update(
        _validated(
            {key: env[name] for name, key in ENV_KEYS.items() if env.get(name)}, "environment"
        )
    )
    given = {key: value for key, value in flags.items() if value is not None}
    if "token_file" in given or ("token_file" in merged and "UNLEASHX_TOKEN" not in env):
        token = None
    else:
        token = Secret(env["UNLEASHX_TOKEN"].strip()) if env.get("UNLEASHX_TOKEN") else None
    merged.update(_validated(given, "option"))
    if merged.get("backoff_max", 30.0) < merged.get("backoff_initial", 0.5):
        raise ConfigError("must not be smaller than backoff_initial", key="backoff_max")
    settings = Settings(**merged, token=token)
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
