"""Ed25519 signatures of the audit chain (issue #12): ``audit keygen``, ``--sign-key`` and
``audit verify --public-key``, against real runs on the sandbox and through the CLI."""

from __future__ import annotations

import signal
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import write_csv
from processes import eventually, finish, start
from pyroaring import BitMap64

from worker.cli import main
from worker.commands.run import run_purge
from worker.records.audit_query import record_hash
from worker.sandbox.runner import SandboxHandle
from worker.settings import Settings
from worker.settings.rate import RateSpec

Records = list[dict[str, Any]]


def keygen(prefix: Path) -> tuple[Path, Path]:
    assert main(["audit", "keygen", "--out", str(prefix)]) == 0
    return prefix.with_name(prefix.name + ".key"), prefix.with_name(prefix.name + ".pub")


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return keygen(tmp_path / "keys" / "audit")


def records_of(path: Path) -> Records:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def write_records(path: Path, records: Records) -> None:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))


def rechain(records: Records) -> Records:
    """What someone without the private key can do: renumber, relink and rehash every
    record (and make each head_signed name its new predecessor)."""
    prev = records[0]["prev_hash"]
    for seq, record in enumerate(records):
        record["seq"], record["prev_hash"] = seq, prev
        if record["event"] == "head_signed":
            record["signed_seq"], record["signed_hash"] = seq - 1, prev
        record["hash"] = record_hash(record)
        prev = record["hash"]
    return records


def verify(capsys: pytest.CaptureFixture[str], path: Path, *options: str) -> tuple[int, str, str]:
    code = main(["audit", "verify", *options, str(path)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
async def signed_log(
    make_settings: Callable[..., Settings], tmp_path: Path, keys: tuple[Path, Path]
) -> Path:
    """A finished run of 100 ids in about half a second, signed: head_signed at its
    checkpoints (every 0.05 s), then run_finished."""
    ids = write_csv(tmp_path / "ids.csv", ["audience_id", *map(str, range(1, 101))])
    settings = make_settings(
        campaign_id=42, sign_key=keys[0], checkpoint_interval=0.05, rate=RateSpec(20, 1.0)
    )
    result = await run_purge(settings, str(ids))
    assert result.exit_code == 0
    assert settings.audit_log is not None
    return settings.audit_log


# --- keygen --------------------------------------------------------------------------------


def test_keygen_writes_a_0600_private_key_and_a_public_key_and_says_how_to_use_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = tmp_path / "audit"
    code = main(["audit", "keygen", "--out", str(prefix)])

    out = capsys.readouterr().out
    private, public = tmp_path / "audit.key", tmp_path / "audit.pub"
    assert code == 0
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert private.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert str(private) in out
    assert str(public) in out
    assert f"--sign-key {private}" in out
    assert f"--public-key {public}" in out


@pytest.mark.parametrize("existing", ["audit.key", "audit.pub"])
def test_keygen_refuses_to_overwrite_a_key_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], existing: str
) -> None:
    (tmp_path / existing).write_bytes(b"keep me")

    code = main(["audit", "keygen", "--out", str(tmp_path / "audit")])

    assert code == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / existing).read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == [existing]


# --- signing a run -------------------------------------------------------------------------


def test_a_signed_run_signs_its_checkpoints_and_run_finished(
    signed_log: Path, keys: tuple[Path, Path]
) -> None:
    records = records_of(signed_log)
    finished = records[-1]
    heads = [r for r in records if r["event"] == "head_signed"]

    assert finished["event"] == "run_finished"
    assert "head_signature" in finished
    assert heads, "no checkpoint signed the chain head"
    key_ids = {r["signing_key_id"] for r in [*heads, finished]}
    assert len(key_ids) == 1
    assert len(key_ids.pop()) == 16
    for head in heads:
        before = records[head["seq"] - 1]
        assert (head["signed_seq"], head["signed_hash"]) == (before["seq"], before["hash"])
    signed = {r["event"] for r in records if "head_signature" in r}
    assert signed == {"head_signed", "run_finished"}


def test_verify_with_the_public_key_passes_and_reports_the_signed_heads(
    signed_log: Path, keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    records = records_of(signed_log)
    signed = sum("head_signature" in r for r in records)

    code, out, _ = verify(capsys, signed_log, "--public-key", str(keys[1]))

    assert code == 0, out
    assert out.startswith("OK: ")
    assert f"{signed} Ed25519 signature(s) verified" in out
    assert f"last signed seq {records[-1]['seq']} ({signed_log}:{len(records)})" in out
    assert "WARNING" not in out

    code, out, _ = verify(capsys, signed_log, "--public-key", str(keys[1]), "--json")
    document = orjson.loads(out)
    assert code == 0
    assert document["ok"] is True
    assert document["signatures"]["verified"] == signed
    assert document["signatures"]["unsigned_after"] == 0
    assert document["signatures"]["last_signed"] == {
        "file": str(signed_log),
        "line": len(records),
        "seq": records[-1]["seq"],
    }


def test_verify_without_the_public_key_works_as_before(
    signed_log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = verify(capsys, signed_log)

    assert code == 0, out
    assert "Ed25519" not in out
    code, out, _ = verify(capsys, signed_log, "--json")
    assert orjson.loads(out)["signatures"] is None


def test_a_changed_byte_in_a_signed_record_fails_naming_it(
    signed_log: Path, keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    records = records_of(signed_log)
    # The last record, rehashed: the chain alone no longer tells.
    records[-1]["exit_code"] = 1
    records[-1]["hash"] = record_hash(records[-1])
    write_records(signed_log, records)
    assert verify(capsys, signed_log)[0] == 0

    code, out, _ = verify(capsys, signed_log, "--public-key", str(keys[1]))

    assert code == 1
    assert f"TAMPERED: {signed_log}:{len(records)}: head_signature does not verify" in out


def test_another_key_pairs_public_key_fails(
    signed_log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, other_public = keygen(tmp_path / "other")

    code, out, _ = verify(capsys, signed_log, "--public-key", str(other_public))

    assert code == 1
    assert "TAMPERED: " in out
    assert "not by the public key given" in out


def test_another_key_pairs_public_key_fails_even_under_the_same_key_id(
    signed_log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The key id only names a key: the signature itself is checked."""
    _, other_public = keygen(tmp_path / "other")
    capsys.readouterr()
    main(["audit", "verify", "--public-key", str(other_public), "--json", str(signed_log)])
    other_id = orjson.loads(capsys.readouterr().out)["signatures"]["key_id"]
    records = records_of(signed_log)
    for record in records:
        if "signing_key_id" in record:
            record["signing_key_id"] = other_id
    write_records(signed_log, rechain(records))

    code, out, _ = verify(capsys, signed_log, "--public-key", str(other_public))

    assert code == 1
    assert "head_signature does not verify" in out


def test_a_chain_rebuilt_without_the_private_key_fails(
    signed_log: Path, keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    records = records_of(signed_log)
    deleted = next(r for r in records if r["event"] == "deleted")
    deleted["audience_ids"][0] = 999_999  # an id that was never erased, claimed as erased
    write_records(signed_log, rechain(records))
    assert verify(capsys, signed_log)[0] == 0  # the hash chain alone is fooled

    code, out, _ = verify(capsys, signed_log, "--public-key", str(keys[1]))

    assert code == 1
    assert "head_signature does not verify: the record was changed or the chain rebuilt" in out


def test_a_chain_rebuilt_with_the_signatures_stripped_is_not_signed(
    signed_log: Path, keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    records = [r for r in records_of(signed_log) if r["event"] != "head_signed"]
    for record in records:
        record.pop("head_signature", None)
        record.pop("signing_key_id", None)
    write_records(signed_log, rechain(records))
    assert verify(capsys, signed_log)[0] == 0

    code, out, _ = verify(capsys, signed_log, "--public-key", str(keys[1]))

    assert code == 1
    assert f"TAMPERED: {signed_log}:1: not signed" in out


def test_a_head_signed_record_without_its_signature_fails(
    signed_log: Path, keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    records = records_of(signed_log)
    head = next(r for r in records if r["event"] == "head_signed")
    del head["head_signature"]
    write_records(signed_log, rechain(records))

    code, out, _ = verify(capsys, signed_log, "--public-key", str(keys[1]))

    assert code == 1
    assert f":{head['seq'] + 1}: head_signed has no head_signature" in out


async def test_an_unsigned_log_given_a_public_key_is_not_signed(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    keys: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    ids = write_csv(tmp_path / "ids.csv", ["audience_id", "5", "6"])
    settings = make_settings(campaign_id=42)
    assert (await run_purge(settings, str(ids))).exit_code == 0
    assert settings.audit_log is not None
    assert not any("head_signature" in r for r in records_of(settings.audit_log))

    code, out, _ = verify(capsys, settings.audit_log, "--public-key", str(keys[1]))

    assert code == 1
    assert "not signed" in out


# --- bad keys --------------------------------------------------------------------------------


SECRET = b"HMAC-SECRET-0123456789-do-not-print"


@pytest.mark.parametrize("content", ["garbage", "public", "missing"])
async def test_a_bad_sign_key_exits_2_without_printing_key_material(
    sandbox: SandboxHandle, token: str, tmp_path: Path, keys: tuple[Path, Path], content: str
) -> None:
    bad = tmp_path / "bad.key"
    if content == "garbage":
        bad.write_bytes(
            b"-----BEGIN PRIVATE KEY-----\n" + SECRET + b"\n-----END PRIVATE KEY-----\n"
        )
    elif content == "public":
        bad.write_bytes(keys[1].read_bytes())
    write_csv(tmp_path / "ids.csv", ["5", "6"])

    proc = await start(
        *("run", "--input", "ids.csv", "--campaign-id", "42", "--base-url", sandbox.url),
        *("--sign-key", str(bad), "--progress", "off"),
        cwd=tmp_path,
        token=token,
    )
    done = await finish(proc)

    assert done.code == 2, done.err
    assert "sign_key" in done.err
    assert str(bad) in done.err
    assert "Traceback" not in done.err
    assert SECRET.decode() not in done.err + done.out
    if content == "public":
        assert "BEGIN PUBLIC KEY" not in done.err
        assert keys[1].read_text().splitlines()[1] not in done.err
    assert sandbox.state.campaigns[42].deleted_count == 0  # refused before anything was sent


# --- a crash -----------------------------------------------------------------------------------


async def test_a_run_killed_after_a_checkpoint_is_signed_up_to_it(
    sandbox: SandboxHandle,
    token: str,
    tmp_path: Path,
    keys: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    write_csv(tmp_path / "ids.csv", [str(i) for i in range(1, 501)])
    (tmp_path / "purge.toml").write_text("checkpoint_interval = 0.3\n", encoding="utf-8")
    proc = await start(
        *("run", "--input", "ids.csv", "--campaign-id", "42", "--base-url", sandbox.url),
        *("--config", "purge.toml", "--rate", "40/second", "--batch-size", "5"),
        *("--sign-key", str(keys[0]), "--progress", "off"),
        cwd=tmp_path,
        token=token,
    )

    def log() -> Records:
        files = list((tmp_path / "purge-audit").glob("*.jsonl"))
        if not files:
            return []
        return [
            orjson.loads(line)
            for line in files[0].read_bytes().splitlines(keepends=True)
            if line.endswith(b"\n")
        ]

    def deleted_after_a_signed_head() -> bool:
        records = log()
        heads = [i for i, r in enumerate(records) if r["event"] == "head_signed"]
        return bool(heads) and any(r["event"] == "deleted" for r in records[heads[0] :])

    try:
        await eventually(deleted_after_a_signed_head, poll=0.01, what="a signed checkpoint")
    finally:
        proc.send_signal(signal.SIGKILL)
    assert (await finish(proc)).code == -signal.SIGKILL

    (path,) = (tmp_path / "purge-audit").glob("*.jsonl")
    records = log()
    assert not any(r["event"] == "run_finished" for r in records)
    last_signed = max(i for i, r in enumerate(records) if r["event"] == "head_signed")
    unsigned = len(records) - 1 - last_signed

    code, out, _ = verify(capsys, path, "--public-key", str(keys[1]))

    assert code == 0, out
    assert f"last signed seq {records[last_signed]['seq']}" in out
    if unsigned:  # the kill may fall right after a checkpoint
        assert f"{unsigned} records after the last signed head: unsigned" in out
        assert f"WARNING: {path}:{last_signed + 2}: " in out
        assert out.splitlines()[-1].startswith("OK with warnings: ")


async def test_hmac_and_ed25519_together_each_verify(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    keys: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """head_hmac and head_signature cover the same bytes, neither the other."""
    hmac_key = tmp_path / "hmac.key"
    hmac_key.write_bytes(b"auditor-key-0123456789")
    ids = write_csv(tmp_path / "ids.csv", ["audience_id", "5", "6"])
    settings = make_settings(campaign_id=42, sign_key=keys[0], audit_key_file=hmac_key)
    assert (await run_purge(settings, str(ids))).exit_code == 0
    assert settings.audit_log is not None
    finished = records_of(settings.audit_log)[-1]
    assert {"head_hmac", "head_signature", "signing_key_id"} <= finished.keys()

    code, out, _ = verify(
        capsys,
        settings.audit_log,
        *("--audit-key-file", str(hmac_key), "--public-key", str(keys[1])),
    )

    assert code == 0, out
    assert "1 signed head(s) checked" in out
    assert "Ed25519 signature(s) verified" in out


# --- signed to the end ---------------------------------------------------------------------

NEVER_SENT = 4242  # not among the run's ids


def cut_after_the_first_signed_head(path: Path, *, finished: bool) -> Records:
    """What someone without the private key can make of a signed log: its records up to
    the first head_signed (signed, untouched), then a forged ``deleted`` record of an id
    never sent and, if ``finished``, an unsigned copy of run_finished; the plain hash chain
    rebuilt over it all. The records written."""
    records = records_of(path)
    first_head = next(i for i, r in enumerate(records) if r["event"] == "head_signed")
    template = next(r for r in records if r["event"] == "deleted")
    forged = [{**template, "audience_ids": [NEVER_SENT]}]
    if finished:
        unsigned = {k: v for k, v in records[-1].items() if k != "head_signature"}
        forged.append(unsigned)
    kept = rechain(records[: first_head + 1] + forged)
    write_records(path, kept)
    return kept


def test_a_run_started_of_a_signed_run_declares_its_signing_key(
    signed_log: Path, keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    records = records_of(signed_log)
    finished = records[-1]
    assert records[0]["event"] == "run_started"
    assert records[0]["signing_key_id"] == finished["signing_key_id"]


def test_an_unsigned_run_finished_in_a_signed_run_is_tampered(
    signed_log: Path, keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    records = cut_after_the_first_signed_head(signed_log, finished=True)
    assert verify(capsys, signed_log)[0] == 0  # the hash chain alone is fooled

    code, out, _ = verify(capsys, signed_log, "--public-key", str(keys[1]))

    run_id = records[0]["run_id"]
    assert code == 1, out
    assert (
        f"TAMPERED: {signed_log}:{len(records)}: run_finished of run {run_id} has no "
        "head_signature, but its run_started declares a signing key"
    ) in out


def test_an_unsigned_run_finished_is_tampered_in_a_log_declaring_the_key_in_its_settings(
    signed_log: Path, keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Logs written before run_started carried signing_key_id name --sign-key in their
    settings: that declares the run signed too."""
    records = records_of(signed_log)
    del records[0]["signing_key_id"]
    write_records(signed_log, rechain(records))
    cut_after_the_first_signed_head(signed_log, finished=True)

    code, out, _ = verify(capsys, signed_log, "--public-key", str(keys[1]))

    assert code == 1, out
    assert "has no head_signature, but its run_started declares a signing key" in out


def test_a_forged_tail_without_run_finished_is_a_crash_but_find_calls_it_unsigned(
    signed_log: Path, keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    records = cut_after_the_first_signed_head(signed_log, finished=False)
    line = len(records)

    code, out, _ = verify(capsys, signed_log, "--public-key", str(keys[1]))
    assert code == 0, out  # what a crash between checkpoints leaves
    assert f"WARNING: {signed_log}:{line}: 1 records after the last signed head" in out

    assert main(["audit", "find", str(NEVER_SENT), str(signed_log)]) == 0
    found = capsys.readouterr().out
    assert "was erased" not in found
    assert f"{signed_log}:{line}  " in found
    assert found.splitlines()[0].endswith("  UNSIGNED")
    assert found.splitlines()[-1] == (
        f"=> audience id {NEVER_SENT}: erased only by an unsigned record ({signed_log}:{line}, "
        f"run {records[0]['run_id']}): its run signs its heads, but no signature covers this "
        "record (a crash between checkpoints, or added later); not proven"
    )
    assert main(["audit", "find", "--json", str(NEVER_SENT), str(signed_log)]) == 0
    assert orjson.loads(capsys.readouterr().out)["unsigned"] is True


def test_find_says_erased_for_an_id_a_signature_covers(
    signed_log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    covered = next(r for r in records_of(signed_log) if r["event"] == "deleted")
    audience_id = covered["audience_ids"][0]

    assert main(["audit", "find", str(audience_id), str(signed_log)]) == 0

    out = capsys.readouterr().out
    assert f"=> audience id {audience_id} was erased" in out
    assert "UNSIGNED" not in out


def test_summary_names_the_unsigned_records_of_a_signed_run(
    signed_log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = cut_after_the_first_signed_head(signed_log, finished=False)

    assert main(["audit", "summary", str(signed_log)]) == 0
    out = capsys.readouterr().out
    assert main(["audit", "summary", "--json", str(signed_log)]) == 0
    data = orjson.loads(capsys.readouterr().out)

    line = len(records)
    assert out.splitlines()[0] == (
        f"WARNING: {signed_log}:{line}: 1 record(s) of run {records[0]['run_id']} after its "
        "last signed head are unsigned (its run_started declares a signing key): a crash "
        "between checkpoints, or records added later; no signature vouches for what they say"
    )
    assert data["unsigned"] == [
        {"file": str(signed_log), "lines": str(line), "run_id": records[0]["run_id"], "records": 1}
    ]
    assert main(["audit", "verify", "--json", str(signed_log)]) == 0
    assert orjson.loads(capsys.readouterr().out)["unsigned"] == data["unsigned"]


def test_summary_of_a_signed_run_to_its_end_names_nothing_unsigned(
    signed_log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["audit", "summary", "--json", str(signed_log)]) == 0
    assert orjson.loads(capsys.readouterr().out)["unsigned"] == []


def test_a_killed_runs_log_changed_before_its_last_head_signed_and_rechained_fails(
    signed_log: Path, keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A killed run's last signature is a head_signed: it alone vouches for the records
    before it, so its signature is checked, not only run_finished's."""
    records = records_of(signed_log)[:-1]  # killed: no run_finished
    last_head = max(i for i, r in enumerate(records) if r["event"] == "head_signed")
    records = records[: last_head + 1]
    deleted = next(r for r in records if r["event"] == "deleted")
    deleted["audience_ids"][0] = NEVER_SENT
    write_records(signed_log, rechain(records))
    assert verify(capsys, signed_log)[0] == 0  # the hash chain alone is fooled

    code, out, _ = verify(capsys, signed_log, "--public-key", str(keys[1]))

    assert code == 1, out
    assert (
        f"TAMPERED: {signed_log}:{last_head + 1}: head_signature does not verify: the record "
        "was changed or the chain rebuilt"
    ) in out


def page(tmp_path: Path, log: Path, public: Path) -> str:
    out = tmp_path / "page.html"
    assert main(["audit", "report", "--html", str(out), "--public-key", str(public), str(log)]) == 0
    return out.read_text()


def test_the_evidence_page_of_a_forged_unsigned_run_finished_is_not_verified(
    signed_log: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    cut_after_the_first_signed_head(signed_log, finished=True)

    shown = page(tmp_path, signed_log, keys[1])

    assert "Verdict: TAMPERED" in shown
    assert "Ed25519 signatures: NOT verified" in shown
    assert "signatures: verified" not in shown


def test_the_evidence_page_names_the_unsigned_records_of_a_crashed_signed_run(
    signed_log: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    from worker.records.evidence import figures

    records = cut_after_the_first_signed_head(signed_log, finished=False)

    shown = page(tmp_path, signed_log, keys[1])

    assert "Verdict: OK with warnings" in shown
    assert "Ed25519 signatures: partly verified" in shown
    assert (
        f"<li>run {records[0]['run_id']}: 1 record(s) after its last signed head are unsigned"
    ) in shown
    assert figures(records).unsigned_ids == {42: BitMap64([NEVER_SENT])}


def test_the_evidence_page_of_a_run_signed_to_its_end_is_verified(
    signed_log: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    shown = page(tmp_path, signed_log, keys[1])

    assert "Ed25519 signatures: verified" in shown
    assert 'id="unsigned"' not in shown
