"""audience-purge: bulk, rate-limited, audited deletion of UnleashX campaign audiences."""

from __future__ import annotations

import functools


def __getattr__(name: str) -> str:
    """``__version__``, read on first use (importlib.metadata costs ``--help`` ~15 ms)."""
    if name == "__version__":
        return _version()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _version() -> str:
    """The installed distribution's version, so pyproject.toml's is the only one written."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("audience-purge")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0.0.0+unknown"
