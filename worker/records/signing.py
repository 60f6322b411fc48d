"""Ed25519 signatures of the audit chain's heads (``--sign-key``, ``audit verify --public-key``).

The run holds the private key; the auditor holds only the public key, so that whoever checks
a log cannot also forge one (unlike the HMAC of ``--audit-key-file``, whose key both signs
and checks). A signature covers the same bytes as ``head_hmac``: the record's canonical JSON
without ``hash``, ``head_hmac`` and ``head_signature`` (see :func:`signed_bytes`), and so,
through ``prev_hash``, every record before it. It is written as ``head_signature`` (hex),
with ``signing_key_id``: the first 16 hex digits of the SHA-256 of the raw public key.

Imported only when a key is given: ``cryptography`` stays out of ``--help`` and of runs
without ``--sign-key``.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from worker.errors import ConfigError
from worker.records.audit_query import Problem, canonical, declares_key

UNSIGNED = ("hash", "head_hmac", "head_signature")


def signed_bytes(record: dict[str, Any]) -> bytes:
    """What ``head_signature`` covers: the record without ``hash``, ``head_hmac`` and itself."""
    return canonical({k: v for k, v in record.items() if k not in UNSIGNED})


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


class Signer:
    """A private key that signs chain heads."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.key_id = key_id(private.public_key())

    def sign(self, record: dict[str, Any]) -> str:
        return self._private.sign(signed_bytes(record)).hex()


def new_key_pair() -> tuple[bytes, bytes]:
    """(PKCS8 PEM private key, SubjectPublicKeyInfo PEM public key)."""
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem, public


def _read(path: Path, setting: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", key=setting) from None


def load_signer(path: Path) -> Signer:
    """The Ed25519 private key of ``path`` (PEM, PKCS8); errors name the file, never its bytes.

    Like ssh, a key file of this user that group or others may read or write is refused:
    whoever else can read it can sign a forged log."""
    try:
        with path.open("rb") as handle:
            data, mode, owner = handle.read(), *_mode_and_owner(handle.fileno())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", key="sign_key") from None
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        private = None
    if not isinstance(private, Ed25519PrivateKey):
        raise ConfigError(
            f"{path} is not an unencrypted Ed25519 private key in PEM (PKCS8): make one with "
            "`audience-purge audit keygen --out PREFIX`",
            key="sign_key",
        )
    if owner == os.getuid() and mode & 0o077:
        raise ConfigError(
            f"{path} is a private key that group or others may access (mode {mode:04o}): "
            f"make it private to you (chmod 600 {path})",
            key="sign_key",
        )
    return Signer(private)


def _mode_and_owner(fd: int) -> tuple[int, int]:
    info = os.fstat(fd)
    return stat.S_IMODE(info.st_mode), info.st_uid


class Checker:
    """A public key that checks chain heads."""

    def __init__(self, public: Ed25519PublicKey) -> None:
        self._public = public
        self.key_id = key_id(public)

    def verify(self, record: dict[str, Any]) -> bool:
        try:
            signature = bytes.fromhex(str(record.get("head_signature")))
            self._public.verify(signature, signed_bytes(record))
        except (ValueError, InvalidSignature):
            return False
        return True


def load_checker(path: Path) -> Checker:
    """The Ed25519 public key of ``path`` (PEM); a usage error (exit 2) otherwise."""
    data = _read(path, "public_key")
    try:
        public = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        public = None
    if not isinstance(public, Ed25519PublicKey):
        raise ConfigError(f"{path} is not an Ed25519 public key in PEM", key="public_key")
    return Checker(public)


@dataclass(slots=True)
class SignatureCheck:
    """What ``audit verify --public-key`` found of the signatures, over files in chain order."""

    key_id: str
    verified: int = 0
    last_signed: tuple[Path, int, int] | None = None  # file, line, seq
    unsigned_after: int = 0  # complete records after the last signed one
    first_unsigned: tuple[Path, int] | None = None
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)


def check_signatures(paths: list[Path], checker: Checker) -> SignatureCheck:
    """Every ``run_finished`` and ``head_signed`` that carries ``head_signature`` must verify
    under ``checker``'s key (a ``head_signed`` must carry one, and name the record before
    it); records after the last signed one are a warning, a log with no signature an error.

    A run whose ``run_started`` declares a signing key signs its ``run_finished``: one
    without a signature is no crash's (a crash leaves no ``run_finished``), so it is an
    error, as an unsigned ``head_signed`` is."""
    found = SignatureCheck(checker.key_id)
    signing: set[str] = set()
    for path in paths:
        for number, line in enumerate(path.read_bytes().splitlines(), start=1):
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # a torn line: the chain check says what it is
            if not isinstance(record, dict):
                continue
            if record.get("event") == "run_started" and declares_key(record):
                signing.add(str(record.get("run_id")))
            reason = _signature_problem(record, checker, signing)
            if reason is not None:
                found.errors.append(Problem(path, number, reason))
            elif "head_signature" in record:
                found.verified += 1
                found.last_signed = (path, number, int(record.get("seq", -1)))
                found.unsigned_after, found.first_unsigned = 0, None
                continue
            found.unsigned_after += 1
            if found.first_unsigned is None:
                found.first_unsigned = (path, number)
    if found.last_signed is None:
        found.errors.append(
            Problem(
                paths[0],
                1,
                "not signed: no record carries head_signature, but --public-key was given "
                "(the run had no --sign-key, or the signatures were removed)",
            )
        )
    elif found.unsigned_after and found.first_unsigned is not None:
        path, number = found.first_unsigned
        found.warnings.append(
            Problem(
                path,
                number,
                f"{found.unsigned_after} records after the last signed head: unsigned (a run "
                "killed after its last checkpoint, or one without --sign-key; or removed "
                "records: whoever edits the file can change these)",
            )
        )
    return found


def _signature_problem(record: dict[str, Any], checker: Checker, signing: set[str]) -> str | None:
    event = record.get("event")
    if "head_signature" not in record:
        if event == "head_signed":
            return "head_signed has no head_signature: the signature was removed"
        if event == "run_finished" and record.get("run_id") in signing:
            return (
                f"run_finished of run {record.get('run_id')} has no head_signature, but its "
                "run_started declares a signing key: a crash leaves no run_finished, so this "
                "one was forged or its signature removed"
            )
        return None
    if event not in ("run_finished", "head_signed"):
        return f"head_signature on a {event!r} record, which the writer never signs"
    if record.get("signing_key_id") != checker.key_id:
        return (
            f"signed by key {record.get('signing_key_id')!r}, not by the public key given "
            f"({checker.key_id})"
        )
    if not checker.verify(record):
        return "head_signature does not verify: the record was changed or the chain rebuilt"
    seq = record.get("seq")
    if event == "head_signed" and (
        not isinstance(seq, int)
        or record.get("signed_seq") != seq - 1
        or record.get("signed_hash") != record.get("prev_hash")
    ):
        return "head_signed does not name the record before it"
    return None
