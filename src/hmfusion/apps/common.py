"""What every `hmfusion` command shares: argument types, the data arguments, the device and the
one error path (one line on stderr, exit status 2).

The outputs that appear whole or not at all are [`hmfusion.apps.outputs`][hmfusion.apps.outputs]'s
job;
its [`UsageError`][hmfusion.apps.outputs.UsageError] is exported here too, as the error of every
argument, environment or output location that cannot work.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Literal

import torch

from hmfusion.apps.outputs import UsageError, written
from hmfusion.data import DataError, MultiViewData, load_files, load_mfeat

__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_TERMINATED",
    "EXIT_USAGE",
    "UsageError",
    "add_data_arguments",
    "block_size",
    "describe_failure",
    "error",
    "fraction",
    "label_column",
    "load_data",
    "nonnegative_float",
    "nonnegative_int",
    "positive_int",
    "probability",
    "resolve_device",
    "run_command",
]

#: Exit status of bad arguments, bad data and unusable outputs (argparse's own).
EXIT_USAGE = 2
#: Exit status after Ctrl-C (128 + SIGINT, as shells report it).
EXIT_INTERRUPTED = 130
#: Exit status after SIGTERM (128 + SIGTERM).
EXIT_TERMINATED = 143


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread so that `finally` blocks remove staging folders."""


def _raise_terminated(number: int, frame: object) -> None:
    raise _Terminated()


@contextlib.contextmanager
def _terminate_as_exception() -> Iterator[None]:
    """While running a command, SIGTERM unwinds the stack (removing staging folders) instead
    of killing the process where it stands; the handler before is restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# the one error path ---------------------------------------------------------------------------
def error(message: str, *, show: bool = True, status: int = EXIT_USAGE) -> int:
    """Print `hmfusion: error: <message>` as one line on stderr (if `show`); return `status`.

    Newlines in `message` are folded into spaces so that the report is always one line.

    Example:
        >>> error("--device 'tpu' is not a device", show=False)
        2
    """
    if show:
        text = " ".join(str(message).split())
        print(f"hmfusion: error: {text}", file=sys.stderr)
    return status


def run_command(main: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a command's `main`; a [`UsageError`][hmfusion.apps.outputs.UsageError],
    [`DataError`][hmfusion.data.DataError] or `OSError` it lets through, or Ctrl-C, ends as one
    line on stderr.

    Returns `main`'s status, [`EXIT_USAGE`][hmfusion.apps.common.EXIT_USAGE] after an error,
    [`EXIT_INTERRUPTED`][hmfusion.apps.common.EXIT_INTERRUPTED] after Ctrl-C. Outputs are atomic
    ([`OutputDirectory`][hmfusion.apps.outputs.OutputDirectory],
    [`OutputFile`][hmfusion.apps.outputs.OutputFile]), so nothing is half-written when this
    reports. Ctrl-C or SIGTERM ([`EXIT_TERMINATED`][hmfusion.apps.common.EXIT_TERMINATED])
    report what the command had written by then, if anything.
    """
    before = len(written())
    try:
        with _terminate_as_exception():
            return int(main(args) or 0)
    except KeyboardInterrupt:
        return error(f"interrupted; {_written_since(before)}", status=EXIT_INTERRUPTED)
    except _Terminated:
        return error(f"terminated; {_written_since(before)}", status=EXIT_TERMINATED)
    except (UsageError, DataError, OSError) as failure:
        return error(describe_failure(failure))


def _written_since(before: int) -> str:
    done = written()[before:]
    if not done:
        return "no output was written"
    return "already written: " + ", ".join(str(path) for path in done)


def describe_failure(failure: BaseException) -> str:
    """A failure as the text of a one-line report: an `OSError` as `'<file>': <reason>`
    (`No space left on device`, `Permission denied`, …), anything else as its message."""
    if isinstance(failure, OSError) and failure.strerror:
        where = f"{str(failure.filename)!r}: " if failure.filename else ""
        return f"{where}{failure.strerror}"
    text = str(failure).strip()
    return text or type(failure).__name__


# argument types -------------------------------------------------------------------------------
def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer ≥ 1 (argparse `type=`)."""
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def nonnegative_int(text: str) -> int:
    """An integer ≥ 0 (argparse `type=`)."""
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def block_size(text: str) -> int | Literal["auto"]:
    """`auto` or a positive integer (argparse `type=` of `--p`/`--q`)."""
    return "auto" if text == "auto" else positive_int(text)


def fraction(text: str) -> float:
    """A number strictly between 0 and 1 (argparse `type=`)."""
    value = _number(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def probability(text: str) -> float:
    """A number in [0, 1) (argparse `type=`)."""
    value = _number(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def nonnegative_float(text: str) -> float:
    """A finite number ≥ 0 (argparse `type=`)."""
    value = _number(text)
    if value < 0.0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def label_column(text: str) -> int | str:
    """`--label-column`: an int (a column index; negative counts from the end) or a name."""
    try:
        return int(text)
    except ValueError:
        return text


# data -----------------------------------------------------------------------------------------
def add_data_arguments(
    parser: argparse.ArgumentParser, *, labels_help: str
) -> argparse._ArgumentGroup:
    """Add the data flags shared by `train` and `predict`; returns their group."""
    group = parser.add_argument_group("data (default: the packaged UCI mfeat digits)")
    group.add_argument(
        "--views",
        nargs="+",
        metavar="FILE",
        help="views files, rows aligned: .csv/.tsv (header optional), .npy, or one "
        ".npz holding every view (and a 'labels' array)",
    )
    group.add_argument("--labels", metavar="FILE", help=labels_help)
    group.add_argument(
        "--label-column",
        type=label_column,
        metavar="NAME|INDEX",
        help="the column holding the labels: of --labels if given, else of the "
        "views files (a name: each file whose header has it; an index, "
        "negative from the end: every views file)",
    )
    group.add_argument(
        "--csv-header",
        choices=("auto", "yes", "no"),
        default="auto",
        help="whether CSV files start with a header row (default: auto, decided "
        "from the whole file; an undecidable file asks for yes or no)",
    )
    return group


def load_data(args: argparse.Namespace, *, require_labels: bool = True) -> MultiViewData:
    """The data the data flags name: `--views` files, or the packaged mfeat digits.

    Raises:
        UsageError: `--labels`/`--label-column` without `--views`.
        DataError: a problem with the files.
    """
    if args.views:
        return load_files(
            args.views,
            args.labels,
            args.label_column,
            header=args.csv_header,
            require_labels=require_labels,
        )
    if args.labels is not None or args.label_column is not None:
        raise UsageError(
            "--labels and --label-column need --views (the packaged data set has its labels)"
        )
    return load_mfeat()


# device ---------------------------------------------------------------------------------------
def resolve_device(name: str, *, local_rank: int = 0, distributed: bool = False) -> torch.device:
    """The `torch.device` of `--device`: `cpu`, or `cuda`/`cuda:N` on a CUDA build with
    a GPU (under torchrun, each process's local GPU).

    Raises:
        UsageError: not a device name, a device other than cpu/cuda, or CUDA unavailable.
    """
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {name!r} is not a device (use cpu or cuda)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("--device cuda: CUDA is not available on this machine")
        if distributed or device.index is None:
            device = torch.device("cuda", local_rank if distributed else 0)
        elif device.index >= torch.cuda.device_count():
            raise UsageError(
                f"--device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif device.type != "cpu":
        raise UsageError(f"--device {name!r}: only cpu and cuda are supported")
    return device
