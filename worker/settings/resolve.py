"""Resolving the settings once: flags > environment > TOML file > defaults, then the checks
of values that are each valid but do not fit together."""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from worker.errors import ConfigError
from worker.settings.catalogue import DECLARATIONS, ORDERED, Settings
from worker.settings.declare import secret


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
        token = secret(env["UNLEASHX_TOKEN"]) if env.get("UNLEASHX_TOKEN") else None
    merged.update(_validated(given, "option"))
    settings = Settings(**merged, token=token)
    for low, high in ORDERED:
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
