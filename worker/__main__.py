"""``python -m worker`` and the ``audience-purge`` command.

The first thing the process does is take SIGTERM: until the run installs its own handlers,
a signal stops the process as an interrupt (exit 75, nothing sent) rather than killing it
(143) while it imports or prepares. The imports come after.
"""

import signal
import sys
from types import FrameType


def _interrupted(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def entry() -> None:
    """Entry point of the console script."""
    signal.signal(signal.SIGTERM, _interrupted)
    try:
        from worker.cli import main
    except KeyboardInterrupt:
        print("audience-purge: error: interrupted", file=sys.stderr)
        sys.exit(75)
    sys.exit(main())


if __name__ == "__main__":
    entry()
