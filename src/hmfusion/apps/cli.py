"""The `hmfusion` command line: one sub-command per application module.

Each application module (`hmfusion.apps.train.command`, `hmfusion.apps.train.sweep`,
`hmfusion.apps.predict`, `hmfusion.apps.bench.command`) exposes `add_arguments(parser)` and
`main(args) -> int`; this module only wires them into
`argparse`, so that `hmfusion <command> --help` documents every flag, and runs them through
[`hmfusion.apps.common`][hmfusion.apps.common]'s one error path.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

#: Environment defaults the `hmfusion` command sets before torch loads, where the user has set
#: nothing: OpenMP threads that sleep at barriers instead of spinning keep the speed-up when
#: another process shares the cores (benchmarks/RESULTS.md). The library itself never changes
#: the environment.
ENVIRONMENT_DEFAULTS: dict[str, str] = {"OMP_WAIT_POLICY": "PASSIVE"}

# name -> (module, one-line help). Only the module of the command being run is imported, so
# `hmfusion --help` and each command stay independent of the others' imports.
_COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("hmfusion.apps.train.command", "train and compare fusion models on multi-view data"),
    "sweep": (
        "hmfusion.apps.train.sweep",
        "train every fusion over a range of parameter budgets: accuracy against parameters",
    ),
    "predict": ("hmfusion.apps.predict", "predict labels for new rows with a trained checkpoint"),
    "bench": (
        "hmfusion.apps.bench.command",
        "benchmark hmfusion against dense and the code users write, quiet and under load",
    ),
}


class OneLineErrorParser(argparse.ArgumentParser):
    """An `argparse.ArgumentParser` whose usage errors are one line on stderr and exit status 2
    (argparse's own prints the usage block first); sub-command parsers inherit it."""

    def error(self, message: str) -> NoReturn:
        """Print `<prog>: error: <message> (see <prog> --help)` and exit with status 2."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; the arguments of `command` (if given) are added from its module."""
    parser = OneLineErrorParser(
        prog="hmfusion",
        description=(
            "Structured concatenation fusion for PyTorch: training, budget sweeps, prediction, "
            "benchmark."
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in _COMMANDS.items():
        if name != command:
            sub.add_parser(name, help=help_text)
            continue
        module = importlib.import_module(module_name)
        parser_of_command = sub.add_parser(name, help=help_text, description=module.__doc__)
        module.add_arguments(parser_of_command)
        parser_of_command.set_defaults(_main=module.main)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv` (default: `sys.argv[1:]`) and run the command; returns its exit status.

    Bad arguments end as one line on stderr with status 2; a command's bad data, unusable output or
    Ctrl-C end as one line on stderr (see
    [`run_command`][hmfusion.apps.common.run_command]).
    """
    for name, value in ENVIRONMENT_DEFAULTS.items():
        if "torch" not in sys.modules:  # (read once, when torch loads OpenMP)
            os.environ.setdefault(name, value)
    from hmfusion.apps.common import run_command  # (imports torch)

    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    args = build_parser(command if command in _COMMANDS else None).parse_args(argv)
    return run_command(args._main, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
