"""The run's files must not be one another: checked before anything is opened for writing.

``--failed-out`` naming the input would truncate the id list before it is read; an audit
log naming the input would read its own records back. Files are compared by what they
are (device and inode, through symlinks and hard links), and by resolved path when they do
not exist yet; standard input counts as the file it is redirected from. A collision is a
usage error (exit 2) and nothing is touched.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from worker.errors import UsageError

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


def check_distinct(input_path: str | None, outputs: dict[str, Path | None]) -> None:
    """Refuse outputs that are the input, or each other, or inside the state directory.

    ``outputs`` maps a name for the message (``--failed-out``) to a path; ``"state"``
    names the state directory, whose files no other output may be.

    Raises:
        UsageError: two of them are one file.
    """
    seen: dict[Identity, str] = {}
    if input_path is not None and (source := _input_identity(input_path)) is not None:
        seen[source] = f"the input ({input_path})"
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
