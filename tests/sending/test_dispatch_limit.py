"""The dispatcher under a concurrency limit, in virtual time against a simulated server:
the real Dispatcher, LocalRateGate, retries and recorder; only the HTTP client is simulated.

What must hold whatever the limit does: the rate gate alone decides when a request starts
(starts are never closer than the rate allows), requests in flight never exceed the
maximum, a 429 still pauses every sender, and no request starts after a stop.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import orjson
import pytest
from virtual import Phase, Server, run_virtual

from worker.input.batching import Batch
from worker.records.audit import AuditLog
from worker.records.recorder import Recorder
from worker.runtime.stopping import Abandoned
from worker.sending.classify import classify
from worker.sending.client import Reply
from worker.sending.concurrency import ADAPTIVE, FIXED, ConcurrencyLimit, concurrency_limit
from worker.sending.dispatch import Dispatcher
from worker.sending.ratelimit import LocalRateGate
from worker.sending.retry import RetryPolicy
from worker.settings.rate import RateSpec

RATE = 97.0  # --rate 100/s less the 3 % margin
BODIES = {
    200: b'{"message": "Audience deleted successfully"}',
    429: b'{"message": "Too Many Requests"}',
    503: b'{"message": "Service Unavailable"}',
}


class SimulatedClient:
    """The API client, answering as the simulated server says; checks every start."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.dispatcher: Dispatcher | None = None
        self.over_limit: list[tuple[float, int, int]] = []

    async def delete_audience(self, campaign_id: int, audience_ids: Sequence[int]) -> Reply:
        status, latency = await self.server.request(self._started)
        headers = {"Retry-After": "1"} if status == 429 else {}
        return Reply(classify(status, BODIES[status], headers), round(latency * 1000, 1))

    def _started(self, in_flight: int) -> None:
        assert self.dispatcher is not None
        limit = self.dispatcher.limit
        if in_flight > limit.maximum or limit.held > max(limit.limit, limit.maximum):
            self.over_limit.append((asyncio.get_running_loop().time(), in_flight, limit.limit))


async def batches(count: int) -> AsyncIterator[Batch]:
    for i in range(1, count + 1):
        yield Batch(42, (i,))


def dispatcher(
    tmp_path: Path, client: SimulatedClient, *, mode: str, maximum: int, senders: int = 0
) -> Dispatcher:
    limit = concurrency_limit(
        mode, maximum, rate_per_second=RATE, clock=asyncio.get_running_loop().time
    )
    built = Dispatcher(
        client=client,  # type: ignore[arg-type]
        gate=LocalRateGate(RateSpec(RATE, 1.0)),
        policy=RetryPolicy(max_attempts=10, max_time=300, backoff_initial=0.5, backoff_max=5),
        recorder=Recorder(AuditLog(tmp_path / "audit.jsonl", "run")),
        concurrency=senders or maximum,
        limit=limit,
    )
    client.dispatcher = built
    return built


def purge(
    tmp_path: Path, phases: list[Phase], count: int, *, mode: str = ADAPTIVE, maximum: int = 64
) -> tuple[Server, SimulatedClient, list[tuple[float, int]]]:
    """Send ``count`` one-id batches; the server, the client and the limit every 100 ms."""
    random.seed(0)  # the retries' jitter
    server = Server(phases)
    client = SimulatedClient(server)

    async def main() -> list[tuple[float, int]]:
        loop = asyncio.get_running_loop()
        sending = dispatcher(tmp_path, client, mode=mode, maximum=maximum)
        trace: list[tuple[float, int]] = []

        async def sample() -> None:
            while True:
                trace.append((loop.time(), sending.limit.limit))
                await asyncio.sleep(0.1)

        sampler = asyncio.create_task(sample())
        await sending.run(batches(count))
        sampler.cancel()
        return trace

    return server, client, run_virtual(main())


def deleted(tmp_path: Path) -> int:
    records = [orjson.loads(line) for line in (tmp_path / "audit.jsonl").read_bytes().splitlines()]
    return sum(len(r["audience_ids"]) for r in records if r["event"] == "deleted")


def closest_starts(server: Server) -> float:
    return min(b - a for a, b in itertools.pairwise(server.starts))


@pytest.mark.parametrize(
    ("mode", "maximum", "expected"),
    [(FIXED, 8, 8 / 0.25), (FIXED, 64, RATE), (ADAPTIVE, 64, RATE)],
    ids=["fixed-8", "fixed-64", "adaptive"],
)
def test_at_250_ms_the_rate_is_met_with_enough_in_flight_and_never_exceeded(
    tmp_path: Path, mode: str, maximum: int, expected: float
) -> None:
    server, client, _ = purge(tmp_path, [Phase(0.0)], 1500, mode=mode, maximum=maximum)

    assert server.rate(2, 12) == pytest.approx(expected, rel=0.02)
    assert closest_starts(server) >= 0.999 / RATE  # the gate alone paces the starts
    assert client.over_limit == []
    assert server.peak <= maximum
    assert deleted(tmp_path) == 1500


def test_a_503_burst_lowers_the_limit_every_batch_is_deleted_and_the_rate_comes_back(
    tmp_path: Path,
) -> None:
    phases = [Phase(0.0), Phase(5.0, latency=0.05, status=503), Phase(6.0)]
    server, client, trace = purge(tmp_path, phases, 2500)

    before = min(limit for t, limit in trace if 3 <= t < 5)
    assert min(limit for t, limit in trace if 5 <= t < 8) <= 0.7 * before
    assert server.rate(15, 20) >= 0.99 * RATE
    assert closest_starts(server) >= 0.999 / RATE
    assert client.over_limit == []
    assert deleted(tmp_path) == 2500


def test_a_429_pauses_every_sender_and_lowers_the_limit(tmp_path: Path) -> None:
    phases = [Phase(0.0), Phase(5.0, status=429), Phase(5.1)]
    server, _, trace = purge(tmp_path, phases, 2000)

    # The last 429 came at about 5.35 s with Retry-After: 1; nobody starts for that second.
    assert not [t for t in server.starts if 5.4 <= t < 6.3]
    before = min(limit for t, limit in trace if 3 <= t < 5)
    assert min(limit for t, limit in trace if 5 <= t < 7) < before
    assert server.rate(12, 18) >= 0.99 * RATE
    assert deleted(tmp_path) == 2000


def test_after_a_stop_no_sender_waiting_for_a_permit_starts_a_request(tmp_path: Path) -> None:
    server = Server([Phase(0.0, latency=1.0, jitter=0.0)])
    client = SimulatedClient(server)

    async def main() -> tuple[float, int]:
        loop = asyncio.get_running_loop()
        sending = Dispatcher(
            client=client,  # type: ignore[arg-type]
            gate=LocalRateGate(RateSpec(RATE, 1.0)),
            policy=RetryPolicy(1, 10.0, 0.0, 0.0),
            recorder=Recorder(AuditLog(tmp_path / "audit.jsonl", "run")),
            concurrency=4,
            limit=ConcurrencyLimit(1),  # three senders wait for the one permit
        )
        client.dispatcher = sending
        loop.call_later(0.5, sending.stop)
        await sending.run(batches(100))
        return loop.time(), sending.limit.held

    ended, held = run_virtual(main())

    assert held == 0
    assert server.starts == [0.0]
    assert ended == pytest.approx(1.0)  # the request in flight finished; nothing after it
    records = [orjson.loads(line) for line in (tmp_path / "audit.jsonl").read_bytes().splitlines()]
    assert [r["event"] for r in records] == ["sending", "deleted"]


def test_a_permit_waited_for_once_stopped_is_refused_and_never_taken(tmp_path: Path) -> None:
    async def main() -> int:
        sending = Dispatcher(
            client=None,  # type: ignore[arg-type]
            gate=LocalRateGate(RateSpec(RATE, 1.0)),
            policy=RetryPolicy(1, 10.0, 0.0, 0.0),
            recorder=Recorder(AuditLog(tmp_path / "audit.jsonl", "run")),
            concurrency=1,
        )
        await sending.limit.acquire()  # the one permit is in use: the next must wait
        sending.stop()
        with pytest.raises(Abandoned):
            async with sending._permit():
                pass
        sending.limit.release()
        await asyncio.sleep(1)
        return sending.limit.held

    assert run_virtual(main()) == 0


def test_a_limit_larger_than_the_senders_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="a limit of 8 needs as many senders, not 4"):
        Dispatcher(
            client=None,  # type: ignore[arg-type]
            gate=LocalRateGate(RateSpec(RATE, 1.0)),
            policy=RetryPolicy(1, 10.0, 0.0, 0.0),
            recorder=Recorder(AuditLog(tmp_path / "audit.jsonl", "run")),
            concurrency=4,
            limit=ConcurrencyLimit(8),
        )
