"""The failed-out file: an observer that lists failed ids as a CSV ``run`` accepts back.

It lists the ids still failed: the ones carried over from earlier runs of a resumed purge
(kept even with ``--no-retry-failed``, which does not send them again), then each failure
as it is recorded (so a crash leaves the list so far). When the run ends the file is
replaced at once by exactly the ids still failed, which drops the ones a retry deleted.

Each row says why (``reason``): the ``failed`` record's reason, or ``still_present`` for an
id a read-back found still there after its deletion (``verified``). A carried-over id says
:data:`CARRIED`: the checkpoint keeps the failed pairs as bitmaps, without reasons, and by
default a resumed run retries them first, so only ids it did not send again
(``--no-retry-failed``, a stop before their turn) keep it; ``audit find --id`` on the
earlier runs' audit logs gives their reason. ``run --input`` takes the file as it is: the
header names campaign_id and audience_id, and a third column is ignored.

``-`` (only ``--report`` takes stdout) and a path that is not a regular file (a directory,
a device, a pipe) are refused when the file is opened, before anything is sent; a symlink
is written through.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import structlog
from pyroaring import BitMap64

from worker.errors import OutputError
from worker.files import (
    FAILED_OUT,
    csv_safe,
    file_to_write,
    keep_mode,
    make_dirs,
    open_private,
    write_atomic,
)

HEADER = ("campaign_id", "audience_id", "reason")
CARRIED = "failed in an earlier run (see its audit log)"
STILL_PRESENT = "still_present"
log = structlog.get_logger("audience_purge.failed_out")

Pairs = Mapping[int, BitMap64]


class FailedOut:
    """Observer: the failed ids and why, as a CSV that ``run --input`` accepts as is."""

    def __init__(self, path: Path, failed: Pairs | None = None) -> None:
        """Create the file now, with the ids carried over, so that an unwritable path
        stops the run before it sends.

        Raises:
            UsageError: ``path`` is ``-`` or not a regular file (a directory, a device, a
                pipe); a symlink is written through.
            OutputError: the file could not be created or written.
        """
        self.path = file_to_write(path, FAILED_OUT)
        self._failed: Pairs = failed if failed is not None else {}
        # This run's reason for each pair that failed in it (disjoint: the last one wins).
        self._reasons: dict[str, dict[int, BitMap64]] = {}
        with self._writing():
            make_dirs(self.path.parent)
            self._settled = False
            fresh = self.path.with_name(f".{self.path.name}.new")
            fresh.unlink(missing_ok=True)
            self._file: IO[str] = open_private(fresh, "x", newline="", encoding="utf-8")
            try:
                keep_mode(self._file.fileno(), self.path)
                os.replace(fresh, self.path)  # created anew, private or as private as it was
            except BaseException:
                self._file.close()
                fresh.unlink(missing_ok=True)  # nothing left beside the file on a failure
                raise
            self._csv = csv.writer(self._file)
            self._csv.writerow(HEADER)
            self._csv.writerows(_rows(self._failed, CARRIED))
            self._file.flush()

    def on_event(self, event: str, fields: Mapping[str, Any]) -> None:
        if event == "failed" and fields.get("audience_ids"):
            reason = str(csv_safe(fields["reason"]))  # a server's words: never a formula
            self._add(fields["campaign_id"], fields["audience_ids"], reason)
        elif event == "verified" and fields["still_present"]:
            self._add(fields["campaign_id"], fields["still_present"], STILL_PRESENT)

    def _add(self, campaign: int, ids: Sequence[int], reason: str) -> None:
        fresh = BitMap64(ids)
        for other, pairs in self._reasons.items():
            if other != reason and campaign in pairs:
                pairs[campaign].difference_update(fresh)
        self._reasons.setdefault(reason, {}).setdefault(campaign, BitMap64()).update(fresh)
        with self._writing():
            self._csv.writerows((campaign, i, reason) for i in ids)
            self._file.flush()

    def settle(self) -> None:
        """Close, then replace the file with exactly the ids still failed (once: later
        calls, and :meth:`close`, do nothing).

        Raises:
            OutputError: it could not be replaced (it still lists every failure of the
                run, including ids a later retry deleted).
        """
        if self._settled:
            return
        self._settled = True
        with contextlib.suppress(OSError):  # a write error was raised where it happened
            self._file.close()
        text = io.StringIO(newline="")
        writer = csv.writer(text)
        writer.writerow(HEADER)
        writer.writerows(self._still_failed())
        try:
            write_atomic(self.path, text.getvalue().encode())
        except OSError as exc:
            raise OutputError("the failed-id file", self.path, exc) from None

    def close(self) -> None:
        """:meth:`settle`, for a run that ends before its ``run_finished`` (refused, or
        failed): the error that ends it is the one to report, so this one is logged."""
        try:
            self.settle()
        except OutputError as exc:
            log.error(
                "the failed-id file could not be rewritten: it lists every failure of the "
                "run, including ids deleted by a later retry",
                error=str(exc),
            )

    def _still_failed(self) -> Iterator[tuple[int, int, str]]:
        """Per campaign: the ids carried over and not settled since, then this run's
        failures, grouped by reason in the order the reasons were first met."""
        for campaign, ids in sorted(self._failed.items()):
            carried = ids.copy()
            for pairs in self._reasons.values():
                if campaign in pairs:
                    carried.difference_update(pairs[campaign])
            yield from ((campaign, i, CARRIED) for i in carried)
            for reason, pairs in self._reasons.items():
                if campaign in pairs:
                    yield from ((campaign, i, reason) for i in ids & pairs[campaign])

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise OutputError("the failed-id file", self.path, exc) from None


def _rows(failed: Pairs, reason: str) -> Iterable[tuple[int, int, str]]:
    for campaign, ids in sorted(failed.items()):
        for audience in ids:
            yield campaign, audience, reason
