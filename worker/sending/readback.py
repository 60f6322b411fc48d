"""Reading campaigns back: proof that the ids an audit log records as deleted are gone.

A ``deleted`` record means the API accepted the batch, not that every id went: the API
ignores ids that do not belong and does not say which it removed, and a broken server can
acknowledge and do nothing. So each campaign is listed whole through audience-list, and
the ids recorded as deleted that it still holds failed after all (``still_present``).
Only that intersection is kept, never the listing: memory is the deleted ids' bitmap.

Paging is by offset, and offsets shift when records come and go beside us: a pass whose
``totalRecords`` changed is read again from page 1, at most :data:`MAX_PASSES` times, and
a pass is complete only if the total held and it listed that many records. A campaign
never read completely is *unproven*: the ids seen are recorded, "none left" is not claimed.

A purge resumed after a stop writes one audit file per run, each continuing the one before
(its first record names it in ``previous``): :func:`purge_files` finds them all, so that a
read-back covers every id the purge deleted, not only the last run's.

The campaigns' sizes before and after are :mod:`worker.sending.audience_stats`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeGuard

import orjson
import structlog
from pyroaring import BitMap64

from worker.errors import ApiError
from worker.input.validate import MAX_ID
from worker.records.audit_query import read_records
from worker.records.recorder import Recorder
from worker.sending.listing import Filters, Page, refused

MAX_PASSES = 5
log = structlog.get_logger("audience_purge.readback")


class AudienceReader(Protocol):
    """What a read-back needs of :class:`worker.sending.listing.Reader`."""

    async def page(
        self, campaign_id: int, number: int, limit: int, filters: Filters = ()
    ) -> Page: ...

    async def stats(self, campaign_id: int, filters: Filters = ()) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class Deleted:
    """What audit logs record as done: ids per campaign, campaigns emptied by delete-all,
    and each campaign's stats recorded before its purge (the earliest, for a resumed one)."""

    ids: dict[int, BitMap64] = field(default_factory=dict)
    emptied: frozenset[int] = frozenset()
    before: dict[int, dict[str, Any]] = field(default_factory=dict)

    @property
    def campaigns(self) -> list[int]:
        return sorted(set(self.ids) | self.emptied)

    def count(self, campaign_id: int) -> int:
        return len(self.ids.get(campaign_id, ()))


def deleted_by_campaign(paths: Sequence[Path], campaign_id: int | None = None) -> Deleted:
    """The ids the files record as deleted (``deleted`` records: the API acknowledged
    them, whatever happened to them later), the campaigns ``deleted_all`` emptied, and
    the ``audience_stats`` taken before; only ``campaign_id``'s when given.

    Raises:
        OSError: a file cannot be read.
    """
    ids: dict[int, BitMap64] = {}
    emptied: set[int] = set()
    before: dict[int, tuple[str, dict[str, Any]]] = {}
    for _, _, record in read_records(paths):
        campaign = record.get("campaign_id")
        if not _is_id(campaign) or campaign_id not in (None, campaign):
            continue
        match record.get("event"):
            case "deleted":
                ids.setdefault(campaign, BitMap64()).update(_audience_ids(record))
            case "deleted_all":
                emptied.add(campaign)
            case "audience_stats" if _taken_before(record):
                when = str(record.get("ts"))
                if campaign not in before or when < before[campaign][0]:
                    before[campaign] = (when, record["stats"])
    return Deleted(
        {c: bitmap for c, bitmap in ids.items() if bitmap},
        frozenset(emptied),
        {c: stats for c, (_, stats) in before.items()},
    )


@dataclass(frozen=True, slots=True)
class PurgeFiles:
    """The audit files of one purge, oldest first; if following them back stopped short of
    the purge's first file, why (``reason``) and the predecessor it could not take
    (``missing``; None when the link names no file)."""

    files: list[Path]
    missing: Path | None = None
    reason: str | None = None

    @property
    def complete(self) -> bool:
        """Whether the files reach back to the purge's first run."""
        return self.reason is None


def purge_files(path: Path) -> PurgeFiles:
    """The audit files of the purge whose latest file is ``path``, oldest first, ``path`` last.

    A file continues another when its first record carries ``previous`` (``audit_log``,
    ``run_id``, ``last_seq``, ``last_hash``); the links are followed back from ``path``. A
    relative ``audit_log`` is taken as written, relative to the current directory. A file
    whose first record has no ``previous`` began the purge (runs appended to one fixed
    ``--audit-log`` are all in that file). The walk stops short, naming the file in
    ``missing`` and why in ``reason``, at a predecessor that cannot be read, that does not
    hold the record the link names (another file at that path now), or that is already
    among the files (a loop): what came before it is unknown.

    Raises:
        OSError: ``path`` itself cannot be read.
    """
    files = [path]
    seen = {path.resolve()}
    link = _link(path)
    while link is not None:
        previous, wanted = link
        if previous is None:
            reason = f"{files[-1]} continues a run, but its link names no file"
            return PurgeFiles(files[::-1], None, reason)
        why = _unreachable(previous, wanted, seen)
        if why is not None:
            return PurgeFiles(files[::-1], previous, f"{files[-1]} continues {previous}, {why}")
        files.append(previous)
        seen.add(previous.resolve())
        link = _link(previous)
    return PurgeFiles(files[::-1])


def _link(path: Path) -> tuple[Path | None, str] | None:
    """The file ``path`` continues (None if its link names none) and the hash of the record
    it continues from; None when its first record names no predecessor.

    Raises:
        OSError: ``path`` cannot be read.
    """
    with path.open("rb") as handle:
        first = next((r for line in handle if isinstance(r := _parsed(line), dict)), None)
    previous = first.get("previous") if first is not None else None
    if not isinstance(previous, dict):
        return None
    name, last_hash = previous.get("audit_log"), previous.get("last_hash")
    return (Path(name) if isinstance(name, str) and name else None), str(last_hash)


def _unreachable(path: Path, wanted: str, seen: set[Path]) -> str | None:
    """Why the predecessor a link names cannot be taken as the file it continues, or None."""
    if path.resolve() in seen:
        return "which is already among the purge's files (a loop)"
    needle = b'"hash":"' + wanted.encode() + b'"'
    try:
        with path.open("rb") as handle:
            for line in handle:
                record = _parsed(line) if needle in line else None
                if isinstance(record, dict) and record.get("hash") == wanted:
                    return None
    except OSError as exc:
        return f"which cannot be read: {exc.strerror}"
    return (
        f"which does not hold the record it continues (hash {wanted[:12]}…): another file "
        "is at that path now, or the path is relative to another directory"
    )


def _parsed(line: bytes) -> object:
    try:
        value: object = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return value


def _is_id(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_ID


def _audience_ids(record: Mapping[str, Any]) -> list[int]:
    ids = record.get("audience_ids")
    return [i for i in ids if _is_id(i)] if isinstance(ids, list) else []


def _taken_before(record: Mapping[str, Any]) -> bool:
    return record.get("moment") == "before" and isinstance(record.get("stats"), dict)


@dataclass(frozen=True, slots=True)
class CampaignCheck:
    """One campaign read back: ``checked`` ids looked for among ``listed`` records."""

    campaign_id: int
    checked: int
    still_present: BitMap64
    listed: int
    pages: int
    passes: int
    emptied: bool = False
    unproven: str | None = None  # why "none left" cannot be claimed, beyond still_present

    def fields(self) -> dict[str, Any]:
        """Per campaign, for ``run_finished`` and the report."""
        return {
            "checked": self.checked,
            "still_present": len(self.still_present),
            "listed": self.listed,
            "pages": self.pages,
            "passes": self.passes,
            "emptied": self.emptied,
            "unproven": self.unproven,
        }


@dataclass(frozen=True, slots=True)
class ReadBack:
    """Every campaign read back, by id."""

    campaigns: dict[int, CampaignCheck] = field(default_factory=dict)

    @property
    def still_present(self) -> int:
        return sum(len(check.still_present) for check in self.campaigns.values())

    @property
    def unproven(self) -> dict[int, str]:
        return {c: check.unproven for c, check in self.campaigns.items() if check.unproven}

    @property
    def proven(self) -> bool:
        """Nothing still present, and every campaign read completely."""
        return not self.still_present and not self.unproven

    def fields(self) -> dict[str, Any]:
        """The totals ``run_finished`` and the report carry (``verified`` counts ids)."""
        return {
            "verified": sum(check.checked for check in self.campaigns.values()),
            "still_present": self.still_present,
            "unproven": {str(c): why for c, why in sorted(self.unproven.items())},
        }


async def read_back(
    reader: AudienceReader, recorder: Recorder, deleted: Deleted, page_size: int
) -> ReadBack:
    """List each campaign of ``deleted`` whole and record what it still holds of its
    deleted ids (one ``verified`` record per campaign; the ids still present join the
    recorder's failed pairs, so the failed-out file lists them and the exit code is 1).

    Raises:
        FatalError: a listing was refused (bad token, unknown campaign) or kept failing;
            the campaigns read before it are recorded.
        Abandoned: the run is stopping; nothing is recorded for the campaign being read.
    """
    checks: dict[int, CampaignCheck] = {}
    for campaign in deleted.campaigns:
        wanted = deleted.ids.get(campaign, BitMap64())
        try:
            check = await _read_campaign(
                reader, campaign, wanted, page_size, emptied=campaign in deleted.emptied
            )
        except ApiError as exc:
            raise refused(exc, f"cannot list campaign {campaign}") from None
        recorder.verified(
            campaign,
            checked=check.checked,
            still_present=list(check.still_present),
            listed=check.listed,
            pages=check.pages,
            passes=check.passes,
            unproven=check.unproven,
        )
        _log_check(check)
        checks[campaign] = check
    return ReadBack(checks)


async def _read_campaign(
    reader: AudienceReader, campaign: int, wanted: BitMap64, page_size: int, *, emptied: bool
) -> CampaignCheck:
    if not wanted:  # only emptied by delete-all: its total is the whole answer
        page = await reader.page(campaign, 1, 1)
        return _emptied_check(campaign, page.total_records)
    found = BitMap64()
    pages = passes = 0
    while True:
        passes += 1
        listing = await _one_pass(reader, campaign, wanted, page_size, found)
        pages += listing.pages
        if listing.complete or passes == MAX_PASSES:
            break
        log.info("listing again from page 1", campaign_id=campaign, why=listing.why)
    unproven = None if listing.complete else f"{listing.why} ({passes} passes)"
    if emptied and listing.listed and unproven is None:
        unproven = _still_holds(listing.listed)
    return CampaignCheck(
        campaign, len(wanted), found, listing.listed, pages, passes, emptied, unproven
    )


def _emptied_check(campaign: int, total: int) -> CampaignCheck:
    unproven = _still_holds(total) if total else None
    return CampaignCheck(campaign, 0, BitMap64(), total, 1, 1, True, unproven)


def _still_holds(records: int) -> str:
    return (
        f"emptied by delete-all, yet it holds {records:,} records: added since, or the "
        "delete-all did not apply (not listed as failed: they may be new records)"
    )


@dataclass(slots=True)
class _Pass:
    """One read of a campaign's pages from page 1."""

    listed: int = 0
    pages: int = 0
    complete: bool = False
    why: str = ""


async def _one_pass(
    reader: AudienceReader, campaign: int, wanted: BitMap64, page_size: int, found: BitMap64
) -> _Pass:
    """Read pages until the last; ``found`` gains the wanted ids met. A changed total
    ends the pass at once: the offsets it reads from have shifted."""
    result = _Pass()
    total: int | None = None
    number = 1
    while True:
        page = await reader.page(campaign, number, page_size)
        result.pages += 1
        total = page.total_records if total is None else total
        if page.total_records != total:
            result.why = (
                f"the campaign changed while it was listed ({total:,} records, then "
                f"{page.total_records:,})"
            )
            return result
        result.listed += len(page.records)
        found.update(i for r in page.records if (i := r["id"]) in wanted)
        if not page.records or number >= page.total_pages:
            break
        number += 1
    result.complete = result.listed == total
    if not result.complete:
        result.why = f"listed {result.listed:,} records of the {total:,} it reports"
    return result


def _log_check(check: CampaignCheck) -> None:
    log.info("campaign read back", campaign_id=check.campaign_id, **check.fields())
