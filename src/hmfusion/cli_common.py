"""What every `hmfusion` command shares: argument types, the data arguments, the device, the one
error path (one line on stderr, exit status 2) and outputs that appear whole or not at all.

An output is first written beside its destination (`.<name>.tmp-<random>`) and renamed into
place once complete, so an interrupted or failed command never leaves a half-written file or
directory where the user asked for one.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch

from hmfusion.data import DataError, MultiViewData, load_files, load_mfeat

__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_USAGE",
    "OutputDirectory",
    "OutputFile",
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


class UsageError(ValueError):
    """Arguments, an environment or an output location that cannot work (bad data is a
    [`hmfusion.data.DataError`][hmfusion.data.DataError])."""


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
    """Run a command's `main`; a [`UsageError`][hmfusion.cli_common.UsageError],
    [`DataError`][hmfusion.data.DataError] or `OSError` it lets through, or Ctrl-C, ends as one
    line on stderr.

    Returns `main`'s status, [`EXIT_USAGE`][hmfusion.cli_common.EXIT_USAGE] after an error,
    [`EXIT_INTERRUPTED`][hmfusion.cli_common.EXIT_INTERRUPTED] after Ctrl-C. Outputs are atomic
    ([`OutputDirectory`][hmfusion.cli_common.OutputDirectory],
    [`OutputFile`][hmfusion.cli_common.OutputFile]), so nothing is half-written when this
    reports.
    """
    try:
        return int(main(args) or 0)
    except KeyboardInterrupt:
        return error("interrupted; no output was written", status=EXIT_INTERRUPTED)
    except (UsageError, DataError, OSError) as failure:
        return error(describe_failure(failure))


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
def add_data_arguments(parser: argparse.ArgumentParser, *, labels_help: str
                       ) -> argparse._ArgumentGroup:
    """Add the data flags shared by `train` and `predict`; returns their group."""
    group = parser.add_argument_group("data (default: the packaged UCI mfeat digits)")
    group.add_argument("--views", nargs="+", metavar="FILE",
                       help="views files, rows aligned: .csv/.tsv (header optional), .npy, or one "
                            ".npz holding every view (and a 'labels' array)")
    group.add_argument("--labels", metavar="FILE", help=labels_help)
    group.add_argument("--label-column", type=label_column, metavar="NAME|INDEX",
                       help="the column holding the labels: of --labels if given, else of the "
                            "views files (a name: each file whose header has it; an index, "
                            "negative from the end: every views file)")
    group.add_argument("--csv-header", choices=("auto", "yes", "no"), default="auto",
                       help="whether CSV files start with a header row (default: auto, decided "
                            "from the whole file; an undecidable file asks for yes or no)")
    return group


def load_data(args: argparse.Namespace, *, require_labels: bool = True) -> MultiViewData:
    """The data the data flags name: `--views` files, or the packaged mfeat digits.

    Raises:
        UsageError: `--labels`/`--label-column` without `--views`.
        DataError: a problem with the files.
    """
    if args.views:
        return load_files(args.views, args.labels, args.label_column, header=args.csv_header,
                          require_labels=require_labels)
    if args.labels is not None or args.label_column is not None:
        raise UsageError("--labels and --label-column need --views (the packaged data set has "
                         "its labels)")
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
            raise UsageError(f"--device {name!r}: this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise UsageError(f"--device {name!r}: only cpu and cuda are supported")
    return device


# atomic outputs -------------------------------------------------------------------------------
def _writable_parent(path: Path, flag: str) -> Path:
    """The deepest existing ancestor of `path`, checked to be a writable directory."""
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"{flag} {str(path)!r}: {str(parent)!r} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {str(path)!r}: directory {str(parent)!r} is not writable")
    return parent


class OutputDirectory:
    """A directory that appears at `path` whole, or not at all.

    Checked at construction (before any work): `path` is not a file, lies under a writable
    directory, and is absent or empty unless `overwrite` — which replaces only a directory
    holding `marker` (a file every output of the command has, so that `--out . --overwrite`
    cannot delete a project), and never the working directory or one above it.
    [`open`][hmfusion.cli_common.OutputDirectory.open] creates the staging directory
    `.<name>.tmp-<random>` beside `path` (proving it writable); files go into `staging`;
    [`commit`][hmfusion.cli_common.OutputDirectory.commit] renames it to `path` (replacing the
    old one whole with `overwrite`); [`discard`][hmfusion.cli_common.OutputDirectory.discard]
    removes it. Used as a context manager it opens, and discards on any exception. A kill
    leaves at most a `.tmp-` directory, never a mixed `path`.

    Raises:
        UsageError: `path` is a file, under a file, not writable, or non-empty without
            `overwrite`; with `overwrite`, a non-empty `path` without `marker`, or the
            working directory or one of its parents.
    """

    def __init__(self, path: str | Path, *, overwrite: bool = False, flag: str = "--out",
                 marker: str | None = None) -> None:
        self.path = Path(path)
        self.overwrite = overwrite
        self.flag = flag
        self.staging: Path | None = None
        if self.path.exists() or self.path.is_symlink():
            if not self.path.is_dir():
                raise UsageError(f"{flag} {str(self.path)!r} exists and is not a directory")
            cwd = Path.cwd().resolve()
            if self.path.resolve() in (cwd, *cwd.parents):
                raise UsageError(f"{flag} {str(self.path)!r} is the working directory or holds "
                                 "it; choose a new directory")
            if any(self.path.iterdir()):
                if not overwrite:
                    raise UsageError(f"{flag} {str(self.path)!r} already holds files (another "
                                     "run?); choose a new directory or pass --overwrite to "
                                     "replace it whole")
                if marker is not None and not (self.path / marker).is_file():
                    raise UsageError(f"{flag} {str(self.path)!r} holds files but no {marker}, "
                                     "so it is not an output of this command; --overwrite "
                                     "replaces only those")
        self._root = _writable_parent(self.path, flag)

    def open(self) -> Path:
        """Create and return the staging directory (and any missing parents of `path`)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.staging = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.tmp-",
                                             dir=self.path.parent))
        try:  # a full disk shows here, before any work, rather than after it
            probe = self.staging / ".probe"
            probe.write_bytes(b"\0" * 4096)
            probe.unlink()
        except BaseException:
            self.discard()
            raise
        return self.staging

    def commit(self) -> Path:
        """Move the staged files to `path` in one rename (the old `path` removed after)."""
        if self.staging is None:
            raise RuntimeError("OutputDirectory.commit() before open()")
        old = None
        if self.path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.old-", dir=self.path.parent))
            os.replace(self.path, old / "previous")
        os.replace(self.staging, self.path)
        self.staging = None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.path

    def discard(self) -> None:
        """Remove the staging directory and the parents
        [`open`][hmfusion.cli_common.OutputDirectory.open] created."""
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None
        _remove_empty_between(self.path.parent, self._root)

    def __enter__(self) -> Path:
        return self.open()

    def __exit__(self, kind: object, value: object, traceback: object) -> None:
        if kind is not None:
            self.discard()


class OutputFile:
    """A file that appears at `path` whole, or not at all (write, then rename into place).

    Checked at construction: `path` is not a directory, lies under a writable directory, and
    does not exist unless `overwrite`. [`write`][hmfusion.cli_common.OutputFile.write] stages
    the text beside `path` and renames it over `path`.

    Raises:
        UsageError: `path` is a directory, under a file, not writable, or exists without
            `overwrite`.
    """

    def __init__(self, path: str | Path, *, overwrite: bool = False, flag: str = "--out") -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise UsageError(f"{flag} {str(self.path)!r} is a directory; give a file name")
        if self.path.exists() and not overwrite:
            raise UsageError(f"{flag} {str(self.path)!r} already exists; pass --overwrite to "
                             "replace it")
        self._root = _writable_parent(self.path, flag)

    def write(self, text: str) -> None:
        """Write `text` (UTF-8) to a staging file, then rename it to `path`."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, staging = tempfile.mkstemp(prefix=f".{self.path.name}.tmp-",
                                           dir=self.path.parent)
        try:
            with os.fdopen(handle, "w", encoding="utf-8", newline="") as stream:
                stream.write(text)
            os.replace(staging, self.path)
        except BaseException:
            Path(staging).unlink(missing_ok=True)
            _remove_empty_between(self.path.parent, self._root)
            raise


def _remove_empty_between(directory: Path, root: Path) -> None:
    """Remove empty directories from `directory` up to (not including) `root`."""
    while directory != root and directory.is_dir() and root in directory.parents:
        try:
            directory.rmdir()
        except OSError:
            return
        directory = directory.parent
