"""The audit writer with a signing key, in process (no run): which records it signs, when it
writes a ``head_signed``, and that what it writes verifies (issue #25: the audit module's
mutation pass; the same through real runs is tests/records/test_signing.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from audit_trails import signing_keys

from worker.records.audit import AuditLog
from worker.records.audit_query import verify
from worker.records.signing import Checker, Signer, check_signatures


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Signer, Checker]:
    return signing_keys(tmp_path_factory.mktemp("keys"))


def lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_a_signed_writer_signs_each_checkpoint_once_and_its_run_finished(
    tmp_path: Path, keys: tuple[Signer, Checker]
) -> None:
    signer, checker = keys
    log = AuditLog(tmp_path / "a.jsonl", "r1", signer=signer)
    log.write("run_started")
    log.write("batch", ids=[1, 2])
    log.sync()  # a checkpoint: the head (seq 1) is signed
    log.sync()  # nothing written since: nothing to sign
    log.write("batch", ids=[3])
    log.write("run_finished")  # signed itself
    log.sync()
    log.close()

    records = lines(log.path)
    assert [(r["event"], r["seq"]) for r in records] == [
        ("run_started", 0),
        ("batch", 1),
        ("head_signed", 2),
        ("batch", 3),
        ("run_finished", 4),
    ]
    assert records[2]["signed_seq"] == 1
    assert records[2]["signed_hash"] == records[2]["prev_hash"] == records[1]["hash"]
    signed = [r["seq"] for r in records if "head_signature" in r]
    declared = [r["seq"] for r in records if r.get("signing_key_id") == signer.key_id]
    assert (signed, declared) == ([2, 4], [0, 2, 4])
    assert all(checker.verify(r) for r in records if "head_signature" in r)
    found = check_signatures([log.path], checker)
    assert (found.errors, found.warnings, found.verified) == ([], [], 2)
    assert verify([log.path], None)[1] is None


def test_a_checkpoint_after_records_no_signature_covers_signs_them(
    tmp_path: Path, keys: tuple[Signer, Checker]
) -> None:
    """A run killed after this checkpoint is signed up to it; records of a second writer
    on the same file, before its first checkpoint, are not yet."""
    signer, checker = keys
    first = AuditLog(tmp_path / "a.jsonl", "r1", signer=signer)
    first.write("run_started")
    first.sync()
    first.close()
    second = AuditLog(first.path, "r1", signer=signer)
    second.sync()  # nothing of its own yet
    second.write("batch", ids=[1])

    assert [r["event"] for r in lines(first.path)] == ["run_started", "head_signed", "batch"]
    second.sync()
    second.close()
    records = lines(first.path)
    assert [r["event"] for r in records] == [
        "run_started",
        "head_signed",
        "batch",
        "head_signed",
    ]
    assert (records[3]["signed_seq"], records[3]["seq"]) == (2, 3)
    assert check_signatures([first.path], checker).errors == []


def test_an_unsigned_writer_signs_nothing_and_writes_no_head_signed(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a.jsonl", "r1", key=b"an hmac key")
    log.write("run_started")
    log.write("batch", ids=[1])
    log.sync()
    log.write("run_finished")
    log.close()

    records = lines(log.path)
    assert [r["event"] for r in records] == ["run_started", "batch", "run_finished"]
    assert [
        sorted(set(r) & {"head_signature", "signing_key_id", "head_hmac"}) for r in records
    ] == [
        [],
        [],
        ["head_hmac"],
    ]
    assert verify([log.path], b"an hmac key")[1] is None
