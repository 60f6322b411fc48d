"""``audience-purge demo``: a real purge through the normal pipeline, against the sandbox.

It starts the embedded sandbox on a free loopback port (with a little chaos: 5xx answers,
dropped connections and a real rate limit), writes a sample CSV with bad rows and
duplicates, purges it at a visible rate, then checks the sandbox's own record: every valid
id gone, and nothing outside the input ever sent.
"""

from __future__ import annotations

import asyncio
import csv
import io
import secrets
import shlex
import shutil
import sys
from pathlib import Path
from typing import TextIO

from worker.commands.run import run_purge
from worker.files import Kind, file_to_write, make_dirs, write_atomic
from worker.records.report import print_summary
from worker.runtime.logs import configure_logging
from worker.sandbox import CampaignSpec, FaultConfig, SandboxConfig, running_sandbox
from worker.sending.credentials import Secret
from worker.settings import Settings
from worker.settings.rate import RateSpec

CAMPAIGNS = (CampaignSpec(42, "draft", 1, 5000), CampaignSpec(77, "inprogress", 1, 3000))
BAD_ROWS = ("abc", "-5", "0", "1.5", "1e3", "99999999999999999999999", "")


def demo_command(directory: Path) -> int:
    """``audience-purge demo``: quiet logs, the purge's own output."""
    configure_logging("warning")
    return asyncio.run(run_demo(directory))


def write_sample_csv(path: Path) -> dict[int, set[int]]:
    """A few thousand ids over two campaigns, some bad rows and duplicates; returns the ids."""
    wanted: dict[int, set[int]] = {42: set(range(1, 2001)), 77: set(range(501, 1501))}
    text = io.StringIO(newline="")
    out = csv.writer(text)
    out.writerow(("campaign_id", "audience_id"))
    for campaign, ids in wanted.items():
        for audience in sorted(ids):
            out.writerow((campaign, audience))
            if audience % 97 == 0:
                out.writerow((campaign, audience))  # a duplicate
            if audience % 401 == 0:
                out.writerow((campaign, BAD_ROWS[audience % len(BAD_ROWS)]))
    data = text.getvalue().encode()
    # Only an earlier demo's sample (the same bytes) is replaced: never a real id list.
    sample = Kind(
        "the demo's input", "--dir", "the demo's sample", lambda h: bool(h) and data.startswith(h)
    )
    target = file_to_write(path, sample)
    make_dirs(target.parent)
    write_atomic(target, data)
    return wanted


async def run_demo(directory: Path, *, out: TextIO = sys.stdout) -> int:
    """Run the demo; returns the purge's exit code (0 when every valid id was deleted)."""
    token = secrets.token_urlsafe(16)
    faults = FaultConfig(
        seed=7, error_ratio=0.05, drop_ratio=0.02, limit_per_second=12, retry_after_on_5xx=False
    )
    config = SandboxConfig(campaigns=CAMPAIGNS, token=token, faults=faults)
    csv_path = directory / "audience.csv"
    wanted = write_sample_csv(csv_path)
    async with running_sandbox(config) as sandbox:
        print(
            f"sandbox: {sandbox.url} (campaigns 42 draft, 77 inprogress; 5% 5xx, 2% dropped "
            "connections, 12 requests/s limit)",
            file=out,
        )
        print(
            f"input:   {csv_path} ({sum(map(len, wanted.values()))} valid ids, bad rows and "
            "duplicates included)\n",
            file=out,
            flush=True,
        )
        settings = Settings(
            base_url=sandbox.url,
            token=Secret(token),
            rate=RateSpec(10, 1.0),
            batch_size=25,
            concurrency=4,
            backoff_initial=0.2,
            backoff_max=2.0,
            audit_dir=directory,
            report=directory / "report.json",
            failed_out=directory / "failed.csv",
            state_dir=directory / "state",
            fresh=True,  # a new sandbox every time: earlier progress means nothing to it
            progress="auto",
            progress_interval=2.0,
        )
        result = await run_purge(settings, str(csv_path), out=out)
        print_summary(result, out)
        left = {
            c: sum(1 for i in ids if sandbox.state.campaigns[c].alive(i))
            for c, ids in wanted.items()
        }
        outside = sum(
            len(set(receipts.received_ids()) - wanted.get(campaign, set()))
            for campaign, receipts in sandbox.state.receipts.items()
        )
    print(
        f"\nsandbox check: valid ids still present {sum(left.values())}, "
        f"ids sent that were not in the input {outside}",
        file=out,
    )
    me, log = command_prefix(), shlex.quote(str(result.audit_log))
    print(
        f"next:    {me} audit verify {log}\n"
        f"         {me} audit find 97 --campaign-id 42 {log}\n"
        f"         then rehearse your own purge: {me} sandbox --help",
        file=out,
    )
    return result.exit_code


def command_prefix() -> str:
    """How to run this same installation again, as it can be typed here: ``audience-purge``
    when that is on PATH and is this one; else the full path of the one beside this Python
    (a virtual environment that is not activated, as after the README's install); else
    ``python -m worker`` with this Python."""
    here = Path(sys.executable).parent / "audience-purge"
    found = shutil.which("audience-purge")
    if found is not None and here.is_file() and Path(found).samefile(here):
        return "audience-purge"
    if here.is_file():
        return shlex.quote(str(here.absolute()))
    return f"{shlex.quote(sys.executable)} -m worker"
