"""Every output flag of every command, pointed at whatever may be at a path (see
worker/files.py for the one policy): through the real CLI against the sandbox on loopback.

What is not a file of the kind the flag writes is refused (exit 2) before anything is sent
and left exactly as it was (type, bytes, mode, inode, a link's target); what is (an audit
log for ``--audit-log``), a dangling symlink (the file it names is made) and ``-`` where it
means stdout are written. A FIFO must never be opened: every child has a short timeout, so
a bug that blocks fails the test instead of hanging it.
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import write_csv
from processes import Completed, finish, start

from worker.commands.demo import write_sample_csv
from worker.commands.run import run_purge
from worker.errors import UsageError
from worker.exit_codes import ExitCode
from worker.files import replacing, write_atomic
from worker.sandbox.runner import SandboxHandle
from worker.settings import Settings

MakeSettings = Callable[..., Settings]
TIMEOUT = 20.0  # a child blocked on a FIFO is killed, and the test fails
LIVE = 77


@dataclass(frozen=True)
class Output:
    name: str  # the test id
    command: tuple[str, ...]  # what comes before the common flags
    flag: str
    stdout: bool = False  # "-" is stdout
    input: str | None = None  # which prepared file is the command's input
    sends: bool = True  # a run that goes ahead sends (or reads) something


OUTPUTS = [
    Output("run-report", ("run",), "--report", stdout=True, input="ids"),
    Output("run-results", ("run",), "--results", input="ids"),
    Output("run-failed-out", ("run",), "--failed-out", input="ids"),
    Output("run-audit-log", ("run",), "--audit-log", input="ids"),
    Output("run-select-selection", ("run", "--select"), "--selection"),
    Output(
        "dry-run-report", ("run", "--dry-run"), "--report", stdout=True, input="ids", sends=False
    ),
    Output("dry-run-audit-log", ("run", "--dry-run"), "--audit-log", input="ids", sends=False),
    Output("verify-report", ("verify",), "--report", stdout=True, input="prior"),
    Output("verify-failed-out", ("verify",), "--failed-out", input="prior"),
    Output("verify-audit-log", ("verify",), "--audit-log", input="prior"),
    Output("delete-all-audit-log", ("delete-all",), "--audit-log"),
    Output("select-out", ("select",), "--out", stdout=True),
    Output(
        "audit-report-html", ("audit", "report"), "--html", stdout=True, input="prior", sends=False
    ),
    Output("audit-keygen", ("audit", "keygen"), "--out", sends=False),
]
TARGETS = [
    "fifo",
    "device",
    "directory",
    "input",
    "audit-log",
    "foreign",
    "symlink-to-foreign",
    "dangling-symlink",
    "dash",
    "ours",  # what the same command wrote there before
]
FOREIGN = b"precious, not the tool's\n"


def _make_target(kind: str, path: Path, files: dict[str, Path]) -> Path:
    """Put ``kind`` at ``path``; the path to give the flag."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        if os.geteuid() != 0:
            pytest.skip("a device node needs root")
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # ours, in tmp: never /dev
    elif kind == "directory":
        path.mkdir()
        (path / "inside").write_bytes(FOREIGN)
    elif kind == "audit-log":
        path.write_bytes(files["prior"].read_bytes())
        path.chmod(0o640)
    elif kind == "foreign":
        path.write_bytes(FOREIGN)
        path.chmod(0o644)
    elif kind == "symlink-to-foreign":
        (path.parent / "foreign.txt").write_bytes(FOREIGN)
        path.symlink_to(path.parent / "foreign.txt")
    elif kind == "dangling-symlink":
        path.symlink_to(path.parent / "made-by-the-run")
    return path


def _snapshot(directory: Path) -> dict[str, tuple[object, ...]]:
    """What each entry of ``directory`` is: type, mode, inode, a link's target, the bytes of
    a regular file (never opening anything else: a FIFO would block)."""
    seen: dict[str, tuple[object, ...]] = {}
    for entry in sorted(directory.iterdir()):
        info = entry.lstat()
        body: object = None
        if stat.S_ISREG(info.st_mode):
            body = entry.read_bytes()
        elif stat.S_ISLNK(info.st_mode):
            body = os.readlink(entry)
        elif stat.S_ISDIR(info.st_mode):
            body = _snapshot(entry)
        seen[entry.name] = (stat.S_IFMT(info.st_mode), info.st_mode & 0o7777, info.st_ino, body)
    return seen


async def cli(where: Path, token: str, *args: str) -> Completed:
    """``python -m worker ARGS`` from ``where``, killed (failing the test) after TIMEOUT."""
    return await finish(await start(*args, cwd=where, token=token), timeout=TIMEOUT)


def _args(output: Output, target: str, files: dict[str, Path], url: str) -> list[str]:
    api = ["--base-url", url, "--rate", "1000/s"]
    own = {"--audit-log": str(files["tmp"] / "own-audit.jsonl")}
    if output.command[0] == "run":
        own["--state-dir"] = str(files["tmp"] / "state")
        if output.command == ("run", "--select"):
            rest = ["--campaign-id", str(LIVE), "--status", "completed", *api]
        else:
            rest = ["--input", str(files["ids"]), "--campaign-id", "42", *api]
    elif output.command == ("delete-all",):
        rest = ["--campaign-id", "42", "--confirm", "42", *api]
    elif output.command == ("verify",):
        rest = ["--audit", str(files["prior"]), *api]
    elif output.command == ("select",):
        rest, own = ["--campaign-id", str(LIVE), "--status", "completed", *api], {}
    elif output.command == ("audit", "report"):
        rest, own = [str(files["prior"])], {}
    else:  # keygen: the flag names a prefix, the files are PREFIX.key and PREFIX.pub
        rest, own = [], {}
        target = target if target == "-" else target.removesuffix(".key")
    own[output.flag] = target
    return [*output.command, *rest, *(a for pair in own.items() for a in pair)]


def _expected(output: Output, kind: str) -> str:
    """``refused``, or what a run that goes ahead leaves at the target."""
    if kind == "dash":
        return "stdout" if output.stdout else "refused"
    if kind == "audit-log" and output.flag == "--audit-log":
        return "appended"
    if kind == "dangling-symlink" and output.name != "audit-keygen":
        return "made"
    if kind == "ours" and output.name != "audit-keygen":  # a key pair is never replaced
        return "appended" if output.flag == "--audit-log" else "replaced"
    return "refused"


def _cases() -> list[object]:
    cases = []
    for output in OUTPUTS:
        for kind in TARGETS:
            if kind == "input" and output.input is None:
                continue  # a command without an input file
            cases.append(pytest.param(output, kind, id=f"{output.name}-{kind}"))
    return cases


@pytest.mark.parametrize(("output", "kind"), _cases())
async def test_an_output_is_refused_unless_it_is_safe_to_write(
    sandbox: SandboxHandle,
    make_settings: MakeSettings,
    token: str,
    tmp_path: Path,
    output: Output,
    kind: str,
) -> None:
    ids = write_csv(tmp_path / "ids.csv", ["4", "5", "6"])
    prior = tmp_path / "prior.jsonl"
    done = await run_purge(
        make_settings(campaign_id=42, audit_log=prior, state_dir=tmp_path / "prior-state"),
        str(write_csv(tmp_path / "prior.csv", ["1", "2", "3"])),
        out=io.StringIO(),
    )
    assert done.exit_code == ExitCode.OK
    files = {"ids": ids, "prior": prior, "tmp": tmp_path}
    where = tmp_path / "t"
    where.mkdir()
    if kind == "input":
        assert output.input is not None
        target = files[output.input]
    elif kind == "dash":
        target = Path("-")
    else:
        name = "k.key" if output.name == "audit-keygen" else f"out{Path(output.flag).suffix}"
        target = _make_target(kind, where / name, files)
    if kind == "ours":
        earlier = await cli(where, token, *_args(output, str(target), files, sandbox.url))
        assert earlier.code == ExitCode.OK, earlier.err
        target.chmod(0o640)
    before = (_snapshot(where), _snapshot_of(target))
    kept = target.read_bytes() if kind == "ours" else b""
    requests, deletes = sandbox.state.requests_total, sandbox.state.acked_ids

    done_ = await cli(where, token, *_args(output, str(target), files, sandbox.url))

    expected = _expected(output, kind)
    if expected == "refused":
        assert done_.code == ExitCode.USAGE, done_.err
        assert "Traceback" not in done_.err
        assert len(done_.err.strip().splitlines()) == 1, done_.err  # one line says why
        assert (sandbox.state.requests_total, sandbox.state.acked_ids) == (requests, deletes)
        assert (_snapshot(where), _snapshot_of(target)) == before  # nothing made, nothing lost
        return
    assert done_.code == ExitCode.OK, done_.err
    if output.sends and kind != "ours":  # a purge run again may have nothing left to send
        assert sandbox.state.requests_total > requests
    if expected == "stdout":
        assert done_.out.strip()
        assert not (where / "-").exists()
    elif expected == "appended":
        earlier = kept or prior.read_bytes()
        assert target.read_bytes().startswith(earlier)
        assert len(target.read_bytes()) > len(earlier)
        assert target.stat().st_mode & 0o777 == 0o640  # as it was
    elif expected == "replaced":
        assert target.is_file()
        assert target.stat().st_mode & 0o777 == 0o640  # with the mode of the one it replaced
    elif expected == "made":
        made = where / "made-by-the-run"
        assert target.is_symlink()
        assert made.is_file()
        assert made.stat().st_mode & 0o777 == 0o600
    assert not [p for p in where.iterdir() if p.name.endswith((".tmp", ".partial", ".new"))]


def _snapshot_of(target: Path) -> tuple[object, ...] | None:
    """An input outside the target directory, as it is (None for ``-``)."""
    if str(target) == "-" or not target.exists() or not target.is_file():
        return None
    info = target.stat()
    return (info.st_ino, info.st_mode, target.read_bytes())


def test_a_write_that_fails_leaves_no_temporary_file_and_the_file_as_it_was(
    tmp_path: Path,
) -> None:
    target = tmp_path / "evidence.html"
    target.write_bytes(b"the page before")
    target.chmod(0o640)
    before = _snapshot(tmp_path)

    def write_half() -> None:
        with replacing(target) as handle:
            handle.write(b"half a page")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_half()

    assert _snapshot(tmp_path) == before


def test_a_file_replaced_keeps_its_mode_and_a_symlink_stays_a_link(tmp_path: Path) -> None:
    real = tmp_path / "kept" / "report.json"
    real.parent.mkdir()
    real.write_bytes(b'{"run_id": "old"}')
    real.chmod(0o640)
    link = tmp_path / "report.json"
    link.symlink_to(real)

    write_atomic(link, b'{"run_id": "new"}')

    assert link.is_symlink()
    assert real.read_bytes() == b'{"run_id": "new"}'
    assert real.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in real.parent.iterdir()] == ["report.json"]


REFUSED = ["fifo", "device", "foreign", "symlink-to-foreign", "dash"]


@pytest.mark.parametrize(
    ("command", "kind"),
    [*(("enqueue", k) for k in [*REFUSED, "input"]), *(("consume", k) for k in REFUSED)],
)
async def test_a_queue_commands_audit_log_is_refused_before_the_queue_is_touched(
    sandbox: SandboxHandle, token: str, redis_url: str, tmp_path: Path, command: str, kind: str
) -> None:
    import redis

    ids = write_csv(tmp_path / "ids.csv", ["4", "5", "6"])
    where = tmp_path / "t"
    where.mkdir()
    target = ids if kind == "input" else Path("-")
    if kind not in ("input", "dash"):
        target = _make_target(kind, where / "audit.jsonl", {})
    before = (_snapshot(where), _snapshot_of(target))
    own = ["--input", str(ids), "--campaign-id", "42"] if command == "enqueue" else []
    if command == "consume":
        own = ["--until-empty", "--base-url", sandbox.url]

    done = await cli(
        where,
        token,
        *(command, *own, "--redis", redis_url, "--stream", "matrix"),
        *("--audit-log", str(target)),
    )

    assert done.code == ExitCode.USAGE, done.err
    assert len(done.err.strip().splitlines()) == 1, done.err
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.keys("*") == []  # no stream, no group, no claim
    finally:
        client.close()
    assert sandbox.state.requests_total == 0
    assert (_snapshot(where), _snapshot_of(target)) == before


@pytest.mark.parametrize("kind", [*REFUSED, "audit-log"])
async def test_a_state_directory_that_is_not_a_directory_is_refused_before_sending(
    sandbox: SandboxHandle, token: str, tmp_path: Path, kind: str
) -> None:
    ids = write_csv(tmp_path / "ids.csv", ["4", "5", "6"])
    where = tmp_path / "t"
    where.mkdir()
    (tmp_path / "prior.jsonl").write_bytes(b'{"event":"run_started","run_id":"r"}\n')
    target = Path("-") if kind == "dash" else where / "state"
    if kind != "dash":
        _make_target(kind, target, {"prior": tmp_path / "prior.jsonl"})
    before = _snapshot(where)

    done = await cli(
        where,
        token,
        *("run", "--input", str(ids), "--campaign-id", "42", "--base-url", sandbox.url),
        *("--state-dir", str(target), "--audit-log", str(tmp_path / "audit.jsonl")),
    )

    assert done.code == ExitCode.USAGE, done.err
    assert (
        done.err.strip()
        == f"audience-purge: error: --state-dir {target} is not a directory: name one"
    )
    assert sandbox.state.requests_total == 0
    assert _snapshot(where) == before


def test_the_demo_replaces_its_own_sample_and_never_an_id_list(tmp_path: Path) -> None:
    sample = tmp_path / "audience.csv"
    wanted = write_sample_csv(sample)
    first = sample.read_bytes()
    assert write_sample_csv(sample) == wanted  # an earlier demo's sample: replaced
    assert sample.read_bytes() == first
    ids = write_csv(tmp_path / "ids.csv", ["campaign_id,audience_id", "42,7"])
    before = ids.read_bytes()

    with pytest.raises(UsageError, match="is not the demo's sample the tool wrote"):
        write_sample_csv(ids)

    assert ids.read_bytes() == before
