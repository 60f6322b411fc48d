"""The failed-out file: an observer that lists failed ids as a CSV ``run`` accepts back.

It lists the ids still failed: the ones carried over from earlier runs of a resumed purge
(kept even with ``--no-retry-failed``, which does not send them again), then each failure
as it is recorded (so a crash leaves the list so far). When the run ends the file is
replaced at once by exactly the ids still failed, which drops the ones a retry deleted.
"""

from __future__ import annotations

import contextlib
import csv
import io
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import structlog
from pyroaring import BitMap64

from worker.errors import OutputError
from worker.files import make_dirs, open_private, write_atomic

HEADER = ("campaign_id", "audience_id")
log = structlog.get_logger("audience_purge.failed_out")


class FailedOut:
    """Observer: the failed ids as a CSV that ``run --input`` accepts as is."""

    def __init__(self, path: Path, failed: Mapping[int, BitMap64] | None = None) -> None:
        self.path = path
        self._failed: Mapping[int, BitMap64] = failed if failed is not None else {}
        with self._writing():
            make_dirs(path.parent)
            path.unlink(missing_ok=True)  # created anew, private
            self._file: IO[str] = open_private(path, "w", newline="", encoding="utf-8")
            self._csv = csv.writer(self._file)
            self._csv.writerow(HEADER)
            self._csv.writerows(_rows(self._failed))
            self._file.flush()

    def on_event(self, event: str, fields: Mapping[str, Any]) -> None:
        if event == "failed" and fields.get("audience_ids"):
            campaign = fields["campaign_id"]
            with self._writing():
                self._csv.writerows((campaign, i) for i in fields["audience_ids"])
                self._file.flush()

    def close(self) -> None:
        """Close, then replace the file with exactly the ids still failed."""
        with contextlib.suppress(OSError):  # a write error was raised where it happened
            self._file.close()
        text = io.StringIO(newline="")
        writer = csv.writer(text)
        writer.writerow(HEADER)
        writer.writerows(_rows(self._failed))
        try:
            write_atomic(self.path, text.getvalue().encode())
        except OSError as exc:
            log.error(
                "the failed-id file could not be rewritten: it lists every failure of the "
                "run, including ids deleted by a later retry",
                path=str(self.path),
                error=exc.strerror,
            )

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise OutputError("the failed-id file", self.path, exc) from None


def _rows(failed: Mapping[int, BitMap64]) -> Iterable[tuple[int, int]]:
    for campaign, ids in sorted(failed.items()):
        for audience in ids:
            yield campaign, audience
