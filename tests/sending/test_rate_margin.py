"""The rate margin through the local gate (issue #25), on a virtual clock: a run's gate,
taken as a run takes it (``rate_gate(settings)``), paces ``rate_margin`` under the configured
rate, as the shared gate does; so a server counting the configured rate per second never
sees it reached, whatever the network's jitter."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from virtual import run_virtual

from worker.sending.ratelimit import rate_gate
from worker.settings import Settings
from worker.settings.rate import RateSpec


async def starts(settings: Settings, count: int) -> list[float]:
    """When each of ``count`` back-to-back requests may go, through the run's gate."""
    loop = asyncio.get_running_loop()
    times = []
    async with rate_gate(settings) as gate:
        for _ in range(count):
            await gate.acquire()
            times.append(loop.time())
    return times


@pytest.mark.parametrize(("per_second", "margin"), [(10, 0.1), (100, 0.05), (3, 0.25)])
def test_the_local_gate_paces_the_margin_under_the_configured_rate(
    per_second: int, margin: float
) -> None:
    settings = Settings(rate=RateSpec(per_second, 1.0), rate_margin=margin)

    times = run_virtual(starts(settings, 4 * per_second + 1))

    interval = 1 / (per_second * (1 - margin))
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps == pytest.approx([interval] * len(gaps), abs=1e-9)
    assert times[-1] == pytest.approx(4 * per_second * interval, abs=1e-9)  # 4 s at full rate


def test_the_local_gate_without_a_margin_paces_the_configured_rate() -> None:
    settings = Settings(rate=RateSpec(10, 1.0), rate_margin=0.0)

    times = run_virtual(starts(settings, 11))

    assert times[-1] == pytest.approx(1.0, abs=1e-9)
