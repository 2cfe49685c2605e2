"""The command line: `hmfusion --help` and each command's help, independent of the others."""

import subprocess
import sys

import pytest

from hmfusion.apps import cli


def test_top_level_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("train", "predict", "bench"))


@pytest.mark.parametrize("command", ["train", "predict", "bench"])
def test_command_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"hmfusion {command}" in capsys.readouterr().out


@pytest.mark.parametrize(
    "command,absent",
    [("train", "hmfusion.apps.bench.command"), ("bench", "hmfusion.apps.train.command"), (None, "hmfusion.apps.train.command")],
)
def test_a_command_imports_only_what_it_needs(command, absent):
    code = (
        f"import sys; from hmfusion.apps import cli; cli.build_parser({command!r}); "
        f"print({absent!r} in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_missing_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([])
    assert exit_info.value.code == 2


_SRC = str(__import__("pathlib").Path(__file__).resolve().parents[1] / "src")
_SHOW_ENVIRONMENT = (
    "import atexit, os, runpy, sys\n"
    "atexit.register(lambda: print('OMP_WAIT_POLICY=' + os.environ.get('OMP_WAIT_POLICY', ''),"
    " 'torch' in sys.modules))\n"
    "sys.argv = ['hmfusion', 'bench', '--help']\n"
    "runpy.run_module('hmfusion', run_name='__main__', alter_sys=True)\n"
)


@pytest.mark.parametrize("user_value", [None, "ACTIVE"])
def test_entry_point_sets_openmp_defaults_before_torch_loads(user_value):
    """`python -m hmfusion …` runs with OMP_WAIT_POLICY=PASSIVE unless the user set a value,
    and sets it before torch (and its OpenMP runtime, which reads it once) is imported."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if user_value is not None:
        env["OMP_WAIT_POLICY"] = user_value
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_SRC, env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-c", _SHOW_ENVIRONMENT],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    expected = user_value or "PASSIVE"
    assert result.stdout.strip().splitlines()[-1] == f"OMP_WAIT_POLICY={expected} True"


def test_importing_the_cli_does_not_load_torch():
    import os
    import subprocess
    import sys

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_SRC, env.get("PYTHONPATH")]))
    code = "import sys, hmfusion.apps.cli; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.stdout.strip() == "False", result.stderr


@pytest.mark.parametrize(
    "argv",
    [["train", "--epochs", "-3"], ["predict"], ["bench", "--repeats", "0"], ["frobnicate"]],
)
def test_usage_errors_are_one_line_with_status_2(argv):
    """Found in the reliability review: argparse printed its usage block before the error."""
    done = subprocess.run(
        [sys.executable, "-m", "hmfusion", *argv], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and ": error: " in lines[0] and "--help)" in lines[0], done.stderr
    assert done.stdout == ""
