"""Atomic output directories and files: staged beside the target, renamed into place.

An output is first written beside its destination (`.<name>.tmp-<random>`) and renamed into
place once complete, so an interrupted or failed command never leaves a half-written file or
directory where the user asked for one. Every location is checked when the output is
constructed, before any work; a location that cannot work is a
[`UsageError`][hmfusion.apps.outputs.UsageError], which the commands report as one line with exit
status 2 ([`run_command`][hmfusion.apps.common.run_command]).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["OutputDirectory", "OutputFile", "UsageError"]


class UsageError(ValueError):
    """Arguments, an environment or an output location that cannot work (bad data is a
    [`hmfusion.data.DataError`][hmfusion.data.DataError]).

    Defined in [`hmfusion.apps.outputs`][hmfusion.apps.outputs], the lowest module that raises it,
    and
    exported by [`hmfusion.apps.common`][hmfusion.apps.common] with the rest of the error path.
    """


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
    [`open`][hmfusion.apps.outputs.OutputDirectory.open] creates the staging directory
    `.<name>.tmp-<random>` beside `path` (proving it writable); files go into `staging`;
    [`commit`][hmfusion.apps.outputs.OutputDirectory.commit] renames it to `path` (replacing the
    old one whole with `overwrite`); [`discard`][hmfusion.apps.outputs.OutputDirectory.discard]
    removes it. Used as a context manager it opens, and discards on any exception. A kill
    leaves at most a `.tmp-` directory, never a mixed `path`.

    Raises:
        UsageError: `path` is a file, under a file, not writable, or non-empty without
            `overwrite`; with `overwrite`, a non-empty `path` without `marker`, or the
            working directory or one of its parents.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        overwrite: bool = False,
        flag: str = "--out",
        marker: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.overwrite = overwrite
        self.flag = flag
        self.staging: Path | None = None
        if self.path.exists() or self.path.is_symlink():
            if not self.path.is_dir():
                raise UsageError(f"{flag} {str(self.path)!r} exists and is not a directory")
            cwd = Path.cwd().resolve()
            if self.path.resolve() in (cwd, *cwd.parents):
                raise UsageError(
                    f"{flag} {str(self.path)!r} is the working directory or holds "
                    "it; choose a new directory"
                )
            if any(self.path.iterdir()):
                if not overwrite:
                    raise UsageError(
                        f"{flag} {str(self.path)!r} already holds files (another "
                        "run?); choose a new directory or pass --overwrite to "
                        "replace it whole"
                    )
                if marker is not None and not (self.path / marker).is_file():
                    raise UsageError(
                        f"{flag} {str(self.path)!r} holds files but no {marker}, "
                        "so it is not an output of this command; --overwrite "
                        "replaces only those"
                    )
        self._root = _writable_parent(self.path, flag)

    def open(self) -> Path:
        """Create and return the staging directory (and any missing parents of `path`)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.staging = Path(
            tempfile.mkdtemp(prefix=f".{self.path.name}.tmp-", dir=self.path.parent)
        )
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
        [`open`][hmfusion.apps.outputs.OutputDirectory.open] created."""
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
    does not exist unless `overwrite`. [`write`][hmfusion.apps.outputs.OutputFile.write] stages
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
            raise UsageError(
                f"{flag} {str(self.path)!r} already exists; pass --overwrite to replace it"
            )
        self._root = _writable_parent(self.path, flag)

    def write(self, text: str) -> None:
        """Write `text` (UTF-8) to a staging file, then rename it to `path`."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, staging = tempfile.mkstemp(prefix=f".{self.path.name}.tmp-", dir=self.path.parent)
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
