"""Resolving the settings once: flags > environment > TOML file > defaults, then the checks
of values that are each valid but do not fit together."""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Callable, Mapping
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


def _validated(raw: Mapping[str, Any], name: Callable[[str], str]) -> dict[str, Any]:
    """Each value parsed by its declaration; an error names the value as ``name`` says it
    was given (a flag, an environment variable, a key in a file)."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        declared = DECLARATIONS.get(key)
        if declared is None or not declared.toml:
            if key == "token":
                raise refused(
                    key,
                    name(key),
                    "an API token must not be written in the config file; "
                    "use token_file or UNLEASHX_TOKEN",
                )
            raise refused(key, name(key), "unknown key")
        try:
            out[key] = declared.parse(value)
        except ValueError as exc:
            raise refused(key, name(key), str(exc)) from None
    return out


def refused(key: str, name: str, reason: str) -> ConfigError:
    """A ConfigError about setting ``key`` that starts with ``name``, the way the user gave
    it (``--batch-size``, ``environment variable X``, ``batch_size in FILE``): the person
    reads what they typed, code still reads the key."""
    error = ConfigError(f"{name}: {reason}")
    error.key = key
    return error


def as_given(error: ConfigError, given_as: Mapping[str, str]) -> ConfigError:
    """``error`` (``KEY: reason``, as ConfigError words it) renamed by how the user gave the
    key's value; unchanged when it was not given, or already names it."""
    key = error.key
    prefix = f"{key}: "
    if key is None or key not in given_as or not str(error).startswith(prefix):
        return error
    return refused(key, given_as[key], str(error).removeprefix(prefix))


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
    *,
    flag_names: Mapping[str, str] | None = None,
) -> Settings:
    """Merge defaults, the config file, the environment and the flags into one Settings.

    ``flags`` holds only the options the user actually gave (None means not given);
    ``flag_names`` says how the CLI's user typed each (``--batch-size``), for the errors; a
    value without one is named by its key, as an embedding program gives it.
    """
    return resolve_settings(flags, env, config_path, flag_names=flag_names)[0]


def resolve_settings(
    flags: Mapping[str, Any],
    env: Mapping[str, str],
    config_path: Path | None = None,
    *,
    flag_names: Mapping[str, str] | None = None,
) -> tuple[Settings, dict[str, str]]:
    """:func:`load_settings`, and how each setting given was given (its flag as typed, its
    environment variable, its key in the file), for naming it in later errors.

    Raises:
        ConfigError: starting with that name, or with the key of a value not given.
    """
    merged: dict[str, Any] = {}
    given_as: dict[str, str] = {}
    if config_path is not None:
        in_file = read_config_file(config_path)
        given_as.update({key: f"{key} in {config_path}" for key in in_file})
        merged.update(_validated(in_file, given_as.__getitem__))
    from_env = {
        key: env[declared.env]
        for key, declared in DECLARATIONS.items()
        if key != "token" and declared.env and env.get(declared.env)
    }
    given_as.update({key: f"environment variable {DECLARATIONS[key].env}" for key in from_env})
    merged.update(_validated(from_env, given_as.__getitem__))
    given = {key: value for key, value in flags.items() if value is not None}
    if "token_file" in given or ("token_file" in merged and "UNLEASHX_TOKEN" not in env):
        token = None
    else:
        token = secret(env["UNLEASHX_TOKEN"]) if env.get("UNLEASHX_TOKEN") else None
    given_as.update({key: (flag_names or {}).get(key, key) for key in given})
    merged.update(_validated(given, given_as.__getitem__))
    settings = Settings(**merged, token=token)
    _check_together(settings, given_as)
    return settings, given_as


def _check_together(settings: Settings, given_as: Mapping[str, str]) -> None:
    """The checks of values that are each valid but do not fit together, naming each value
    as it was given."""

    def name(key: str) -> str:
        return given_as.get(key, key)

    for low, high in ORDERED:
        if getattr(settings, high) < getattr(settings, low):
            raise _disordered(settings, low, high, given_as)
    try:
        check_base_url(settings.base_url, insecure_http=settings.insecure_http)
    except ConfigError as exc:
        raise as_given(exc, given_as) from None
    _check_shard(settings, name)
    _check_combinations(settings, name)


def _disordered(
    settings: Settings, low: str, high: str, given_as: Mapping[str, str]
) -> ConfigError:
    """``high`` is below ``low``: named by the one the user gave (the higher, if both)."""
    if high not in given_as and low in given_as:
        other = f"{high} ({getattr(settings, high):g}, its default)"
        return refused(low, given_as[low], f"must not be larger than {other}")
    other = f"{given_as.get(low, low)} ({getattr(settings, low):g}"
    other += ")" if low in given_as else ", its default)"
    return refused(high, given_as.get(high, high), f"must not be smaller than {other}")


def _check_shard(settings: Settings, name: Callable[[str], str]) -> None:
    """A shard count needs an index below it. The pair is named ``shard`` (``--shard`` when
    one flag gave both), each value by where it came from."""
    index, count = settings.shard_index, settings.shard_count
    # JOB_COMPLETION_INDEX alone (no count) does not shard: Kubernetes sets it on every
    # Indexed Job, sharded or not.
    if count is not None and index is None:
        raise ConfigError(
            f"a shard count ({count}, from {name('shard_count')}) needs a shard index: "
            "--shard INDEX/COUNT, or JOB_COMPLETION_INDEX",
            key="shard",
        )
    if index is None or count is None or index < count:
        return
    reason = f"index {index} is not below the count {count}"
    if name("shard_index") == name("shard_count"):
        raise refused("shard", name("shard_index"), reason)
    raise ConfigError(
        f"{reason} (the index from {name('shard_index')}, the count from {name('shard_count')})",
        key="shard",
    )


def _check_combinations(settings: Settings, name: Callable[[str], str]) -> None:
    """Values that are each valid but do not fit together."""
    worst = settings.max_retry_time + settings.timeout
    if settings.claim_idle <= worst:
        raise refused(
            "claim_idle",
            name("claim_idle"),
            f"must exceed the worst-case time of one batch (max_retry_time + timeout = "
            f"{worst:g} s), or live consumers' entries would be taken over",
        )
    if settings.rate_scope == "shared" and not settings.redis_url:
        raise refused("rate_scope", name("rate_scope"), "a shared rate budget needs --redis URL")
