"""check_signatures and the key files, in memory: what ``audit verify --public-key`` says of
each kind of record, signed or not (issue #25: the signing module's mutation pass). The
same checks against real signed runs are tests/records/test_signing.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from audit_trails import signing_keys

from worker.errors import ConfigError
from worker.records.signing import (
    Checker,
    Signer,
    check_signatures,
    load_checker,
    load_signer,
    new_key_pair,
    signed_bytes,
)

Record = dict[str, Any]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Signer, Checker]:
    return signing_keys(tmp_path_factory.mktemp("keys"))


def chain(signer: Signer | None, *events: str, run_id: str = "r1") -> list[Record]:
    """Records of ``events`` from seq 0, linked by made-up hashes; ``run_finished`` and
    ``head_signed`` signed by ``signer`` (a ``head_signed`` naming the record before it)."""
    records: list[Record] = []
    prev = "0" * 64
    for seq, event in enumerate(events):
        record: Record = {"event": event, "run_id": run_id, "seq": seq, "prev_hash": prev}
        if event == "run_started" and signer is not None:
            record["signing_key_id"] = signer.key_id
        if event == "head_signed":
            record |= {"signed_seq": seq - 1, "signed_hash": prev}
        if signer is not None and event in ("run_finished", "head_signed"):
            record["signing_key_id"] = signer.key_id
            record["head_signature"] = signer.sign(record)
        record["hash"] = f"{seq:064x}"
        prev = record["hash"]
        records.append(record)
    return records


def write(path: Path, records: list[Record], tail: bytes = b"") -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records) + tail)
    return path


def reasons(problems: list[Any]) -> list[tuple[int, str]]:
    return [(p.line, p.reason) for p in problems]


def test_a_run_signed_to_its_end_verifies_every_signature(
    tmp_path: Path, pair: tuple[Signer, Checker]
) -> None:
    signer, checker = pair
    records = chain(signer, "run_started", "batch", "head_signed", "batch", "run_finished")
    path = write(tmp_path / "a.jsonl", records)

    found = check_signatures([path], checker)

    assert (found.verified, found.last_signed, found.errors, found.warnings) == (
        2,
        (path, 5, 4),
        [],
        [],
    )
    assert (found.unsigned_after, found.first_unsigned, found.key_id) == (0, None, signer.key_id)


def test_records_after_the_last_signed_one_are_counted_from_the_first(
    tmp_path: Path, pair: tuple[Signer, Checker]
) -> None:
    """A run killed after a checkpoint, spread over two files: three records unsigned,
    the first on line 1 of the second file; a torn line and a line that is no object are
    left to the chain check."""
    signer, checker = pair
    records = chain(signer, "run_started", "batch", "head_signed", "batch", "batch", "batch")
    first = write(tmp_path / "1.jsonl", records[:3])
    second = write(tmp_path / "2.jsonl", records[3:], tail=b'[1, 2]\n{"event": "bat')

    found = check_signatures([first, second], checker)

    assert (found.verified, found.last_signed, found.errors) == (1, (first, 3, 2), [])
    assert (found.unsigned_after, found.first_unsigned) == (3, (second, 1))
    assert reasons(found.warnings) == [
        (
            1,
            "3 records after the last signed head: unsigned (a run killed after its last "
            "checkpoint, or one without --sign-key; or removed records: whoever edits the "
            "file can change these)",
        )
    ]
    assert found.warnings[0].path == second


NOT_SIGNED = (
    1,
    "not signed: no record carries head_signature, but --public-key was given (the run had "
    "no --sign-key, or the signatures were removed)",
)


def test_an_unsigned_log_is_not_signed(tmp_path: Path, pair: tuple[Signer, Checker]) -> None:
    records = chain(None, "run_started", "batch", "run_finished")
    path = write(tmp_path / "a.jsonl", records[:2])
    second = write(tmp_path / "b.jsonl", records[2:])

    found = check_signatures([path, second], pair[1])

    assert reasons(found.errors) == [NOT_SIGNED]
    assert found.errors[0].path == path  # the first file, line 1
    assert (found.verified, found.warnings, found.unsigned_after) == (0, [], 3)


def test_a_signed_runs_run_finished_without_its_signature_is_forged(
    tmp_path: Path, pair: tuple[Signer, Checker]
) -> None:
    """A run_started that declares the key (or, in an older log, a sign_key among its
    settings): its run_finished must be signed. Another run's unsigned run_finished, in
    the same files, is no error."""
    signer, checker = pair
    signed = chain(signer, "run_started", "head_signed", "run_finished")
    del signed[2]["head_signature"]
    older = chain(None, "run_started", "run_finished", run_id="r2")
    older[0]["settings"] = {"sign_key": "/keys/a.key"}
    other = chain(None, "run_started", "run_finished", run_id="r3")
    path = write(tmp_path / "a.jsonl", [*signed, *older, *other])

    found = check_signatures([path], checker)

    forged = (
        "run_finished of run {} has no head_signature, but its run_started declares a signing "
        "key: a crash leaves no run_finished, so this one was forged or its signature removed"
    )
    assert reasons(found.errors) == [(3, forged.format("r1")), (5, forged.format("r2"))]
    assert found.verified == 1


def test_each_way_a_signed_record_can_be_wrong_is_named(
    tmp_path: Path, pair: tuple[Signer, Checker]
) -> None:
    signer, checker = pair
    records = chain(signer, "run_started", *["head_signed"] * 9, "run_finished")
    records[1]["event"] = "batch"  # a signature on a record the writer never signs
    records[2]["signing_key_id"] = "0123456789abcdef"
    records[3]["seq"] = 99  # changed after signing
    del records[4]["head_signature"]
    records[5]["signed_seq"] = 3
    records[5]["head_signature"] = signer.sign(records[5])
    records[6]["signed_hash"] = "f" * 64
    records[6]["head_signature"] = signer.sign(records[6])
    records[7]["signing_key_id"] = "f" * 16  # another key's id, sorting after ours
    records[8]["signed_hash"] = "0" * 64  # sorting before the hash it should be
    records[8]["head_signature"] = signer.sign(records[8])
    records[9]["signed_seq"] = 9  # itself
    records[9]["head_signature"] = signer.sign(records[9])
    records[10]["head_signature"] = "not hex"
    path = write(tmp_path / "a.jsonl", records)

    found = check_signatures([path], checker)

    assert reasons(found.errors) == [
        (2, "head_signature on a 'batch' record, which the writer never signs"),
        (3, f"signed by key '0123456789abcdef', not by the public key given ({signer.key_id})"),
        (4, "head_signature does not verify: the record was changed or the chain rebuilt"),
        (5, "head_signed has no head_signature: the signature was removed"),
        (6, "head_signed does not name the record before it"),
        (7, "head_signed does not name the record before it"),
        (8, f"signed by key 'ffffffffffffffff', not by the public key given ({signer.key_id})"),
        (9, "head_signed does not name the record before it"),
        (10, "head_signed does not name the record before it"),
        (11, "head_signature does not verify: the record was changed or the chain rebuilt"),
        NOT_SIGNED,
    ]
    assert (found.verified, found.last_signed) == (0, None)


def test_a_head_signed_without_a_whole_seq_does_not_name_the_record_before_it(
    tmp_path: Path, pair: tuple[Signer, Checker]
) -> None:
    signer, checker = pair
    records = chain(signer, "run_started", "head_signed")
    records[1]["seq"] = "1"
    records[1]["head_signature"] = signer.sign(records[1])
    path = write(tmp_path / "a.jsonl", records)

    assert reasons(check_signatures([path], checker).errors) == [
        (2, "head_signed does not name the record before it"),
        NOT_SIGNED,
    ]


def test_the_signature_covers_all_but_the_hash_and_the_heads(pair: tuple[Signer, Checker]) -> None:
    signer, checker = pair
    [record] = chain(signer, "run_finished")
    record |= {"hash": "changed", "head_hmac": "changed"}
    assert checker.verify(record)
    assert signed_bytes(record) == signed_bytes({**record, "head_signature": "x"})
    assert b"run_finished" in signed_bytes(record)
    record["run_id"] = "r2"
    assert not checker.verify(record)


def test_key_files_that_cannot_be_used_are_refused_naming_the_file(tmp_path: Path) -> None:
    private, public = new_key_pair()
    (tmp_path / "private.pem").write_bytes(private)
    (tmp_path / "public.pem").write_bytes(public)
    (tmp_path / "private.pem").chmod(0o600)
    cases = [
        (load_checker, tmp_path / "missing.pub", "public_key: cannot read {}: No such file"),
        (load_checker, tmp_path / "private.pem", "public_key: {} is not an Ed25519 public key"),
        (load_signer, tmp_path / "public.pem", "sign_key: {} is not an unencrypted Ed25519"),
        (load_signer, tmp_path / "missing.key", "sign_key: cannot read {}: No such file"),
    ]
    for load, path, said in cases:
        with pytest.raises(ConfigError) as refused:
            load(path)
        assert str(refused.value).startswith(said.format(path))
        assert refused.value.key == said.split(":")[0]


def test_a_head_signed_far_down_a_long_log_names_the_record_before_it(
    tmp_path: Path, pair: tuple[Signer, Checker]
) -> None:
    """Seq 300: numbers read from JSON compared by value, not by identity."""
    signer, checker = pair
    path = write(
        tmp_path / "a.jsonl", chain(signer, "run_started", *["batch"] * 299, "head_signed")
    )

    found = check_signatures([path], checker)

    assert (found.errors, found.verified, found.last_signed) == ([], 1, (path, 301, 300))


def test_a_signed_record_without_a_seq_is_reported_as_signed_at_seq_minus_1(
    tmp_path: Path, pair: tuple[Signer, Checker]
) -> None:
    """No seq (the chain check fails such a log): the last signed seq printed is -1, never
    a seq the log could hold."""
    signer, checker = pair
    record = {"event": "run_finished", "run_id": "r1", "signing_key_id": signer.key_id}
    record["head_signature"] = signer.sign(record)
    path = write(tmp_path / "a.jsonl", [record])

    assert check_signatures([path], checker).last_signed == (path, 1, -1)


def test_a_line_that_is_no_json_does_not_end_the_check_of_its_file(
    tmp_path: Path, pair: tuple[Signer, Checker]
) -> None:
    signer, checker = pair
    records = chain(signer, "run_started", "head_signed", "run_finished")
    records[2]["run_id"] = "changed after signing"
    path = write(tmp_path / "a.jsonl", records[:2], tail=b"not json\n[1, 2]\n")
    with path.open("ab") as handle:
        handle.write(orjson.dumps(records[2]) + b"\n")

    assert reasons(check_signatures([path], checker).errors) == [
        (5, "head_signature does not verify: the record was changed or the chain rebuilt")
    ]
