"""The Kubernetes manifests (deploy/kubernetes/): schema-checked, read against the code, and
replayed.

There is no cluster here. Every built-in resource is validated against the Kubernetes
schemas (kubernetes-validate --strict), and KEDA's ScaledObject, a custom resource, against
the fields KEDA documents. The manifests are then read against the code they drive: the
podFailurePolicy against worker/exit_codes.py, each container's command line against the
CLI's own parser, the security context against the Restricted Pod Security Standard and the
image's user, what the container writes against its writable volumes, the probes against
--metrics-port. Finally the Jobs are replayed: their containers' arguments and environment,
as the manifests give them, run the real CLI against the sandbox (and a real Redis).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml
from conftest import write_csv

from worker.cli import build_parser, settings_from
from worker.exit_codes import ExitCode
from worker.sandbox.runner import SandboxHandle
from worker.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "kubernetes"
MANIFESTS = sorted(DEPLOY.glob("*.yaml"))
JOBS = ["job.yaml", "indexed-job.yaml"]

Doc = dict[str, Any]


def _documents(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _only(manifest: str, kind: str) -> Doc:
    [doc] = [d for d in _documents(DEPLOY / manifest) if d["kind"] == kind]
    return doc


def _pod_spec(doc: Doc) -> Doc | None:
    if doc["kind"] == "Pod":
        return dict(doc["spec"])
    template = doc.get("spec", {}).get("template")
    return dict(template["spec"]) if template else None


def _pods() -> Iterator[tuple[str, Doc]]:
    for path in MANIFESTS:
        for doc in _documents(path):
            spec = _pod_spec(doc)
            if spec is not None:
                yield f"{path.name}:{doc['kind']}", spec


PODS = list(_pods())


def _containers(spec: Doc) -> list[Doc]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def _cli_containers() -> Iterator[tuple[str, Doc, Doc]]:
    """Containers that run the image's entry point (the CLI): their args are a command line."""
    for name, spec in PODS:
        for container in _containers(spec):
            if "command" not in container:
                yield f"{name}:{container['name']}", spec, container


CLI_CONTAINERS = list(_cli_containers())


def _tool(name: str) -> str:
    found = shutil.which(name) or str(Path(sys.executable).with_name(name))
    if not Path(found).exists():
        pytest.fail(f"{name} is missing: it is a test dependency (pip install -e '.[test]')")
    return found


async def _run(
    *command: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *command,
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def _dockerfile_user() -> tuple[int, int]:
    users = re.findall(r"^USER\s+(\d+):(\d+)\s*$", (ROOT / "Dockerfile").read_text(), re.M)
    assert users, "the Dockerfile's USER is numeric uid:gid"
    uid, gid = users[-1]
    return int(uid), int(gid)


# --- schemas --------------------------------------------------------------------------------

# Custom resources: kubernetes-validate has no schema for them; each is checked below.
CUSTOM_KINDS = {("keda.sh/v1alpha1", "ScaledObject")}


def _is_custom(doc: Doc) -> bool:
    return (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS


@pytest.mark.parametrize("manifest", MANIFESTS, ids=[m.name for m in MANIFESTS])
async def test_manifest_is_valid_against_the_kubernetes_schema(
    manifest: Path, tmp_path: Path
) -> None:
    builtin = [doc for doc in _documents(manifest) if not _is_custom(doc)]
    assert builtin, "every manifest holds a built-in resource"
    checked = tmp_path / manifest.name
    checked.write_text(yaml.safe_dump_all(builtin))

    code, out = await _run(_tool("kubernetes-validate"), "--strict", str(checked))

    assert code == 0, out
    assert out.count("passed for resource") == len(builtin), out


async def test_kubernetes_validate_rejects_an_unknown_field(tmp_path: Path) -> None:
    """--strict is what catches a misspelt field (the schema alone would let it pass)."""
    job = _only("job.yaml", "Job")
    job["spec"]["ttlSecondsAfterFinishd"] = 60
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(job))

    code, out = await _run(_tool("kubernetes-validate"), "--strict", str(bad))

    assert code != 0, out
    assert "ttlSecondsAfterFinishd" in out, out


_INT32: Doc = {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}

# KEDA 2.x's ScaledObject (keda.sh/v1alpha1), as its specification documents it
# (keda.sh/docs/latest/reference/scaledobject-spec); unknown fields are refused, as
# `kubectl apply --validate=strict` would. Trigger metadata is a map of strings.
KEDA_SCALED_OBJECT: Doc = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["scaleTargetRef", "triggers"],
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name"],
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "name": {"type": "string"},
                        "envSourceContainerName": {"type": "string"},
                    },
                },
                "pollingInterval": _INT32,
                "cooldownPeriod": _INT32,
                "initialCooldownPeriod": _INT32,
                "idleReplicaCount": _INT32,
                "minReplicaCount": _INT32,
                "maxReplicaCount": _INT32,
                "fallback": {"type": "object"},
                "advanced": {"type": "object"},
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["type", "metadata"],
                        "properties": {
                            "type": {"type": "string"},
                            "name": {"type": "string"},
                            "metadata": {
                                "type": "object",
                                "additionalProperties": {"type": "string"},
                            },
                            "authenticationRef": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "kind": {"type": "string"},
                                },
                            },
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "useCachedMetrics": {"type": "boolean"},
                        },
                    },
                },
            },
        },
    },
}

# The redis-streams trigger's documented parameters (keda.sh/docs/latest/scalers/redis-streams).
REDIS_STREAMS_METADATA = {
    "address",
    "host",
    "port",
    "addressFromEnv",
    "hostFromEnv",
    "portFromEnv",
    "usernameFromEnv",
    "passwordFromEnv",
    "stream",
    "consumerGroup",
    "pendingEntriesCount",
    "streamLength",
    "lagCount",
    "activationLagCount",
    "enableTLS",
    "unsafeSsl",
    "databaseIndex",
}


def _consumer_settings() -> tuple[Doc, Settings]:
    deployment = _only("consumer.yaml", "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    [container] = spec["containers"]
    return container, _settings_of(container, spec)


def test_scaled_object_matches_kedas_schema_and_the_consumers() -> None:
    scaled = _only("consumer.yaml", "ScaledObject")
    deployment = _only("consumer.yaml", "Deployment")
    _, settings = _consumer_settings()

    jsonschema.validate(scaled, KEDA_SCALED_OBJECT)
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert spec["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
    assert "replicas" not in deployment["spec"], "the ScaledObject owns the replica count"
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    [trigger] = spec["triggers"]
    assert trigger["type"] == "redis-streams"
    metadata = trigger["metadata"]
    assert set(metadata) <= REDIS_STREAMS_METADATA, set(metadata) - REDIS_STREAMS_METADATA
    # scaled on the group's lag: lagCount, which needs activationLagCount beside it
    assert int(metadata["lagCount"]) > 0
    assert int(metadata["activationLagCount"]) >= 0
    # ... of the stream and group the consumers read, on the Redis they use
    redis = urlsplit(settings.redis_url or "")
    assert metadata["address"] == f"{redis.hostname}:{redis.port}"
    assert metadata.get("databaseIndex", "0") == (redis.path.strip("/") or "0")
    assert metadata["stream"] == settings.stream
    assert metadata["consumerGroup"] == settings.group


# --- exit codes -----------------------------------------------------------------------------


def _policy_action(
    policy: Doc, exit_code: int | None = None, conditions: Sequence[str] = ()
) -> str:
    """What the Job controller does with a failed pod: the first matching rule's action, or
    Count when none matches (Kubernetes' podFailurePolicy semantics)."""
    for rule in policy["rules"]:
        codes = rule.get("onExitCodes")
        if codes is not None and exit_code is not None:
            named = exit_code in codes["values"]
            if named == (codes["operator"] == "In"):
                return str(rule["action"])
        if any(c["type"] in conditions for c in rule.get("onPodConditions", [])):
            return str(rule["action"])
    return "Count"


@pytest.mark.parametrize("manifest", JOBS)
def test_pod_failure_policy_is_built_from_the_exit_codes(manifest: str) -> None:
    job = _only(manifest, "Job")
    spec = job["spec"]
    policy = spec["podFailurePolicy"]
    [container] = spec["template"]["spec"]["containers"]
    fail = "FailIndex" if spec.get("completionMode") == "Indexed" else "FailJob"

    named = {v for r in policy["rules"] if "onExitCodes" in r for v in r["onExitCodes"]["values"]}
    assert named <= {int(c) for c in ExitCode}, f"not exit codes of ours: {named}"
    for rule in policy["rules"]:
        if "onExitCodes" in rule:
            assert rule["onExitCodes"]["containerName"] == container["name"]
    # a usage/config error or a refused token: another pod would fail the same way
    assert _policy_action(policy, ExitCode.USAGE) == fail
    assert _policy_action(policy, ExitCode.FATAL) == fail
    # a signal, or a disruption whatever the code: retried without using up the budget
    assert _policy_action(policy, ExitCode.INTERRUPTED) == "Ignore"
    assert _policy_action(policy, ExitCode.INTERNAL, ["DisruptionTarget"]) == "Ignore"
    # failed ids: retried, counted
    assert _policy_action(policy, ExitCode.FAILED) == "Count"
    for code in (ExitCode.UNAVAILABLE, ExitCode.INTERNAL, ExitCode.IO_ERROR):
        assert _policy_action(policy, code) == "Count"


@pytest.mark.parametrize("manifest", JOBS)
def test_jobs_are_bounded_and_cleaned_up(manifest: str) -> None:
    spec = _only(manifest, "Job")["spec"]

    assert spec["template"]["spec"]["restartPolicy"] == "Never"  # podFailurePolicy needs it
    assert spec["podReplacementPolicy"] == "Failed"  # never two pods on one state directory
    assert spec["ttlSecondsAfterFinished"] > 0
    assert spec["activeDeadlineSeconds"] > 0
    if spec.get("completionMode") == "Indexed":
        assert spec["backoffLimitPerIndex"] >= 1
        [container] = spec["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["AUDIENCE_PURGE_SHARD_COUNT"] == str(spec["completions"])
    else:
        assert spec["backoffLimit"] >= 1


# --- pods: security, volumes ----------------------------------------------------------------

# Volume types the Restricted Pod Security Standard allows.
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


@pytest.mark.parametrize(("name", "spec"), PODS, ids=[n for n, _ in PODS])
def test_pod_passes_the_restricted_pod_security_standard(name: str, spec: Doc) -> None:
    uid, gid = _dockerfile_user()
    pod = spec["securityContext"]

    assert pod["runAsNonRoot"] is True
    assert (pod["runAsUser"], pod["runAsGroup"], pod["fsGroup"]) == (uid, gid, gid)
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC", "hostUsers"))
    assert spec.get("automountServiceAccountToken") is False
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        assert kinds <= RESTRICTED_VOLUMES, f"{volume['name']}: {kinds}"
    for container in _containers(spec):
        context = container["securityContext"]
        assert context["runAsNonRoot"] is True, container["name"]
        assert context.get("runAsUser", uid) != 0
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        assert context["readOnlyRootFilesystem"] is True
        assert not context.get("privileged")
        for port in container.get("ports", []):
            assert "hostPort" not in port
        assert container["resources"]["requests"]["memory"]
        assert container["resources"]["limits"]["memory"]


def _volume(spec: Doc, name: str) -> Doc:
    [volume] = [v for v in spec["volumes"] if v["name"] == name]
    return volume


def _mount_for(spec: Doc, container: Doc, path: Path) -> tuple[Doc, Doc]:
    """The volume mount (and its volume) that holds ``path`` in the container."""
    mounts = [m for m in container["volumeMounts"] if path.is_relative_to(Path(m["mountPath"]))]
    assert mounts, f"{path} is on the container's root filesystem, which is read-only"
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    return mount, _volume(spec, mount["name"])


def _image_workdir() -> Path:
    workdirs = re.findall(r"^WORKDIR\s+(\S+)", (ROOT / "Dockerfile").read_text(), re.M)
    return Path(workdirs[-1])


@pytest.mark.parametrize(("name", "spec"), PODS, ids=[n for n, _ in PODS])
def test_tmp_is_a_writable_empty_dir(name: str, spec: Doc) -> None:
    for container in _containers(spec):
        mount, volume = _mount_for(spec, container, Path("/tmp/x"))
        assert mount["mountPath"] == "/tmp"
        assert not mount.get("readOnly")
        assert "emptyDir" in volume


@pytest.mark.parametrize(
    ("name", "spec", "container"), CLI_CONTAINERS, ids=[n for n, _, _ in CLI_CONTAINERS]
)
def test_everything_the_container_writes_is_on_a_writable_volume(
    name: str, spec: Doc, container: Doc
) -> None:
    settings = _settings_of(container, spec)
    cwd = Path(container.get("workingDir", _image_workdir()))
    written = [settings.audit_log or settings.audit_dir, settings.state_dir]
    written += [settings.report, settings.failed_out]
    for path in (cwd / p for p in written if p is not None):
        mount, volume = _mount_for(spec, container, path)
        assert not mount.get("readOnly"), f"{path} is on a read-only mount"
        assert "secret" not in volume
        assert "configMap" not in volume
    for argument in container["args"]:
        if argument.startswith("--input="):
            _mount_for(spec, container, Path(argument.partition("=")[2]))


@pytest.mark.parametrize(
    ("name", "spec", "container"), CLI_CONTAINERS, ids=[n for n, _, _ in CLI_CONTAINERS]
)
def test_token_is_a_read_only_secret_file_that_rotation_reaches(
    name: str, spec: Doc, container: Doc
) -> None:
    settings = _settings_of(container, spec)
    assert settings.token_file is not None, "the token comes from a file"
    env = {e["name"] for e in container["env"]}
    assert "UNLEASHX_TOKEN" not in env, "never the token itself in the manifest"

    mount, volume = _mount_for(spec, container, settings.token_file)
    assert mount["readOnly"] is True
    assert "subPath" not in mount  # else a rotated Secret never reaches the pod
    assert "subPathExpr" not in mount
    assert settings.token_file.parent == Path(mount["mountPath"])
    secret = volume["secret"]
    assert "items" not in secret  # the key's own name: `token`
    assert settings.token_file.name == "token"
    mode = secret.get("defaultMode", 0o644)
    assert mode & 0o040, "group-readable: the worker reads it through fsGroup"
    assert not mode & 0o007, "not world-readable"


# --- command lines --------------------------------------------------------------------------

_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def _environment(container: Doc, spec: Doc) -> dict[str, str]:
    """The container's environment as Kubernetes builds it, with stand-ins for the values
    only a cluster knows (the pod name, the completion index)."""
    env: dict[str, str] = {}
    if "JOB_COMPLETION_INDEX" in str(container.get("args")):
        env["JOB_COMPLETION_INDEX"] = "0"
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        else:
            field = item["valueFrom"]["fieldRef"]["fieldPath"]
            env[item["name"]] = {"metadata.name": "audience-purge-7d9f-x2x4q"}[field]
    return env


def _expand(argument: str, env: Mapping[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        assert match[1] in env, f"$({match[1]}) is not in the container's environment"
        return env[match[1]]

    return _REFERENCE.sub(one, argument)


def _option_strings(command: str) -> set[str]:
    """The flags of one subcommand, exactly as the CLI spells them."""
    [commands] = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return set(commands.choices[command]._option_string_actions)


def _settings_of(container: Doc, spec: Doc) -> Settings:
    """The container's command line through the CLI's own parser and settings resolution."""
    env = _environment(container, spec)
    args = [_expand(a, env) for a in container["args"]]
    namespace = build_parser().parse_args(args)
    return settings_from(namespace, env)


@pytest.mark.parametrize(
    ("name", "spec", "container"), CLI_CONTAINERS, ids=[n for n, _, _ in CLI_CONTAINERS]
)
def test_command_line_parses_with_the_cli_and_its_grace_fits(
    name: str, spec: Doc, container: Doc
) -> None:
    settings = _settings_of(container, spec)  # raises on an unknown flag or a bad value
    # spelt in full: argparse would take an abbreviation, which a new flag can make ambiguous
    known = _option_strings(container["args"][0])
    for argument in container["args"][1:]:
        assert argument.partition("=")[0] in known, f"{argument}: not a flag of its command"

    # in-flight requests get --grace after SIGTERM, then progress and run_finished are
    # written: all of it before the kubelet's SIGKILL
    assert spec["terminationGracePeriodSeconds"] >= settings.grace + 10


def test_a_bad_command_line_is_caught() -> None:
    """The parsing above is no formality: a misspelt flag or a bad value fails it."""
    spec = _only("job.yaml", "Job")["spec"]["template"]["spec"]
    [container] = spec["containers"]
    with pytest.raises(SystemExit):
        _settings_of({**container, "args": [*container["args"], "--campain-id=42"]}, spec)
    with pytest.raises(Exception, match="rate"):
        _settings_of({**container, "args": [*container["args"], "--rate=fast"]}, spec)


def test_every_pod_runs_the_purge_image() -> None:
    """A pod with its own command (the data pod) still runs the purge's image: it needs the
    CLI (audit verify) and tar (kubectl cp)."""
    images = {c["image"] for _, spec in PODS for c in _containers(spec)}
    assert len(images) == 1, images


def test_consumer_probes_ask_the_health_endpoints_on_the_metrics_port() -> None:
    container, settings = _consumer_settings()
    [port] = [p for p in container["ports"] if p["containerPort"] == settings.metrics_port]

    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path
        assert get["port"] in (port["name"], port["containerPort"])
    # The kubelet and Prometheus reach the pod's IP, not its loopback.
    assert settings.metrics_address == "0.0.0.0"
    # Default names are unique per process (the pod name, the PID and random).
    assert "--consumer" not in " ".join(container["args"])


# --- replays --------------------------------------------------------------------------------


def _replay_invocation(
    spec: Doc, container: Doc, volumes: Path, extra_env: Mapping[str, str]
) -> tuple[list[str], dict[str, str], Path]:
    """The container's args and environment with each volume's mount path mapped to a
    directory under ``volumes``; returns them and the working directory (the image's)."""
    mounts = sorted(container["volumeMounts"], key=lambda m: -len(m["mountPath"]))
    paths = re.compile(
        "(?<![\\w/.-])(" + "|".join(re.escape(m["mountPath"]) for m in mounts) + ")(?=/|$)"
    )
    host = {m["mountPath"]: str(volumes / m["name"]) for m in mounts}

    def mapped(text: str) -> str:
        return paths.sub(lambda match: host[match[1]], text)

    for mount in mounts:
        (volumes / mount["name"]).mkdir(parents=True, exist_ok=True)
    env = {k: mapped(v) for k, v in _environment(container, spec).items()} | dict(extra_env)
    args = [mapped(_expand(a, env)) for a in container["args"]]
    return args, env, Path(mapped(str(_image_workdir())))


def _fast(args: list[str], sandbox: SandboxHandle) -> list[str]:
    """The manifest's arguments, pointed at the sandbox, faster and quieter (later flags win)."""
    return [*args, "--base-url", sandbox.url, "--rate", "200/s", "--progress", "off"]


async def test_job_replayed_deletes_every_id_and_a_refused_token_fails_the_job(
    sandbox: SandboxHandle, token: str, tmp_path: Path
) -> None:
    job = _only("job.yaml", "Job")
    spec = job["spec"]["template"]["spec"]
    [container] = spec["containers"]
    volumes = tmp_path / "volumes"
    base = {"PATH": os.environ.get("PATH", "")}
    args, env, cwd = _replay_invocation(spec, container, volumes, base)
    settings = _settings_of(container, spec)
    ids = list(range(1, 301))
    write_csv(volumes / "data" / "ids.csv", [str(i) for i in ids])
    token_file = Path(env["UNLEASHX_TOKEN_FILE"])
    token_file.write_text("not-the-token\n")

    # the API refuses the token: exit 3, and the policy fails the Job at once
    code, out = await _run(sys.executable, "-m", "worker", *_fast(args, sandbox), env=env, cwd=cwd)
    assert code == ExitCode.FATAL, out
    assert _policy_action(job["spec"]["podFailurePolicy"], code) == "FailJob"

    # the Secret fixed: the next run resumes and finishes
    token_file.write_text(token + "\n")
    code, out = await _run(sys.executable, "-m", "worker", *_fast(args, sandbox), env=env, cwd=cwd)
    assert code == ExitCode.OK, out
    assert settings.audit_log is not None
    assert (volumes / "data" / settings.audit_log.relative_to("/data")).exists()
    assert sandbox.state.receipts[42].received_ids() == ids
    assert [i for i in ids if sandbox.state.campaigns[42].alive(i)] == []


async def test_indexed_job_replayed_index_by_index_deletes_every_id_once(
    sandbox: SandboxHandle, token: str, redis_url: str, tmp_path: Path
) -> None:
    job = _only("indexed-job.yaml", "Job")
    spec = job["spec"]["template"]["spec"]
    [container] = spec["containers"]
    completions = int(job["spec"]["completions"])
    volumes = tmp_path / "volumes"
    ids = list(range(1, 601))

    for index in range(completions):
        base = {
            "PATH": os.environ.get("PATH", ""),
            "JOB_COMPLETION_INDEX": str(index),
            "AUDIENCE_PURGE_REDIS_URL": redis_url,
        }
        args, env, cwd = _replay_invocation(spec, container, volumes, base)
        if index == 0:
            write_csv(volumes / "data" / "ids.csv", [str(i) for i in ids])
            Path(env["UNLEASHX_TOKEN_FILE"]).write_text(token)
        code, out = await _run(
            sys.executable, "-m", "worker", *_fast(args, sandbox), env=env, cwd=cwd
        )
        assert code == 0, out
        # the environment is what Kubernetes gives the pod, so the shard came from it
        assert (volumes / "data" / "audit" / f"shard-{index}.jsonl").exists()

    received = sandbox.state.receipts[42]
    assert received.received_ids() == ids
    assert received.resent == 0
    assert [i for i in ids if sandbox.state.campaigns[42].alive(i)] == []
