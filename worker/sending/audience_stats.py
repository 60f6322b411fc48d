"""campaign-audience-stats before and after a purge: context for its proof, not proof.

A failed read is recorded and never fails a run, and :func:`explain` says why a campaign's
total moved by more or less than the ids acknowledged as deleted. For ``run --verify``::

    before = await take_stats(reader, recorder, campaigns, "before")  # before sending
    ...                                                               # the purge
    after = await take_stats(reader, recorder, campaigns, "after")
    fields = compare_stats(before, after, acknowledged, still_present)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Any

import structlog

from worker.errors import ApiError
from worker.records.recorder import Recorder
from worker.sending.listing import AudienceReader

log = structlog.get_logger("audience_purge.stats")

Stats = Mapping[str, Any]


def _said(exc: ApiError) -> str:
    """The reason and the API's message (already freed of any token by the client)."""
    return exc.reason + (f": {exc.message}" if exc.message and exc.message != exc.reason else "")


async def take_stats(
    reader: AudienceReader, recorder: Recorder, campaigns: Iterable[int], moment: str
) -> dict[int, dict[str, Any] | None]:
    """Read and record each campaign's campaign-audience-stats at ``moment`` ("before",
    "after"); a failed read is recorded with its reason and logged, never raised, as the
    stats explain a run and never decide it. None stands for a failed read.

    Raises:
        Abandoned: the run is stopping.
    """
    taken: dict[int, dict[str, Any] | None] = {}
    for campaign in campaigns:
        try:
            stats: dict[str, Any] | None = await reader.stats(campaign)
        except ApiError as exc:
            error = _said(exc)
            log.warning("stats not read", campaign_id=campaign, moment=moment, error=error)
            recorder.audience_stats(campaign, moment, None, error)
            taken[campaign] = None
            continue
        recorder.audience_stats(campaign, moment, stats, None)
        taken[campaign] = stats
    return taken


def explain(
    before: Stats | None,
    after: Stats | None,
    deleted: int,
    still_present: int,
    *,
    emptied: bool = False,
) -> dict[str, Any]:
    """Compare the campaign's ``total_audience`` before and after with what the ids
    acknowledged as deleted (``deleted``, of which ``still_present`` were found again)
    should have removed, and say in plain words why they differ.

    ``expected_after`` is ``before - (deleted - still_present)``, or 0 for a campaign
    emptied by delete-all; ``difference`` is ``after - expected_after`` (positive: fewer
    removed than acknowledged).
    """
    was, now = _total(before), _total(after)
    fields: dict[str, Any] = {
        "total_audience_before": was,
        "total_audience_after": now,
        "acknowledged": deleted,
        "still_present": still_present,
        "emptied": emptied,
        "expected_after": None,
        "difference": None,
    }
    if was is None or now is None:
        missing = " and ".join(m for m, t in (("before", was), ("after", now)) if t is None)
        return {
            **fields,
            "explanation": f"not compared: no stats {missing} (not taken, or not readable)",
        }
    expected = 0 if emptied else was - (deleted - still_present)
    difference = now - expected
    fields.update(expected_after=expected, difference=difference)
    return {**fields, "explanation": _why(difference, was - now, still_present, emptied)}


def _total(stats: Stats | None) -> int | None:
    value = None if stats is None else stats.get("total_audience")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _why(difference: int, removed: int, still_present: int, emptied: bool) -> str:
    if difference == 0:
        said = f"as expected: {removed:,} removed"
    elif emptied and difference > 0:
        said = (
            f"{difference:,} records in a campaign emptied by delete-all: added since, or the "
            "delete-all did not apply"
        )
    elif difference > 0:
        said = (
            f"{difference:,} fewer removed than acknowledged: ids that were not in the campaign "
            "or were already deleted (the API ignores them and still answers success), or "
            "records added to the campaign meanwhile"
        )
    else:
        said = (
            f"{-difference:,} more removed than acknowledged: other activity on the campaign "
            "meanwhile (another purge, a delete-all, records removed in the app)"
        )
    if still_present:
        said += f"; {still_present:,} acknowledged ids are still present (not counted as removed)"
    return said


def compare_stats(
    before: Mapping[int, Stats | None],
    after: Mapping[int, Stats | None],
    acknowledged: Mapping[int, int],
    still_present: Mapping[int, int],
    emptied: AbstractSet[int] = frozenset(),
) -> dict[str, Any]:
    """``total_audience_before`` and ``total_audience_after``, summed over the campaigns
    read at both moments (None when none was, as the run's report sums them), and
    :func:`explain` per campaign (``audience``), for ``run_finished`` and the report."""
    campaigns = sorted(set(before) | set(after))
    both = [c for c in campaigns if None not in (_total(before.get(c)), _total(after.get(c)))]
    return {
        "total_audience_before": _sum(before, both),
        "total_audience_after": _sum(after, both),
        "audience": {
            str(c): explain(
                before.get(c),
                after.get(c),
                acknowledged.get(c, 0),
                still_present.get(c, 0),
                emptied=c in emptied,
            )
            for c in campaigns
        },
    }


def _sum(stats: Mapping[int, Stats | None], campaigns: Sequence[int]) -> int | None:
    return sum(_total(stats.get(c)) or 0 for c in campaigns) if campaigns else None
