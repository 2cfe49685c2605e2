"""The command line: `hmfusion --help` and each command's help, independent of the others."""

import subprocess
import sys

import pytest

from hmfusion import cli


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
    [("train", "hmfusion.bench"), ("bench", "hmfusion.train"), (None, "hmfusion.train")],
)
def test_a_command_imports_only_what_it_needs(command, absent):
    code = (
        f"import sys; from hmfusion import cli; cli.build_parser({command!r}); "
        f"print({absent!r} in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_missing_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([])
    assert exit_info.value.code == 2
