"""A private signing key that group or others may read is refused, as ssh refuses one: anyone
who can read it can sign a forged audit log."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.errors import ConfigError
from worker.records import signing
from worker.records.signing import load_signer, new_key_pair


def key_file(tmp_path: Path, mode: int) -> Path:
    path = tmp_path / "audit.key"
    path.write_bytes(new_key_pair()[0])
    path.chmod(mode)
    return path


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602, 0o660, 0o601, 0o610])
def test_a_key_group_or_others_may_access_is_refused(tmp_path: Path, mode: int) -> None:
    path = key_file(tmp_path, mode)

    with pytest.raises(ConfigError) as refused:
        load_signer(path)

    assert refused.value.key == "sign_key"
    assert str(refused.value) == (
        f"sign_key: {path} is a private key that group or others may access (mode {mode:04o}): "
        f"make it private to you (chmod 600 {path})"
    )


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_a_key_private_to_its_owner_is_loaded(tmp_path: Path, mode: int) -> None:
    assert len(load_signer(key_file(tmp_path, mode)).key_id) == 16


def uid(number: int) -> int:
    """``number`` as a new int object, as each read of a uid gives one (above 256, two equal
    uids are not the same object)."""
    return int(str(number))


def test_the_owner_is_compared_by_value_for_a_uid_above_256(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(signing.os, "getuid", lambda: uid(70_000))
    monkeypatch.setattr(signing, "_mode_and_owner", lambda fd: (0o640, uid(70_000)))

    with pytest.raises(ConfigError, match="group or others may access"):
        load_signer(key_file(tmp_path, 0o600))


@pytest.mark.parametrize("owner", [0, 70_001])
def test_a_key_of_another_user_is_not_judged_by_its_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, owner: int
) -> None:
    """Another user's key (root's, or a uid above ours), readable by a group, used by uid
    70,000: only this user's own loose key is refused."""
    monkeypatch.setattr(signing.os, "getuid", lambda: uid(70_000))
    monkeypatch.setattr(signing, "_mode_and_owner", lambda fd: (0o640, owner))

    assert len(load_signer(key_file(tmp_path, 0o600)).key_id) == 16
