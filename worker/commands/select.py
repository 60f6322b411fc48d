"""``audience-purge select``: list what a rule selects, for review before anything is deleted.

Nothing is deleted and nothing audited: the selection is a CSV (``campaign_id``,
``audience_id`` and the fields the rule was checked on) that ``run --input`` accepts as is.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime

from worker.input.selecting import Rule, Selection, collect_into, rule_from
from worker.records.report import plural
from worker.runtime.signals import signal_handlers
from worker.runtime.stopping import Abandoned
from worker.sending.client import UnleashXClient, http_session
from worker.sending.credentials import TokenSource
from worker.sending.listing import Reader
from worker.sending.ratelimit import rate_gate
from worker.sending.retry import RetryPolicy
from worker.settings import Settings


def select_command(settings: Settings, args: argparse.Namespace) -> int:
    """Write the selection to ``--out`` and say what it holds on stderr."""
    rule = rule_from(args, settings.campaign_id, datetime.now(UTC))
    selection = asyncio.run(select(settings, rule, args.out))
    where = "stdout" if args.out == "-" else args.out
    print(describe(rule, selection) + f"; written to {where}", file=sys.stderr)
    return 0


async def select(settings: Settings, rule: Rule, out: str) -> Selection:
    """Collect the rule's selection into ``out``; a signal stops it with nothing written.

    Raises:
        FatalError: the API refused the listing.
        KeyboardInterrupt: SIGINT or SIGTERM.
    """
    tokens = TokenSource(settings.token, None if settings.token else settings.token_file)
    async with http_session(settings.timeout, 1) as session, rate_gate(settings) as gate:
        client = UnleashXClient(session, settings.base_url, tokens)
        reader = Reader(client, gate, RetryPolicy.from_settings(settings))
        with signal_handlers(lambda _signal: reader.stop.set()):
            try:
                return await collect_into(rule, reader, out, settings.page_size)
            except Abandoned:
                raise KeyboardInterrupt from None


def describe(rule: Rule, selection: Selection) -> str:
    """One line for a person: what was selected out of what was listed, and why not more."""
    left = ", ".join(f"{why} {n}" for why, n in sorted(selection.left_out.items()))
    cutoff = rule.describe()["last_attempt_before"]
    return (
        f"campaign {rule.campaign_id}: selected {plural(selection.selected, 'record')}"
        + (f" last attempted before {cutoff}" if cutoff else "")
        + " of "
        f"{selection.listed} listed ({plural(selection.pages, 'page')}, "
        f"{plural(selection.passes, 'pass', 'passes')})" + (f"; left out: {left}" if left else "")
    )
