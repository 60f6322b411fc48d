"""The failed-out file: an observer that lists failed ids as a CSV ``run`` accepts back."""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any


class FailedOut:
    """Observer: the failed ids as a CSV that ``run --input`` accepts as is."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file: IO[str] = path.open("w", newline="", encoding="utf-8")
        self._csv = csv.writer(self._file)
        self._csv.writerow(("campaign_id", "audience_id"))
        self._file.flush()

    def on_event(self, event: str, fields: Mapping[str, Any]) -> None:
        if event == "failed" and fields.get("audience_ids"):
            campaign = fields["campaign_id"]
            self._csv.writerows((campaign, i) for i in fields["audience_ids"])
            self._file.flush()

    def close(self) -> None:
        self._file.close()
