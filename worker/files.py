"""Private files: what a run writes (ids, answers, progress) is for its operator only.

Files are created 0600 and directories 0700; the process umask still applies, so a
stricter one wins. Existing files and directories keep their modes: an operator who
shares an audit directory on purpose decides that.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import IO, Any

from worker.errors import UsageError

FILE_MODE = 0o600
DIR_MODE = 0o700


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
    """``open(path, mode)`` that creates the file 0600 (``w``, ``a`` and ``x`` modes)."""
    return open(path, mode, opener=_private_opener, **kwargs)


def _private_opener(path: str, flags: int) -> int:
    return os.open(path, flags, FILE_MODE)


def write_atomic(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` at once (write a private temporary file, rename it),
    so a reader never sees half of it; ``durable`` fsyncs it first."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)  # one left by a crash keeps the mode it was made with
    with open_private(tmp, "wb") as handle:
        handle.write(data)
        if durable:
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(tmp, path)


def file_to_write(path: Path, what: str, flag: str) -> Path:
    """The file ``path`` names, through symlinks: the one a run writes and replaces.

    Raises:
        UsageError: ``path`` is ``-`` (only ``--report`` writes to stdout), or names
            something that is not a regular file (a directory, a device, a pipe), which
            would be found only when the run puts its file in place, after sending.
    """
    if path == Path("-"):
        raise UsageError(
            f"{flag} - would write a file named -: only --report takes - (stdout); "
            f"name a file for {what}"
        )
    real = Path(os.path.realpath(path))
    try:
        mode = real.stat().st_mode
    except OSError:  # missing, or unreachable: creating it says why
        return real
    if not stat.S_ISREG(mode):
        raise UsageError(
            f"{what} {path} is not a regular file (a directory, a device, a pipe): name a file"
        )
    return real


def file_sha256(path: Path) -> tuple[str, int]:
    """The SHA-256 (hex) and size in bytes of a file's content, read in blocks."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest(), handle.tell()
