"""File utilities the library and the applications share: an exclusive lock with an owner, a
file's SHA-256, an atomic write.

The lock ([`lock_file`][hmfusion.ops.files.lock_file]) is an advisory file lock (`flock`) where
the system has one, released by the system when its holder dies; its file records the owner (pid,
host, process start time) and is removed when released. Because a holder removes the file, a
process that opened it just before may lock a file no longer at that path: the lock is taken only
once the locked file is still the one the path names (same inode), else it retries. Where the
system has no advisory locks (Windows) the lock is the file's existence (`O_EXCL`), broken when
the process it names is gone.

The ops layer is the lowest one, so [`hmfusion.ops.build`][hmfusion.ops.build],
[`hmfusion.ops.wisdom`][hmfusion.ops.wisdom] and the applications (`hmfusion.apps`) all use these.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: the lock is the file's existence and its owner's pid
    fcntl = None  # type: ignore[assignment]

__all__ = ["LockHeld", "atomic_write", "held", "lock_file", "sha256_file", "unlock_file", "umask"]


def sha256_file(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (hex), read in 1 MiB blocks (never whole into memory).

    Raises:
        OSError: `path` cannot be read.

    Example:
        >>> import hashlib, tempfile
        >>> with tempfile.NamedTemporaryFile(delete=False) as f:
        ...     _ = f.write(b"abc")
        >>> sha256_file(f.name) == hashlib.sha256(b"abc").hexdigest()
        True
    """
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def umask() -> int:
    """The process's umask (read without changing it where Linux shows it).

    Example:
        >>> 0 <= umask() <= 0o777
        True
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: the classic read-by-setting, restored at once
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(
    path: str | Path,
    *,
    prefix: str | None = None,
    suffix: str = "",
    follow_umask: bool = True,
    replace: Callable[[Path, Path], None] = os.replace,
) -> Iterator[Path]:
    """Stage a file beside `path` and rename it over `path` when the block ends without error,
    so that `path` is whole or untouched; on any error the staged file is removed.

    Yields the staging path (`<prefix><random><suffix>` in `path`'s folder, created empty with
    permissions 0600; `prefix` defaults to `.<name>.tmp-`; give `suffix` where the writer reads
    the format from it). With `follow_umask` the file then gets `0o666` less the umask (what a
    plain `open` gives), else it keeps 0600. `replace(staged, path)` renames it into place
    (default `os.replace`; a caller may wrap it, e.g. to record the rename with it).

    Raises:
        OSError: the folder is missing or not writable, or the write or rename fails.

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "a.txt"
        >>> with atomic_write(target) as staged:
        ...     _ = staged.write_text("whole")
        >>> target.read_text()
        'whole'
    """
    path = Path(path)
    handle, name = tempfile.mkstemp(
        prefix=f".{path.name}.tmp-" if prefix is None else prefix, suffix=suffix, dir=path.parent
    )
    os.close(handle)
    staged = Path(name)
    try:
        yield staged
        if follow_umask:
            os.chmod(staged, 0o666 & ~umask())
        replace(staged, path)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise


# the lock's owner: who holds it, and whether they still live --------------------------------------
def _start_time(pid: int) -> str | None:
    """When process `pid` started (Linux clock ticks since boot), None if it does not exist;
    with the pid it names one process even after the pid is reused."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[19]
    except (OSError, IndexError):
        if Path("/proc/self/stat").exists():
            return None
        try:  # no /proc: whether the pid exists at all
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except OSError:
            pass
        return "unknown"


def _owner() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": _start_time(os.getpid())}


def _owner_gone(owner: dict[str, Any]) -> bool:
    """Whether the process a lock names is gone (only decidable on this host)."""
    if owner.get("host") != socket.gethostname():
        return False
    started = _start_time(int(owner.get("pid", -1)))
    return started is None or started != owner.get("started")


def _read_owner(lock: Path) -> dict[str, Any]:
    try:
        owner = json.loads(lock.read_text())
        return owner if isinstance(owner, dict) else {}
    except (OSError, ValueError):
        return {}


def _same_file(lock: Path, handle: int) -> bool:
    """Whether `handle` is still the file at `lock` (its last holder may have removed it)."""
    try:
        return os.stat(lock).st_ino == os.fstat(handle).st_ino
    except FileNotFoundError:
        return False


class LockHeld(RuntimeError):
    """A lock held by another live process past the time allowed to wait.

    Attributes:
        path: the lock file.
        owner: its owner record (`pid`, `host`, `started`; empty where unreadable).
        who: the owner in words (`"pid 123 on host"`).
    """

    def __init__(self, path: Path, owner: dict[str, Any], waited: float) -> None:
        self.path, self.owner = path, owner
        self.who = f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}"
        super().__init__(f"the lock {path} has been held by {self.who} for over {waited:.0f} s")


def lock_file(
    lock: str | Path, timeout: float = 0.0, *, on_wait: Callable[[str], None] | None = None
) -> int:
    """Take the exclusive lock `lock` (see the module's text) and record this process as its
    owner; returns the open handle to give to [`unlock_file`][hmfusion.ops.files.unlock_file].

    Waits up to `timeout` seconds behind a live owner (`0`: not at all), calling `on_wait`
    once with the owner in words when it starts waiting.

    Raises:
        LockHeld: another live process still holds it after `timeout` seconds.
        OSError: the lock file cannot be created (a missing or read-only folder).

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "x.lock"
        >>> handle = lock_file(path)
        >>> json.loads(path.read_text())["pid"] == os.getpid()
        True
        >>> unlock_file(path, handle); path.exists()
        False
    """
    lock = Path(lock)
    deadline = time.monotonic() + timeout
    told = False
    while True:
        handle: int | None = None
        try:
            handle = os.open(lock, os.O_RDWR | os.O_CREAT | (0 if fcntl else os.O_EXCL), 0o666)
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if not _same_file(lock, handle):  # removed by its last holder: try again
                    os.close(handle)
                    continue
            os.ftruncate(handle, 0)
            os.write(handle, json.dumps(_owner()).encode())
            return handle
        except (BlockingIOError, FileExistsError):
            if handle is not None:
                os.close(handle)
        except BaseException:
            if handle is not None:
                os.close(handle)
            raise
        owner = _read_owner(lock)
        if fcntl is None and owner and _owner_gone(owner):
            lock.unlink(missing_ok=True)  # its owner died without removing it
            continue
        if time.monotonic() >= deadline:
            raise LockHeld(lock, owner, timeout)
        if on_wait is not None and not told:
            on_wait(f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}")
            told = True
        time.sleep(min(0.5, max(timeout / 10, 0.01)))


def unlock_file(lock: str | Path, handle: int) -> None:
    """Release a lock taken by [`lock_file`][hmfusion.ops.files.lock_file]: remove its file,
    then close `handle` (in that order, so that no one locks the removed file unseen)."""
    with contextlib.suppress(OSError):
        os.unlink(lock)
    os.close(handle)


@contextlib.contextmanager
def held(
    lock: str | Path, timeout: float = 0.0, *, on_wait: Callable[[str], None] | None = None
) -> Iterator[None]:
    """Hold the lock `lock` for the block ([`lock_file`][hmfusion.ops.files.lock_file], then
    [`unlock_file`][hmfusion.ops.files.unlock_file]).

    Raises:
        LockHeld: another live process still holds it after `timeout` seconds.
        OSError: the lock file cannot be created.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "x.lock"
        >>> with held(path):
        ...     path.exists()
        True
    """
    handle = lock_file(lock, timeout, on_wait=on_wait)
    try:
        yield
    finally:
        unlock_file(lock, handle)
