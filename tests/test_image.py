"""The image and the package: the Dockerfile linted and read, the locks it installs from, and
its build replayed without a container engine.

The replay reads the Dockerfile and carries out its build stage in a directory standing for
the image's root filesystem: the build context is what .dockerignore lets through, COPY
copies from it, absolute paths are mapped under that root, and ``python`` is a fresh virtual
environment standing for the base image's interpreter. So the build installs the locked
dependencies with --require-hashes and the project's wheel exactly as the Dockerfile says.
Then the final stage's environment and entry point run from what was installed: --version,
the Kubernetes Job's own command line against the sandbox, audit verify; nothing is written
outside the volumes (the root filesystem may be read-only). The README's embedding example
is type-checked under mypy --strict against the installed package, as a user's project would.

The downloads are kept in pytest's cache directory (.pytest_cache), so a second run needs no
network: the replay installs from there, still checking every file against the lock's hash.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import urllib.request
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DOCKERFILE = ROOT / "Dockerfile"
LOCKS = ROOT / "requirements"


def _tool(name: str) -> str:
    found = shutil.which(name) or str(Path(sys.executable).with_name(name))
    if not Path(found).exists():
        pytest.fail(f"{name} is missing: it is a test dependency (see requirements/test.lock)")
    return found


# --- the Dockerfile, read -------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    steps: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [rest for key, rest in self.steps if key == keyword]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARGs and the stages, each a list of (INSTRUCTION, rest) with continuation
    lines joined and comments dropped, as Docker reads them."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    arguments: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        elif stages:
            stages[-1].steps.append((keyword, rest))
        elif keyword == "ARG":
            key, _, value = rest.partition("=")
            arguments[key] = value
    return arguments, stages


_, STAGES = parse_dockerfile(DOCKERFILE.read_text())
FINAL = STAGES[-1]


def _pairs(rest: str) -> dict[str, str]:
    """KEY=VALUE words (ENV, LABEL, ARG), quotes removed."""
    return dict(word.partition("=")[::2] for word in shlex.split(rest))


def _substituted(value: str, variables: Mapping[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: variables.get(m[1], ""), value)


def final_labels() -> dict[str, str]:
    arguments: dict[str, str] = {}
    labels: dict[str, str] = {}
    for keyword, rest in FINAL.steps:
        if keyword == "ARG":
            arguments |= _pairs(rest)
        elif keyword == "LABEL":
            labels |= {k: _substituted(v, arguments) for k, v in _pairs(rest).items()}
    return labels


def final_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for rest in FINAL.all("ENV"):
        env |= _pairs(rest)
    return env


async def test_dockerfile_passes_hadolint() -> None:
    """Every rule at every level (style included) and the OCI labels this image promises."""
    # source and version are build arguments: hadolint checks that they are there
    labels = ("source:text", "version:text", "licenses:spdx")
    required = [f"--require-label=org.opencontainers.image.{label}" for label in labels]
    command = [_tool("hadolint"), "--no-color", "--failure-threshold=style", *required]
    command.append(str(DOCKERFILE))

    done = subprocess.run(command, capture_output=True, text=True, check=False)

    assert done.returncode == 0, done.stdout + done.stderr


def test_base_image_is_pinned_to_a_patch_release_with_its_digest_noted() -> None:
    bases = {stage.base for stage in STAGES}
    [base] = bases  # the build and the image share one interpreter (the venv is copied)
    match = re.fullmatch(r"python:(\d+)\.(\d+)\.(\d+)-slim-(\w+)", base)
    assert match, f"{base}: not pinned to a patch release"
    # the Python that CI tests and type-checks for
    assert f"{match[1]}.{match[2]}" == PYPROJECT["tool"]["mypy"]["python_version"]
    assert re.search(
        rf"^#\s+{re.escape(base)}@sha256:[0-9a-f]{{64}}$", DOCKERFILE.read_text(), re.M
    )


def test_image_runs_unprivileged_with_the_console_script_as_entry_point() -> None:
    [user] = FINAL.all("USER")
    [entrypoint] = FINAL.all("ENTRYPOINT")
    scripts = PYPROJECT["project"]["scripts"]

    assert re.fullmatch(r"\d+:\d+", user), "numeric uid:gid (runAsNonRoot can check it)"
    assert all(int(n) >= 10000 for n in user.split(":"))
    assert json.loads(entrypoint) == ["audience-purge"]
    assert "audience-purge" in scripts
    env = final_env()
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"


def test_image_carries_oci_labels_that_match_the_project() -> None:
    labels = final_labels()
    oci = "org.opencontainers.image."

    assert labels[oci + "version"] == PYPROJECT["project"]["version"]
    assert labels[oci + "licenses"] == PYPROJECT["project"]["license"]
    assert re.match(r"https://", labels[oci + "source"])


def _pip_installs() -> list[str]:
    return [
        command.strip()
        for stage in STAGES
        for run in stage.all("RUN")
        for command in run.split("&&")
        if re.search(r"\bpip\b.*\binstall\b", command)
    ]


def test_every_install_is_from_a_lock_with_hashes() -> None:
    installs = _pip_installs()
    locks = set()
    for command in installs:
        words = shlex.split(command)
        if "--no-deps" in words and any(w.endswith(".whl") for w in words):
            continue  # the project's own wheel, built from the context
        assert "--require-hashes" in words, command
        assert "--only-binary=:all:" in words, command
        locks |= {words[i + 1] for i, w in enumerate(words) if w == "-r"}
    assert {"requirements/runtime.lock", "requirements/build.lock"} <= locks


# --- .dockerignore --------------------------------------------------------------------------


def _ignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """.dockerignore as (exclude?, regex) in order: Docker's matching, where the last
    matching pattern wins and a pattern also matches a path's parent directories."""
    patterns = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        glob = line.lstrip("!").strip("/")
        regex = ""
        i = 0
        while i < len(glob):
            if glob.startswith("**", i):
                regex += ".*"
                i += 2
                if glob.startswith("/", i):
                    regex = regex[:-2] + "(?:.*/)?"
                    i += 1
            elif glob[i] == "*":
                regex += "[^/]*"
                i += 1
            elif glob[i] == "?":
                regex += "[^/]"
                i += 1
            elif glob[i] == "[":
                end = glob.index("]", i)
                regex += glob[i : end + 1]
                i = end + 1
            else:
                regex += re.escape(glob[i])
                i += 1
        patterns.append((not include, re.compile(regex)))
    return patterns


def in_context(relative: str) -> bool:
    parts = relative.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for exclude, regex in _ignore_patterns():
        if any(regex.fullmatch(c) for c in candidates):
            excluded = exclude
    return not excluded


def _reincluded_below(directory: str) -> bool:
    """Whether a `!` pattern may bring back something inside an excluded directory."""
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    globs = [line.strip()[1:].strip("/") for line in lines if line.strip().startswith("!")]
    return any(g.startswith(directory + "/") or g.startswith("**") for g in globs)


def build_context() -> Iterator[Path]:
    """The files of the work tree that `docker build .` sends."""
    for top, directories, files in os.walk(ROOT):
        here = Path(top)
        directories[:] = sorted(
            d
            for d in directories
            if in_context((here / d).relative_to(ROOT).as_posix())
            or _reincluded_below((here / d).relative_to(ROOT).as_posix())
        )
        for name in sorted(files):
            if in_context((here / name).relative_to(ROOT).as_posix()):
                yield here / name


def test_dockerignore_sends_what_the_image_needs_and_nothing_private() -> None:
    sent = {p.relative_to(ROOT).as_posix() for p in build_context()}

    for needed in ("pyproject.toml", "README.md", "LICENSE", "worker/cli.py", "worker/py.typed"):
        assert needed in sent
    assert {"requirements/runtime.lock", "requirements/build.lock"} <= sent
    for private in (".venv/bin/python", ".git/HEAD", "purge-audit/x.jsonl", "purge-state/s"):
        assert not in_context(private), private
    for other in ("tests/conftest.py", "bench/memory.py", "worker/__pycache__/cli.cpython-311.pyc"):
        assert not in_context(other), other
    assert in_context("worker/sending/client.py")


# --- the locks ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pin:
    requirement: Requirement
    hashes: tuple[str, ...]

    @property
    def version(self) -> Version:
        [spec] = self.requirement.specifier
        return Version(spec.version)


def read_lock(path: Path) -> dict[str, Pin]:
    text = re.sub(r"\\\n", " ", path.read_text())
    pins = {}
    for line in text.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        hashes = tuple(re.findall(r"--hash=(sha256:[0-9a-f]{64})", line))
        requirement = Requirement(re.sub(r"\s*--hash=\S+", "", line))
        pins[canonicalize_name(requirement.name)] = Pin(requirement, hashes)
    return pins


def _unmet(wanted: list[str], lock: dict[str, Pin]) -> list[str]:
    """The requirements the lock does not pin to a version that satisfies them."""
    unmet = []
    for text in wanted:
        requirement = Requirement(text)
        pin = lock.get(canonicalize_name(requirement.name))
        if pin is None or not requirement.specifier.contains(pin.version, prereleases=True):
            unmet.append(text)
    return unmet


REFRESH = "refresh the locks: see docs/lock.md"


@pytest.mark.parametrize(
    "name", ["runtime.lock", "build.lock", "test.lock", "bench.lock", "mutation.lock"]
)
def test_lock_pins_every_package_to_one_version_with_hashes(name: str) -> None:
    lock = read_lock(LOCKS / name)

    assert lock
    for pin in lock.values():
        assert str(pin.requirement.specifier).startswith("=="), pin.requirement
        assert pin.hashes, f"{pin.requirement}: no hash"


def test_locks_satisfy_the_project_and_agree_with_each_other() -> None:
    runtime, build, test = (read_lock(LOCKS / f"{n}.lock") for n in ("runtime", "build", "test"))
    dependencies = PYPROJECT["project"]["dependencies"]

    assert _unmet(dependencies, runtime) == [], REFRESH
    assert _unmet(PYPROJECT["build-system"]["requires"], build) == [], REFRESH
    extras = PYPROJECT["project"]["optional-dependencies"]["test"]
    assert _unmet([*dependencies, *extras], test) == [], REFRESH
    # CI tests with the versions the image ships, and builds with the pinned tool chain
    for other in (runtime, build):
        for name, pin in other.items():
            if name in test:
                assert test[name].version == pin.version, f"{name}: {REFRESH}"
    # nothing in the image that the project does not need
    needed = {canonicalize_name(Requirement(d).name) for d in dependencies}
    assert needed <= set(runtime)


def imported_distributions(package: Path) -> set[str]:
    """The distributions whose modules ``package`` imports itself (the standard library and
    the project left out)."""
    names = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
    names -= {*sys.stdlib_module_names, "__future__", package.name}
    provided = importlib.metadata.packages_distributions()
    return {canonicalize_name(d) for name in names for d in provided.get(name, [name])}


def test_the_runtime_dependencies_are_what_the_package_imports() -> None:
    """Each package worker/ imports is declared (not borrowed from another's dependencies),
    and nothing is declared that only a benchmark or a test uses."""
    dependencies = PYPROJECT["project"]["dependencies"]
    declared = {canonicalize_name(Requirement(d).name) for d in dependencies}

    assert imported_distributions(ROOT / "worker") == declared


def test_bench_lock_adds_the_bench_extra_and_changes_nothing_the_test_lock_pins() -> None:
    """bench.lock is installed on top of test.lock (bench/suite.py, bench/profile.py): it must
    not move a package the tests run with."""
    test, bench = read_lock(LOCKS / "test.lock"), read_lock(LOCKS / "bench.lock")
    extras = PYPROJECT["project"]["optional-dependencies"]

    assert _unmet([*extras["test"], *extras["bench"]], bench) == [], REFRESH
    for name, pin in test.items():
        assert name in bench, f"{name}: {REFRESH}"
        assert bench[name].version == pin.version, f"{name}: {REFRESH}"


def test_mutation_lock_adds_the_mutation_extra_and_changes_nothing_the_test_lock_pins() -> None:
    """mutation.lock is all scripts/mutation installs (cosmic-ray and the test tools): the
    mutants must be judged by the tests as CI runs them."""
    test, mutation = read_lock(LOCKS / "test.lock"), read_lock(LOCKS / "mutation.lock")
    extras = PYPROJECT["project"]["optional-dependencies"]

    assert _unmet([*extras["test"], *extras["mutation"]], mutation) == [], REFRESH
    for name, pin in test.items():
        assert name in mutation, f"{name}: {REFRESH}"
        assert mutation[name].version == pin.version, f"{name}: {REFRESH}"
    assert "cosmic-ray" not in test  # not in CI's test environment


def test_test_script_installs_pinned_tools_from_the_locks() -> None:
    script = (ROOT / "scripts" / "test").read_text()
    steps = [
        "--require-hashes -r requirements/build.lock",  # pip and the build backend
        "--require-hashes -r requirements/test.lock",  # runtime dependencies and test tools
        "--no-deps --no-build-isolation -e .",  # the project, with nothing more fetched
        ".venv/bin/ruff check .",
        ".venv/bin/ruff format --check .",
        ".venv/bin/mypy",
        '.venv/bin/python -m pytest "$@"',
    ]

    positions = [script.find(step) for step in steps]
    assert -1 not in positions, [s for s, p in zip(steps, positions, strict=True) if p < 0]
    assert positions == sorted(positions)
    assert ".[test]" not in script  # unpinned: whatever the index serves that day
    assert "--upgrade" not in script


# --- the replay -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Image:
    root: Path  # the image's root filesystem
    env: dict[str, str]  # the final stage's environment
    entrypoint: list[str]
    workdir: str
    volumes: Path  # volumes mounted into the container, outside its root

    def host(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def command(self, *args: str) -> list[str]:
        """The entry point with ``args``, found on the image's PATH as a container would."""
        first, *rest = self.entrypoint
        executable = shutil.which(first, path=self.env["PATH"])
        assert executable is not None, f"{first} is not on the image's PATH"
        assert Path(executable).is_relative_to(self.root), executable
        return [executable, *rest, *args]

    def run(
        self, *args: str, env: Mapping[str, str] | None = None, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(*args),
            env={**self.env, **(env or {})},
            cwd=cwd or self.host(self.workdir),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


# What passes from this machine into the replay: the network's settings (proxies, the
# certificate authorities pip is told to trust), nothing else of pip's configuration here
# (its indexes, links and constraints: an image has none).
_PASSED = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")
_PASSED += ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "PIP_DEFAULT_TIMEOUT")
_SYSTEM = ("/usr/", "/bin/", "/etc/", "/dev/", "/proc/", "/sys/", "/lib")


def _machine_cert() -> str | None:
    """The certificate bundle pip uses on this machine (PIP_CERT, or `cert` in its config)."""
    if os.environ.get("PIP_CERT"):
        return os.environ["PIP_CERT"]
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True
    )
    found = re.search(r"^\S*\.cert='([^']+)'$", listed.stdout, re.M)
    return found[1] if found else None


def _clean_env(path: str, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in _PASSED}
    cert = _machine_cert()
    if cert:
        env["PIP_CERT"] = cert
    return env | {"PATH": path, "HOME": str(home), "PIP_CONFIG_FILE": os.devnull, "LANG": "C.UTF-8"}


def _wheelhouse(cache: Path, python: str, env: dict[str, str]) -> Path:
    """The files the build installs, downloaded once (from the cache when they are there)
    and checked against the locks' hashes either way."""
    wheels = cache / "wheelhouse"
    wheels.mkdir(parents=True, exist_ok=True)
    command = [python, "-m", "pip", "download", "--quiet", "--disable-pip-version-check"]
    command += ["--require-hashes", "--only-binary=:all:", "--dest", str(wheels)]
    command += ["-r", str(LOCKS / "build.lock"), "-r", str(LOCKS / "runtime.lock")]
    offline = [*command, "--no-index", "--find-links", str(wheels)]
    if subprocess.run(offline, env=env, capture_output=True, check=False).returncode != 0:
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
    return wheels


def _copy(sources: list[Path], destination: Path) -> None:
    """COPY: a directory's contents, or files (into a directory when the destination ends
    with / or there are several)."""
    for source in sources:
        assert source.exists(), f"COPY {source.name}: not in the build context"
        if source.is_dir():
            shutil.copytree(source, destination, dirs_exist_ok=True)
        elif str(destination).endswith("/") or len(sources) > 1 or destination.is_dir():
            destination.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / source.name)
        else:
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination)


def replay(work: Path, cache: Path) -> Image:
    root, context, base = work / "rootfs", work / "context", work / "base-python"
    for path in build_context():
        target = context / path.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    # the base image's interpreter: a fresh environment of this Python, with its own pip
    python = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([python, "-m", "venv", str(base)], check=True, capture_output=True)
    system_path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    base_env = _clean_env(f"{base / 'bin'}:{system_path}", work / "home")
    wheels = _wheelhouse(cache, str(base / "bin" / "python"), base_env)

    def mapped(text: str) -> str:
        """Absolute paths of the image under the stand-in root; the base's are left."""

        def one(match: re.Match[str]) -> str:
            path = match[2]
            if path.startswith(_SYSTEM) or path == "/":
                return match[0]
            return match[1] + str(root) + path

        return re.sub(r"(^|[\s=:])(/[^\s:]*)", one, text)

    stage_env: dict[str, str] = {}
    for stage in STAGES:
        # every stage starts from the base image: its PATH, then the stage's own ENV
        stage_env = {"PATH": base_env["PATH"]}
        workdir = "/"
        for keyword, rest in stage.steps:
            if keyword == "ENV":
                for key, value in _pairs(rest).items():
                    stage_env[key] = _substituted(mapped(value), stage_env)
            elif keyword == "WORKDIR":
                workdir = rest if rest.startswith("/") else f"{workdir.rstrip('/')}/{rest}"
                (root / workdir.lstrip("/")).mkdir(parents=True, exist_ok=True)
            elif keyword == "COPY":
                words = rest.split()
                origin = [w for w in words if w.startswith("--from=")]
                paths = [w for w in words if not w.startswith("--")]
                *sources, destination = paths
                target = Path(
                    mapped(
                        destination if destination.startswith("/") else f"{workdir}/{destination}"
                    )
                )
                if destination.endswith("/"):
                    target.mkdir(parents=True, exist_ok=True)
                if origin:  # from an earlier stage: the same root here, so it is in place
                    assert [Path(mapped(s)) for s in sources] == [target], rest
                    assert target.exists(), rest
                else:
                    _copy([context / s for s in sources], target)
            elif keyword == "RUN" and stage is FINAL:
                _setup_user_and_dirs(rest, root)
            elif keyword == "RUN":
                env = base_env | stage_env | {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels)}
                done = subprocess.run(
                    ["/bin/sh", "-c", mapped(rest)],
                    cwd=root / workdir.lstrip("/"),
                    env=env,
                    capture_output=True,
                    text=True,
                    check=False,
                )
                assert done.returncode == 0, f"RUN {rest}\n{done.stdout}{done.stderr}"
    [entrypoint] = FINAL.all("ENTRYPOINT")
    [workdir] = FINAL.all("WORKDIR")
    volumes = work / "volumes"
    env = base_env | stage_env | {"HOME": "/nonexistent", "TMPDIR": str(volumes / "tmp")}
    (volumes / "tmp").mkdir(parents=True)
    return Image(root, env, json.loads(entrypoint), workdir, volumes)


def _setup_user_and_dirs(run: str, root: Path) -> None:
    """The final stage's RUN only names the user and makes directories: it changes nothing
    of what the replay runs, and is checked to stay that way. Its directories are made."""
    for command in run.split("&&"):
        words = shlex.split(command)
        assert words[0] in {"groupadd", "useradd", "install"}, f"unexpected in the image: {run}"
        if words[0] == "install":
            assert "-d" in words
            (root / words[-1].lstrip("/")).mkdir(parents=True, exist_ok=True)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Image:
    cache = getattr(request.config, "cache", None)
    kept = cache.mkdir("image-replay") if cache is not None else tmp_path_factory.mktemp("cache")
    return replay(tmp_path_factory.mktemp("image"), Path(kept))


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and directory under ``root``: a write anywhere changes it."""
    return {
        str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns)
        for p in [root, *root.rglob("*")]
    }


@pytest.mark.slow
def test_image_build_installs_the_locked_dependencies_and_the_wheel(image: Image) -> None:
    runtime = read_lock(LOCKS / "runtime.lock")
    python = image.host("/opt/audience-purge/bin/python")
    code = "import importlib.metadata as m, json\n"
    code += "print(json.dumps({d.name: d.version for d in m.distributions()}))"
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True)
    installed = {canonicalize_name(k): Version(v) for k, v in json.loads(done.stdout).items()}

    assert installed.pop("audience-purge") == Version(PYPROJECT["project"]["version"])
    applicable = {
        n: p.version
        for n, p in runtime.items()
        if p.requirement.marker is None or p.requirement.marker.evaluate()
    }
    assert installed == applicable


@pytest.mark.slow
def test_wheel_carries_the_license_and_the_type_marker(image: Image) -> None:
    [wheel] = image.host("/wheels").glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        [metadata] = [n for n in names if n.endswith(".dist-info/METADATA")]
        text = archive.read(metadata).decode()

    assert "worker/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "License-Expression: MIT" in text
    assert "License-File: LICENSE" in text
    assert not [n for n in names if n.startswith("tests/") or "__pycache__" in n]


@pytest.mark.slow
def test_image_runs_the_job_against_the_sandbox_with_a_read_only_root(image: Image) -> None:
    """The Job's container (deploy/kubernetes/job.yaml: its args, env and volumes) run with
    the image's own environment and entry point, against the sandbox served by the image."""
    job = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "job.yaml").read_text())
    [container] = job["spec"]["template"]["spec"]["containers"]
    mounts = {m["mountPath"]: image.volumes / m["name"] for m in container["volumeMounts"]}
    for directory in mounts.values():
        directory.mkdir(exist_ok=True)

    def mapped(text: str) -> str:
        """A path in the container: on its volume, or else on the stand-in root."""
        for mount_path, directory in sorted(mounts.items(), key=lambda m: -len(m[0])):
            if text == mount_path or text.startswith(mount_path + "/"):
                return str(directory) + text[len(mount_path) :]
        return str(image.host(text)) if text.startswith("/") else text

    def arg(text: str) -> str:
        flag, equals, value = text.partition("=")
        return f"{flag}={mapped(value)}" if equals else text

    before = _snapshot(image.root)
    version = image.run("--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.split() == ["audience-purge", PYPROJECT["project"]["version"]]

    ids = 400
    token = "image-replay-token"
    sandbox = subprocess.Popen(
        image.command(
            "sandbox", "--port", "0", "--token", token, "--campaign", f"42:draft:1-{ids}"
        ),
        env=image.env,
        cwd=image.volumes / "tmp",
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert sandbox.stdout is not None
        banner = sandbox.stdout.readline()
        found = re.search(r"http://127\.0\.0\.1:(\d+)", banner)
        assert found, banner
        url = f"http://127.0.0.1:{found[1]}"
        env = {e["name"]: mapped(e["value"]) for e in container["env"]}
        Path(env["UNLEASHX_TOKEN_FILE"]).write_text(token + "\n")
        data = mounts["/data"]
        (data / "ids.csv").write_text(
            "audience_id\n" + "".join(f"{i}\n" for i in range(1, ids + 1))
        )

        args = [arg(a) for a in container["args"]]
        args += ["--base-url", f"{url}/api/v1/global", "--rate", "500/s", "--progress", "off"]
        purge = image.run(*args, env=env, cwd=data)
        assert purge.returncode == 0, purge.stdout + purge.stderr

        with urllib.request.urlopen(f"{url}/_sandbox/state") as answer:
            state: dict[str, Any] = json.loads(answer.read())
        assert state["campaigns"]["42"]["deleted_count"] == ids
    finally:
        sandbox.terminate()
        sandbox.wait(timeout=10)

    audit = next(a for a in args if a.startswith("--audit-log=")).partition("=")[2]
    verified = image.run("audit", "verify", audit, cwd=data)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    # the image's own files are as built: nothing was written outside the volumes
    assert _snapshot(image.root) == before


def _readme_embedding_example() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Embedding\n", 1)[1].split("\n## ", 1)[0]
    found = re.search(r"```python\n(.*?)```", section, re.S)
    assert found, "the README's Embedding section has a python block"
    return found[1]


@pytest.mark.slow
def test_readme_embedding_example_type_checks_against_the_installed_package(
    image: Image, tmp_path: Path
) -> None:
    """A user's project, mypy --strict, the package installed from the wheel (not this
    source tree): the example type-checks only because the wheel carries py.typed."""
    example = _readme_embedding_example()
    if re.search(r"^\S.*\bawait\b", example, re.M):  # top-level await: the body of a coroutine
        body = "\n".join(f"    {line}" if line else "" for line in example.splitlines())
        example = f"async def main() -> None:\n{body}\n"
    project = tmp_path / "user-project"
    project.mkdir()
    (project / "purge.py").write_text(example)
    (project / "pyproject.toml").write_text("[tool.mypy]\nstrict = true\n")
    python = image.host("/opt/audience-purge/bin/python")

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--python-executable",
            str(python),
            "--cache-dir",
            str(tmp_path / "mypy-cache"),
            "purge.py",
        ],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert done.returncode == 0, done.stdout + done.stderr
