"""Specification of worker.files (the one output policy) at its edges (issue #25: its
mutants showed what the end-to-end tests leave open): which outputs take ``-``, how much of
a file is read to recognise it, an input that is another file, names that sort before
``-``, durability by default, and ``mkdir -p`` over what exists. In process, no server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from worker import files
from worker.errors import UsageError
from worker.files import (
    AUDIT_LOG,
    EVIDENCE,
    FAILED_OUT,
    REPORT,
    RESULTS,
    RUN_SELECTION,
    SELECTION,
    check_outputs,
    file_to_write,
    make_dirs,
    output_path,
    write_atomic,
)

RESULTS_HEADER = (
    b"line,campaign_id,audience_id,outcome,reason,http_status,attempts,batch_id,run_id\n"
)


@pytest.mark.parametrize("kind", [REPORT, SELECTION, EVIDENCE])
def test_dash_is_stdout_for_the_report_the_selection_and_the_evidence_page(
    kind: files.Kind,
) -> None:
    assert output_path(Path("-"), kind) is None


@pytest.mark.parametrize("kind", [RESULTS, FAILED_OUT, RUN_SELECTION, AUDIT_LOG])
def test_dash_is_refused_for_every_other_output(kind: files.Kind) -> None:
    with pytest.raises(UsageError, match=f"^{kind.flag} - would write a file named -"):
        output_path(Path("-"), kind)


@pytest.mark.parametrize("name", ["+report.json", "#report.json", ",report.json"])
def test_a_name_that_sorts_before_dash_is_a_file_not_stdout(
    tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert output_path(Path(name), REPORT) == tmp_path / name
    check_outputs({}, {}, state_dir=Path(name))  # a state directory to create, not "-"


def audit_line(size: int) -> bytes:
    """A first line whose ``"run_id":"`` ends at byte ``size``: recognised only if that
    much of the file is read."""
    start, end = b'{"event":"x","pad":"', b'","run_id":"'
    return start + b"x" * (size - len(start) - len(end)) + end + b'r"}'


def test_a_file_is_recognised_from_its_first_64_kib_and_no_more(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(audit_line(1 << 16) + b"\n")
    assert file_to_write(path, AUDIT_LOG) == path

    path.write_bytes(audit_line((1 << 16) + 1) + b"\n")
    with pytest.raises(UsageError, match="is not an audit log the tool wrote"):
        file_to_write(path, AUDIT_LOG)


def test_an_output_that_is_another_file_than_the_inputs_is_written(tmp_path: Path) -> None:
    results = tmp_path / "results.csv"
    results.write_bytes(RESULTS_HEADER)
    other = tmp_path / "ids.csv"
    other.write_bytes(b"1\n")

    assert file_to_write(results, RESULTS, [other, tmp_path / "gone.csv"]) == results
    with pytest.raises(UsageError, match="is the same file as the input"):
        file_to_write(results, RESULTS, [other, results])


def test_a_file_is_opened_without_blocking_to_be_recognised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A FIFO put at the path after its check must not block the open (module docstring)."""
    path = tmp_path / "results.csv"
    path.write_bytes(RESULTS_HEADER)
    flags: list[int] = []
    real_open = os.open

    def spy(name: str | os.PathLike[str], how: int, *args: int) -> int:
        if Path(name) == path:
            flags.append(how)
        return real_open(name, how, *args)

    monkeypatch.setattr(os, "open", spy)
    file_to_write(path, RESULTS)

    assert flags
    assert all(how & os.O_NONBLOCK for how in flags)


def test_a_write_is_durable_unless_asked_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    write_atomic(tmp_path / "out.json", b"{}")

    assert len(synced) == 2
    assert Path(synced[0]).name.startswith(".out.json.")  # the temporary file, then
    assert synced[1] == str(tmp_path)  # the directory it was renamed in
    synced.clear()
    write_atomic(tmp_path / "out.json", b"{}", durable=False)
    assert synced == []


def test_make_dirs_leaves_what_exists_alone(tmp_path: Path) -> None:
    existing = tmp_path / "file"
    existing.write_bytes(b"")

    make_dirs(existing)  # mkdir -p of a path that exists does nothing, whatever it is
    make_dirs(tmp_path)
    make_dirs(tmp_path / "a" / "b")

    assert existing.is_file()
    assert (tmp_path / "a" / "b").is_dir()
    assert oct((tmp_path / "a").stat().st_mode & 0o777) == oct(0o700 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# -- recognising a file, through the policy ----------------------------------------------------


AUDIT_RECORD = b'{"event":"run_started","run_id":"r"}'


def test_an_audit_log_is_recognised_by_its_first_line_only(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(AUDIT_RECORD + b"\nnot a record\n")
    assert file_to_write(path, AUDIT_LOG) == path

    path.write_bytes(b'{"x":1}\n' + AUDIT_RECORD + b"\n")
    with pytest.raises(UsageError, match="is not an audit log the tool wrote"):
        file_to_write(path, AUDIT_LOG)


def test_a_report_replaces_a_report_and_nothing_else(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    path.write_bytes(b'{\n  "run_id": "r"}')
    assert output_path(path, REPORT) == path

    path.write_bytes(b'{"other": 1}')
    with pytest.raises(UsageError, match="is not a report the tool wrote"):
        output_path(path, REPORT)


def test_a_name_that_sorts_after_dash_is_a_file_not_stdout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert output_path(Path("report.json"), REPORT) == tmp_path / "report.json"


def test_an_output_is_compared_with_inputs_made_before_and_after_it(tmp_path: Path) -> None:
    before = tmp_path / "before.csv"
    before.write_bytes(b"1\n")
    results = tmp_path / "results.csv"
    results.write_bytes(RESULTS_HEADER)
    after = tmp_path / "after.csv"
    after.write_bytes(b"1\n")

    assert file_to_write(results, RESULTS, [before, after]) == results


def test_a_file_that_cannot_be_read_to_be_recognised_is_refused_saying_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "results.csv"
    path.write_bytes(RESULTS_HEADER)
    real_open = os.open

    def denied(name: str | os.PathLike[str], how: int, *args: int) -> int:
        if Path(name) == path:
            raise PermissionError(13, "Permission denied")
        return real_open(name, how, *args)

    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(UsageError, match=f"^cannot read the results file {path}: Permission"):
        file_to_write(path, RESULTS)


# -- the whole policy of one command -------------------------------------------------------------


def test_the_state_directory_must_be_a_directory_and_not_dash(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_bytes(b"")
    for bad in (Path("-"), afile):
        with pytest.raises(UsageError, match=f"^--state-dir {bad} is not a directory: name one"):
            check_outputs({}, {}, state_dir=bad)
    check_outputs({}, {}, state_dir=tmp_path)
    check_outputs({}, {}, state_dir=tmp_path / "new")


def test_every_output_of_a_command_is_checked(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"mine\n")
    with pytest.raises(UsageError, match="is not a results file the tool wrote"):
        check_outputs({}, {REPORT: None, RESULTS: notes})


def test_stdout_is_never_a_file_inside_the_state_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    check_outputs({}, {REPORT: Path("-")}, state_dir=tmp_path)


# -- writing ---------------------------------------------------------------------------------


def test_a_private_file_is_opened_non_blocking_then_made_blocking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "out.csv"
    flags: list[int] = []
    real_open = os.open

    def spy(name: str | os.PathLike[str], how: int, *args: int) -> int:
        flags.append(how)
        return real_open(name, how, *args)

    monkeypatch.setattr(os, "open", spy)
    with files.open_private(path, "w") as handle:
        assert os.get_blocking(handle.fileno())
        assert not os.get_inheritable(handle.fileno())
    assert flags
    assert flags[0] & os.O_NONBLOCK
    assert flags[0] & os.O_CREAT


def test_replacing_is_durable_by_default_and_leaves_nothing_on_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "out.json"
    path.write_bytes(b"before")
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with files.replacing(path) as handle:
        handle.write(b"after")
    assert path.read_bytes() == b"after"
    assert synced[-1] == str(tmp_path)
    assert len(synced) == 2

    with pytest.raises(ValueError, match="half way"):
        _write_half(path)
    assert path.read_bytes() == b"after"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_only_a_directory_is_synced_as_one(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_bytes(b"")
    files.sync_directory(tmp_path)
    with pytest.raises(NotADirectoryError):
        files.sync_directory(afile)


def _write_half(path: Path) -> None:
    with files.replacing(path) as handle:
        handle.write(b"half")
        raise ValueError("half way")
