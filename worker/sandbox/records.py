"""The synthetic audience records: pure functions of ``(seed, campaign id, audience id)``.

Nothing is stored per record, so a 10-million-id campaign costs its bitmaps and nothing more.

*What statistics add up or filters test* (status, call statuses, attempts, call seconds) depends
on the audience id only through ``id % PERIOD``: each campaign has ``PERIOD`` record classes
(:func:`class_table`), which lets a campaign count and sum any filter arithmetically. *What is
only shown* (``mobile_no``, ``last_attempt``) is hashed from the id itself, so records do not
visibly repeat. Only ``Random.random()`` is drawn, the one draw Python promises to keep
reproducible across versions.

The seed is the sandbox's ``--seed`` (``SandboxConfig.records_seed``, which defaults to the
fault seed). It picks each class's calls and every id's number and time; the status of an id is
``(5 * id + 7 * campaign + seed) % 4``, a quarter of the ids each, as with seed 0 before.

A record, in the full format (``is_new`` absent or false):

- ``status``: ``Fresh``, ``Completed``, ``Halted`` or ``Inqueue`` (codes 0..3).
- ``attempt``: calls made, 0..:data:`MAX_ATTEMPT`. Fresh records are never attempted, nor are a
  quarter of the Inqueue ones (queued, not dialled yet).
- ``first_status`` / ``last_status``: the status of the first / last call, one of
  :data:`CALL_STATUSES`; ``call_status``: ``answered`` once any call got through, else the
  status of the last call. All three are null when ``attempt`` is 0.
- ``duration``: seconds spent on calls (answered calls and voicemails).
  A record has at most one answered call (the dialler stops once it gets through, unless the
  first call got a callback request), so ``successful_calls`` in the stats counts the records
  whose ``call_status`` is ``answered``.
- ``last_attempt``: ``YYYY-MM-DD HH:MM:SS`` UTC, in ``[LAST_ATTEMPT_EARLIEST, REFERENCE_INSTANT)``
  (the :data:`LAST_ATTEMPT_SPAN` before a fixed instant, never the wall clock, so ages are
  reproducible); null when ``attempt`` is 0.
- ``mobile_no``: E.164, ``+1`` + an area code + ``555`` + four digits (fictional numbers).

With ``is_new`` true the API answers "simplified records": here ``id``, ``mobile_no``,
``status``, ``attempt`` and ``last_attempt`` only (:data:`SIMPLE_FIELDS`).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache

AUDIENCE_STATUSES = ("Fresh", "Completed", "Halted", "Inqueue")
CALL_STATUSES = ("answered", "busy", "failed", "no-answer", "voicemail")
ANSWERED = "answered"
MAX_ATTEMPT = 5
PERIOD = 64  # a multiple of 4, so that the status formula is periodic too

REFERENCE_INSTANT = datetime(2026, 11, 1, tzinfo=UTC)
LAST_ATTEMPT_SPAN = timedelta(days=730)
LAST_ATTEMPT_EARLIEST = REFERENCE_INSTANT - LAST_ATTEMPT_SPAN
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"

FULL_FIELDS = (
    "id",
    "mobile_no",
    "status",
    "call_status",
    "first_status",
    "last_status",
    "attempt",
    "duration",
    "last_attempt",
)
SIMPLE_FIELDS = ("id", "mobile_no", "status", "attempt", "last_attempt")
HEADER_LABELS = {
    "mobile_no": "Mobile Number",
    "status": "Lead Status",
    "call_status": "Call Status",
    "first_status": "First Call Status",
    "last_status": "Last Call Status",
    "attempt": "Attempt",
    "duration": "Duration",
    "last_attempt": "Last Attempt",
}

_AREA_CODES = ("202", "212", "305", "312", "415", "512", "617", "702", "713", "808")
_MISSES = ("no-answer", "no-answer", "no-answer", "busy", "busy", "voicemail", "failed")
_MISSES_IN_TURN = ("no-answer", "busy", "voicemail", "failed")  # every call_status in a campaign
_MASK = (1 << 64) - 1
_EARLIEST = int(LAST_ATTEMPT_EARLIEST.timestamp())
_SPAN = int(LAST_ATTEMPT_SPAN.total_seconds())


@dataclass(frozen=True, slots=True)
class RecordFigures:
    """One record class: what filters test and statistics add up."""

    status_code: int
    calls: tuple[str, ...]
    duration: int

    @property
    def attempt(self) -> int:
        return len(self.calls)

    @property
    def attempted(self) -> bool:
        return bool(self.calls)

    @property
    def answered(self) -> int:
        """Answered calls: the vendor's ``successful_calls`` counts calls, not records."""
        return self.calls.count(ANSWERED)

    @property
    def first_status(self) -> str | None:
        return self.calls[0] if self.calls else None

    @property
    def last_status(self) -> str | None:
        return self.calls[-1] if self.calls else None

    @property
    def call_status(self) -> str | None:
        return ANSWERED if ANSWERED in self.calls else self.last_status


def mix(*parts: int) -> int:
    """A 64-bit hash of integers (splitmix64 steps): stable across runs and Python versions."""
    x = 0x9E3779B97F4A7C15
    for part in parts:
        x = ((x ^ (part & _MASK)) * 0xBF58476D1CE4E5B9) & _MASK
        x = ((x ^ (x >> 31)) * 0x94D049BB133111EB) & _MASK
        x ^= x >> 29
    return x


@lru_cache(maxsize=1024)
def _stream(seed: int, campaign_id: int, salt: int) -> int:
    return mix(seed, campaign_id, salt)


def id_hash(seed: int, campaign_id: int, audience_id: int, salt: int) -> int:
    """64 well-mixed bits per id: one splitmix64 output of a per-campaign stream."""
    z = (_stream(seed, campaign_id, salt) + audience_id * 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def status_code(seed: int, campaign_id: int, audience_id: int) -> int:
    """0 Fresh, 1 Completed, 2 Halted, 3 Inqueue."""
    return (5 * audience_id + 7 * campaign_id + seed) % 4


def _between(rng: random.Random, low: int, high: int) -> int:
    return low + int(rng.random() * (high - low + 1))


def _calls(code: int, tier: int, rng: random.Random) -> tuple[str, ...]:
    """The statuses of a class's calls, first to last."""

    def misses(n: int) -> list[str]:
        return [_MISSES[_between(rng, 0, len(_MISSES) - 1)] for _ in range(n)]

    if code == 0 or (code == 3 and tier % 4 == 0):
        return ()
    if code == 1:
        return (*misses(_between(rng, 0, 2)), ANSWERED)
    if code == 2:  # gave up: the first half of the tiers end on each miss in turn
        calls = [*misses(_between(rng, 2, MAX_ATTEMPT - 1)), _MISSES_IN_TURN[tier % 4]]
        callback = tier >= 8 and rng.random() < 0.5
    else:
        calls = misses(_between(rng, 1, 3))
        callback = rng.random() < 0.3
    if callback:
        calls[0] = ANSWERED  # got through once and was asked to call back
    return tuple(calls)


def _figures(seed: int, campaign_id: int, residue: int) -> RecordFigures:
    rng = random.Random(mix(seed, campaign_id, residue))
    code = status_code(seed, campaign_id, residue)
    calls = _calls(code, residue // 4, rng)
    seconds = {ANSWERED: (20, 420), "voicemail": (10, 30)}
    duration = sum(_between(rng, *seconds[c]) for c in calls if c in seconds)
    return RecordFigures(code, calls, duration)


@lru_cache(maxsize=1024)
def class_table(seed: int, campaign_id: int) -> tuple[RecordFigures, ...]:
    """The campaign's record classes, indexed by ``audience_id % PERIOD``."""
    return tuple(_figures(seed, campaign_id, residue) for residue in range(PERIOD))


def figures(campaign_id: int, audience_id: int, *, seed: int = 0) -> RecordFigures:
    """The class of one record."""
    return class_table(seed, campaign_id)[audience_id % PERIOD]


def mobile_no(seed: int, campaign_id: int, audience_id: int) -> str:
    """A fictional E.164 number: ``+1`` + area code + ``555`` + four digits."""
    h = id_hash(seed, campaign_id, audience_id, 1)
    return f"+1{_AREA_CODES[h % len(_AREA_CODES)]}555{(h >> 8) % 10_000:04d}"


def last_attempt(seed: int, campaign_id: int, audience_id: int) -> str | None:
    """When the record was last called (UTC), or None if it never was."""
    if not figures(campaign_id, audience_id, seed=seed).attempted:
        return None
    offset = id_hash(seed, campaign_id, audience_id, 2) % _SPAN
    return time.strftime(TIME_FORMAT, time.gmtime(_EARLIEST + offset))


def record(
    campaign_id: int, audience_id: int, *, seed: int = 0, simple: bool = False
) -> dict[str, object]:
    """The audience-list row for one id; ``simple`` is the ``is_new`` format."""
    fig = figures(campaign_id, audience_id, seed=seed)
    row: dict[str, object] = {
        "id": audience_id,
        "mobile_no": mobile_no(seed, campaign_id, audience_id),
        "status": AUDIENCE_STATUSES[fig.status_code],
        "call_status": fig.call_status,
        "first_status": fig.first_status,
        "last_status": fig.last_status,
        "attempt": fig.attempt,
        "duration": fig.duration,
        "last_attempt": last_attempt(seed, campaign_id, audience_id),
    }
    return {key: row[key] for key in SIMPLE_FIELDS} if simple else row


def headers(*, simple: bool = False) -> list[dict[str, str]]:
    """The ``headers`` of an audience-list answer, as the vendor shapes them."""
    keys = SIMPLE_FIELDS if simple else FULL_FIELDS
    return [{"key": key, "label": HEADER_LABELS[key]} for key in keys if key != "id"]
