"""``audience-purge audit verify|summary|find|report|keygen``: what an auditor runs.

Exit codes: 0 intact, or intact with warnings (verify: what a crash leaves, printed as
``WARNING:`` lines before ``OK with warnings``; see :mod:`worker.records.audit_query`) / found;
1 tampering found (verify: ``TAMPERED:`` lines), or nothing found (find: the id, or with
``--line`` the input line, is in no record); 2 a file cannot be read, or a usage error (find
given both an id and ``--line``, or neither; ``keygen`` given a prefix whose files exist;
``report`` given an OUT it cannot write). ``report`` exits 0 once the page is written,
whatever the verdict it shows.
``verify --json`` prints the same verdict as one JSON object instead; ``find --json`` prints
each record as it is, with ``file`` and ``file_line`` (where it stands) added: its own
``line`` is the input line it is about. ``verify --public-key`` also checks the Ed25519
signatures (see :mod:`worker.records.signing`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from worker.errors import UsageError
from worker.files import EVIDENCE, STDOUT, make_dirs, output_path, write_atomic, write_new
from worker.records.audit import read_key_file
from worker.records.audit_query import (
    Hit,
    Problem,
    UnsignedSpan,
    Verdict,
    check,
    check_chains,
    find,
    find_line,
    summarize,
    unsigned_spans,
)

if TYPE_CHECKING:
    from worker.records.signing import SignatureCheck


def _readable(paths: list[Path]) -> list[Path]:
    for path in paths:
        if not path.is_file():
            raise UsageError(f"audit file {path} does not exist or is not a file")
    return paths


def verify_command(args: argparse.Namespace) -> int:
    """Warnings (what a crash leaves) first, then errors, or one line naming the head."""
    key = read_key_file(args.audit_key_file)
    signatures = None
    if args.public_key is not None:
        from worker.records.signing import load_checker

        checker = load_checker(args.public_key)
    verdict = check(_readable(args.paths), key)
    if args.public_key is not None:
        from worker.records.signing import check_signatures

        signatures = check_signatures([end.path for end in verdict.files], checker)
        verdict.warnings += signatures.warnings
        verdict.errors += signatures.errors
    if args.json:
        document = verdict_document(verdict, key, signatures)
        document["unsigned"] = [_span(span) for span in unsigned_spans(args.paths)]
        sys.stdout.write(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 1 if verdict.errors else 0
    for warning in verdict.warnings:
        print(f"WARNING: {warning}")
    for error in verdict.errors:
        print(f"TAMPERED: {error}")
    if verdict.errors:
        return 1
    if len(verdict.files) > 1:
        print("files in chain order: " + ", ".join(str(end.path) for end in verdict.files))
    print(_verified(verdict, key, signatures))
    return 0


def verdict_document(
    verdict: Verdict, key: bytes | None, signatures: SignatureCheck | None = None
) -> dict[str, Any]:
    """``verify --json``: ok, the warnings and errors (file, line, reason), the head, and
    the files (in chain order when the chain holds), for a script to read."""
    head = verdict.head
    return {
        "ok": not verdict.errors,
        "warnings": [_problem(warning) for warning in verdict.warnings],
        "errors": [_problem(error) for error in verdict.errors],
        "head": None
        if head is None
        else {
            "hash": head.hash,
            "file": str(verdict.head_path),
            "line": head.line,
            "seq": head.seq,
            "run_id": head.run_id,
            "ts": head.ts,
        },
        "files": [
            {"path": str(end.path), "records": end.records, "signed_heads": end.signed}
            for end in verdict.files
        ],
        "signed_heads_checked": key is not None,
        "signatures": None if signatures is None else _signatures(signatures),
    }


def _signatures(found: SignatureCheck) -> dict[str, Any]:
    """``verify --public-key --json``: the Ed25519 signatures checked and what they cover."""
    last = found.last_signed
    return {
        "key_id": found.key_id,
        "verified": found.verified,
        "last_signed": None
        if last is None
        else {"file": str(last[0]), "line": last[1], "seq": last[2]},
        "unsigned_after": found.unsigned_after,
    }


def _problem(problem: Problem) -> dict[str, Any]:
    return {"file": str(problem.path), "line": problem.line, "reason": problem.reason}


def _verified(verdict: Verdict, key: bytes | None, signatures: SignatureCheck | None = None) -> str:
    records = sum(end.records for end in verdict.files)
    signed = sum(end.signed for end in verdict.files)
    hmac_note = (
        f", {signed} signed head(s) checked"
        if key
        else f", {signed} signed head(s) not checked (no --audit-key-file)"
        if signed
        else ""
    )
    if signatures is not None:
        hmac_note += f", {signatures.verified} Ed25519 signature(s) verified (key "
        hmac_note += f"{signatures.key_id})"
        if signatures.last_signed is not None:
            path, line, seq = signatures.last_signed
            hmac_note += f", last signed seq {seq} ({path}:{line})"
    status = "OK"
    if verdict.warnings:
        status = "OK with warnings"
        hmac_note += f", {len(verdict.warnings)} warning(s) above"
    head = verdict.head
    where = (
        ""
        if head is None
        else f"; head {head.hash[:16]}… ({verdict.head_path}:{head.line}, seq {head.seq}, "
        f"run {head.run_id})"
    )
    return (
        f"{status}: {len(verdict.files)} file(s), {records} records, chain intact{hmac_note}{where}"
    )


def summary_command(args: argparse.Namespace) -> int:
    """The totals; ``WARNING:`` lines first for records they cannot count whole (a
    ``duplicates`` record whose arrays differ in length). Exit 0 either way."""
    paths = _readable(args.paths)
    data = summarize(paths)
    data["unsigned"] = [_span(span) for span in unsigned_spans(paths)]
    if args.json:
        sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    for warning in data["warnings"]:
        print(f"WARNING: {warning['file']}:{warning['line']}: {warning['reason']}")
    for span in data["unsigned"]:
        said = _UNSIGNED.format(run=span["run_id"])
        print(f"WARNING: {span['file']}:{span['lines']}: {span['records']} {said}")
    print("events:")
    for event, n in data["events"].items():
        print(f"  {event:<14} {n}")
    print("campaigns:")
    for campaign, counts in data["campaigns"].items():
        shown = ", ".join(f"{k} {v}" for k, v in counts.items())
        print(f"  {campaign}: {shown}")
    print("runs:")
    for run in data["runs"]:
        print(
            f"  {run.get('run_id')}: {run.get('command', '?')} started {run.get('started')} "
            f"finished {run.get('finished', '-')} exit {run.get('exit_code', '-')}"
            + (" (interrupted)" if run.get("interrupted") else "")
        )
    return 0


_UNSIGNED = (
    "record(s) of run {run} after its last signed head are unsigned (its run_started "
    "declares a signing key): a crash between checkpoints, or records added later; no "
    "signature vouches for what they say"
)


def _span(span: UnsignedSpan) -> dict[str, Any]:
    """An unsigned span as ``audit summary`` (``--json``) gives it."""
    return {
        "file": str(span.path),
        "lines": span.lines,
        "run_id": span.run_id,
        "records": span.last - span.first + 1,
    }


def _describe(record: dict[str, Any]) -> str:
    event = record.get("event")
    parts = [str(record.get("ts")), f"run {record.get('run_id')}", str(event)]
    if record.get("campaign_id") is not None:
        parts.append(f"campaign {record['campaign_id']}")
    if event in ("deleted", "failed", "deleted_all"):
        parts.append(f"HTTP {record.get('http_status')} {record.get('message')!r}")
    if event == "failed":
        parts.append(f"reason: {record.get('reason')}")
    if event in ("rejected", "duplicate"):
        parts.append(f"input line {record.get('line')}")
    if event == "rejected":
        parts.append(f"reason: {record.get('reason')}")
        parts += _rejected_row(record)
    return "  ".join(parts)


def _rejected_row(record: dict[str, Any]) -> list[str]:
    """What a ``rejected`` record keeps of its row: the id cell and the SHA-256 of the row
    (older logs kept the row's text instead, ``raw``: shown as it is there)."""
    parts = []
    if record.get("audience_raw") is not None:
        parts.append(f"id cell {record['audience_raw']!r}")
    if "raw_sha256" in record:
        parts.append(f"sha256 {record['raw_sha256']}")
    elif "raw" in record:
        parts.append(f"raw {record['raw']!r}")
    return parts


def _find_target(args: argparse.Namespace) -> tuple[int | None, int | None, list[Path]]:
    """(audience id, input line, files) of ``audit find``: exactly one of AUDIENCE_ID and
    ``--line``. The parser gives the first of two or more positionals to AUDIENCE_ID; with
    ``--line`` it is a file, unless it is a number (then both were given: a file named
    like a number is given as ``./97``)."""
    word, paths, line = args.audience_id, list(args.paths), args.line
    if line is None:
        if word is None:
            raise UsageError("audit find: give an AUDIENCE_ID or --line N, then the audit files")
        try:
            return int(word), None, paths
        except ValueError:
            raise UsageError(f"audit find: AUDIENCE_ID must be an integer, got {word!r}") from None
    if line < 1:
        raise UsageError(f"audit find: --line takes an input line number (1 or more), got {line}")
    if word is not None:
        if _is_integer(word):
            raise UsageError(
                f"audit find: give AUDIENCE_ID ({word}) or --line {line}, not both "
                f"(a file named {word} is given as ./{word})"
            )
        paths.insert(0, Path(word))
    return None, line, paths


def _is_integer(word: str) -> bool:
    try:
        int(word)
    except ValueError:
        return False
    return True


def find_command(args: argparse.Namespace) -> int:
    """Every record that mentions an id, or (``--line N``) that is about input line N; each
    as ``FILE:LINE  description`` (``--json``: the record, with ``file`` and ``file_line``),
    then, in text, one line saying what was found. Exit 1 when nothing is."""
    audience_id, input_line, paths = _find_target(args)
    paths = _readable(paths)
    spans = unsigned_spans(paths)
    if audience_id is not None:
        hits = list(find(paths, audience_id, args.campaign_id))
        closing = _found(hits, audience_id, spans)
    else:
        assert input_line is not None
        hits = list(find_line(paths, input_line, args.campaign_id))
        closing = _found_line(hits, input_line)
    for path, line, record in hits:
        unsigned = _unsigned(spans, (path, line, record))
        if args.json:
            # Not "line": a record's own ``line`` is the input line it is about.
            shown = {"file": str(path), "file_line": line, **record}
            if unsigned:
                shown["unsigned"] = True
            sys.stdout.write(orjson.dumps(shown).decode() + "\n")
        else:
            print(f"{path}:{line}  {_describe(record)}" + ("  UNSIGNED" if unsigned else ""))
    if not args.json:
        print(closing)
    return 0 if hits else 1


def _unsigned(spans: list[UnsignedSpan], hit: Hit) -> bool:
    """Whether the record is one of a signing run that no signature covers."""
    return any(span.holds(hit[0], hit[1]) for span in spans)


def _found(hits: list[Hit], audience_id: int, spans: list[UnsignedSpan]) -> str:
    deleted = [hit for hit in hits if hit[2].get("event") == "deleted"]
    signed = [hit for hit in deleted if not _unsigned(spans, hit)]
    if signed:
        first = signed[0][2]
        return (
            f"=> audience id {audience_id} was erased: {first.get('ts')} in run "
            f"{first.get('run_id')} (HTTP {first.get('http_status')}, {first.get('message')!r})"
        )
    if deleted:
        path, line, first = deleted[0]
        return (
            f"=> audience id {audience_id}: erased only by an unsigned record ({path}:{line}, "
            f"run {first.get('run_id')}): its run signs its heads, but no signature covers "
            "this record (a crash between checkpoints, or added later); not proven"
        )
    if hits:
        return f"=> audience id {audience_id} has no deletion record"
    return f"=> audience id {audience_id} appears in no audit record"


def _found_line(hits: list[Hit], input_line: int) -> str:
    if not hits:
        return (
            f"=> input line {input_line} is in no rejected or duplicate record (a row that "
            "was sent leaves no record of its line: find it by its id)"
        )
    runs = list(dict.fromkeys(str(r.get("run_id")) for _, _, r in hits))
    records = f"{len(hits)} record" + ("s" if len(hits) > 1 else "")
    if len(runs) == 1:
        return f"=> input line {input_line}: {records}, of run {runs[0]}"
    return (
        f"=> input line {input_line}: {records}, of {len(runs)} runs (a line number is per "
        "input and per run: audit summary names each run's input)"
    )


def keygen_command(args: argparse.Namespace) -> int:
    """PREFIX.key (PKCS8 PEM, 0600) and PREFIX.pub (PEM); an existing file is never replaced."""
    from worker.records.signing import new_key_pair

    prefix: Path = args.out
    if prefix == STDOUT:
        raise UsageError("audit keygen --out - : a key pair is two files; name a PREFIX")
    private_path = prefix.with_name(prefix.name + ".key")
    public_path = prefix.with_name(prefix.name + ".pub")
    for path in (private_path, public_path):
        if os.path.lexists(path):  # a file, a link (even dangling), a pipe, a device
            raise UsageError(f"{path} already exists: nothing was written (choose another --out)")
    private, public = new_key_pair()
    try:
        make_dirs(private_path.parent)
        write_new(private_path, private)
        try:
            write_new(public_path, public, mode=0o644)
        except BaseException:
            private_path.unlink()  # half a pair is no pair
            raise
    except OSError as exc:
        raise UsageError(f"cannot write the key pair: {exc}") from None
    print(f"private key: {private_path} (0600; give it to the runs only: --sign-key)")
    print(f"public key:  {public_path} (give it to the auditor)")
    print(f"sign:   audience-purge run ... --sign-key {private_path}")
    print(f"verify: audience-purge audit verify --public-key {public_path} purge-audit/*.jsonl")
    return 0


def report_command(args: argparse.Namespace) -> int:
    """``audit report --html OUT``: the evidence page (see :mod:`worker.records.evidence`),
    written atomically (0600); exit 0 once written, whatever the verdict (the page says it
    first, and so does the one line printed)."""
    from datetime import UTC, datetime

    from worker.records.audit_query import read_records
    from worker.records.evidence import render, verdict_label
    from worker.times import utc_text

    key = read_key_file(args.audit_key_file)
    checker = None
    if args.public_key is not None:
        from worker.records.signing import load_checker

        checker = load_checker(args.public_key)
    paths = _readable(args.paths)
    read = [*paths, *(p for p in (args.audit_key_file, args.public_key) if p is not None)]
    out = output_path(args.html, EVIDENCE, read)
    signatures: list[SignatureCheck | None] = []
    try:
        verdicts = check_chains(paths, key)
        for verdict in verdicts:
            signatures.append(None)
            if checker is not None and verdict.files:
                from worker.records.signing import check_signatures

                found = check_signatures([end.path for end in verdict.files], checker)
                verdict.warnings += found.warnings
                verdict.errors += found.errors
                signatures[-1] = found
        records = [record for _, _, record in read_records(paths)]
    except OSError as exc:
        raise UsageError(f"cannot read the audit files: {exc}") from None
    page = render(
        records,
        verdicts,
        paths=paths,
        generated=utc_text(datetime.now(UTC), "seconds"),
        key_file=args.audit_key_file,
        public_key=args.public_key,
        signatures=signatures,
    )
    try:
        if out is None:
            sys.stdout.write(page)
            sys.stdout.flush()
        else:
            make_dirs(out.parent)
            write_atomic(out, page.encode("utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot write {args.html}: {exc}") from None
    # With the page on stdout, the verdict line goes to stderr.
    print(f"{args.html}: {verdict_label(verdicts)}", file=sys.stderr if out is None else sys.stdout)
    return 0


AUDIT_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "keygen": keygen_command,
    "verify": verify_command,
    "summary": summary_command,
    "find": find_command,
    "report": report_command,
}
