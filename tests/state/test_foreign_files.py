"""A state directory may hold files that are not the tool's (a --state-dir pointed at a
folder in use): a new generation, and ``--fresh``, remove only the bitmap files the tool
writes (``seen.7.bin``...), never another ``*.bin``."""

from __future__ import annotations

from pathlib import Path

from pyroaring import BitMap64

from worker.state.checkpoint import PARTS, Checkpoint, StateStore

FOREIGN = ["photos.bin", "seen.bin", "seen.x.bin", "failed.3.bin.bak", "backup.seen.2.bin"]


def test_generations_and_fresh_remove_only_the_tools_bitmap_files(tmp_path: Path) -> None:
    for name in FOREIGN:
        (tmp_path / name).write_bytes(name.encode())
    store = StateStore(tmp_path)

    store.save(Checkpoint("ids.csv", seen={42: BitMap64([1, 2])}))
    first = sorted(p.name for p in tmp_path.glob("*.1.bin"))
    store.save(Checkpoint("ids.csv", seen={42: BitMap64([1, 2, 3])}))

    assert first == [f"{part}.1.bin" for part in sorted(PARTS)]
    assert not any((tmp_path / name).exists() for name in first)
    assert sorted(p.name for p in tmp_path.glob("*.2.bin"))
    store.clear()

    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FOREIGN)
    assert all((tmp_path / name).read_bytes() == name.encode() for name in FOREIGN)
