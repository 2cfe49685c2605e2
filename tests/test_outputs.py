"""hmfusion.apps.outputs: output directories and files that appear whole or not at all."""

from __future__ import annotations

import errno
import os

import pytest

from hmfusion.apps.outputs import MANIFEST, OutputDirectory, OutputFile, UsageError


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


def earlier_run(path, files=None):
    """An output directory as a command writes it (with its manifest)."""
    output = OutputDirectory(path)
    staging = output.open()
    for name, text in (files or {"checkpoints/stale.pt": "stale", "results.json": "{}"}).items():
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        (staging / name).write_text(text)
    return output.commit()


def test_overwrite_replaces_the_directory_whole(tmp_path):
    earlier_run(tmp_path / "out")
    output = OutputDirectory(tmp_path / "out", overwrite=True)
    (output.open() / "new.txt").write_text("new")
    assert (tmp_path / "out" / "checkpoints" / "stale.pt").exists()  # until commit
    output.commit()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [MANIFEST, "new.txt"]
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
    with pytest.raises(UsageError, match="holds no .hmfusion-manifest.json"):
        OutputDirectory(project, overwrite=True)
    monkeypatch.chdir(project / "src")
    for path in (".", "..", str(project)):
        with pytest.raises(UsageError, match="is the working directory or holds it"):
            OutputDirectory(path, overwrite=True)
    earlier_run(project / "run")
    OutputDirectory(project / "run", overwrite=True)
    assert (project / "src" / "code.py").is_file()


# issue 21: --overwrite deletes only what hmfusion wrote ----------------------------------------
def home_like(folder):
    folder.mkdir()
    (folder / ".bashrc").write_text("export PATH\n")
    (folder / "thesis.tex").write_text("\\documentclass{article}\n")
    (folder / "code").mkdir()
    (folder / "code" / "main.py").write_text("print()\n")
    return folder


def test_overwrite_refuses_a_folder_with_a_hand_written_results_json(tmp_path):
    # Issue 21, case 1: a home-like folder holding a results.json was deleted whole.
    home = home_like(tmp_path / "home")
    (home / "results.json").write_text("{}")
    with pytest.raises(UsageError, match="holds no .hmfusion-manifest.json"):
        OutputDirectory(home, overwrite=True)
    assert (home / "thesis.tex").is_file() and (home / "code" / "main.py").is_file()


def test_overwrite_refuses_a_results_json_that_is_a_symlink(tmp_path):
    # Issue 21, case 1: ... and so was one whose results.json is a symlink to another file.
    home = home_like(tmp_path / "home")
    (tmp_path / "elsewhere.json").write_text("{}")
    (home / "results.json").symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(UsageError, match="--overwrite replaces only a folder hmfusion wrote"):
        OutputDirectory(home, overwrite=True)
    assert (home / ".bashrc").is_file() and (tmp_path / "elsewhere.json").is_file()


@pytest.mark.parametrize("change", ["added file", "edited file", "symlink", "manifest swapped"])
def test_overwrite_checks_every_entry_against_the_manifest(tmp_path, change):
    out = earlier_run(tmp_path / "out")
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "data.csv").write_text("1,2\n")
    if change == "added file":
        (out / "checkpoints" / "notes.txt").write_text("mine")
    elif change == "edited file":
        (out / "results.json").write_text('{"edited": true}')
    elif change == "symlink":  # a link out of the folder must never be followed
        (out / "checkpoints" / "data").symlink_to(tmp_path / "precious")
    else:  # another run's manifest copied in does not vouch for these files
        other = earlier_run(tmp_path / "other", {"a.txt": "a"})
        (out / MANIFEST).write_bytes((other / MANIFEST).read_bytes())
    with pytest.raises(UsageError, match="--overwrite replaces only a folder hmfusion wrote"):
        OutputDirectory(out, overwrite=True)
    assert (tmp_path / "precious" / "data.csv").read_text() == "1,2\n"
    assert (out / "results.json").exists()


def test_overwrite_refuses_a_symlinked_out(tmp_path):
    earlier_run(tmp_path / "real")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(UsageError, match="is a symbolic link"):
        OutputDirectory(tmp_path / "link", overwrite=True)


def test_an_input_inside_out_is_refused(tmp_path):
    # Issue 21, case 2: `train --views OUT/mydata.npz --out OUT --overwrite` deleted the input.
    out = earlier_run(tmp_path / "out")
    (out / "mydata.npz").write_bytes(b"data")
    for overwrite in (False, True):
        with pytest.raises(UsageError, match="holds the input .*mydata.npz"):
            OutputDirectory(out, overwrite=overwrite, inputs=[out / "mydata.npz"])
    assert (out / "mydata.npz").read_bytes() == b"data"
    with pytest.raises(UsageError, match="is the input"):
        OutputFile(out / "mydata.npz", overwrite=True, inputs=[out / "mydata.npz"])


def test_two_runs_into_one_out_cannot_both_succeed(tmp_path):
    # Issue 21, case 3: two runs started at once into one fresh --out both exited 0, the second
    # silently replacing the first.
    first, second = OutputDirectory(tmp_path / "out"), OutputDirectory(tmp_path / "out")
    (first.open() / "a.txt").write_text("first")
    with pytest.raises(UsageError, match="is being written by another run"):
        second.open()
    third = OutputDirectory(tmp_path / "out")  # checked while the first is still running
    first.commit()
    with pytest.raises(UsageError, match="already holds files"):
        third.open()
    assert (tmp_path / "out" / "a.txt").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_run_checked_before_another_committed_is_refused_at_commit(tmp_path, monkeypatch):
    # Without the lock, the commit itself never replaces a folder another run filled.
    monkeypatch.setattr(OutputDirectory, "_take_lock", lambda self: None)
    first, second = OutputDirectory(tmp_path / "out"), OutputDirectory(tmp_path / "out")
    (first.open() / "a.txt").write_text("first")
    (second.open() / "b.txt").write_text("second")
    first.commit()
    with pytest.raises(UsageError, match="already holds files"):
        second.commit()
    second.discard()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [MANIFEST, "a.txt"]


def test_overwrite_swaps_in_one_step_where_the_system_can(tmp_path, monkeypatch):
    from hmfusion.apps import outputs

    earlier_run(tmp_path / "out")
    probe_a, probe_b = tmp_path / "pa", tmp_path / "pb"
    probe_a.mkdir()
    probe_b.mkdir()
    if not outputs._exchange(probe_a, probe_b):
        pytest.skip("no renameat2(RENAME_EXCHANGE) here")
    probe_a.rmdir()
    probe_b.rmdir()

    def no_two_step(*args):
        raise AssertionError("the old run was moved aside: --out was missing for a moment")

    output = OutputDirectory(tmp_path / "out", overwrite=True)
    (output.open() / "new.txt").write_text("new")
    monkeypatch.setattr(os, "replace", no_two_step)
    output.commit()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [MANIFEST, "new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


KILL_BETWEEN_RENAMES = """
import os, signal, sys
from hmfusion.apps import outputs
outputs._exchange = lambda first, second: False   # the two-rename path
real, calls = os.replace, []
def replace(source, destination):
    calls.append(source)
    if len(calls) == 2:            # between the two renames
        os.kill(os.getpid(), signal.SIGKILL)
    real(source, destination)
os.replace = replace
output = outputs.OutputDirectory(sys.argv[1], overwrite=True)
(output.open() / "new.txt").write_text("new")
output.commit()
"""


def test_sigkill_between_the_two_renames_leaves_the_old_run_recoverable(tmp_path):
    # Issue 21, small things: a SIGKILL between the two renames of --overwrite left --out
    # missing and the old run in a hidden .old- folder, silently.
    import signal
    import subprocess
    import sys
    from pathlib import Path

    earlier_run(tmp_path / "out", {"results.json": '{"run": 1}'})
    src = Path(__file__).resolve().parents[1] / "src"
    process = subprocess.run(
        [sys.executable, "-c", KILL_BETWEEN_RENAMES, str(tmp_path / "out")],
        env={**os.environ, "PYTHONPATH": str(src)},
        timeout=120,
        check=False,
    )
    assert process.returncode == -signal.SIGKILL
    assert not (tmp_path / "out").exists()
    with pytest.raises(UsageError, match="interrupted --overwrite moved aside; restore it") as info:
        OutputDirectory(tmp_path / "out", overwrite=True)
    aside = next(tmp_path.glob(".out.old-*"))
    assert str(aside) in str(info.value)
    assert (aside / "results.json").read_text() == '{"run": 1}'


def test_ctrl_c_right_after_the_rename_says_what_was_written(tmp_path, capsys):
    # Issue 21, small things: Ctrl-C just after the rename printed "no output was written".
    import argparse
    import signal

    from hmfusion.apps.common import run_command

    def main(args):
        output = OutputDirectory(tmp_path / "out")
        (output.open() / "a.txt").write_text("a")
        real = os.rename

        def rename_then_ctrl_c(source, destination):
            real(source, destination)
            signal.raise_signal(signal.SIGINT)  # arrives with the rename done

        os.rename = rename_then_ctrl_c
        try:
            output.commit()
        finally:
            os.rename = real
        return 0

    assert run_command(main, argparse.Namespace()) == 130
    error = capsys.readouterr().err
    assert error == f"hmfusion: error: interrupted; already written: {tmp_path / 'out'}\n"
    assert (tmp_path / "out" / "a.txt").read_text() == "a"


SIGTERM_WHILE_STAGED = """
import argparse, os, signal, sys, time
from hmfusion.apps.common import run_command
from hmfusion.apps.outputs import OutputDirectory
def main(args):
    output = OutputDirectory(sys.argv[1])
    with output as staging:
        (staging / "a.txt").write_text("a")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
        output.commit()
sys.exit(run_command(main, argparse.Namespace()))
"""


def test_sigterm_removes_the_staging_folder(tmp_path):
    # Issue 21, small things: SIGTERM left a .tmp- staging folder.
    import subprocess
    import sys
    from pathlib import Path

    src = Path(__file__).resolve().parents[1] / "src"
    process = subprocess.run(
        [sys.executable, "-c", SIGTERM_WHILE_STAGED, str(tmp_path / "out")],
        env={**os.environ, "PYTHONPATH": str(src)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert process.returncode == 143
    assert process.stderr == "hmfusion: error: terminated; no output was written\n"
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def umask_027():
    previous = os.umask(0o027)
    yield
    os.umask(previous)


def test_permissions_follow_the_umask(tmp_path, umask_027):
    # Issue 21, small things: output folders were created 0700 and PNGs 0600 whatever the umask.
    from hmfusion.apps.reporting import pyplot, save_figure

    output = OutputDirectory(tmp_path / "out")
    staging = output.open()
    (staging / "sub").mkdir()
    (staging / "a.txt").write_text("a")
    save_figure(pyplot().figure(), staging / "plot.png")
    out = output.commit()
    OutputFile(tmp_path / "p.csv").write("x\n")
    modes = {
        path.name: path.stat().st_mode & 0o777
        for path in (out, out / "sub", out / "a.txt", out / "plot.png", tmp_path / "p.csv")
    }
    assert modes == {"out": 0o750, "sub": 0o750, "a.txt": 0o640, "plot.png": 0o640, "p.csv": 0o640}
