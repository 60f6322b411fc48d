"""``python -m worker`` is the same as the ``audience-purge`` command."""

import sys

from worker.cli import main

sys.exit(main())
