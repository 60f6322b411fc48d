"""Every file the tool writes goes through here: one policy, checked before anything is sent.

- ``-`` is stdout for an output that takes it (:attr:`Kind.stdout`) and refused elsewhere.
- A symlink is followed, everywhere: the file it names is the one checked and written, as
  if it had been named, and the link stays a link; a dangling link makes the file it names.
- What is at the path must be a regular file: a directory, pipe, device or socket is
  refused without being opened (opening a FIFO would block).
- It must not be an input of the same command, nor another of its outputs: compared by
  device and inode, so through symlinks and hard links.
- A file already there is replaced (or appended to) only if it is a file of the kind the
  tool writes there, recognised by its content; anything else (an empty file included) is
  refused and kept.
- A file is written whole through a private temporary file in the same directory: written,
  fsynced, renamed over the path, the directory fsynced; the temporary file is removed on
  any failure.

Files are created 0600 and directories 0700; the process umask still applies, so a
stricter one wins. A replaced file keeps its permission bits, and existing directories
keep theirs: an operator who shares a file or an audit directory on purpose decides that
(and nothing is chmodded behind a symlink).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from worker.errors import UsageError

FILE_MODE = 0o600
DIR_MODE = 0o700
STDOUT = Path("-")  # Path("./-") is Path("-") too: a file named - is reached by its full path
_HEAD = 1 << 16  # what is read of a file to recognise it


@dataclass(frozen=True, slots=True)
class Kind:
    """An output: what messages call it, its flag, the sort of file it is, how a file it
    may replace is recognised from its first bytes (never: nothing is replaced), and
    whether ``-`` is stdout for it."""

    what: str
    flag: str
    sort: str
    recognise: Callable[[bytes], bool]
    stdout: bool = False


def _first_line_is(*headers: bytes) -> Callable[[bytes], bool]:
    def recognise(head: bytes) -> bool:
        first = head.split(b"\n", 1)[0].removesuffix(b"\r")
        return first in headers

    return recognise


def _is_audit_log(head: bytes) -> bool:
    first = head.split(b"\n", 1)[0]
    return first.startswith(b"{") and b'"event":"' in first and b'"run_id":"' in first


def _matches(pattern: bytes) -> Callable[[bytes], bool]:
    compiled = re.compile(pattern)
    return lambda head: compiled.match(head) is not None


REPORT = Kind("the report", "--report", "a report", _matches(rb'\s*\{\s*"run_id"\s*:'), stdout=True)
RESULTS = Kind(
    "the results file",
    "--results",
    "a results file",
    _first_line_is(
        b"line,campaign_id,audience_id,outcome,reason,http_status,attempts,batch_id,run_id"
    ),
)
FAILED_OUT = Kind(
    "the failed-out file",
    "--failed-out",
    "a failed-out file",
    _first_line_is(b"campaign_id,audience_id,reason"),
)
SELECTION = Kind(
    "the selection",
    "--out",
    "a selection",
    _first_line_is(b"campaign_id,audience_id,status,attempt,last_attempt,call_status"),
    stdout=True,
)
RUN_SELECTION = Kind("the selection", "--selection", "a selection", SELECTION.recognise)
AUDIT_LOG = Kind("the audit log", "--audit-log", "an audit log", _is_audit_log)
EVIDENCE = Kind(
    "the evidence page",
    "--html",
    "an evidence page",
    _matches(rb'<!DOCTYPE html>\n<html[^>]*><head><meta charset="utf-8"><title>Audit evidence'),
    stdout=True,
)


def make_dirs(path: Path) -> None:
    """``mkdir -p`` with private modes for every directory it creates (pathlib's
    ``parents=True`` would give the parents the default mode)."""
    missing: list[Path] = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        directory.mkdir(mode=DIR_MODE, exist_ok=True)


def open_private(path: Path, mode: str, **kwargs: Any) -> IO[Any]:
    """``open(path, mode)`` that creates the file 0600 (``w``, ``a`` and ``x`` modes), and
    never blocks on a FIFO put there after the checks (it fails instead)."""
    return open(path, mode, opener=_private_opener, **kwargs)


def _private_opener(path: str, flags: int) -> int:
    fd = os.open(path, flags | os.O_NONBLOCK, FILE_MODE)
    os.set_blocking(fd, True)
    return fd


def write_atomic(path: Path, data: bytes, *, durable: bool = True, sync_dir: bool = True) -> None:
    """Replace ``path`` with ``data`` at once, so a reader never sees half of it: a private
    temporary file beside it, fsynced (with ``durable``), renamed over it, the directory
    fsynced; the temporary file is removed on any failure. A file replaced keeps its
    permission bits. ``sync_dir=False``: the caller fsyncs the directory once, after
    several files."""
    with replacing(path, durable=durable, sync_dir=sync_dir) as handle:
        handle.write(data)


@contextlib.contextmanager
def replacing(path: Path, *, durable: bool = True, sync_dir: bool = True) -> Iterator[IO[bytes]]:
    """The private temporary file that becomes ``path`` when the block ends without an
    error (see :func:`write_atomic`); on an error it is removed and ``path`` untouched.
    A symlink is followed: the file it names is replaced, and the link stays."""
    path = Path(os.path.realpath(path))
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            keep_mode(handle.fileno(), path)
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable and sync_dir:
        sync_directory(path.parent)


def write_new(path: Path, data: bytes, *, mode: int = FILE_MODE) -> None:
    """Create ``path`` with ``data``, never replacing anything at it (whatever it is): the
    data is written and fsynced under a temporary name, then hard-linked into place, which
    fails if the name is taken.

    Raises:
        FileExistsError: something is at ``path``; it is untouched.
    """
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.link(name, path, follow_symlinks=False)
    finally:
        os.unlink(name)
    sync_directory(path.parent)


def keep_mode(fd: int, path: Path) -> None:
    """Give the open file ``fd`` the permission bits of the file at ``path`` it replaces,
    if there is one: a replaced file is never made more, or less, private than it was."""
    with contextlib.suppress(FileNotFoundError):
        os.fchmod(fd, stat.S_IMODE(os.stat(path).st_mode))


def sync_directory(directory: Path) -> None:
    """fsync a directory, so that a rename in it survives a crash."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_to_write(path: Path, kind: Kind, inputs: Iterable[Path] = ()) -> Path:
    """The file ``path`` names, through symlinks, once the policy (module docstring) allows
    writing it; :func:`output_path` for an output that is never stdout.

    Raises:
        UsageError: it may not be written; nothing was touched.
    """
    if path == STDOUT:
        takes = "only --report, select --out and audit report --html take - (stdout)"
        raise UsageError(
            f"{kind.flag} - would write a file named -: {takes}; name a file for {kind.what}"
        )
    real = Path(os.path.realpath(path))
    try:
        info = real.stat()
    except OSError:  # missing, or unreachable: creating it says why
        return real
    if not stat.S_ISREG(info.st_mode):
        raise UsageError(
            f"{kind.what} {path} is not a regular file (a directory, a device, a pipe): name a file"
        )
    for source in inputs:
        if _same_file(info, source):
            raise UsageError(
                f"{kind.flag} {path} is the same file as the input {source}: it would be "
                "overwritten; give each its own path"
            )
    if not _recognised(real, kind):
        raise UsageError(
            f"{kind.what} {path} is not {kind.sort} the tool wrote (recognised by its "
            "content): it is left as it is; name a new file, or remove it first"
        )
    return real


def output_path(path: Path, kind: Kind, inputs: Iterable[Path] = ()) -> Path | None:
    """:func:`file_to_write`, or None for ``-`` where ``kind`` takes stdout."""
    if path == STDOUT and kind.stdout:
        return None
    return file_to_write(path, kind, inputs)


def _same_file(info: os.stat_result, source: Path) -> bool:
    try:
        other = source.stat()
    except OSError:
        return False
    return (info.st_dev, info.st_ino) == (other.st_dev, other.st_ino)


def _recognised(real: Path, kind: Kind) -> bool:
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise UsageError(f"cannot read {kind.what} {real}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        return kind.recognise(handle.read(_HEAD))


Identity = tuple[object, ...]


def _identity(path: Path) -> Identity:
    try:
        info = path.stat()
    except OSError:
        return ("path", str(path.resolve()))
    return ("file", info.st_dev, info.st_ino)


def _input_identity(input_path: str) -> Identity | None:
    if input_path != "-":
        return _identity(Path(input_path))
    try:
        info = os.fstat(0)
    except OSError:
        return None
    return ("file", info.st_dev, info.st_ino) if stat.S_ISREG(info.st_mode) else None


def check_outputs(
    inputs: Mapping[str, str | Path | None],
    outputs: Mapping[Kind, Path | None],
    *,
    state_dir: Path | None = None,
) -> None:
    """The whole policy for one command's outputs, before it opens or sends anything: each
    output allowed by :func:`output_path` against every input, and no two of them (nor an
    output and an input) one file.

    ``inputs`` maps a name for the message (``the input``, ``--audit A``) to a path (``-``
    for standard input, the file it is redirected from); no output may be inside
    ``state_dir``.

    Raises:
        UsageError: one of them may not be written; nothing was touched.
    """
    named = {kind.flag: path for kind, path in outputs.items() if path != STDOUT}
    check_distinct(inputs, {**named, "state": state_dir})
    if state_dir is not None and (state_dir == STDOUT or _not_a_directory(state_dir)):
        raise UsageError(f"--state-dir {state_dir} is not a directory: name one")
    for kind, path in outputs.items():
        if path is not None:
            output_path(path, kind)


def _not_a_directory(path: Path) -> bool:
    return path.exists() and not path.is_dir()


def check_distinct(
    inputs: Mapping[str, str | Path | None], outputs: Mapping[str, Path | None]
) -> None:
    """Refuse outputs that are an input, or each other, or inside the state directory.

    ``outputs`` maps a name for the message (``--failed-out``) to a path; ``"state"``
    names the state directory, whose files no other output may be.

    Raises:
        UsageError: two of them are one file.
    """
    seen: dict[Identity, str] = {}
    for name, source in inputs.items():
        if source is not None and (key := _input_identity(str(source))) is not None:
            seen.setdefault(key, f"{name} ({source})")
    state = outputs.get("state")
    for name, path in outputs.items():
        if path is None or name == "state":
            continue
        if state is not None and _inside(path, state):
            raise UsageError(f"{name} {path} is inside the state directory {state}")
        key = _identity(path)
        if key in seen:
            raise UsageError(
                f"{name} {path} is the same file as {seen[key]}: it would be overwritten; "
                "give each its own path"
            )
        seen[key] = f"{name} {path}"


def _inside(path: Path, directory: Path) -> bool:
    return path.resolve().is_relative_to(directory.resolve())


_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(cell: object) -> object:
    """A CSV cell a spreadsheet will not run (OWASP's rule): text that starts with ``=``,
    ``+``, ``-``, ``@``, a tab or a carriage return gets a single quote in front. Numbers
    are left as they are (ids are digits: a file read back by ``run --input`` keeps them)."""
    if isinstance(cell, str) and cell.startswith(_FORMULA):
        return "'" + cell
    return cell


def csv_safe_row(row: Iterable[object]) -> list[object]:
    return [csv_safe(cell) for cell in row]


def file_sha256(path: Path) -> tuple[str, int]:
    """The SHA-256 (hex) and size in bytes of a file's content, read in blocks."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest(), handle.tell()
