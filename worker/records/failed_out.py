"""The failed-out file: an observer that lists failed ids as a CSV ``run`` accepts back."""

from __future__ import annotations

import contextlib
import csv
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from worker.errors import OutputError


class FailedOut:
    """Observer: the failed ids as a CSV that ``run --input`` accepts as is."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with self._writing():
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file: IO[str] = path.open("w", newline="", encoding="utf-8")
            self._csv = csv.writer(self._file)
            self._csv.writerow(("campaign_id", "audience_id"))
            self._file.flush()

    def on_event(self, event: str, fields: Mapping[str, Any]) -> None:
        if event == "failed" and fields.get("audience_ids"):
            campaign = fields["campaign_id"]
            with self._writing():
                self._csv.writerows((campaign, i) for i in fields["audience_ids"])
                self._file.flush()

    def close(self) -> None:
        with contextlib.suppress(OSError):  # a write error was raised where it happened
            self._file.close()

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise OutputError("the failed-id file", self.path, exc) from None
