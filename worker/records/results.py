"""The results file (``--results``): one CSV row per input row, with its outcome, like the
success and error files of Salesforce's Bulk API.

Columns: ``line, campaign_id, audience_id, outcome, reason, http_status, attempts,
batch_id, run_id``. The outcome is one of:

- ``deleted``: the API accepted the row's batch (``http_status``, ``attempts``,
  ``batch_id``);
- ``failed``: the same, with the ``failed`` record's ``reason`` (``http_status`` empty when
  no answer came);
- ``rejected``: never sent; ``audience_id`` is the id cell cut to 64 characters and
  ``campaign_id`` is empty, as in the audit's ``rejected`` record: never more of the row's
  text (data minimisation, see the README's "Rejected rows: what is kept");
- ``duplicate``: the pair was met on an earlier row and sent once, for that row;
- ``still_present``: deleted, but a read-back (``run --verify``) found the id still there
  (reason ``still_present``; the deletion's status, attempts and batch stay).

The rows are those whose outcome record (``deleted``, ``failed``, ``rejected``,
``duplicates``) this run wrote, in the order it wrote them: close to input order, not
exactly it (batches settle out of order, duplicates are recorded in groups, a retried batch
settles late; input order would need an external sort): sorting on ``line`` gives input
order. An id retried from an earlier run's failures (a resumed run sends those
first) is not an input row of this run: its row's ``line`` is empty. Input rows with no
row of this run: those an earlier run finished (a resumed run skips them), another
shard's (``--shard``), and, when the run is stopped (a signal, a fatal answer, a guard),
those it did not settle (``unconfirmed``, never sent, never read): the next run sends
them and gives them their row. A batch refused by a fatal answer (a bad token) is
``failed`` here with that reason, and sent again by the next run. A dry run writes no
results file.

A file already at the path that is a results file (its first line is the header) keeps
its rows: this run's rows are added after them, so re-running the command accumulates
the runs of a purge in one file, each row naming its run (``run_id``). Anything else
there is refused when the file is opened, before anything is sent: ``-`` (only
``--report`` takes stdout), a directory, a device or a pipe, a file that is not a results
file (never overwritten). A symlink is written through.

While the run goes, rows are appended to ``NAME.RUN_ID.partial`` beside the file (private,
same format: a run killed outright leaves it with the rows so far, but for the last MiB
at most, still buffered); at the end it becomes the file at once: renamed, or, when there
was a file already or a read-back found ids still present, written after the earlier
rows (copied as they are) into a private temporary file, row by row, that is renamed over
the file. Only this run's rows take a read-back's outcome. Memory stays flat whatever the
input: only the still-present ids are held, as bitmaps.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from pyroaring import BitMap64

from worker.errors import OutputError
from worker.files import (
    RESULTS,
    csv_safe_row,
    file_to_write,
    make_dirs,
    open_private,
    replacing,
    sync_directory,
)

HEADER = (
    "line",
    "campaign_id",
    "audience_id",
    "outcome",
    "reason",
    "http_status",
    "attempts",
    "batch_id",
    "run_id",
)
DUPLICATE = "repeats an earlier row: sent once"
STILL_PRESENT = "still_present"
_OUTCOME, _REASON = HEADER.index("outcome"), HEADER.index("reason")
_HEADER_LINE = ",".join(HEADER).encode()
_BUFFER = 1 << 20

Cell = int | str


class ResultsFile:
    """Observer: a row per input row, spooled as the run goes and put in place at the end."""

    def __init__(self, path: Path, run_id: str) -> None:
        """Check what is at ``path`` and create the spool now, so that a path the run
        cannot end with stops it before it sends.

        Raises:
            UsageError: ``path`` is ``-``, not a regular file, or a file that is not a
                results file.
            OutputError: the spool could not be created (or a file at ``path`` read);
                later, on an event, written.
        """
        self.path = file_to_write(path, RESULTS)
        self._run_id = run_id
        self._spool_path = self.path.with_name(f"{self.path.name}.{run_id}.partial")
        self._still: dict[int, BitMap64] = {}  # ids a read-back found after their deletion
        self._under_way = False
        self._broken = False
        self._closed = False  # put in place (or given up): closing again does nothing
        with self._writing():
            make_dirs(self.path.parent)
            self._spool: IO[str] = open_private(
                self._spool_path, "x", newline="", encoding="utf-8", buffering=_BUFFER
            )
            self._csv = csv.writer(self._spool)
            self._csv.writerow(HEADER)

    def on_event(self, event: str, fields: Mapping[str, Any]) -> None:
        match event:
            case "run_started":
                self._under_way = True
            case "deleted" | "failed" if fields.get("audience_ids"):
                self._write_text(self._batch_rows(event, fields))
            case "rejected":
                cell = fields["audience_raw"]
                row = (fields["line"], "", cell or "", "rejected", fields["reason"])
                self._write([(*row, "", "", "", self._run_id)])
            case "duplicates":
                campaign, run = fields["campaign_id"], self._run_id
                rows = zip(fields["lines"], fields["audience_ids"], strict=True)
                self._write(
                    (line, campaign, i, "duplicate", DUPLICATE, "", "", "", run) for line, i in rows
                )
            case "verified" if fields["still_present"]:
                ids = self._still.setdefault(fields["campaign_id"], BitMap64())
                ids.update(BitMap64(fields["still_present"]))

    def _batch_rows(self, event: str, fields: Mapping[str, Any]) -> str:
        """The rows of a batch's ids, as text: they share every cell but the first three
        (ids), so the rest is quoted once a batch, not once a row (a fifth of the CPU)."""
        ids = fields["audience_ids"]
        lines: Sequence[Cell] = fields.get("lines") or ("",) * len(ids)  # earlier failures
        status = fields["http_status"]
        tail = _csv_line(
            event,
            fields.get("reason") or "",
            "" if status is None else status,
            fields["attempts"],
            fields["batch_id"],
            self._run_id,
        )
        campaign = fields["campaign_id"]
        return "".join(
            [f"{line},{campaign},{i},{tail}" for line, i in zip(lines, ids, strict=True)]
        )

    def _write(self, rows: Iterable[Sequence[Cell]]) -> None:
        """Append rows to the spool; once a write failed (and stopped the run), none: the
        audit records still to come (``run_finished``) must not fail with it."""
        if not self._broken:
            with self._writing():
                self._csv.writerows(csv_safe_row(row) for row in rows)

    def _write_text(self, text: str) -> None:
        """:meth:`_write` for rows already in CSV."""
        if not self._broken:
            with self._writing():
                self._spool.write(text)

    def close(self) -> None:
        """Put the results in place, at once: the spool renamed, or written after the rows
        of the file already there, with the still-present ids' outcomes. A run refused
        before it began leaves no file (and an earlier run's file where it was, as it was);
        one whose spool could not be written leaves the spool as it is, with the rows so
        far.

        Raises:
            OutputError: the results could not be written.
        """
        if self._closed:
            return
        self._closed = True
        if self._broken:
            with contextlib.suppress(OSError):  # the error was raised where it happened
                self._spool.close()
            return
        with self._writing():
            with self._spool:
                self._spool.flush()
                os.fsync(self._spool.fileno())
            if not self._under_way:
                self._spool_path.unlink()
            elif self._still or self.path.exists():
                self._rewrite()
            else:
                os.replace(self._spool_path, self.path)
                sync_directory(self.path.parent)

    def _rewrite(self) -> None:
        """The rows of the file already there, byte for byte, then the spool's, row by row,
        into a private temporary file that then replaces the file: each still-present
        id's ``deleted`` row of this run says ``still_present``, and one that has no row
        in this run gets one of its own."""
        with (
            self._spool_path.open(newline="", encoding="utf-8") as spool,
            replacing(self.path) as raw,
        ):
            out = io.TextIOWrapper(raw, encoding="utf-8", newline="", write_through=True)
            rows = csv.reader(spool)
            header = next(rows)
            if not _copy_earlier(self.path, raw):
                csv.writer(out).writerow(header)
            unmatched = {c: ids.copy() for c, ids in self._still.items()}
            writer = csv.writer(out)
            writer.writerows(_patched(rows, unmatched))
            writer.writerows(
                ("", c, i, STILL_PRESENT, STILL_PRESENT, "", "", "", self._run_id)
                for c, ids in sorted(unmatched.items())
                for i in ids
            )
            out.flush()
            out.detach()  # the file is replacing()'s to close
        self._spool_path.unlink()

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            self._broken = True
            raise OutputError("the results file", self.path, exc) from None


def _csv_line(*cells: Cell) -> str:
    """Cells as csv writes them in a row (quoted where needed), with its line end."""
    text = io.StringIO()
    csv.writer(text).writerow(csv_safe_row(cells))
    return text.getvalue()


def _patched(rows: Iterator[list[str]], still: dict[int, BitMap64]) -> Iterator[list[str]]:
    """The rows (after the header), each ``deleted`` one of an id in ``still`` made
    ``still_present`` (and that id taken out of ``still``: what is left there had no row)."""
    for row in rows:
        ids = still.get(int(row[1])) if row[_OUTCOME] == "deleted" else None
        if ids is not None and int(row[2]) in ids:
            ids.discard(int(row[2]))
            row[_OUTCOME] = row[_REASON] = STILL_PRESENT
        yield row


def _copy_earlier(path: Path, out: IO[bytes]) -> int:
    """Copy the file at ``path``, as it is, to ``out``, ending its last line; the bytes
    copied (0 when there is none).

    Raises:
        OSError: it could not be read.
    """
    try:
        earlier = path.open("rb")
    except FileNotFoundError:
        return 0
    with earlier:
        shutil.copyfileobj(earlier, out, _BUFFER)
        size = earlier.tell()
        if size:
            earlier.seek(size - 1)
            if earlier.read(1) != b"\n":  # an edited file whose last line lost its end
                out.write(b"\r\n")
    return size
