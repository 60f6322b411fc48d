"""The Dockerfile and the Kubernetes manifests: linted, schema-checked, and replayed.

There is no container engine or cluster here, so the Indexed Job is replayed: each index's
container arguments and environment, as the manifest gives them, run the real CLI against
the sandbox and a real Redis.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from conftest import write_csv

from worker.sandbox.runner import SandboxHandle

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = sorted((ROOT / "docs" / "kubernetes").glob("*.yaml"))


def _tool(name: str) -> str:
    found = shutil.which(name) or str(Path(sys.executable).with_name(name))
    if not Path(found).exists():
        pytest.fail(f"{name} is missing: it is a test dependency (pip install -e '.[test]')")
    return found


async def _run(*command: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *command, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_dockerfile_passes_hadolint() -> None:
    code, out = await _run(_tool("hadolint"), str(ROOT / "Dockerfile"))

    assert code == 0, out


def test_dockerfile_entrypoint_is_the_console_script_and_runs_unprivileged() -> None:
    text = (ROOT / "Dockerfile").read_text()
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]

    assert 'ENTRYPOINT ["audience-purge"]' in text
    assert "audience-purge" in scripts
    assert re.search(r"^USER 10001$", text, re.MULTILINE)


@pytest.mark.parametrize("manifest", MANIFESTS, ids=[m.name for m in MANIFESTS])
async def test_manifest_is_valid_against_the_kubernetes_schema(manifest: Path) -> None:
    code, out = await _run(_tool("kubernetes-validate"), str(manifest))

    assert code == 0, out
    assert "passed" in out


def _container(manifest: str) -> dict[str, object]:
    doc = yaml.safe_load((ROOT / "docs" / "kubernetes" / manifest).read_text())
    return dict(doc["spec"]["template"]["spec"]["containers"][0])


async def test_indexed_job_replayed_index_by_index_deletes_every_id_once(
    sandbox: SandboxHandle, token: str, redis_url: str, tmp_path: Path
) -> None:
    job = yaml.safe_load((ROOT / "docs" / "kubernetes" / "indexed-job.yaml").read_text())
    container = _container("indexed-job.yaml")
    completions = int(job["spec"]["completions"])
    ids = list(range(1, 601))
    data = tmp_path / "data"
    data.mkdir()
    write_csv(data / "ids.csv", [str(i) for i in ids])
    (tmp_path / "token").write_text(token)

    for index in range(completions):
        env = {e["name"]: e["value"] for e in container["env"]}  # type: ignore[attr-defined]
        env |= {
            "JOB_COMPLETION_INDEX": str(index),
            "AUDIENCE_PURGE_REDIS_URL": redis_url,
            "UNLEASHX_TOKEN_FILE": str(tmp_path / "token"),
            "PATH": os.environ.get("PATH", ""),
        }
        args = [
            a.replace("$(JOB_COMPLETION_INDEX)", str(index)).replace("/data", str(data))
            for a in container["args"]  # type: ignore[attr-defined]
        ]
        args = [a for a in args if not a.startswith("--rate=")]
        code, out = await _run(
            sys.executable,
            "-m",
            "worker",
            *args,
            "--base-url",
            sandbox.url,
            "--rate",
            "200/s",
            "--progress",
            "off",
            env=env,
        )
        assert code == 0, out
        # the environment is what Kubernetes gives the pod, so the shard came from it
        assert (data / "audit" / f"retention-2026-11-{index}.jsonl").exists()

    received = sandbox.state.receipts[42]
    assert received.received_ids() == ids
    assert received.resent == 0
    assert [i for i in ids if sandbox.state.campaigns[42].alive(i)] == []


def test_consumer_deployment_names_each_consumer_after_its_pod() -> None:
    container = _container("consumer-deployment.yaml")
    args = container["args"]

    assert isinstance(args, list)
    assert "consume" in args
    assert not any(a.startswith("--consumer") for a in args)  # the hostname is the pod name
    assert any(a.startswith("--rate-scope=shared") for a in args)
