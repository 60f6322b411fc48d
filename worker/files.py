"""Private files: what a run writes (ids, answers, progress) is for its operator only.

Files are created 0600 and directories 0700; the process umask still applies, so a
stricter one wins. Existing files and directories keep their modes: an operator who
shares an audit directory on purpose decides that.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Any

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
