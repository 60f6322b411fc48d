"""``python -m worker`` and the ``audience-purge`` command.

The first thing the process does is take SIGTERM (see
:mod:`worker.runtime.early`): a signal while the tool starts or
prepares ends it with exit 75, never the kernel's 143. The imports come after.
"""

import sys

from worker.runtime.early import take_sigterm_early


def entry() -> None:
    """Entry point of the console script."""
    take_sigterm_early()
    from worker.cli import main

    sys.exit(main())


if __name__ == "__main__":
    entry()
