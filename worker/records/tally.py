"""The tally: running totals of a run, kept as the recorder's first observer."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


def _ids(fields: Mapping[str, Any]) -> int:
    return len(fields.get("audience_ids", ()))


@dataclass(slots=True)
class Tally:
    """Running totals for progress, the summary and ``run_finished``."""

    rows: int = 0
    rejected: int = 0
    duplicates: int = 0
    valid: int = 0
    deleted: int = 0
    failed: int = 0
    requests: int = 0
    unconfirmed: int = 0
    already_done: int = 0
    other_shard: int = 0
    dead_lettered: int = 0
    enqueued: int = 0
    input_read: bool = False
    retries: int = 0
    deleted_by_campaign: Counter[int] = field(default_factory=Counter)
    failed_by_campaign: Counter[int] = field(default_factory=Counter)
    failure_reasons: Counter[str] = field(default_factory=Counter)
    # Read-back (run --verify, verify): ids looked for, and those found still present.
    verified: int = 0
    still_present: int = 0
    still_present_by_campaign: Counter[int] = field(default_factory=Counter)
    # campaign-audience-stats answers, per campaign and moment ("before", "after").
    audience_stats: dict[int, dict[str, Any]] = field(default_factory=dict)

    def on_event(self, event: str, fields: Mapping[str, Any]) -> None:
        if event == "rejected":
            self.rows += 1
        match event:
            case "accepted":
                self.rows += fields["rows"]
                self.valid += fields["rows"]
            case "admitted":
                self.valid += _ids(fields)
            case "rejected":
                self.rejected += 1
            case "duplicates":
                self.rows += len(fields["lines"])
                self.duplicates += len(fields["lines"])
            case "already_done":
                self.rows += fields["rows"]
                self.already_done += fields["rows"]
            case "other_shard":
                self.other_shard += 1
            case "input_read":
                self.input_read = True
            case "request":
                self.requests += 1
                self.retries += int(fields["retry"])
            case "unconfirmed":
                self.unconfirmed += _ids(fields)
            case "deleted":
                self.deleted += _ids(fields)
                self.deleted_by_campaign[fields["campaign_id"]] += _ids(fields)
            case "failed":
                self.failed += _ids(fields)
                self.failed_by_campaign[fields["campaign_id"]] += _ids(fields)
                self.failure_reasons[fields["reason"]] += _ids(fields)
            case "dead_lettered":
                self.dead_lettered += 1
            case "enqueued":
                self.enqueued += 1
            case "verified":
                self.verified += fields["checked"]
                self.still_present += len(fields["still_present"])
                self.still_present_by_campaign[fields["campaign_id"]] += len(
                    fields["still_present"]
                )
            case "audience_stats":
                moments = self.audience_stats.setdefault(fields["campaign_id"], {})
                moments[fields["moment"]] = fields["stats"]
