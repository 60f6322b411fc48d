"""A private signing key that group or others may read is refused, as ssh refuses one: anyone
who can read it can sign a forged audit log."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.errors import ConfigError
from worker.records.signing import load_signer, new_key_pair


def key_file(tmp_path: Path, mode: int) -> Path:
    path = tmp_path / "audit.key"
    path.write_bytes(new_key_pair()[0])
    path.chmod(mode)
    return path


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602, 0o660])
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
