"""``audience-purge audit report --html OUT``: one self-contained HTML page for a reviewer.

The page shows the runs (from ``run_started`` and ``run_finished``), totals per campaign and
overall, a chart over time (inline SVG), the chain verification (and the Ed25519 signatures
when a public key is given), and the commands that re-check it all. It is self-contained:
inline CSS and SVG, no script, no external asset. It names no audience id, only counts
(``audit find ID FILES`` answers for one id). Every text taken from the log is escaped.

Pure functions: records and a verdict in, an HTML string out.
"""

from __future__ import annotations

import shlex
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from pyroaring import BitMap64

from worker.input.validate import MAX_ID
from worker.records.audit_query import Verdict, declares_key, duplicate_rows
from worker.sending.credentials import redact_urls
from worker.times import parse_timestamp, utc_text

if TYPE_CHECKING:
    from worker.records.signing import SignatureCheck

PROG = "audience-purge"
GONE = '<span class="ok">gone</span>'
BUCKETS = 24  # bars of the chart at most

# What each series of the chart counts, said on the page under the chart.
SERIES: tuple[tuple[str, str, str], ...] = (
    ("deleted", "ids deleted", "audience ids in deleted records (a confirmed deletion)"),
    ("failed", "ids failed", "audience ids in failed records (a final failure)"),
    (
        "retries",
        "retries",
        "requests sent again: attempts beyond the first, summed over deleted and failed "
        "records (a retry after a 429, a 5xx or no answer; the log keeps the final answer only)",
    ),
    (
        "http_429",
        "final 429s",
        "deleted or failed records whose final answer was HTTP 429 (429s that a retry "
        "overcame are not in the log: they are counted under retries)",
    ),
)


def verdict_label(verdict: Verdict | Sequence[Verdict]) -> str:
    """``TAMPERED``, ``OK with warnings`` or ``OK``; of several chains, the worst."""
    verdicts = [verdict] if isinstance(verdict, Verdict) else list(verdict)
    if any(v.errors for v in verdicts):
        return "TAMPERED"
    return "OK with warnings" if any(v.warnings for v in verdicts) else "OK"


@dataclass(slots=True)
class Run:
    """One run as its ``run_started`` and ``run_finished`` records tell it."""

    run_id: str
    started: dict[str, Any] = field(default_factory=dict)
    finished: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Figures:
    """What the page counts: per campaign, overall, per run, per time bucket."""

    runs: dict[str, Run] = field(default_factory=dict)
    campaigns: dict[int, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    rejected: int = 0
    records: int = 0
    first_ts: datetime | None = None
    last_ts: datetime | None = None
    events: list[tuple[datetime, Counter[str]]] = field(default_factory=list)
    # Each campaign's distinct ids in deleted records: what a read-back has to look for.
    deleted_ids: dict[int, BitMap64] = field(default_factory=lambda: defaultdict(BitMap64))
    # Read-backs (``verified``) per campaign: how many, and how many unproven (reads,
    # unproven), and the latest one's figures (checked, still_present, listed, last_unproven):
    # the latest read-back says what is gone now; an earlier one is history.
    readback: dict[int, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    readback_ts: dict[int, str] = field(default_factory=dict)
    readback_run: dict[int, str] = field(default_factory=dict)  # the latest read-back's run
    # campaign-audience-stats per campaign: the first "before" and the last "after".
    audience: dict[int, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))
    # Runs that sign their heads: the records after each one's last signed head (no
    # signature covers them), and the ids deleted in those, per campaign.
    unsigned: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    unsigned_ids: dict[int, BitMap64] = field(default_factory=lambda: defaultdict(BitMap64))

    @property
    def totals(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for counts in self.campaigns.values():
            total.update(counts)
        return total


def _ts(record: dict[str, Any]) -> datetime | None:
    value = record.get("ts")
    if not isinstance(value, str):
        return None
    try:  # RFC 3339 with its offset: naive ones would not compare
        return parse_timestamp(value, assume_utc=False)
    except ValueError:
        return None


def _count(value: Any) -> int:
    return len(value) if isinstance(value, list) else 0


def _ids(value: Any) -> list[int]:
    """The audience ids of a list, as a read-back takes them (valid ids only)."""
    if not isinstance(value, list):
        return []
    return [i for i in value if type(i) is int and 0 < i <= MAX_ID]


def figures(records: Iterable[dict[str, Any]]) -> Figures:
    """Count the records: duplicate rows as ``audit summary`` counts them
    (:func:`~worker.records.audit_query.duplicate_rows`); ``rejected`` records carry no
    campaign (counted overall). ``deleted`` counts distinct ids per campaign, and
    ``redeleted`` the ids deleted again (a resumed batch, a retried still-present id)."""
    found = Figures()
    for record in records:
        _note_signed(found, record)
        found.records += 1
        event = record.get("event")
        when = _ts(record)
        if when is not None:
            found.first_ts = when if found.first_ts is None else min(found.first_ts, when)
            found.last_ts = when if found.last_ts is None else max(found.last_ts, when)
        run_id = str(record.get("run_id"))
        if event in ("run_started", "run_finished"):
            run = found.runs.setdefault(run_id, Run(run_id))
            if event == "run_started":
                run.started = record
            else:
                run.finished = record
            continue
        if event == "rejected":
            found.rejected += 1
            continue
        campaign = record.get("campaign_id")
        if not isinstance(campaign, int):
            continue
        counts = found.campaigns[campaign]
        point: Counter[str] = Counter()
        if event in ("deleted", "failed"):
            ids = _count(record.get("audience_ids"))
            counts[event] += ids
            point[event] += ids
            attempts = record.get("attempts")
            if isinstance(attempts, int) and attempts > 1:
                point["retries"] += attempts - 1
            if record.get("http_status") == 429:
                point["http_429"] += 1
            if event == "deleted":
                found.deleted_ids[campaign].update(_ids(record.get("audience_ids")))
        elif event in ("duplicates", "duplicate"):
            counts["duplicates"] += duplicate_rows(record)
        elif event == "unconfirmed":
            counts["unconfirmed"] += _count(record.get("audience_ids"))
        elif event == "deleted_all":
            counts["deleted_all"] += 1
        elif event == "verified":
            _count_readback(found, campaign, record)
        elif event == "audience_stats":
            _note_stats(found.audience[campaign], record)
        if point and when is not None:
            found.events.append((when, point))
    for campaign, distinct in found.deleted_ids.items():
        counts = found.campaigns[campaign]
        counts["redeleted"] = max(0, counts["deleted"] - len(distinct))
        counts["deleted"] = len(distinct)
    for pending in found.unsigned.values():
        for record in pending:
            campaign = record.get("campaign_id")
            if record.get("event") == "deleted" and isinstance(campaign, int):
                found.unsigned_ids[campaign].update(_ids(record.get("audience_ids")))
    found.unsigned = {run: pending for run, pending in found.unsigned.items() if pending}
    return found


def _note_signed(found: Figures, record: dict[str, Any]) -> None:
    """Keep the records of a signing run since its last signed head (a signed one clears
    them): what is left at the end, no signature covers."""
    run_id = str(record.get("run_id"))
    if record.get("event") == "run_started" and declares_key(record):
        found.unsigned[run_id] = []
    pending = found.unsigned.get(run_id)
    if pending is None:
        return
    if "head_signature" in record:
        pending.clear()
    else:
        pending.append(record)


def _count_readback(found: Figures, campaign: int, record: dict[str, Any]) -> None:
    """A ``verified`` record, counted (its ids still present are counted, never shown); the
    latest one of the campaign (by ``ts``) gives the figures the verdict is made of."""
    counts = found.readback[campaign]
    counts["reads"] += 1
    unproven = int(record.get("unproven") is not None)
    counts["unproven"] += unproven
    when = str(record.get("ts", ""))
    if when < found.readback_ts.get(campaign, ""):
        return
    found.readback_ts[campaign] = when
    found.readback_run[campaign] = str(record.get("run_id"))
    listed, checked = record.get("listed"), record.get("checked")
    counts["listed"] = listed if isinstance(listed, int) else 0
    counts["checked"] = checked if isinstance(checked, int) else 0
    counts["still_present"] = _count(record.get("still_present"))
    counts["last_unproven"] = unproven


def _note_stats(moments: dict[str, int], record: dict[str, Any]) -> None:
    """The campaign's total_audience before its first run and after its last."""
    stats, moment = record.get("stats"), record.get("moment")
    total = stats.get("total_audience") if isinstance(stats, dict) else None
    if not isinstance(total, int) or moment not in ("before", "after"):
        return
    if moment == "after" or "before" not in moments:
        moments[moment] = total


def buckets(
    events: Sequence[tuple[datetime, Counter[str]]], first: datetime, last: datetime
) -> tuple[timedelta, list[Counter[str]]]:
    """The events summed per time bucket: at most :data:`BUCKETS`, each a whole number of
    seconds (one at least) long, the first starting at ``first``."""
    span = (last - first).total_seconds()
    width = max(1, int(-(-span // BUCKETS)))  # ceil
    count = int(span // width) + 1
    sums = [Counter[str]() for _ in range(count)]
    for when, point in events:
        index = min(count - 1, max(0, int((when - first).total_seconds() // width)))
        sums[index].update(point)
    return timedelta(seconds=width), sums


def chart_svg(series: str, label: str, values: Sequence[int], *, width: int = 640) -> str:
    """One bar chart (inline SVG) of ``values``, its largest value labelled."""
    height, top, bottom = 90, 14, 4
    peak = max(values, default=0)
    step = width / max(1, len(values))
    bars = []
    for index, value in enumerate(values):
        h = 0.0 if peak == 0 else (height - top - bottom) * value / peak
        bars.append(
            f'<rect class="bar {escape(series)}" x="{index * step + 1:.1f}" '
            f'y="{height - bottom - h:.1f}" width="{max(1.0, step - 2):.1f}" height="{h:.1f}">'
            f"<title>{value}</title></rect>"
        )
    return (
        f'<svg role="img" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" aria-label="{escape(label)}">'
        f'<line x1="0" y1="{height - bottom}" x2="{width}" y2="{height - bottom}" '
        'stroke="#999"/>'
        f'<text x="2" y="11" font-size="11">{escape(label)}: peak {peak} per bucket</text>'
        + "".join(bars)
        + "</svg>"
    )


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:60em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em}
th,td{border:1px solid #ccc;padding:.2em .6em;text-align:left;vertical-align:top}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.verdict{font-size:1.4em;font-weight:bold;padding:.5em;border:3px solid}
.ok{border-color:#2a2;background:#efe}.warn{border-color:#c80;background:#ffe}
.bad{border-color:#c00;background:#fee}
code,pre{background:#f4f4f4;padding:.1em .3em}
rect.deleted{fill:#2a7}rect.failed{fill:#c33}rect.retries{fill:#c80}rect.http_429{fill:#63c}
"""


def _t(value: Any) -> str:
    """Any value from the log, as escaped text, every URL's password masked (a log written
    before settings were redacted may hold one; the page is for auditors)."""
    if value is None:
        return "-"
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return escape(redact_urls(text))


def _row(*cells: str, numeric: Sequence[int] = (), row_id: str | None = None) -> str:
    return (
        ("<tr>" if row_id is None else f'<tr id="{escape(row_id)}">')
        + "".join(
            f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>"
            for i, c in enumerate(cells)
        )
        + "</tr>"
    )


_RUN_KEYS = ("run_id", "command", "version", "input", "input_sha256", "settings", "selection")
_CHAIN_KEYS = ("ts", "event", "seq", "prev_hash", "hash", "previous", "head_hmac")


def _runs(found: Figures) -> list[str]:
    out = [f"<h2>Runs ({len(found.runs)})</h2>"]
    if not found.runs:
        return [*out, "<p>No run_started or run_finished record.</p>"]
    ordered = sorted(found.runs.values(), key=lambda r: str(r.started.get("ts", "")))
    for run in ordered:
        started, finished = run.started, run.finished
        out.append(f"<h3>Run {escape(run.run_id)}</h3><table>")
        out.append(_row("command", _t(started.get("command"))))
        out.append(_row("version", _t(started.get("version"))))
        out.append(_row("started", _t(started.get("ts"))))
        ended = finished.get("ts") if finished else None
        out.append(
            _row("finished", _t(ended) if finished else "no run_finished record (crash or running)")
        )
        out.append(_row("input", _t(started.get("input"))))
        out.append(_row("input SHA-256", f"<code>{_t(started.get('input_sha256'))}</code>"))
        out.append(_row("exit code", _t(finished.get("exit_code"))))
        if finished.get("interrupted"):
            out.append(_row("outcome", "interrupted"))
        if isinstance(started.get("selection"), dict):
            out.append(_row("selected by rule", selection_text(started["selection"])))
        extra = {k: v for k, v in started.items() if k not in _RUN_KEYS and k not in _CHAIN_KEYS}
        for key, value in extra.items():
            out.append(_row(f"started: {escape(key)}", _t(value)))
        finished_extra = {
            k: v
            for k, v in finished.items()
            if k not in _RUN_KEYS and k not in _CHAIN_KEYS and k not in ("exit_code",)
        }
        for key, value in finished_extra.items():
            out.append(_row(f"finished: {escape(key)}", _t(value)))
        out.append("</table>")
        settings = started.get("settings")
        if isinstance(settings, dict) and settings:
            out.append("<details><summary>settings recorded in run_started</summary><table>")
            for key, value in settings.items():
                out.append(_row(escape(str(key)), _t(value)))
            out.append("</table></details>")
    return out


def selection_text(selection: dict[str, Any]) -> str:
    """A ``run --select``'s rule and what it collected, in words (escaped HTML)."""
    rule = selection.get("rule") if isinstance(selection.get("rule"), dict) else {}
    assert isinstance(rule, dict)
    parts = [f"records of campaign {_t(rule.get('campaign_id'))}"]
    for key, label in (
        ("status", "status"),
        ("call_status", "call status"),
        ("attempt", "attempts"),
    ):
        if rule.get(key):
            parts.append(f"whose {label} is {' or '.join(_t(v) for v in rule[key])}")
    if rule.get("last_attempt_before"):
        older = f" (older than {_t(rule['older_than'])})" if rule.get("older_than") else ""
        never = "included" if rule.get("include_never_attempted") else "left out"
        parts.append(
            f"last attempted before {_t(rule['last_attempt_before'])}{older}; records never "
            f"attempted {never}"
        )
    text = ", ".join(parts) + "."
    collected = selection.get("collected")
    if isinstance(collected, dict):
        text += (
            f" Collected {_t(collected.get('selected'))} of {_t(collected.get('listed'))} "
            f"records listed ({_t(collected.get('pages'))} pages, "
            f"{_t(collected.get('passes'))} pass(es)) into {_t(selection.get('path'))}, "
            f"SHA-256 <code>{_t(collected.get('sha256'))}</code>."
        )
    else:
        text += " Not collected: the run ended before its selection was complete."
    if selection.get("resumed"):
        text += " This run resumed the purge of that selection (collected by an earlier run)."
    return text


_COLUMNS = (
    ("deleted", "ids deleted"),
    ("failed", "ids failed"),
    ("duplicates", "duplicate rows"),
    ("unconfirmed", "ids unconfirmed"),
    ("deleted_all", "delete_all answers"),
    ("redeleted", "ids deleted again"),
)


def _totals(found: Figures) -> list[str]:
    head = "".join(f"<th>{label}</th>" for _, label in _COLUMNS)
    out = [
        "<h2>Totals</h2>",
        f"<table><tr><th>campaign</th>{head}</tr>",
    ]
    numeric = range(1, len(_COLUMNS) + 1)
    for campaign in sorted(found.campaigns):
        counts = found.campaigns[campaign]
        out.append(
            _row(
                str(campaign),
                *(str(counts[k]) for k, _ in _COLUMNS),
                numeric=numeric,
                row_id=f"campaign-{campaign}",
            )
        )
    total = found.totals
    out.append(
        _row(
            "<b>all campaigns</b>",
            *(str(total[k]) for k, _ in _COLUMNS),
            numeric=numeric,
            row_id="campaign-all",
        )
    )
    out.append("</table>")
    out.append(
        f"<p>Rejected rows (all campaigns: a rejected row has no valid campaign or id): "
        f'<b id="rejected">{found.rejected}</b>. Runs: <b id="runs">{len(found.runs)}</b>. '
        f"Records: {found.records}. Time range: {_t(_iso(found.first_ts))} to "
        f"{_t(_iso(found.last_ts))}.</p>"
    )
    return out


def _proof(found: Figures) -> list[str]:
    """What the runs proved beyond the API's answers: the read-back of the ids deleted,
    and the campaigns' sizes before and after."""
    out = ["<h2>Proof that the records are gone</h2>"]
    campaigns = sorted(set(found.readback) | set(found.audience))
    if not campaigns:
        return [
            *out,
            "<p>No read-back and no campaign statistics were recorded: the deletions rest "
            "on the API's answers alone. Run <code>audience-purge verify --audit FILES</code> "
            "(or purge with <code>--verify</code>) to read the campaigns back.</p>",
        ]
    out.append(
        "<table><tr><th>campaign</th><th>ids deleted</th><th>ids looked for</th>"
        "<th>still present</th><th>records listed</th><th>read-backs</th>"
        "<th>unproven read-backs</th><th>total before</th><th>total after</th>"
        "<th>verdict</th></tr>"
    )
    for campaign in campaigns:
        read, sizes = found.readback.get(campaign, Counter()), found.audience.get(campaign, {})
        deleted = found.deleted_ids.get(campaign, BitMap64())
        out.append(
            _row(
                str(campaign),
                str(len(deleted)),
                *_read_cells(read),
                _t(sizes.get("before")),
                _t(sizes.get("after")),
                _unsigned_note(
                    found,
                    campaign,
                    _readback_verdict(read, len(deleted), _partial(found, campaign)),
                ),
                numeric=range(1, 9),
                row_id=f"proof-{campaign}",
            )
        )
    out.append(
        "</table><p>“Ids looked for”, “still present” and “records listed” are the latest "
        "read-back's: the ids the audit records as deleted, searched for in a listing of "
        "the whole campaign (audience-list), those it found, and the records it listed. The "
        "latest read-back says what is gone now; an earlier one that found ids still "
        "present is history once they were deleted again and read back. Ids still present "
        "are listed by <code>audit find</code> and in the failed-out file of the run that "
        "found them. An unproven read-back never listed the campaign completely (it "
        "changed while it was listed, or listed fewer records than it reported): it proves "
        "nothing either way. "
        "The totals are campaign-audience-stats before the first run and after the last: "
        "other activity on a campaign also moves them.</p>"
    )
    return out


def _read_cells(read: Counter[str]) -> list[str]:
    """Ids looked for, still present, records listed (by the latest read-back), read-backs,
    unproven read-backs."""
    if not read["reads"]:
        return ["not read back", "", "", "0", ""]
    names = ("checked", "still_present", "listed", "reads", "unproven")
    return [str(read[name]) for name in names]


def _partial(found: Figures, campaign: int) -> str | None:
    """What the run of the campaign's latest read-back could not read back: the earlier
    runs' files it could not find (``partial`` in its ``run_finished``)."""
    run = found.runs.get(found.readback_run.get(campaign, ""))
    partial = run.finished.get("partial") if run is not None else None
    return str(partial.get("reason")) if isinstance(partial, dict) else None


def _readback_verdict(read: Counter[str], deleted: int, partial: str | None = None) -> str:
    """``gone`` only if the latest read-back listed the campaign completely, looked for
    every distinct id deleted (of every run of its purge), and found none of them."""
    if not read["reads"]:
        return "no read-back"
    found: list[str] = []
    if partial is not None:
        found.append(f'<span class="bad">not proven</span>: {_t(partial)}')
    if read["still_present"]:
        found.append('<span class="bad">ids still present</span>')
    if read["last_unproven"]:
        found.append(
            '<span class="bad">not proven</span>: the latest read-back never listed the '
            "campaign completely"
        )
    if read["checked"] < deleted:
        found.append(
            f'<span class="warn">partly read back</span>: the latest read-back looked for '
            f"{read['checked']} of the {deleted} distinct ids deleted; the others were "
            "never looked for by it (verify --audit with all the purge's files looks for "
            "them all)"
        )
    return "; ".join(found) or GONE


def _unsigned_note(found: Figures, campaign: int, verdict: str) -> str:
    """The verdict, unless ids deleted are in records no signature covers: then not
    ``gone``, but how many."""
    ids = found.unsigned_ids.get(campaign)
    if not ids:
        return verdict
    note = (
        f'<span class="bad">unsigned</span>: {len(ids)} of the ids deleted are recorded '
        "only after the last signed head of their run (a crash, or added later): no "
        "signature vouches for them"
    )
    return note if verdict == GONE else f"{verdict}; {note}"


def _iso(when: datetime | None) -> str | None:
    return None if when is None else utc_text(when)


def _chart(found: Figures) -> list[str]:
    out = ["<h2>Over time</h2>"]
    if not found.events or found.first_ts is None or found.last_ts is None:
        return [*out, "<p>No deleted or failed record: nothing to chart.</p>"]
    width, sums = buckets(found.events, found.first_ts, found.last_ts)
    out.append(
        f"<p>{len(sums)} bucket(s) of {int(width.total_seconds())} s from "
        f"{_t(_iso(found.first_ts))}; each bar is one bucket.</p>"
    )
    for series, label, _ in SERIES:
        out.append("<div>" + chart_svg(series, label, [s[series] for s in sums]) + "</div>")
    out.append("<p>What each series counts:</p><ul>")
    out += [
        f'<li><b>{label}</b> (total <span id="total-{series}">'
        f"{sum(s[series] for s in sums)}</span>): {escape(meaning)}</li>"
        for series, label, meaning in SERIES
    ]
    out.append("</ul>")
    return out


def _verification(
    verdicts: Sequence[Verdict],
    key_checked: bool,
    signatures: Sequence[SignatureCheck | None],
    found: Figures,
) -> list[str]:
    """The verdict over every chain (the worst), then each chain's own."""
    label = verdict_label(verdicts)
    css = {"TAMPERED": "bad", "OK with warnings": "warn"}.get(label, "ok")
    out = [
        "<h2>Chain verification</h2>",
        f'<p class="verdict {css}" id="verdict">Verdict: {escape(label)}</p>',
    ]
    if label == "TAMPERED":
        out.append(
            "<p><b>The chain does not verify: the figures on this page come from records that "
            "may have been changed, removed or added. Do not rely on them.</b></p>"
        )
    if len(verdicts) > 1:
        out.append(
            f"<p>The files hold {len(verdicts)} chains (a purge's logs and a later verify "
            "run's, say, are separate chains by design); each is verified on its own.</p>"
        )
    for number, (verdict, checked) in enumerate(zip(verdicts, signatures, strict=True), 1):
        if len(verdicts) > 1:
            own = verdict_label(verdict)
            out.append(
                f'<h3>Chain {number} of {len(verdicts)}: <span id="verdict-{number}">'
                f"{escape(own)}</span></h3>"
            )
        out += _chain(verdict, key_checked, checked)
    out += _unsigned_runs(found)
    return out


def _chain(verdict: Verdict, key_checked: bool, signatures: SignatureCheck | None) -> list[str]:
    records = sum(end.records for end in verdict.files)
    out = [
        f"<p>{len(verdict.files)} file(s), {records} records"
        + ("; signed heads (HMAC) checked" if key_checked else "; HMAC heads not checked")
        + ".</p>",
    ]
    head = verdict.head
    if head is not None:
        out.append(
            f"<p>Head: seq {head.seq}, hash <code>{_t(head.hash)}</code> "
            f"({_t(str(verdict.head_path))}:{head.line}, run {_t(head.run_id)}, "
            f"{_t(head.ts)}).</p>"
        )
    if len(verdict.files) > 1:
        out.append(
            "<p>Files in chain order: "
            + ", ".join(_t(str(end.path)) for end in verdict.files)
            + "</p>"
        )
    for title, problems in (("Errors", verdict.errors), ("Warnings", verdict.warnings)):
        if problems:
            out.append(f"<h4>{title}</h4><ul>")
            out += [f"<li>{_t(str(problem))}</li>" for problem in problems]
            out.append("</ul>")
    if signatures is None:
        out.append("<p>Ed25519 signatures: not checked (no --public-key).</p>")
        return out
    ok = "NOT verified"
    if not signatures.errors:
        ok = "partly verified" if signatures.unsigned_after else "verified"
    out.append(
        f"<p>Ed25519 signatures: {ok}; {signatures.verified} signature(s) verified under "
        f"key {_t(signatures.key_id)}"
    )
    if signatures.last_signed is not None:
        path, line, seq = signatures.last_signed
        out.append(f"; last signed seq {seq} ({_t(str(path))}:{line})")
    if signatures.unsigned_after:
        out.append(f"; {signatures.unsigned_after} record(s) after it are unsigned")
    out.append(".</p>")
    return out


def _unsigned_runs(found: Figures) -> list[str]:
    """The records of signing runs that no signature covers, per run."""
    if not found.unsigned:
        return []
    out = [
        '<h3>Unsigned records</h3><ul id="unsigned">',
        *(
            f"<li>run {_t(run)}: {len(pending)} record(s) after its last signed head are "
            "unsigned, though its run_started declares a signing key (a crash between "
            "checkpoints, or records added later): no signature vouches for what they say"
            "</li>"
            for run, pending in found.unsigned.items()
        ),
        "</ul>",
    ]
    return out


def commands(paths: Sequence[Path], public_key: Path | None, key_file: Path | None) -> list[str]:
    """The commands that re-check the page, as a shell takes them."""
    files = " ".join(shlex.quote(str(p)) for p in paths)
    options = ""
    if key_file is not None:
        options += f" --audit-key-file {shlex.quote(str(key_file))}"
    if public_key is not None:
        options += f" --public-key {shlex.quote(str(public_key))}"
    return [
        f"{PROG} audit verify{options} {files}",
        f"{PROG} audit summary {files}",
        f"{PROG} audit find ID {files}",
        f"{PROG} verify --audit {files}",
    ]


def render(
    records: Iterable[dict[str, Any]],
    verdict: Verdict | Sequence[Verdict],
    *,
    paths: Sequence[Path],
    generated: str,
    key_file: Path | None = None,
    public_key: Path | None = None,
    signatures: SignatureCheck | Sequence[SignatureCheck | None] | None = None,
) -> str:
    """The page, as one HTML string: ``verdict`` is one per chain of the files (see
    :func:`~worker.records.audit_query.check_chains`), ``signatures`` the same."""
    found = figures(records)
    verdicts = [verdict] if isinstance(verdict, Verdict) else list(verdict)
    checks = list(signatures) if isinstance(signatures, Sequence) else [signatures] * len(verdicts)
    body: list[str] = [
        "<h1>Audience purge: audit evidence</h1>",
        f"<p>Generated {escape(generated)} from "
        + ", ".join(f"<code>{_t(str(p))}</code>" for p in paths)
        + ".</p>",
        "<p>This page lists no individual audience id, only counts. To see what happened "
        "to one id, run <code>audit find ID</code> (below).</p>",
        *_verification(verdicts, key_file is not None, checks, found),
        *_totals(found),
        *_proof(found),
        *_chart(found),
        *_runs(found),
        "<h2>How to re-check it</h2><p>With the same files (and keys):</p><pre>",
        "\n".join(escape(line) for line in commands(paths, public_key, key_file)),
        "</pre>",
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        "<title>Audit evidence</title>"
        f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
