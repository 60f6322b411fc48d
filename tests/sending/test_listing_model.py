"""The claim, not the cases: thousands of seeded schedules against an in-memory campaign
listed by offset (tests/listing_model.py), driving the real read-back
(:func:`~worker.sending.readback.read_back`) and selection
(:func:`~worker.input.selecting.collect`), both on :func:`~worker.sending.listing.read_whole`.

A schedule: a campaign of ids, some deleted and some acknowledged but never deleted (the
ids a purge recorded as deleted), then, while the campaign is listed 1 to 12 records a
page, random removals of listed or unlisted records, foreign records added anywhere in the
id order, and quiet stretches, before any answer. The claims:

- a read-back that says "none left" (proven, nothing still present) leaves no purged id in
  the campaign; every id it calls still present was there after its deletion;
- a selection that is written holds every matching record that existed throughout, and no
  record that never matched (a record of no rule, or one that never existed).

Seeds are fixed, so a failure names its seed and reproduces.
"""

from __future__ import annotations

import asyncio
import io
import random
from dataclasses import dataclass, field
from typing import Any, cast

from pyroaring import BitMap64

from tests.listing_model import OffsetCampaign
from worker.input.selecting import Rule, SelectionError, collect
from worker.records.purge_logs import Deleted
from worker.records.recorder import Recorder
from worker.sending.readback import read_back

SCHEDULES = 2400
RULE = Rule(campaign_id=42, statuses=("completed",))


class Unrecorded:
    """The read-back's recorder, for a model that needs no audit file."""

    def verified(self, campaign_id: int, **fields: Any) -> None:
        del campaign_id, fields


@dataclass
class Schedule:
    """What happens to one campaign while it is listed, drawn from ``seed``. Ids are
    multiples of 1,000 at first; a foreign record gets a fresh id between any two
    (``k * 1000 + n``, ``n`` counting up), so it can land anywhere in the order."""

    seed: int
    rng: random.Random = field(init=False)
    campaign: OffsetCampaign = field(init=False)
    purged: set[int] = field(default_factory=set)  # recorded as deleted
    unapplied: set[int] = field(default_factory=set)  # of which acknowledged only
    ever: set[int] = field(default_factory=set)  # every id the campaign ever held
    removed: set[int] = field(default_factory=set)  # by the churn, while listed
    limit: int = 0
    churn: float = 0.0
    quiet_after: int = 0
    answers: int = 0
    added: int = 0

    def __post_init__(self) -> None:
        rng = self.rng = random.Random(self.seed)
        ids = [k * 1000 for k in sorted(rng.sample(range(1, 400), rng.randint(0, 60)))]
        self.limit = rng.randint(1, 12)
        self.churn = rng.choice((0.0, 0.1, 0.3, 0.6, 1.0))
        self.quiet_after = rng.choice((0, 2, 6, 12, 25, 10**6))  # answers before it settles
        self.purged = {i for i in ids if rng.random() < 0.3}
        self.unapplied = {i for i in self.purged if rng.random() < 0.4}
        self.ever = set(ids)
        alive = [i for i in ids if i not in self.purged or i in self.unapplied]
        self.campaign = OffsetCampaign(alive, make=self.record, before=self.meddle)

    def record(self, audience_id: int) -> dict[str, Any]:
        """A third of the records are of another status: the rule leaves them out."""
        status = "Halted" if audience_id // 1000 % 3 == 0 else "Completed"
        return {"id": audience_id, "status": status}

    def matches(self, audience_id: int) -> bool:
        return self.record(audience_id)["status"] == "Completed"

    def meddle(self, kind: str, number: int) -> None:
        """Before an answer, while not yet quiet: maybe a record goes, maybe one comes,
        each anywhere in the order."""
        del kind, number
        self.answers += 1
        rng, ids = self.rng, self.campaign.ids
        if self.answers > self.quiet_after or rng.random() >= self.churn:
            return
        if ids and rng.random() < 0.6:
            gone = rng.choice(ids)
            self.campaign.remove(gone)
            self.removed.add(gone)
        if rng.random() < 0.6:
            self.added += 1
            new = rng.randint(0, 400) * 1000 + self.added
            self.campaign.add(new)
            self.ever.add(new)

    def throughout(self, before: set[int]) -> set[int]:
        """Records present from before the listing (``before``) to its end."""
        return (before & set(self.campaign.ids)) - self.removed


async def _read_back(schedule: Schedule) -> bool:
    """Whether the read-back proved its listing; asserts that what it claims holds."""
    if not schedule.purged:
        return False
    before = set(schedule.campaign.ids)
    deleted = Deleted({42: BitMap64(schedule.purged)}, frozenset())
    recorder = cast(Recorder, Unrecorded())
    checked = await read_back(schedule.campaign, recorder, deleted, schedule.limit)
    check = checked.campaigns[42]
    still = set(check.still_present)
    assert still <= schedule.unapplied, schedule.seed  # only what was there after the ack
    if checked.proven:
        left = set(schedule.campaign.ids) & schedule.purged
        assert not left, f"seed {schedule.seed}: said gone, yet {sorted(left)} are there"
    if check.unproven is None:
        missed = (schedule.throughout(before) & schedule.purged) - still
        assert not missed, f"seed {schedule.seed}: proven, yet {sorted(missed)} not found"
    return check.unproven is None


async def _select(schedule: Schedule) -> bool:
    """Whether a selection was written; asserts that it holds what it must."""
    before = set(schedule.campaign.ids)
    out = io.BytesIO()
    try:
        await collect(RULE, schedule.campaign, out, schedule.limit)
    except SelectionError:
        return False
    ids = [int(line.split(b",")[1]) for line in out.getvalue().splitlines()[1:]]
    assert len(ids) == len(set(ids)), schedule.seed
    wanted = {i for i in schedule.throughout(before) if schedule.matches(i)}
    missed = wanted - set(ids)
    assert not missed, f"seed {schedule.seed}: {sorted(missed)} matched throughout, not selected"
    wrong = [i for i in ids if not (schedule.matches(i) and i in schedule.ever)]
    assert not wrong, f"seed {schedule.seed}: {wrong} never matched"
    return True


def test_what_a_listing_proves_holds_on_every_schedule() -> None:
    async def every() -> tuple[int, int]:
        proven = written = 0
        for seed in range(SCHEDULES):
            proven += await _read_back(Schedule(seed))
            written += await _select(Schedule(seed))
        return proven, written

    proven, written = asyncio.run(every())
    # The schedules prove often enough for the claims to be tested, not vacuous.
    assert proven > SCHEDULES // 2
    assert written > SCHEDULES // 2
