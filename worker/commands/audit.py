"""``audience-purge audit verify|summary|find``: what an auditor runs on the audit logs.

Exit codes: 0 intact, or intact with warnings (verify: what a crash leaves, printed as
``WARNING:`` lines before ``OK with warnings``; see :mod:`worker.records.audit_query`) / found;
1 tampering found (verify: ``TAMPERED:`` lines), or the id appears in no record (find); 2 a
file cannot be read. ``verify --json`` prints the same verdict as one JSON object instead.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from worker.errors import UsageError
from worker.records.audit import read_key_file
from worker.records.audit_query import Problem, Verdict, check, find, summarize


def _readable(paths: list[Path]) -> list[Path]:
    for path in paths:
        if not path.is_file():
            raise UsageError(f"audit file {path} does not exist or is not a file")
    return paths


def verify_command(args: argparse.Namespace) -> int:
    """Warnings (what a crash leaves) first, then errors, or one line naming the head."""
    key = read_key_file(args.audit_key_file)
    verdict = check(_readable(args.paths), key)
    if args.json:
        document = verdict_document(verdict, key)
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
    print(_verified(verdict, key))
    return 0


def verdict_document(verdict: Verdict, key: bytes | None) -> dict[str, Any]:
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
    }


def _problem(problem: Problem) -> dict[str, Any]:
    return {"file": str(problem.path), "line": problem.line, "reason": problem.reason}


def _verified(verdict: Verdict, key: bytes | None) -> str:
    records = sum(end.records for end in verdict.files)
    signed = sum(end.signed for end in verdict.files)
    hmac_note = (
        f", {signed} signed head(s) checked"
        if key
        else f", {signed} signed head(s) not checked (no --audit-key-file)"
        if signed
        else ""
    )
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
    data = summarize(_readable(args.paths))
    if args.json:
        sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
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
    return "  ".join(parts)


def find_command(args: argparse.Namespace) -> int:
    hits = list(find(_readable(args.paths), args.audience_id, args.campaign_id))
    for path, line, record in hits:
        if args.json:
            sys.stdout.write(
                orjson.dumps({"file": str(path), "line": line, **record}).decode() + "\n"
            )
        else:
            print(f"{path}:{line}  {_describe(record)}")
    if not args.json:
        deleted = [r for _, _, r in hits if r.get("event") == "deleted"]
        if deleted:
            first = deleted[0]
            print(
                f"=> audience id {args.audience_id} was erased: {first.get('ts')} in run "
                f"{first.get('run_id')} (HTTP {first.get('http_status')}, "
                f"{first.get('message')!r})"
            )
        elif hits:
            print(f"=> audience id {args.audience_id} has no deletion record")
        else:
            print(f"=> audience id {args.audience_id} appears in no audit record")
    return 0 if hits else 1


AUDIT_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "verify": verify_command,
    "summary": summary_command,
    "find": find_command,
}
