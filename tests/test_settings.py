"""Specification of worker.settings and worker.sending.credentials: precedence, validation,
secrecy."""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from worker.errors import ConfigError
from worker.sending.credentials import Secret, TokenSource, read_token_file
from worker.settings import (
    DECLARATIONS,
    DEFAULT_BASE_URL,
    SETTING_COMMANDS,
    Settings,
    check_base_url,
    load_settings,
)
from worker.settings.rate import RateSpec
from worker.settings.resolve import as_given, resolve_settings

TOKEN = "tok-Zx9-s3cr3t-VALUE-4711"


WriteConfig = Callable[..., Path]


@pytest.fixture
def write_config(tmp_path: Path) -> WriteConfig:
    def write(text: str, name: str = "purge.toml") -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write


# -- defaults and precedence ------------------------------------------------------------------


def test_no_flags_env_or_file_gives_the_defaults() -> None:
    assert load_settings({}, {}) == Settings()


def test_public_settings_of_the_defaults() -> None:
    assert load_settings({}, {}).public() == {
        "base_url": DEFAULT_BASE_URL,
        "token_file": None,
        "rate": "100/minute",
        "burst": 1,
        "rate_margin": 0.015,
        "concurrency": 64,
        "concurrency_mode": "adaptive",
        "batch_size": 100,
        "timeout": 30.0,
        "max_attempts": 6,
        "max_retry_time": 300.0,
        "backoff_initial": 0.5,
        "backoff_max": 30.0,
        "campaign_id": None,
        "audit_dir": "purge-audit",
        "audit_log": None,
        "audit_key_file": None,
        "sign_key": None,
        "report": None,
        "failed_out": None,
        "results": None,
        "verify": False,
        "page_size": 1000,
        "state_dir": None,
        "fresh": False,
        "retry_failed": True,
        "grace": 20.0,
        "checkpoint_interval": 1.0,
        "shard_index": None,
        "shard_count": None,
        "redis_url": None,
        "redis_backoff_initial": 0.5,
        "redis_backoff_max": 5.0,
        "redis_outage_max": 0.0,
        "stream": None,
        "group": "audience-purge",
        "consumer": None,
        "dead_stream": None,
        "until_empty": False,
        "max_deliveries": 5,
        "claim_idle": 600.0,
        "rate_scope": "local",
        "rate_key": None,
        "ref": None,
        "insecure_http": False,
        "dry_run": False,
        "progress": "auto",
        "progress_interval": 5.0,
        "log_level": "info",
        "log_format": "auto",
        "metrics_port": None,
        "metrics_address": "127.0.0.1",
        "pushgateway": None,
        "metrics_job": "audience-purge",
        "max_deletes": None,
        "expect_count": None,
        "halt_on_failure_rate": None,
        "deadline": None,
        "dead_letter_max": 100000,
        "force": False,
    }


def test_config_file_values_override_the_defaults(write_config: WriteConfig) -> None:
    path = write_config(
        'base_url = "https://file.example/api"\n'
        "batch_size = 250\n"
        'rate = "10/second"\n'
        "burst = 5\n"
        "campaign_id = 42\n"
        "insecure_http = true\n"
        'audit_dir = "audits"\n'
    )

    settings = load_settings({}, {}, path)

    assert settings == Settings(
        base_url="https://file.example/api",
        batch_size=250,
        rate=RateSpec(10, 1.0),
        burst=5,
        campaign_id=42,
        insecure_http=True,
        audit_dir=Path("audits"),
    )


def test_base_url_from_file_beats_the_default(write_config: WriteConfig) -> None:
    path = write_config('base_url = "https://file.example"\n')

    assert load_settings({}, {}, path).base_url == "https://file.example"


def test_base_url_from_env_beats_the_file(write_config: WriteConfig) -> None:
    path = write_config('base_url = "https://file.example"\n')
    env = {"UNLEASHX_BASE_URL": "https://env.example"}

    assert load_settings({}, env, path).base_url == "https://env.example"


def test_base_url_flag_beats_env_and_file(write_config: WriteConfig) -> None:
    path = write_config('base_url = "https://file.example"\n')
    env = {"UNLEASHX_BASE_URL": "https://env.example"}

    settings = load_settings({"base_url": "https://flag.example"}, env, path)

    assert settings.base_url == "https://flag.example"


def test_flag_given_as_none_does_not_override(write_config: WriteConfig) -> None:
    path = write_config('base_url = "https://file.example"\nbatch_size = 7\n')

    settings = load_settings({"base_url": None, "batch_size": None}, {}, path)

    assert (settings.base_url, settings.batch_size) == ("https://file.example", 7)


def test_empty_env_value_is_ignored(write_config: WriteConfig) -> None:
    path = write_config('base_url = "https://file.example"\n')

    assert load_settings({}, {"UNLEASHX_BASE_URL": ""}, path).base_url == "https://file.example"


def test_flags_given_as_strings_are_parsed() -> None:
    flags = {"batch_size": "50", "timeout": "2.5", "rate": "5/s", "insecure_http": "yes"}

    settings = load_settings(flags, {})

    assert (settings.batch_size, settings.timeout, settings.rate, settings.insecure_http) == (
        50,
        2.5,
        RateSpec(5, 1.0),
        True,
    )


def test_flag_beats_file_for_other_keys(write_config: WriteConfig) -> None:
    path = write_config("batch_size = 250\n")

    assert load_settings({"batch_size": 10}, {}, path).batch_size == 10


# -- the token --------------------------------------------------------------------------------


def test_token_from_env() -> None:
    settings = load_settings({}, {"UNLEASHX_TOKEN": f"  {TOKEN}\n"})

    assert (settings.token, settings.token_file) == (Secret(TOKEN), None)


def test_token_file_from_config_file(write_config: WriteConfig) -> None:
    path = write_config('token_file = "/run/secrets/unleashx"\n')

    settings = load_settings({}, {}, path)

    assert (settings.token, settings.token_file) == (None, Path("/run/secrets/unleashx"))


def test_token_file_from_env() -> None:
    settings = load_settings({}, {"UNLEASHX_TOKEN_FILE": "/run/secrets/env"})

    assert (settings.token, settings.token_file) == (None, Path("/run/secrets/env"))


def test_token_file_env_beats_token_file_in_config(write_config: WriteConfig) -> None:
    path = write_config('token_file = "/run/secrets/file"\n')

    settings = load_settings({}, {"UNLEASHX_TOKEN_FILE": "/run/secrets/env"}, path)

    assert (settings.token, settings.token_file) == (None, Path("/run/secrets/env"))


def test_token_env_beats_token_file_in_config(write_config: WriteConfig) -> None:
    path = write_config('token_file = "/run/secrets/file"\n')

    settings = load_settings({}, {"UNLEASHX_TOKEN": TOKEN}, path)

    assert settings.token == Secret(TOKEN)


def test_token_file_flag_beats_token_env(write_config: WriteConfig) -> None:
    path = write_config('token_file = "/run/secrets/file"\n')
    env = {"UNLEASHX_TOKEN": TOKEN, "UNLEASHX_TOKEN_FILE": "/run/secrets/env"}

    settings = load_settings({"token_file": "/run/secrets/flag"}, env, path)

    assert (settings.token, settings.token_file) == (None, Path("/run/secrets/flag"))


def test_token_in_config_file_is_refused_without_echoing_it(write_config: WriteConfig) -> None:
    path = write_config(f'token = "{TOKEN}"\n')

    with pytest.raises(ConfigError) as info:
        load_settings({}, {}, path)

    assert info.value.key == "token"
    assert str(path) in str(info.value)
    assert "token_file" in str(info.value)
    assert TOKEN not in str(info.value)


# -- validation -------------------------------------------------------------------------------


def test_unknown_key_in_file_is_named(write_config: WriteConfig) -> None:
    path = write_config("batchsize = 10\n")

    with pytest.raises(ConfigError) as info:
        load_settings({}, {}, path)

    assert info.value.key == "batchsize"
    assert str(info.value) == f"batchsize in {path}: unknown key"


def test_unknown_flag_is_named() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"colour": "blue"}, {})

    assert info.value.key == "colour"


@pytest.mark.parametrize(
    ("key", "toml_value"),
    [
        ("batch_size", '"ten"'),
        ("batch_size", "true"),
        ("batch_size", "1.5"),
        ("concurrency", '"many"'),
        ("timeout", '"soon"'),
        ("timeout", "false"),
        ("insecure_http", '"maybe"'),
        ("insecure_http", "1"),
        ("rate", "10"),
        ("rate", '"fast"'),
        ("base_url", "5"),
        ("base_url", '"  "'),
        ("progress", '"fancy"'),
        ("log_level", '"loud"'),
        ("audit_dir", "3"),
        ("campaign_id", '"forty-two"'),
    ],
)
def test_wrong_type_is_named(write_config: WriteConfig, key: str, toml_value: str) -> None:
    path = write_config(f"{key} = {toml_value}\n")

    with pytest.raises(ConfigError) as info:
        load_settings({}, {}, path)

    assert info.value.key == key
    assert (
        str(info.value)
        == f"{key} in {path}: {parse_error(key, tomllib.loads(f'v = {toml_value}')['v'])}"
    )


@pytest.mark.parametrize(
    ("key", "toml_value"),
    [
        ("batch_size", "0"),
        ("batch_size", "1001"),
        ("batch_size", "-1"),
        ("concurrency", "0"),
        ("concurrency", "257"),
        ("burst", "0"),
        ("timeout", "0"),
        ("max_attempts", "0"),
        ("campaign_id", "0"),
        ("campaign_id", "-42"),
        ("campaign_id", "9223372036854775807.0"),
        ("rate", '"0/s"'),
        ("progress_interval", "0.0"),
        ("redis_backoff_initial", "-0.1"),
        ("redis_backoff_initial", "600.5"),
        ("redis_backoff_max", "3600.5"),
    ],
)
def test_out_of_range_value_is_named(write_config: WriteConfig, key: str, toml_value: str) -> None:
    path = write_config(f"{key} = {toml_value}\n")

    with pytest.raises(ConfigError) as info:
        load_settings({}, {}, path)

    assert info.value.key == key


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("batch_size", 1),
        ("batch_size", 1000),
        ("redis_backoff_initial", 0.0),
        ("redis_backoff_max", 3600.0),
    ],
)
def test_range_bounds_are_inclusive(key: str, value: int) -> None:
    assert getattr(load_settings({key: value}, {}), key) == value


@pytest.mark.parametrize(
    ("flags", "key"),
    [
        ({"rate": "fast"}, "rate"),
        ({"batch_size": "0"}, "batch_size"),
        ({"batch_size": "1001"}, "batch_size"),
        ({"concurrency": 0}, "concurrency"),
        ({"timeout": "-1"}, "timeout"),
    ],
)
def test_bad_flag_value_is_named_by_its_key_for_an_embedding_program(
    flags: dict[str, object], key: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(flags, {})

    assert info.value.key == key
    assert str(info.value) == f"{key}: {parse_error(key, flags[key])}"


@pytest.mark.parametrize("key", [key for key, declared in DECLARATIONS.items() if declared.flag])
def test_bad_flag_value_is_named_by_the_flag_typed(key: str) -> None:
    flag = DECLARATIONS[key].flag
    assert flag is not None
    # A value each parser refuses: an empty string is no number, rate, path or choice.
    with pytest.raises(ConfigError) as info:
        load_settings({key: " "}, {}, flag_names={key: flag})

    assert info.value.key == key
    assert str(info.value) == f"{flag}: {parse_error(key, ' ')}"


def test_a_value_is_named_by_the_source_it_came_from(write_config: WriteConfig) -> None:
    path = write_config("batch_size = 0\n")
    env = {"AUDIENCE_PURGE_SHARD_COUNT": "x"}
    named = {"batch_size": "--batch-size"}

    with pytest.raises(ConfigError) as in_file:
        load_settings({}, {}, path, flag_names=named)
    with pytest.raises(ConfigError) as in_env:
        load_settings({}, env, flag_names=named)
    with pytest.raises(ConfigError) as on_the_line:
        load_settings({"batch_size": "1001"}, env={}, config_path=path, flag_names=named)

    assert str(in_file.value) == f"batch_size in {path}: must be between 1 and 1000, got 0"
    assert str(in_env.value) == (
        "environment variable AUDIENCE_PURGE_SHARD_COUNT: expected an integer (digits 0-9), got 'x'"
    )
    # The file's value is refused first: the flag would not have hidden it.
    assert str(on_the_line.value).startswith(f"batch_size in {path}: ")


def test_a_flag_over_a_bad_environment_value_is_still_refused_by_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"shard_count": "3"}, {"AUDIENCE_PURGE_SHARD_COUNT": "x"})

    assert str(info.value).startswith("environment variable AUDIENCE_PURGE_SHARD_COUNT: ")


def test_resolving_tells_how_each_given_setting_was_given(write_config: WriteConfig) -> None:
    path = write_config("timeout = 5\nbatch_size = 10\n")
    env = {"UNLEASHX_BASE_URL": "https://api.example", "AUDIENCE_PURGE_SHARD_COUNT": "2"}

    _, given_as = resolve_settings(
        {"batch_size": "20", "shard_index": 1},
        env,
        path,
        flag_names={"batch_size": "--batch-size", "shard_index": "--shard"},
    )

    assert given_as == {
        "timeout": f"timeout in {path}",
        "batch_size": "--batch-size",
        "base_url": "environment variable UNLEASHX_BASE_URL",
        "shard_count": "environment variable AUDIENCE_PURGE_SHARD_COUNT",
        "shard_index": "--shard",
    }


def test_a_later_error_is_renamed_by_how_its_setting_was_given() -> None:
    later = ConfigError("cannot read token file x: gone", key="token_file")
    given_as = {"token_file": "--token-file"}

    assert str(as_given(later, given_as)) == "--token-file: cannot read token file x: gone"
    assert as_given(later, given_as).key == "token_file"
    assert as_given(later, {}) is later  # not given: its key is all there is to say
    named = as_given(later, given_as)
    assert as_given(named, given_as) is named  # already named: not named twice


def parse_error(key: str, value: object) -> str:
    """What the declared parser of ``key`` says of ``value``: the reason every message
    carries after the name."""
    with pytest.raises(ValueError, match=r".+") as refused:
        DECLARATIONS[key].parse(value)
    return str(refused.value)


# -- numbers are ASCII ----------------------------------------------------------------------------

ARABIC_42 = "\u0664\u0662"  # Arabic-Indic 42: int() and str.isdigit() take it for 42


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("campaign_id", ARABIC_42),
        ("campaign_id", "\uff14\uff12"),  # fullwidth 42
        ("campaign_id", "4\u00b2"),  # 4², a digit to isdigit() that int() refuses
        ("batch_size", "\u0665"),  # Arabic-Indic 5
        ("timeout", "\u0663\u0660"),  # Arabic-Indic 30: float() reads 30.0
        ("timeout", "1_0"),
        ("timeout", "inf"),
        ("rate", "\u0665/s"),
        ("rate", "\u0665/minute"),
    ],
)
def test_a_flag_value_in_other_digits_than_0_to_9_is_refused_naming_the_key(
    key: str, value: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({key: value}, {})

    assert info.value.key == key
    assert str(info.value) == f"{key}: {parse_error(key, value)}"
    assert "(digits 0-9)" in str(info.value)


def test_an_environment_value_in_other_digits_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"shard_index": 0}, {"AUDIENCE_PURGE_SHARD_COUNT": "\u0663"})

    assert info.value.key == "shard_count"
    assert str(info.value).startswith(
        "environment variable AUDIENCE_PURGE_SHARD_COUNT: expected an integer"
    )


@pytest.mark.parametrize(
    ("key", "toml_value"), [("campaign_id", f'"{ARABIC_42}"'), ("grace", '"\u0665"')]
)
def test_a_config_string_in_other_digits_is_refused_naming_the_key(
    write_config: WriteConfig, key: str, toml_value: str
) -> None:
    path = write_config(f"{key} = {toml_value}\n")

    with pytest.raises(ConfigError) as info:
        load_settings({}, {}, path)

    assert info.value.key == key


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"campaign_id": "0000000000000000000021"}, ("campaign_id", 21)),
        ({"batch_size": "0007"}, ("batch_size", 7)),
        ({"timeout": "002.50"}, ("timeout", 2.5)),
        ({"rate": "007/s"}, ("rate", RateSpec(7, 1.0))),
    ],
)
def test_leading_zeros_are_accepted_when_the_value_is_in_range(
    flags: dict[str, str], expected: tuple[str, object]
) -> None:
    key, value = expected

    assert getattr(load_settings(flags, {}), key) == value


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0000000000000000000000", "got 0"),
        ("-00000000000000000000042", "got -42"),
        ("00009223372036854775808", "got 9223372036854775808"),
        ("000099999999999999999999", "got a number of 20 digits"),
        ("9" * 5000, "got a number of 5000 digits"),
        ("-" + "9" * 5000, "got a negative number of 5000 digits"),
    ],
)
def test_an_integer_out_of_range_is_refused_with_its_true_reason(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"campaign_id": value}, {})

    assert str(info.value) == (f"campaign_id: must be between 1 and 9223372036854775807, {message}")


def test_a_rate_too_large_for_a_float_is_refused() -> None:
    with pytest.raises(ConfigError, match="the number of requests is too large") as info:
        load_settings({"rate": "9" * 400 + "/s"}, {})

    assert info.value.key == "rate"


def test_backoff_max_below_backoff_initial_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"backoff_initial": 5, "backoff_max": 1}, {})

    assert info.value.key == "backoff_max"
    assert str(info.value) == "backoff_max: must not be smaller than backoff_initial (5)"


def test_backoff_max_below_backoff_initial_names_both_as_typed(write_config: WriteConfig) -> None:
    path = write_config("backoff_initial = 5\n")

    with pytest.raises(ConfigError) as info:
        load_settings({"backoff_max": 1}, {}, path, flag_names={"backoff_max": "--max"})

    assert str(info.value) == f"--max: must not be smaller than backoff_initial in {path} (5)"


def test_redis_backoff_comes_from_the_config_file(write_config: WriteConfig) -> None:
    path = write_config("redis_backoff_initial = 0.05\nredis_backoff_max = 0.5\n")

    settings = load_settings({}, {}, path)

    assert (settings.redis_backoff_initial, settings.redis_backoff_max) == (0.05, 0.5)


def test_redis_backoff_is_its_own_and_not_backoff_initial(write_config: WriteConfig) -> None:
    path = write_config("backoff_initial = 2.0\nbackoff_max = 60.0\n")

    settings = load_settings({}, {}, path)

    assert (settings.redis_backoff_initial, settings.redis_backoff_max) == (0.5, 5.0)


def test_redis_backoff_initial_above_the_default_max_is_refused_naming_the_one_given() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"redis_backoff_initial": "6"}, {})

    assert info.value.key == "redis_backoff_initial"
    assert str(info.value) == (
        "redis_backoff_initial: must not be larger than redis_backoff_max (5, its default)"
    )


def test_redis_backoff_max_below_the_default_initial_is_refused_naming_it() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"redis_backoff_max": "0.1"}, {}, flag_names={"redis_backoff_max": "--m"})

    assert info.value.key == "redis_backoff_max"
    assert str(info.value) == (
        "--m: must not be smaller than redis_backoff_initial (0.5, its default)"
    )


def test_invalid_toml_names_the_file(write_config: WriteConfig) -> None:
    path = write_config("batch_size = = 3\n[unterminated\n")

    with pytest.raises(ConfigError, match="is not valid TOML") as info:
        load_settings({}, {}, path)

    assert str(path) in str(info.value)


def test_missing_config_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"

    with pytest.raises(ConfigError) as info:
        load_settings({}, {}, path)

    assert str(info.value) == f"config file {path} does not exist"


def test_config_path_that_is_a_directory_names_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file") as info:
        load_settings({}, {}, tmp_path)

    assert str(tmp_path) in str(info.value)


# -- the declarations ---------------------------------------------------------------------------


@pytest.mark.parametrize("key", list(DECLARATIONS))
def test_a_setting_has_a_flag_exactly_when_a_command_offers_it(key: str) -> None:
    declared = DECLARATIONS[key]

    assert bool(declared.flag) == bool(declared.commands)
    assert set(declared.required) <= set(declared.commands) <= set(SETTING_COMMANDS)


@pytest.mark.parametrize("key", [k for k, d in DECLARATIONS.items() if d.switch])
def test_a_switch_flag_is_a_boolean_setting(key: str) -> None:
    declared = DECLARATIONS[key]

    assert isinstance(declared.default, bool)
    assert declared.parse(not declared.default) is (not declared.default)


@pytest.mark.parametrize(
    "key", [k for k, d in DECLARATIONS.items() if d.default is not None and d.shown is None]
)
def test_the_documented_default_is_the_default_and_within_bounds(key: str) -> None:
    declared = DECLARATIONS[key]

    assert declared.parse(declared.default_text) == declared.default == getattr(Settings(), key)


def test_environment_variables_are_declared_once() -> None:
    names = [d.env for d in DECLARATIONS.values() if d.env]

    assert len(names) == len(set(names))


# -- base_url safety ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:8080/api/v1/global/", "http://127.0.0.1:8080/api/v1/global"),
        ("http://127.5.5.5/api", "http://127.5.5.5/api"),
        ("http://localhost:9000", "http://localhost:9000"),
        ("http://LOCALHOST:9000/", "http://LOCALHOST:9000"),
        ("http://[::1]:8080/api", "http://[::1]:8080/api"),
        ("https://example.com/api/", "https://example.com/api"),
        ("https://10.0.0.1/api", "https://10.0.0.1/api"),
        (DEFAULT_BASE_URL, DEFAULT_BASE_URL),
    ],
)
def test_base_url_allowed(url: str, expected: str) -> None:
    assert check_base_url(url, insecure_http=False) == expected


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/api",
        "http://example.com",
        "http://localhost.example.com/",
        "http://127.0.0.1.nip.io/",
        "http://[::2]/",
    ],
)
def test_plain_http_to_a_non_loopback_host_is_refused(url: str) -> None:
    with pytest.raises(ConfigError, match="plain http") as info:
        check_base_url(url, insecure_http=False)

    assert info.value.key == "base_url"


@pytest.mark.parametrize("url", ["http://10.0.0.1/api", "http://example.com"])
def test_plain_http_is_allowed_with_insecure_http(url: str) -> None:
    assert check_base_url(url, insecure_http=True) == url


@pytest.mark.parametrize(
    "url", ["ftp://127.0.0.1/api", "file:///etc/passwd", "127.0.0.1:8080", "https://", ""]
)
@pytest.mark.parametrize("insecure_http", [False, True])
def test_non_http_url_is_refused(url: str, insecure_http: bool) -> None:
    with pytest.raises(ConfigError, match="not an http") as info:
        check_base_url(url, insecure_http=insecure_http)

    assert info.value.key == "base_url"


@pytest.mark.parametrize(
    "url",
    [
        "http://evil.com\\@127.0.0.1:8080/",  # urllib: host 127.0.0.1; yarl: refused
        "http://127.0.0.1:8080\\@evil.com/",
        "http://127.0.0.1\t:8080/",  # urllib drops tabs and line breaks silently
        "http://127.0.0.1:8080/api\tv1",
        "http://127.0.0.1:8080/api\n",
        "http://127.0.0.1:8080/api\r",
        "http://127.0.0.1:8080/api v1",
        "http://127.0.0.1:8080/api\x00",
        "http://127.0.0.1:8080/api\u00a0",
    ],
)
@pytest.mark.parametrize("insecure_http", [False, True])
def test_a_base_url_with_a_control_character_a_space_or_a_backslash_is_refused(
    url: str, insecure_http: bool
) -> None:
    with pytest.raises(ConfigError, match=r"a space, a control character or a backslash") as info:
        check_base_url(url, insecure_http=insecure_http)

    assert info.value.key == "base_url"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://example.com:\u0668\u0660/api", "not a valid URL"),  # yarl reads port 80
        ("https://example.com:+443/api", "not a valid URL"),
        ("https://example.com:99999/api", "not a valid URL"),
        ("http://[::1/api", "not a valid URL"),
        ("https://example.com/api/../v1", "would read its path differently"),
        ("https://example.com/api/./v1", "would read its path differently"),
        ("https://example.com/api?v=1", "no query or fragment"),
        ("https://example.com/api#v1", "no query or fragment"),
        ("https://example.com?", "no query or fragment"),
        ("http://\uff11\uff12\uff17.0.0.1:8080/", "write the host in ASCII"),  # fullwidth 127
        ("https://b\u00fccher.example/api", "write the host in ASCII"),
    ],
)
@pytest.mark.parametrize("insecure_http", [False, True])
def test_a_base_url_the_http_client_would_read_otherwise_is_refused(
    url: str, reason: str, insecure_http: bool
) -> None:
    with pytest.raises(ConfigError, match=reason) as info:
        check_base_url(url, insecure_http=insecure_http)

    assert info.value.key == "base_url"


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:80@evil.com/", "http://127.0.0.1%2F@evil.com/", "http://localhost./"],
)
def test_a_base_url_that_only_looks_like_loopback_is_plain_http_elsewhere(url: str) -> None:
    with pytest.raises(ConfigError, match=r"plain http to .* is refused") as info:
        check_base_url(url, insecure_http=False)

    assert info.value.key == "base_url"


@pytest.mark.parametrize(
    "url",
    [
        "http://[::1]:8080/api",
        "http://[0:0::1]:8080/api",
        "http://127.0.0.1:8080/api/v1/global/",
        "http://127.0.0.1:/api",
        "http://localhost:8080",
        "http://ops:pass@127.0.0.1:8080/api",
        "http://ops:pa%40ss@localhost:8080/api",
        "https://xn--bcher-kva.example/api",
        "https://example.com/api%20v1/",
        "https://example.com/users/@me",
    ],
)
def test_a_base_url_read_alike_by_both_parsers_passes(url: str) -> None:
    assert check_base_url(url, insecure_http=False) == url.rstrip("/")


@pytest.mark.parametrize(
    "url",
    [
        "https://ops:hunter2@exa mple.com/api",
        "https://ops:hunter2@example.com:\u0668\u0660/api",
        "https://ops:hunter2@example.com/api?x=1",
        "https://ops:hunt/er2@example.com/api",  # a "/" ends the authority: port "hunt"
        "https://ops:hunt#er2@example.com/api",
        "https://ops:hunt?er2@example.com/api",
        "http://[::1]:hunt/er2@example.com/api",
        "ftp://ops:hunter2@example.com/",
    ],
)
def test_a_refused_base_url_is_shown_without_its_password(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_base_url(url, insecure_http=False)

    assert "hun" not in str(info.value)
    assert "er2" not in str(info.value)


def test_load_settings_refuses_plain_http_base_url_from_env() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({}, {"UNLEASHX_BASE_URL": "http://10.0.0.1/api"})

    assert info.value.key == "base_url"


def test_load_settings_allows_plain_http_with_insecure_http_flag() -> None:
    settings = load_settings({"insecure_http": True}, {"UNLEASHX_BASE_URL": "http://10.0.0.1"})

    assert (settings.base_url, settings.insecure_http) == ("http://10.0.0.1", True)


# -- secrecy ------------------------------------------------------------------------------------


@pytest.fixture
def secret_settings() -> Settings:
    return load_settings({}, {"UNLEASHX_TOKEN": TOKEN})


def test_settings_repr_hides_the_token(secret_settings: Settings) -> None:
    assert TOKEN not in repr(secret_settings)


def test_settings_str_hides_the_token(secret_settings: Settings) -> None:
    assert TOKEN not in str(secret_settings)


def test_public_settings_leave_the_token_out(secret_settings: Settings) -> None:
    public = secret_settings.public()

    assert "token" not in public
    assert TOKEN not in repr(public)


def test_asdict_of_settings_still_hides_the_token(secret_settings: Settings) -> None:
    assert TOKEN not in repr(dataclasses.asdict(secret_settings))


@pytest.mark.parametrize("render", [repr, str, "{}".format, "{!r}".format])
def test_secret_never_renders_its_value(render: Callable[[object], str]) -> None:
    assert render(Secret(TOKEN)) == "Secret('***')"


def test_secret_reveals_its_value() -> None:
    assert Secret(TOKEN).reveal() == TOKEN


def test_settings_are_frozen(secret_settings: Settings) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        secret_settings.batch_size = 5  # type: ignore[misc]


# -- credentials ----------------------------------------------------------------------------------


def test_token_source_without_token_or_file_says_how_to_provide_one() -> None:
    with pytest.raises(ConfigError) as info:
        TokenSource(None, None)

    assert info.value.key == "token"
    for hint in ("UNLEASHX_TOKEN", "token_file", "UNLEASHX_TOKEN_FILE", "--token-file"):
        assert hint in str(info.value)


def test_token_file_content_is_stripped(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(f"  {TOKEN}\n\n", encoding="utf-8")

    assert read_token_file(path) == Secret(TOKEN)


def test_missing_token_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "absent"

    with pytest.raises(ConfigError) as info:
        read_token_file(path)

    assert info.value.key == "token_file"
    assert str(path) in str(info.value)


@pytest.mark.parametrize("content", ["", "  \n\n"])
def test_empty_token_file_is_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "token"
    path.write_text(content, encoding="utf-8")

    with pytest.raises(ConfigError) as info:
        read_token_file(path)

    assert str(info.value) == f"token_file: token file {path} is empty"


def test_token_source_prefers_the_given_token_over_the_file(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("from-file", encoding="utf-8")

    assert TokenSource(Secret(TOKEN), path).current() == Secret(TOKEN)


def test_token_source_reads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN, encoding="utf-8")

    assert TokenSource(None, path).current() == Secret(TOKEN)


def test_rotate_without_a_file_finds_nothing() -> None:
    tokens = TokenSource(Secret(TOKEN), None)

    assert (tokens.rotate(), tokens.current()) == (False, Secret(TOKEN))


def test_rotate_with_an_unchanged_file_finds_nothing(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN, encoding="utf-8")
    tokens = TokenSource(None, path)

    assert (tokens.rotate(), tokens.current()) == (False, Secret(TOKEN))


def test_rotate_picks_up_a_changed_file(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("old-token", encoding="utf-8")
    tokens = TokenSource(None, path)
    path.write_text("new-token\n", encoding="utf-8")

    assert (tokens.rotate(), tokens.current()) == (True, Secret("new-token"))


def test_rotate_rereads_the_file_only_once(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("first", encoding="utf-8")
    tokens = TokenSource(None, path)
    path.write_text("second", encoding="utf-8")
    tokens.rotate()
    path.write_text("third", encoding="utf-8")

    assert (tokens.rotate(), tokens.current()) == (False, Secret("second"))


def test_rotate_with_a_vanished_file_finds_no_new_token_and_logs_no_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN, encoding="utf-8")
    tokens = TokenSource(None, path)
    path.unlink()

    assert tokens.rotate() is False
    assert tokens.current() == Secret(TOKEN)
    captured = capsys.readouterr()
    assert str(path) in captured.out + captured.err
    assert TOKEN not in captured.out + captured.err
