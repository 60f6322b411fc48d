"""What the worker is compared with in bench/suite.py: the smallest clients that send the same
ids in the same requests, so that the worker's overhead (validation, de-duplication,
retries, the audit log, the rate gate) shows as a ratio.

Each reads the same CSV (``campaign_id,audience_id`` with a header), sends batches as the
worker does (``{"campaign_id": N, "audience": [...]}`` with the ``token`` header, see
worker/sending/client.py) and checks for a 200; no retries, no audit, no de-duplication.

- ``aiohttp``: one ClientSession, ``--concurrency`` tasks sharing one batch iterator.
- ``requests``: one requests.Session, one request after another (what a user scripts).

The token comes from UNLEASHX_TOKEN. Exit 1 if any request was not a 200.
Usage: python bench/_baselines.py aiohttp|requests --url URL --input CSV
                                  [--batch-size 100] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Iterator


def batches(path: str, size: int) -> Iterator[tuple[int, list[int]]]:
    """(campaign, ids) of ``size`` ids at most, in input order, per campaign run."""
    with open(path) as handle:
        next(handle)  # the header
        campaign, ids = 0, list[int]()
        for line in handle:
            left, _, right = line.partition(",")
            row_campaign, audience = int(left), int(right)
            if ids and (row_campaign != campaign or len(ids) == size):
                yield campaign, ids
                ids = []
            campaign = row_campaign
            ids.append(audience)
        if ids:
            yield campaign, ids


async def with_aiohttp(args: argparse.Namespace, token: str) -> int:
    import aiohttp
    import orjson

    failures = 0
    work = batches(args.input, args.batch_size)
    headers = {"token": token, "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=args.concurrency)

    async with aiohttp.ClientSession(connector=connector) as session:

        async def sender() -> None:
            nonlocal failures
            for campaign, ids in work:  # shared: each batch goes to one sender
                body = orjson.dumps({"campaign_id": campaign, "audience": ids})
                async with session.post(args.url, data=body, headers=headers) as response:
                    await response.read()
                    failures += response.status != 200

        await asyncio.gather(*(sender() for _ in range(args.concurrency)))
    return failures


def with_requests(args: argparse.Namespace, token: str) -> int:
    import requests

    failures = 0
    with requests.Session() as session:
        session.headers.update({"token": token})
        for campaign, ids in batches(args.input, args.batch_size):
            reply = session.post(args.url, json={"campaign_id": campaign, "audience": ids})
            failures += reply.status_code != 200
    return failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("client", choices=["aiohttp", "requests"])
    parser.add_argument("--url", required=True, help="the full .../delete-audience URL")
    parser.add_argument("--input", required=True)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    token = os.environ["UNLEASHX_TOKEN"]
    if args.client == "aiohttp":
        failures = asyncio.run(with_aiohttp(args, token))
    else:
        failures = with_requests(args, token)
    if failures:
        print(f"{failures} requests failed", file=sys.stderr)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
