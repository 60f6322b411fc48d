"""Resolving the settings once: flags > environment > TOML file > defaults, then the checks
of values that are each valid but do not fit together."""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, unquote, urlsplit

from yarl import URL

from worker.errors import ConfigError
from worker.sending.credentials import redact_url
from worker.settings.catalogue import DECLARATIONS, ORDERED, Settings
from worker.settings.declare import secret

_DEFAULT_PORTS = {"http": 80, "https": 443}
_COMPONENTS = ("scheme", "user", "password", "host", "port", "path")


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
    """The base URL without a trailing slash, once it is safe to send the token to.

    It must read the same to this check (urllib) and to the HTTP client (aiohttp reads URLs
    with yarl): a URL the two parsers disagree on could pass as loopback here and go
    elsewhere, or fail every request. Plain http is refused but to loopback, unless
    ``insecure_http``.

    Raises:
        ConfigError: naming base_url; the message masks any user and password, and quotes
            no parser's message (which could hold a piece of the password).
    """
    _check_characters(url)
    shown = redact_url(url)
    parts, port = _split(url, shown)
    _check_same_in_client(url, shown, parts, port)
    host = parts.hostname or ""
    if parts.scheme == "http" and not insecure_http and not is_loopback(host):
        raise ConfigError(
            f"plain http to {host} is refused (the token would travel unencrypted); "
            "use https, or --insecure-http if you really mean it",
            key="base_url",
        )
    return url.rstrip("/")


def _split(url: str, shown: str) -> tuple[SplitResult, int | None]:
    """urllib's reading of ``url`` and its port: an http(s) URL with an ASCII host and
    neither query nor fragment (``/delete-audience`` is appended to it)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ConfigError(
            f"{shown!r} is not a valid URL (check the brackets of an IPv6 host)", key="base_url"
        ) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{shown!r} is not an http(s) URL", key="base_url")
    if not parts.hostname.isascii():
        raise ConfigError(
            f"{shown!r}: write the host in ASCII (an international name in its xn-- form)",
            key="base_url",
        )
    if "?" in url or "#" in url:
        raise ConfigError(
            f"{shown!r}: a base URL has no query or fragment (/delete-audience is appended)",
            key="base_url",
        )
    try:
        return parts, parts.port
    except ValueError:
        raise ConfigError(
            f"{shown!r} is not a valid URL: the port is not a number from 0 to 65535",
            key="base_url",
        ) from None


def _check_characters(url: str) -> None:
    """Refuse what parsers drop or read differently: urllib silently removes tabs and line
    breaks, and a backslash ends the host for browsers and yarl but not for urllib."""
    for position, char in enumerate(url, start=1):
        if char == "\\" or char.isspace() or not char.isprintable():
            raise ConfigError(
                f"the URL holds a space, a control character or a backslash (character {position})",
                key="base_url",
            )


def _check_same_in_client(url: str, shown: str, parts: SplitResult, port: int | None) -> None:
    """Refuse a URL that yarl (the HTTP client's parser) reads otherwise than urllib."""
    try:
        client = URL(url)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{shown!r} is not a valid URL to the HTTP client", key="base_url"
        ) from None
    ours = (
        parts.scheme,
        unquote(parts.username or "") or None,
        unquote(parts.password or "") or None,
        _host_key(parts.hostname or ""),
        port or _DEFAULT_PORTS.get(parts.scheme),
        unquote(parts.path) or "/",
    )
    theirs = (
        client.scheme,
        client.user or None,
        client.password or None,
        _host_key(client.raw_host or ""),
        client.port,
        client.path or "/",
    )
    for name, mine, client_reads in zip(_COMPONENTS, ours, theirs, strict=True):
        if mine != client_reads:
            raise ConfigError(
                f"{shown!r} is ambiguous: the HTTP client would read its {name} differently",
                key="base_url",
            )


def _host_key(host: str) -> object:
    """A host as compared: IP addresses by value (yarl compresses IPv6), names lower-cased."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return host.lower()


def is_loopback(host: str) -> bool:
    """Whether plain http to ``host`` stays on this machine: ``localhost`` or a loopback
    address (``localhost.``, a name DNS may answer for, is not)."""
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
