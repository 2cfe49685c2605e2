"""hmfusion.apps.outputs: output directories and files that appear whole or not at all."""

from __future__ import annotations

import errno
import os

import pytest

from hmfusion.apps.outputs import OutputDirectory, OutputFile, UsageError


# OutputDirectory ------------------------------------------------------------------------------
def test_output_directory_appears_only_on_commit(tmp_path):
    target = tmp_path / "new" / "out"
    output = OutputDirectory(target)
    staging = output.open()
    (staging / "a.txt").write_text("a")
    assert not target.exists() and staging.parent == target.parent
    output.commit()
    assert (target / "a.txt").read_text() == "a"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out"]


def test_output_directory_refuses_another_runs_files(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old")
    with pytest.raises(UsageError, match="already holds files .* --overwrite"):
        OutputDirectory(tmp_path / "out")
    OutputDirectory(tmp_path / "empty")  # absent is fine
    (tmp_path / "empty").mkdir()
    OutputDirectory(tmp_path / "empty")  # empty is fine


def test_overwrite_replaces_the_directory_whole(tmp_path):
    (tmp_path / "out" / "checkpoints").mkdir(parents=True)
    (tmp_path / "out" / "checkpoints" / "stale.pt").write_text("stale")
    output = OutputDirectory(tmp_path / "out", overwrite=True)
    (output.open() / "new.txt").write_text("new")
    assert (tmp_path / "out" / "checkpoints" / "stale.pt").exists()  # until commit
    output.commit()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_discard_leaves_nothing_it_created(tmp_path):
    output = OutputDirectory(tmp_path / "a" / "b" / "out")
    (output.open() / "x").write_text("x")
    output.discard()
    assert list(tmp_path.iterdir()) == []


def test_context_manager_discards_on_error(tmp_path):
    with pytest.raises(RuntimeError), OutputDirectory(tmp_path / "out") as staging:
        (staging / "x").write_text("x")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case", ["a file", "under a file", "not writable"])
def test_unusable_output_directory(tmp_path, case, monkeypatch):
    (tmp_path / "f").write_text("x")
    target = {
        "a file": tmp_path / "f",
        "under a file": tmp_path / "f" / "out",
        "not writable": tmp_path / "ro" / "out",
    }[case]
    if case == "not writable":
        (tmp_path / "ro").mkdir()
        real = os.access
        monkeypatch.setattr(
            os,
            "access",
            lambda path, mode: False if str(path) == str(tmp_path / "ro") else real(path, mode),
        )
    message = {
        "a file": "exists and is not a directory",
        "under a file": "is a file, not a directory",
        "not writable": "is not writable",
    }[case]
    with pytest.raises(UsageError, match=message):
        OutputDirectory(target)


def test_a_full_disk_shows_when_the_directory_is_opened(tmp_path, monkeypatch):
    from pathlib import Path

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    output = OutputDirectory(tmp_path / "out")
    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(OSError, match="No space left"):
        output.open()
    assert list(tmp_path.iterdir()) == []


# OutputFile -----------------------------------------------------------------------------------
def test_output_file_replaces_only_with_overwrite(tmp_path):
    target = tmp_path / "p.csv"
    OutputFile(target).write("one\n")
    assert target.read_text() == "one\n"
    with pytest.raises(UsageError, match="already exists; pass --overwrite"):
        OutputFile(target)
    OutputFile(target, overwrite=True).write("two\n")
    assert target.read_text() == "two\n" and [p.name for p in tmp_path.iterdir()] == ["p.csv"]


@pytest.mark.parametrize(
    "case, message", [("dir", "is a directory"), ("under a file", "is a file, not a directory")]
)
def test_unusable_output_file(tmp_path, case, message):
    (tmp_path / "f").write_text("x")
    target = tmp_path if case == "dir" else tmp_path / "f" / "p.csv"
    with pytest.raises(UsageError, match=message):
        OutputFile(target)


def test_output_file_failing_write_leaves_nothing(tmp_path, monkeypatch):
    def full(source, destination):
        raise OSError(errno.ENOSPC, "No space left on device", str(destination))

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OSError):
        OutputFile(tmp_path / "sub" / "p.csv").write("x\n")
    assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_only_an_output_of_the_command(tmp_path, monkeypatch):
    """`--out . --overwrite` must not be able to delete a project."""
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "code.py").write_text("x = 1\n")
    with pytest.raises(UsageError, match="holds files but no results.json"):
        OutputDirectory(project, overwrite=True, marker="results.json")
    monkeypatch.chdir(project / "src")
    for path in (".", "..", str(project)):
        with pytest.raises(UsageError, match="is the working directory or holds it"):
            OutputDirectory(path, overwrite=True)
    (project / "run").mkdir()
    (project / "run" / "results.json").write_text("{}")
    OutputDirectory(project / "run", overwrite=True, marker="results.json")
    assert (project / "src" / "code.py").is_file()
