"""Atomic output directories and files: staged beside the target, renamed into place.

An output is first written beside its destination (`.<name>.tmp-<random>`) and renamed into
place once complete, so an interrupted or failed command never leaves a half-written file or
directory where the user asked for one. Every location is checked when the output is
constructed, before any work; a location that cannot work is a
[`UsageError`][hmfusion.apps.outputs.UsageError], which the commands report as one line with exit
status 2 ([`run_command`][hmfusion.apps.common.run_command]).

What `--overwrite` may replace is decided entry by entry against the manifest written with
every output directory ([`hmfusion.apps.manifest`][hmfusion.apps.manifest]); folders written
before manifests existed are never replaced (delete them by hand). While a command writes a
directory it holds an exclusive lock (`.<name>.lock` beside it, released when the process ends
however it ends), so two runs into one `--out` cannot both succeed. Files and folders get the
permissions the umask gives.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from hmfusion.apps.manifest import MANIFEST, entries, why_not_ours
from hmfusion.ops import files

__all__ = ["MANIFEST", "OutputDirectory", "OutputFile", "UsageError", "follow_umask", "written"]

#: Every output this process committed, in order (see [`written`][hmfusion.apps.outputs.written]).
_WRITTEN: list[Path] = []


class UsageError(ValueError):
    """Arguments, an environment or an output location that cannot work (bad data is a
    [`hmfusion.data.DataError`][hmfusion.data.DataError]).

    Defined in [`hmfusion.apps.outputs`][hmfusion.apps.outputs], the lowest module that raises it,
    and
    exported by [`hmfusion.apps.common`][hmfusion.apps.common] with the rest of the error path.
    """


def written() -> tuple[Path, ...]:
    """The outputs this process has committed so far (directories and files), oldest first,
    so that an interrupted command can say what it did write.

    Example:
        >>> isinstance(written(), tuple)
        True
    """
    return tuple(_WRITTEN)


def follow_umask(path: str | Path) -> None:
    """Give `path` the permissions a plain `mkdir` or `open` would have given it: `0o777` (a
    directory) or `0o666` (a file) less the umask. `tempfile` creates its folders 0700 and its
    files 0600 whatever the umask; outputs staged with it are opened up with this.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     follow_umask(folder)
        ...     os.stat(folder).st_mode & 0o777 == 0o777 & ~files.umask()
        True
    """
    full = 0o777 if Path(path).is_dir() else 0o666
    os.chmod(path, full & ~files.umask())


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


def _refuse_inputs(path: Path, inputs: Iterable[str | Path], flag: str) -> None:
    """Refuse an input that is `path` or lies inside it (both resolved)."""
    for item in inputs:
        inner, outer = Path(item).resolve(), path.resolve()
        if inner == outer or outer in inner.parents:
            raise UsageError(
                f"{flag} {str(path)!r} holds the input {str(item)!r}; choose another {flag} "
                "(replacing it would delete the input)"
            )


def _aside(path: Path) -> list[Path]:
    """Folders an interrupted `--overwrite` left beside `path` holding the earlier run."""
    return sorted(p for p in path.parent.glob(f".{path.name}.old-*") if (p / MANIFEST).is_file())


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths in one step (Linux `renameat2(RENAME_EXCHANGE)`); False where the
    system or the file system cannot."""
    try:
        function = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    except (OSError, TypeError):  # no C library to ask (Windows)
        return False
    if function is None:
        return False
    at_cwd, exchange = -100, 2
    result = function(at_cwd, os.fsencode(first), at_cwd, os.fsencode(second), exchange)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(second))


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM back (main thread only) until the block is done, so that a
    rename and the record of it happen together; a signal that came meanwhile is re-raised
    after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    kinds = (signal.SIGINT, signal.SIGTERM)
    previous = {kind: signal.getsignal(kind) for kind in kinds}
    for kind in kinds:
        signal.signal(kind, lambda number, frame: pending.append(number))
    try:
        yield
    finally:
        for kind, handler in previous.items():
            signal.signal(kind, handler)
        for number in pending[:1]:
            signal.raise_signal(number)


class OutputDirectory:
    """A directory that appears at `path` whole, or not at all.

    Checked at construction (before any work): `path` is not a file or a symbolic link, lies
    under a writable directory, holds none of `inputs`, and is absent or empty unless
    `overwrite` — which replaces only a directory whose every entry is one its manifest lists,
    unchanged (see the module's text), and never the working directory or one above it.
    [`open`][hmfusion.apps.outputs.OutputDirectory.open] takes the lock `.<name>.lock` beside
    `path` (a second run into the same `path` is refused there), checks again, and creates the
    staging directory `.<name>.tmp-<random>` beside `path` (proving it writable); files go
    into `staging`; [`commit`][hmfusion.apps.outputs.OutputDirectory.commit] writes the
    manifest and puts the staging directory at `path` (with `overwrite`, swapping it with the
    old one in one step where the system can);
    [`discard`][hmfusion.apps.outputs.OutputDirectory.discard] removes it and releases the
    lock. Used as a context manager it opens, and discards on any exception. A kill leaves at
    most a `.tmp-` directory, never a mixed `path`; where the swap is not available a kill
    between the two renames leaves the old run in `.<name>.old-<random>`, which the next
    command naming `path` points to.

    Raises:
        UsageError: `path` is a file, a symbolic link, under a file, not writable, holds an
            input, or is non-empty without `overwrite`; with `overwrite`, a `path` with any
            entry its manifest does not list unchanged, or the working directory or one of its
            parents; at `open`, another run writing `path`.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        overwrite: bool = False,
        flag: str = "--out",
        inputs: Iterable[str | Path] = (),
    ) -> None:
        self.path = Path(path)
        self.overwrite = overwrite
        self.flag = flag
        self.staging: Path | None = None
        self._lock: int | None = None
        _refuse_inputs(self.path, inputs, flag)
        self._check()
        self._root = _writable_parent(self.path, flag)

    def _check(self) -> None:
        """What the constructor checks, again under the lock and before the commit."""
        path, flag = self.path, self.flag
        if path.is_symlink():
            raise UsageError(f"{flag} {str(path)!r} is a symbolic link; give a real folder")
        if not path.exists():
            aside = _aside(path) if path.parent.is_dir() else []
            if aside:
                raise UsageError(
                    f"{flag} {str(path)!r} is missing and {str(aside[0])!r} holds the run an "
                    f"interrupted --overwrite moved aside; restore it (mv {str(aside[0])!r} "
                    f"{str(path)!r}) or delete it, then run again"
                )
            return
        if not path.is_dir():
            raise UsageError(f"{flag} {str(path)!r} exists and is not a directory")
        cwd = Path.cwd().resolve()
        if path.resolve() in (cwd, *cwd.parents):
            raise UsageError(
                f"{flag} {str(path)!r} is the working directory or holds it; choose a new directory"
            )
        if any(path.iterdir()):
            if not self.overwrite:
                raise UsageError(
                    f"{flag} {str(path)!r} already holds files (another run?); choose a new "
                    "directory or pass --overwrite to replace it whole"
                )
            reason = why_not_ours(path)
            if reason is not None:
                raise UsageError(
                    f"{flag} {str(path)!r}: --overwrite replaces only a folder hmfusion wrote, "
                    f"and {reason}; delete it yourself or choose a new directory"
                )

    def _lock_path(self) -> Path:
        return self.path.parent / f".{self.path.name}.lock"

    def _take_lock(self) -> None:
        try:
            self._lock = files.lock_file(self._lock_path())
        except files.LockHeld as held:
            raise UsageError(
                f"{self.flag} {str(self.path)!r} is being written by another run "
                f"({held.who}); wait for it or choose another directory"
            ) from None

    def _release_lock(self) -> None:
        if self._lock is not None:
            files.unlock_file(self._lock_path(), self._lock)
            self._lock = None

    def open(self) -> Path:
        """Take the lock, check again, and create and return the staging directory (and any
        missing parents of `path`)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        try:
            self._check()
            self.staging = Path(
                tempfile.mkdtemp(prefix=f".{self.path.name}.tmp-", dir=self.path.parent)
            )
            follow_umask(self.staging)
            probe = self.staging / ".probe"  # a full disk shows here, before any work
            probe.write_bytes(b"\0" * 4096)
            probe.unlink()
        except BaseException:
            self.discard()
            raise
        return self.staging

    def commit(self) -> Path:
        """Write the manifest and put the staged directory at `path` (replacing the old one,
        with `overwrite`, in one swap where the system can); release the lock."""
        if self.staging is None:
            raise RuntimeError("OutputDirectory.commit() before open()")
        staging = self.staging
        manifest = {"written_by": "hmfusion", "entries": entries(staging)}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        self._check()
        old: Path | None = None
        with _signals_deferred():
            if self.path.exists() and any(self.path.iterdir()):  # overwrite, checked above
                if _exchange(staging, self.path):
                    old = staging
                else:
                    old = staging.with_name(staging.name.replace(".tmp-", ".old-", 1))
                    os.replace(self.path, old)
                    os.replace(staging, self.path)
            else:
                if self.path.exists():
                    self.path.rmdir()  # empty; a run that filled it meanwhile makes this fail
                os.rename(staging, self.path)
            self.staging = None
            _WRITTEN.append(self.path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        self._release_lock()
        return self.path

    def discard(self) -> None:
        """Remove the staging directory and the parents
        [`open`][hmfusion.apps.outputs.OutputDirectory.open] created; release the lock."""
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None
        self._release_lock()
        _remove_empty_between(self.path.parent, self._root)

    def __enter__(self) -> Path:
        return self.open()

    def __exit__(self, kind: object, value: object, traceback: object) -> None:
        if kind is not None:
            self.discard()


class OutputFile:
    """A file that appears at `path` whole, or not at all (write, then rename into place).

    Checked at construction: `path` is not a directory, is none of `inputs`, lies under a
    writable directory, and does not exist unless `overwrite`.
    [`write`][hmfusion.apps.outputs.OutputFile.write] stages the text beside `path` (with the
    permissions the umask gives) and renames it over `path`.

    Raises:
        UsageError: `path` is a directory, an input, under a file, not writable, or exists
            without `overwrite`.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        overwrite: bool = False,
        flag: str = "--out",
        inputs: Iterable[str | Path] = (),
    ) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise UsageError(f"{flag} {str(self.path)!r} is a directory; give a file name")
        for item in inputs:
            if Path(item).exists() and self.path.exists() and self.path.samefile(item):
                raise UsageError(
                    f"{flag} {str(self.path)!r} is the input {str(item)!r}; give another name"
                )
        if self.path.exists() and not overwrite:
            raise UsageError(
                f"{flag} {str(self.path)!r} already exists; pass --overwrite to replace it"
            )
        self._root = _writable_parent(self.path, flag)

    def write(self, text: str) -> None:
        """Write `text` (UTF-8) to a staging file, then rename it to `path`."""
        self.path.parent.mkdir(parents=True, exist_ok=True)

        def commit(staging: Path, path: Path) -> None:
            with _signals_deferred():  # the rename and the record of it together
                os.replace(staging, path)
                _WRITTEN.append(path)

        try:
            with files.atomic_write(self.path, replace=commit) as staging:
                with open(staging, "w", encoding="utf-8", newline="") as stream:
                    stream.write(text)
        except BaseException:
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
