"""Fault injection for the sandbox: random 5xx, dropped connections, latency, rate limits, size cap.

Randomness comes from one ``random.Random(seed)``; every API request draws exactly three numbers
in arrival order, whatever path it takes, so the same seed and the same request sequence give the
same faults. ``ack_without_delete`` draws from a second generator, derived from the same seed,
once per delete request that would be applied (a known campaign and ids): switching it on leaves
the other faults of a seed exactly as they were.

The rate limit is a sliding-window log, not a fixed window that resets on the minute, so a
client cannot burst 2x its budget across a window edge. Like the vendor's, which is per API key,
it covers every API request (reads and update-campaign too, not only deletes), as do the injected
5xx and dropped connections.

Counting rule: only requests that the limiter *accepts* enter the window. A refused request (429)
does not, so a client that keeps hammering is not locked out forever; it gets back in as soon as
the oldest accepted request ages out, which is exactly what ``Retry-After`` announces.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields

from worker.sandbox.listing_faults import LISTING_FAULTS

SERVER_ERRORS = (500, 502, 503)
RATIOS = ("error_ratio", "drop_ratio", "ack_without_delete")
SERVER_ERROR_MESSAGES = {
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


@dataclass(frozen=True, slots=True)
class FaultConfig:
    """What the sandbox does wrong, and how often.

    ``error_status`` is the HTTP status of the three documented API errors, which the vendor does
    not specify; run the client against both 400 and 200 to cover either answer.
    ``ack_without_delete`` is the share of delete requests with ids that are answered exactly
    like a success but delete nothing: what reading the campaign back must catch.
    ``listing_fault`` makes audience-list lie one way of :data:`LISTING_FAULTS`, to the first
    ``listing_fault_times`` answers it applies to (None: to every one).
    """

    seed: int = 0
    error_ratio: float = 0.0
    drop_ratio: float = 0.0
    latency_ms: float = 0.0
    limit_per_second: int | None = None
    limit_per_minute: int | None = None
    max_batch: int | None = None
    error_status: int = 400
    retry_after_on_5xx: bool = False
    ack_without_delete: float = 0.0
    listing_fault: str | None = None
    listing_fault_times: int | None = None

    def __post_init__(self) -> None:
        for name in RATIOS:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        if self.latency_ms < 0:
            raise ValueError(f"latency_ms must be >= 0, got {self.latency_ms}")
        for name in ("limit_per_second", "limit_per_minute", "max_batch"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or null, got {value}")
        if not 100 <= self.error_status <= 599:
            raise ValueError(f"error_status must be an HTTP status, got {self.error_status}")
        if self.listing_fault is not None and self.listing_fault not in LISTING_FAULTS:
            raise ValueError(
                f"listing_fault must be one of {', '.join(LISTING_FAULTS)}, got "
                f"{self.listing_fault!r}"
            )
        if self.listing_fault_times is not None and self.listing_fault_times < 1:
            raise ValueError(
                f"listing_fault_times must be >= 1 or null, got {self.listing_fault_times}"
            )

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> FaultConfig:
        """Build a config from JSON fields; fields not given take their defaults.

        Raises:
            ValueError: an unknown field, a value of the wrong type, or an out-of-range value.
        """
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"unknown fault fields: {', '.join(unknown)}")
        values: dict[str, object] = {}
        for name, value in data.items():
            values[name] = _check_type(name, value)
        return cls(**values)  # type: ignore[arg-type]


def _check_type(name: str, value: object) -> object:
    if name == "retry_after_on_5xx":
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be a boolean")
        return value
    if name == "listing_fault":
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{name} must be a string or null")
        return value
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number")
    if name in (*RATIOS, "latency_ms"):
        if not isinstance(value, int | float):
            raise ValueError(f"{name} must be a number")
        return float(value)
    if value is None and name in (
        "limit_per_second",
        "limit_per_minute",
        "max_batch",
        "listing_fault_times",
    ):
        return None
    if not isinstance(value, int):
        raise ValueError(f"{name} must be an integer")
    return value


@dataclass(frozen=True, slots=True)
class Verdict:
    """The fate the injector chose for one request before it is handled."""

    drop: bool
    server_error: int | None


class FaultInjector:
    """Decides per request, deterministically from the seed, whether to drop it or fail it,
    and per applicable delete whether to acknowledge it without applying it."""

    __slots__ = ("_ack_rng", "_rng", "config")

    def __init__(self, config: FaultConfig) -> None:
        self.config = config
        self._rng = random.Random(config.seed)
        self._ack_rng = random.Random(f"ack_without_delete:{config.seed}")

    def decide(self) -> Verdict:
        """Draw the fate of the next request; always consumes three random numbers."""
        drop_roll = self._rng.random()
        error_roll = self._rng.random()
        status = SERVER_ERRORS[self._rng.randrange(len(SERVER_ERRORS))]
        return Verdict(
            drop=drop_roll < self.config.drop_ratio,
            server_error=status if error_roll < self.config.error_ratio else None,
        )

    def ack_without_delete(self) -> bool:
        """Whether to acknowledge the next applicable delete without applying it."""
        return self._ack_rng.random() < self.config.ack_without_delete


class SlidingWindowLimiter:
    """Per-second and per-minute sliding-window request logs over accepted requests.

    The logs are kept whether or not a limit is configured, so a limit switched on at runtime
    sees the traffic that came before it.
    """

    __slots__ = ("_clock", "_logs")

    WINDOWS = (1.0, 60.0)

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._logs: tuple[deque[float], deque[float]] = (deque(), deque())

    def acquire(self, per_second: int | None, per_minute: int | None) -> int | None:
        """Admit one request and return None, or refuse it and return whole seconds to wait."""
        now = self._clock()
        wait = 0.0
        for window, limit, log in zip(
            self.WINDOWS, (per_second, per_minute), self._logs, strict=True
        ):
            while log and log[0] <= now - window:
                log.popleft()
            if limit is not None and len(log) >= limit:
                # The slot frees when the limit-th most recent accepted request leaves the window.
                wait = max(wait, log[len(log) - limit] + window - now)
        if wait > 0:
            return max(1, math.ceil(wait))
        for log in self._logs:
            log.append(now)
        return None
