"""The command line end to end: ``python -m worker`` in a subprocess against the sandbox.

The sandbox runs in the test's event loop; the child is started with
``asyncio.create_subprocess_exec`` so that loop keeps serving while the child runs.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import read_audit, write_csv
from processes import Completed, child_env, closed_port, eventually, finish, start

from worker.cli import build_parser, main, settings_from
from worker.sandbox import FaultConfig
from worker.sandbox.runner import SandboxHandle
from worker.settings import CONSUME, DECLARATIONS, DELETE_ALL, ENQUEUE, RUN, SETTING_COMMANDS

pytestmark = pytest.mark.slow


async def purge(*args: str, cwd: Path, token: str | None, stdin: bytes | None = None) -> Completed:
    proc = await start(*args, cwd=cwd, token=token, stdin=stdin is not None)
    return await finish(proc, stdin)


def run_args(sandbox: SandboxHandle, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "run",
        "--base-url",
        sandbox.url,
        "--rate",
        "1000/second",
        "--audit-log",
        str(tmp_path / "audit.jsonl"),
        "--progress",
        "off",
        *extra,
    ]


def ids_file(tmp_path: Path, ids: range, name: str = "ids.csv") -> Path:
    return write_csv(tmp_path / name, [str(i) for i in ids])


async def test_run_deletes_the_ids_and_writes_the_audit_log(
    sandbox: SandboxHandle, token: str, tmp_path: Path
) -> None:
    path = ids_file(tmp_path, range(1, 51))

    done = await purge(
        *run_args(
            sandbox, tmp_path, "--input", str(path), "--campaign-id", "42", "--batch-size", "10"
        ),
        cwd=tmp_path,
        token=token,
    )

    assert done.code == 0, done.err
    assert "Traceback" not in done.err
    assert not any(sandbox.state.campaigns[42].alive(i) for i in range(1, 51))
    records = read_audit(tmp_path / "audit.jsonl")
    assert records[0]["event"] == "run_started"
    assert records[-1]["event"] == "run_finished"
    assert (records[-1]["exit_code"], records[-1]["deleted"]) == (0, 50)
    assert "done (exit 0)" in done.out
    assert token not in done.out + done.err


async def test_missing_input_file_exits_2_with_one_clear_line(
    sandbox: SandboxHandle, token: str, tmp_path: Path
) -> None:
    done = await purge(
        *run_args(sandbox, tmp_path, "--input", "nope.csv", "--campaign-id", "42"),
        cwd=tmp_path,
        token=token,
    )

    assert done.code == 2
    assert "Traceback" not in done.err
    lines = done.err.strip().splitlines()
    assert len(lines) == 1
    assert "nope.csv" in lines[0]
    assert "does not exist" in lines[0]
    assert sandbox.state.requests_total == 0


async def test_input_without_campaign_column_or_flag_exits_2(
    sandbox: SandboxHandle, token: str, tmp_path: Path
) -> None:
    path = ids_file(tmp_path, range(1, 6))

    done = await purge(
        *run_args(sandbox, tmp_path, "--input", str(path)), cwd=tmp_path, token=token
    )

    assert done.code == 2
    assert "Traceback" not in done.err
    assert "--campaign-id" in done.err
    assert sandbox.state.requests_total == 0


async def test_missing_token_exits_2_naming_unleashx_token(
    sandbox: SandboxHandle, tmp_path: Path
) -> None:
    path = ids_file(tmp_path, range(1, 6))

    done = await purge(
        *run_args(sandbox, tmp_path, "--input", str(path), "--campaign-id", "42"),
        cwd=tmp_path,
        token=None,
    )

    assert done.code == 2
    assert "Traceback" not in done.err
    assert "UNLEASHX_TOKEN" in done.err
    assert sandbox.state.requests_total == 0


async def test_unknown_config_key_exits_2_naming_the_key(
    sandbox: SandboxHandle, token: str, tmp_path: Path
) -> None:
    path = ids_file(tmp_path, range(1, 6))
    config = tmp_path / "purge.toml"
    config.write_text("batch_size = 10\nbatch_sise = 20\n", encoding="utf-8")

    done = await purge(
        *run_args(
            sandbox, tmp_path, "--input", str(path), "--campaign-id", "42", "--config", str(config)
        ),
        cwd=tmp_path,
        token=token,
    )

    assert done.code == 2
    assert "Traceback" not in done.err
    assert "batch_sise" in done.err
    assert sandbox.state.requests_total == 0


async def test_plain_http_to_a_non_loopback_host_exits_2_and_sends_nothing(
    token: str, tmp_path: Path
) -> None:
    path = ids_file(tmp_path, range(1, 6))
    # 192.0.2.1 (TEST-NET-1) is never routed: even a regression could not reach anyone.
    done = await purge(
        "run",
        "--input",
        str(path),
        "--campaign-id",
        "42",
        "--base-url",
        "http://192.0.2.1/api/v1/global",
        "--timeout",
        "1",
        "--max-attempts",
        "1",
        "--progress",
        "off",
        cwd=tmp_path,
        token=token,
    )

    assert done.code == 2
    assert "Traceback" not in done.err
    assert "plain http" in done.err
    assert not (tmp_path / "purge-audit").exists()


async def test_permanent_failure_exits_1_and_writes_failed_out(
    sandbox: SandboxHandle, token: str, tmp_path: Path
) -> None:
    path = write_csv(tmp_path / "ids.csv", ["campaign_id,audience_id", "999,1", "999,2", "42,3"])

    done = await purge(
        *run_args(
            sandbox, tmp_path, "--input", str(path), "--failed-out", str(tmp_path / "failed.csv")
        ),
        cwd=tmp_path,
        token=token,
    )

    assert done.code == 1
    assert "Traceback" not in done.err
    assert (tmp_path / "failed.csv").read_text(encoding="utf-8").splitlines() == [
        "campaign_id,audience_id,reason",
        "999,1,unknown campaign",
        "999,2,unknown campaign",
    ]
    assert not sandbox.state.campaigns[42].alive(3)


async def test_wrong_token_exits_3(sandbox: SandboxHandle, tmp_path: Path) -> None:
    path = ids_file(tmp_path, range(1, 31))

    done = await purge(
        *run_args(sandbox, tmp_path, "--input", str(path), "--campaign-id", "42"),
        cwd=tmp_path,
        token="wrong-token",
    )

    assert done.code == 3
    assert "Traceback" not in done.err
    assert sandbox.state.campaigns[42].deleted_count == 0
    assert sandbox.state.requests_total <= 8 + 1
    assert "wrong-token" not in done.out + done.err


async def test_input_dash_reads_ids_from_stdin(
    sandbox: SandboxHandle, token: str, tmp_path: Path
) -> None:
    ids = range(1, 26)

    done = await purge(
        *run_args(sandbox, tmp_path, "--input", "-", "--campaign-id", "42"),
        cwd=tmp_path,
        token=token,
        stdin="".join(f"{i}\n" for i in ids).encode(),
    )

    assert done.code == 0, done.err
    assert "Traceback" not in done.err
    assert sandbox.state.receipts[42].received_ids() == list(ids)
    records = read_audit(tmp_path / "audit.jsonl")
    assert records[0]["input"] == "<stdin>"
    assert records[-1]["deleted"] == len(ids)


async def interrupted_run(sandbox: SandboxHandle, token: str, tmp_path: Path) -> Completed:
    """A slow run (5 requests/s, 200 ids) that gets SIGTERM once a deletion is audited."""
    path = ids_file(tmp_path, range(1, 201))
    audit = tmp_path / "audit.jsonl"
    args = run_args(sandbox, tmp_path, "--input", str(path), "--campaign-id", "42")
    args[args.index("--rate") + 1] = "5/second"
    args += ["--batch-size", "1", "--concurrency", "2"]
    proc = await start(*args, cwd=tmp_path, token=token)

    def first_deletion_audited() -> bool:
        return audit.exists() and b'"event":"deleted"' in audit.read_bytes()

    try:
        await eventually(first_deletion_audited, what="a first deletion audited")
    finally:
        proc.send_signal(signal.SIGTERM)
    return await finish(proc)


async def test_sigterm_stops_the_run_with_exit_75_and_a_finished_audit_log(
    sandbox: SandboxHandle, token: str, tmp_path: Path
) -> None:
    done = await interrupted_run(sandbox, token, tmp_path)

    assert done.code == 75, done.err
    assert "Traceback" not in done.err
    finished = read_audit(tmp_path / "audit.jsonl")[-1]
    assert finished["event"] == "run_finished"
    assert finished["interrupted"] is True
    assert finished["exit_code"] == 75
    assert 0 < finished["deleted"] < 200
    assert sandbox.state.campaigns[42].deleted_count == finished["deleted"]


async def test_rerun_after_sigterm_finishes_without_resending_a_confirmed_id(
    sandbox: SandboxHandle, token: str, tmp_path: Path
) -> None:
    done = await interrupted_run(sandbox, token, tmp_path)
    assert done.code == 75, done.err
    confirmed = sandbox.state.campaigns[42].deleted_count

    path = tmp_path / "ids.csv"
    again = await purge(
        *run_args(sandbox, tmp_path, "--input", str(path), "--campaign-id", "42"),
        cwd=tmp_path,
        token=token,
    )

    assert again.code == 0, again.err
    assert sandbox.state.campaigns[42].deleted_count == 200
    assert sandbox.state.receipts[42].resent == 0
    records = read_audit(tmp_path / "audit.jsonl")
    second = [r for r in records if r["run_id"] == records[-1]["run_id"]]
    assert second[0]["resumed"]["runs"] == [records[0]["run_id"]]
    assert second[-1]["deleted"] == 200 - confirmed
    assert main(["audit", "verify", str(tmp_path / "audit.jsonl")]) == 0


async def test_help_works(tmp_path: Path) -> None:
    done = await purge("--help", cwd=tmp_path, token=None)

    assert done.code == 0
    assert "usage: audience-purge" in done.out
    assert "delete-all" in done.out
    assert "Traceback" not in done.err


async def test_delete_all_without_confirm_exits_2_and_sends_nothing(
    sandbox: SandboxHandle, token: str, tmp_path: Path
) -> None:
    done = await purge(
        "delete-all", "--campaign-id", "42", "--base-url", sandbox.url, cwd=tmp_path, token=token
    )

    assert done.code == 2
    assert "Traceback" not in done.err
    assert "--confirm 42" in done.err
    assert sandbox.state.requests_total == 0
    assert sandbox.state.campaigns[42].deleted_count == 0


@pytest.mark.parametrize("faults", [FaultConfig(error_status=200)], ids=["error-status-200"])
async def test_delete_all_on_inprogress_campaign_exits_1_with_the_api_message(
    sandbox: SandboxHandle, token: str, tmp_path: Path
) -> None:
    done = await purge(
        "delete-all",
        "--campaign-id",
        "77",
        "--confirm",
        "77",
        "--base-url",
        sandbox.url,
        "--audit-log",
        str(tmp_path / "audit.jsonl"),
        cwd=tmp_path,
        token=token,
    )

    assert done.code == 1
    assert "Traceback" not in done.err
    assert "only be deleted when the campaign is in draft status" in done.err
    assert sandbox.state.campaigns[77].deleted_count == 0


# -- the flags follow the settings' declarations ------------------------------------------------

# The least each command needs to parse.
MINIMAL = {
    RUN: ["--input", "ids.csv"],
    ENQUEUE: ["--input", "ids.csv", "--redis", "redis://127.0.0.1:1/0", "--stream", "purge"],
    CONSUME: ["--redis", "redis://127.0.0.1:1/0", "--stream", "purge"],
    DELETE_ALL: ["--campaign-id", "42"],
}
FLAGGED = [key for key, declared in DECLARATIONS.items() if declared.flag]
OFFERED = [(command, key) for key in FLAGGED for command in DECLARATIONS[key].commands]
REFUSED = [
    (command, key)
    for key in FLAGGED
    for command in SETTING_COMMANDS
    # delete-all takes --campaign-id as its own argument, not as the setting's flag.
    if command not in DECLARATIONS[key].commands and (command, key) != (DELETE_ALL, "campaign_id")
]


# The command line is part of the interface: a flag that moves or disappears is a change to
# call out, not a side effect of editing a declaration.
SURFACE = {
    RUN: "--input --select --selection --status --call-status --attempt --older-than "
    "--last-attempt-before --include-never-attempted --shard --json --config --base-url "
    "--token-file --rate --concurrency "
    "--concurrency-mode --batch-size --timeout --max-attempts --campaign-id --audit-log "
    "--audit-key-file --sign-key --report --failed-out --results --verify --page-size "
    "--state-dir --fresh --no-retry-failed "
    "--grace "
    "--shard-count --redis "
    "--redis-backoff-initial --redis-backoff-max --rate-scope --rate-key --insecure-http "
    "--dry-run --max-deletes --expect-count --halt-on-failure-rate --deadline --progress "
    "--log-level --log-format --metrics-port --metrics-address --pushgateway --metrics-job",
    ENQUEUE: "--input --config --batch-size --campaign-id --audit-log --redis "
    "--redis-backoff-initial --redis-backoff-max --stream --ref --force --log-format",
    CONSUME: "--config --base-url --token-file --rate --concurrency --concurrency-mode "
    "--batch-size --timeout "
    "--max-attempts --audit-log --audit-key-file --sign-key --grace --redis "
    "--redis-backoff-initial "
    "--redis-backoff-max --redis-outage-max --stream --group --consumer --dead-stream "
    "--dead-letter-max "
    "--until-empty --max-deliveries --claim-idle --rate-scope --rate-key --insecure-http "
    "--halt-on-failure-rate --deadline --log-level --log-format --metrics-port "
    "--metrics-address --pushgateway --metrics-job",
    DELETE_ALL: "--campaign-id --confirm --config --base-url --token-file --rate --timeout "
    "--max-attempts --audit-log --audit-key-file --sign-key --insecure-http --dry-run --log-level "
    "--log-format",
}


@pytest.mark.parametrize("command", SETTING_COMMANDS)
def test_each_command_offers_exactly_its_documented_flags(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])

    usage = capsys.readouterr().out.split("\n\n")[0]
    assert sorted(re.findall(r"--[a-z-]+", usage)) == sorted(SURFACE[command].split())


def flag_args(key: str) -> list[str]:
    declared = DECLARATIONS[key]
    assert declared.flag is not None
    return [declared.flag] if declared.switch else [declared.flag, "7"]


@pytest.mark.parametrize(("command", "key"), OFFERED)
def test_a_setting_flag_is_offered_by_its_declared_commands(command: str, key: str) -> None:
    declared = DECLARATIONS[key]

    args = build_parser().parse_args([command, *MINIMAL[command], *flag_args(key)])

    assert getattr(args, key) == ((not declared.default) if declared.switch else "7")


@pytest.mark.parametrize(("command", "key"), REFUSED)
def test_a_setting_flag_is_refused_by_the_other_commands(
    command: str, key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as refused:
        build_parser().parse_args([command, *MINIMAL[command], *flag_args(key)])

    assert refused.value.code == 2
    assert f"unrecognized arguments: {flag_args(key)[0]}" in capsys.readouterr().err


@pytest.mark.parametrize("command", SETTING_COMMANDS)
def test_a_setting_flag_not_given_is_none_so_it_does_not_override(command: str) -> None:
    args = build_parser().parse_args([command, *MINIMAL[command]])

    given = {key: getattr(args, key) for key in FLAGGED if hasattr(args, key)}

    assert {key for key, value in given.items() if value is not None} <= {
        "redis_url",
        "stream",
        "campaign_id",
    }


def test_consume_help_lists_the_redis_backoff_flags_with_their_defaults(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as done:
        main(["consume", "--help"])

    out = " ".join(capsys.readouterr().out.split())
    assert done.value.code == 0
    assert "--redis-backoff-initial S seconds of the first wait" in out
    assert "(default 0.5)" in out
    assert "--redis-backoff-max S seconds of the longest wait" in out
    assert "(default 5)" in out


def test_run_refuses_a_queue_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as refused:
        main(["run", "--input", "ids.csv", "--stream", "purge"])

    assert refused.value.code == 2
    assert "unrecognized arguments: --stream purge" in capsys.readouterr().err


@pytest.mark.parametrize("command", [ENQUEUE, CONSUME])
@pytest.mark.parametrize("flag", ["--redis", "--stream"])
def test_queue_commands_require_redis_and_stream(
    command: str, flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = MINIMAL[command]
    without = argv[: argv.index(flag)] + argv[argv.index(flag) + 2 :]

    with pytest.raises(SystemExit) as refused:
        build_parser().parse_args([command, *without])

    assert refused.value.code == 2
    assert f"the following arguments are required: {flag}" in capsys.readouterr().err


def test_redis_backoff_flags_reach_the_settings() -> None:
    argv = [CONSUME, *MINIMAL[CONSUME], "--redis-backoff-initial", "0.25"]
    args = build_parser().parse_args([*argv, "--redis-backoff-max", "2"])

    settings = settings_from(args, {})

    assert (settings.redis_backoff_initial, settings.redis_backoff_max) == (0.25, 2.0)
    assert (settings.backoff_initial, settings.backoff_max) == (0.5, 30.0)


def test_redis_backoff_max_below_initial_exits_2_naming_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main([CONSUME, *MINIMAL[CONSUME], "--redis-backoff-max", "0.1"])

    assert code == 2
    assert capsys.readouterr().err == (
        "audience-purge: error: --redis-backoff-max: "
        "must not be smaller than redis_backoff_initial (0.5, its default)\n"
    )


def test_no_retry_failed_turns_retry_failed_off() -> None:
    args = build_parser().parse_args([RUN, *MINIMAL[RUN], "--no-retry-failed"])

    assert settings_from(args, {}).retry_failed is False


# -- errors name the value the way it was given -------------------------------------------------


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> Completed:
    """``python -m worker ARGS`` with ``env`` added to a clean environment (start() would
    drop the worker's own variables, which these tests set on purpose)."""
    done = subprocess.run(
        [sys.executable, "-m", "worker", *args],
        cwd=cwd,
        env={**child_env(None), **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return Completed(done.returncode, done.stdout, done.stderr)


def test_a_bad_flag_value_exits_2_naming_the_flag_as_typed(tmp_path: Path) -> None:
    path = ids_file(tmp_path, range(1, 4))

    done = cli("run", "--input", str(path), "--dry-run", "--batch-size", "0", cwd=tmp_path)

    assert done.code == 2
    assert done.out == ""
    assert done.err == "audience-purge: error: --batch-size: must be between 1 and 1000, got 0\n"


def test_a_bad_environment_value_exits_2_naming_the_variable(tmp_path: Path) -> None:
    path = ids_file(tmp_path, range(1, 4))

    done = cli(
        "run", "--input", str(path), "--dry-run", cwd=tmp_path, env={"UNLEASHX_BASE_URL": "x"}
    )

    assert done.code == 2
    assert done.err == (
        "audience-purge: error: environment variable UNLEASHX_BASE_URL: 'x' is not an http(s) URL\n"
    )


def test_a_bad_config_value_exits_2_naming_the_key_and_the_file(tmp_path: Path) -> None:
    path = ids_file(tmp_path, range(1, 4))
    config = tmp_path / "purge.toml"
    config.write_text("batch_size = 1001\n", encoding="utf-8")

    done = cli("run", "--input", str(path), "--dry-run", "--config", str(config), cwd=tmp_path)

    assert done.code == 2
    assert done.err == (
        f"audience-purge: error: batch_size in {config}: must be between 1 and 1000, got 1001\n"
    )


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_a_setting_refused_once_the_run_starts_is_named_as_it_was_given(
    tmp_path: Path, how: str
) -> None:
    path = ids_file(tmp_path, range(1, 4))
    url = f"http://127.0.0.1:{closed_port()}/api/v1/global"
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))  # every address: the metrics endpoint's loopback too
        busy.listen()
        port = str(busy.getsockname()[1])
        given = ["--metrics-port", port] if how == "flag" else []
        env = {"UNLEASHX_TOKEN": "t"} | ({} if given else {"AUDIENCE_PURGE_METRICS_PORT": port})
        done = cli(
            "run", "--input", str(path), "--campaign-id", "42", "--base-url", url, *given,
            cwd=tmp_path, env=env,
        )  # fmt: skip

    named = "--metrics-port" if given else "environment variable AUDIENCE_PURGE_METRICS_PORT"
    assert done.code == 2
    assert done.err.startswith(
        f"audience-purge: error: {named}: cannot serve metrics on port {port}: "
    )
    assert done.err.rstrip().endswith("give each its own --metrics-port, or 0 to turn them off)")
    assert len(done.err.splitlines()) == 1


def test_shard_errors_name_the_flag_or_the_sources(tmp_path: Path) -> None:
    path = ids_file(tmp_path, range(1, 4))
    argv = ("run", "--input", str(path), "--campaign-id", "42", "--dry-run")

    one_flag = cli(*argv, "--shard", "3/3", cwd=tmp_path)
    two_sources = cli(*argv, "--shard-count", "3", cwd=tmp_path, env={"JOB_COMPLETION_INDEX": "5"})

    assert one_flag.err == "audience-purge: error: --shard: index 3 is not below the count 3\n"
    assert two_sources.err == (
        "audience-purge: error: shard: index 5 is not below the count 3 (the index from "
        "environment variable JOB_COMPLETION_INDEX, the count from --shard-count)\n"
    )
    assert (one_flag.code, two_sources.code) == (2, 2)


# -- output for scripts: --report -, --json -------------------------------------------------------


async def test_report_dash_writes_the_report_to_stdout_and_the_summary_to_stderr(
    sandbox: SandboxHandle, token: str, tmp_path: Path
) -> None:
    path = ids_file(tmp_path, range(1, 6))

    done = await purge(
        *run_args(sandbox, tmp_path, "--input", str(path), "--campaign-id", "42", "--report", "-"),
        cwd=tmp_path,
        token=token,
    )

    assert done.code == 0, done.err
    report = json.loads(done.out)  # the whole of stdout is the report
    assert (report["deleted"], report["exit_code"]) == (5, 0)
    assert report["run_id"] == read_audit(tmp_path / "audit.jsonl")[-1]["run_id"]
    assert "done (exit 0)" in done.err
    assert "  report      stdout" in done.err.splitlines()
    assert not (tmp_path / "-").exists()


async def test_run_json_prints_one_json_object_and_nothing_else_on_stdout(
    sandbox: SandboxHandle, token: str, tmp_path: Path
) -> None:
    path = write_csv(tmp_path / "ids.csv", ["campaign_id,audience_id", "42,1", "42,2", "999,3"])

    done = await purge(
        *run_args(sandbox, tmp_path, "--input", str(path), "--json"), cwd=tmp_path, token=token
    )

    assert done.code == 1, done.err
    [line] = done.out.splitlines()
    summary = json.loads(line)
    assert (summary["deleted"], summary["failed"], summary["exit_code"]) == (2, 1, 1)
    assert summary["campaigns"] == {
        "42": {"deleted": 2, "failed": 0},
        "999": {"deleted": 0, "failed": 1},
    }
    assert summary["audit_log"] == str(tmp_path / "audit.jsonl")
    assert "finished with failures (exit 1)" in done.err


async def test_run_json_of_a_dry_run_puts_the_plan_on_stderr(tmp_path: Path) -> None:
    path = ids_file(tmp_path, range(1, 4))

    done = await purge(
        "run", "--input", str(path), "--campaign-id", "42", "--dry-run", "--json",
        cwd=tmp_path, token=None,
    )  # fmt: skip

    assert done.code == 0, done.err
    assert json.loads(done.out)["dry_run"] is True
    assert "dry run: nothing was sent" in done.err


async def test_run_json_and_report_dash_together_exit_2(tmp_path: Path) -> None:
    path = ids_file(tmp_path, range(1, 4))

    done = await purge(
        "run", "--input", str(path), "--campaign-id", "42", "--dry-run", "--json",
        "--report", "-", cwd=tmp_path, token=None,
    )  # fmt: skip

    assert done.code == 2
    assert done.out == ""
    assert done.err == (
        "audience-purge: error: --json and --report - both write to stdout: choose one\n"
    )


async def test_audit_verify_json_gives_the_verdict_as_one_object(
    sandbox: SandboxHandle, token: str, tmp_path: Path
) -> None:
    path = ids_file(tmp_path, range(1, 6))
    audit = tmp_path / "audit.jsonl"
    ran = await purge(
        *run_args(sandbox, tmp_path, "--input", str(path), "--campaign-id", "42"),
        cwd=tmp_path,
        token=token,
    )
    assert ran.code == 0, ran.err
    records = read_audit(audit, chain=True)

    intact = await purge("audit", "verify", "--json", str(audit), cwd=tmp_path, token=None)
    lines = audit.read_text(encoding="utf-8").splitlines(keepends=True)
    at = next(n for n, line in enumerate(lines) if '"event":"deleted"' in line)
    lines[at] = lines[at].replace("Audience deleted", "Audience DELETED")
    audit.write_text("".join(lines), encoding="utf-8")
    tampered = await purge("audit", "verify", "--json", str(audit), cwd=tmp_path, token=None)

    assert intact.code == 0, intact.err
    verdict = json.loads(intact.out)
    assert verdict["ok"] is True
    assert (verdict["warnings"], verdict["errors"]) == ([], [])
    assert verdict["files"] == [{"path": str(audit), "records": len(records), "signed_heads": 0}]
    assert verdict["head"] == {
        "hash": records[-1]["hash"],
        "file": str(audit),
        "line": len(records),
        "seq": records[-1]["seq"],
        "run_id": records[-1]["run_id"],
        "ts": records[-1]["ts"],
    }
    assert verdict["signed_heads_checked"] is False
    assert tampered.code == 1
    broken = json.loads(tampered.out)
    assert broken["ok"] is False
    assert [(e["file"], e["line"]) for e in broken["errors"]] == [(str(audit), at + 1)]


# -- one line instead of a traceback; JSON instead of a Python dict --------------------------------


def test_sandbox_on_a_busy_port_exits_2_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = cli("sandbox", "--port", str(port), cwd=tmp_path)

    assert done.code == 2
    assert done.out == ""
    assert done.err == (
        f"audience-purge: error: --port {port}: cannot listen on 127.0.0.1:{port}: "
        "Address already in use\n"
    )


@pytest.mark.parametrize(
    ("flags", "line"),
    [
        (["--error-ratio", "2"], "--error-ratio: must be between 0 and 1, got 2.0"),
        (["--max-batch", "0"], "--max-batch: must be >= 1 or null, got 0"),
        (["--campaign", "x"], "--campaign: campaign spec 'x' must look like ID:STATUS:FIRST-LAST"),
    ],
)
def test_sandbox_fault_and_campaign_errors_name_the_flag(
    tmp_path: Path, flags: list[str], line: str
) -> None:
    done = cli("sandbox", "--port", "0", *flags, cwd=tmp_path)

    assert done.code == 2
    assert done.err == f"audience-purge: error: {line}\n"


def test_delete_all_dry_run_prints_the_json_body_it_would_send(tmp_path: Path) -> None:
    done = cli("delete-all", "--campaign-id", "42", "--confirm", "42", "--dry-run", cwd=tmp_path)

    assert done.code == 0, done.err
    body = done.out.partition(" with the body ")[2].partition("; nothing was sent")[0]
    assert body == '{"campaign_id":42,"delete_all":true}'  # the bytes the client sends
    assert json.loads(body) == {"campaign_id": 42, "delete_all": True}


# -- counts and durations for a person -----------------------------------------------------------


async def test_the_summary_says_1_id_and_a_duration_with_its_unit(
    sandbox: SandboxHandle, token: str, tmp_path: Path
) -> None:
    path = write_csv(tmp_path / "ids.csv", ["campaign_id,audience_id", "999,1", "42,3"])

    done = await purge(
        *run_args(sandbox, tmp_path, "--input", str(path)), cwd=tmp_path, token=token
    )

    assert done.code == 1, done.err
    failed = [line for line in done.out.splitlines() if line.startswith("  failed: ")]
    assert len(failed) == 1
    assert failed[0].startswith("  failed: 1 id, ")
    assert re.search(r"    time [0-9]+\.[0-9] s$", done.out, re.MULTILINE)
