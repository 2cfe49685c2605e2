"""Wisdom: the plans the measuring planner chose, kept on disk per machine.

A plan measured on one machine holds for another only if nothing it depends on differs, so
wisdom is keyed by a [`fingerprint`][hmfusion.ops.wisdom.fingerprint] of the machine and
software and kept in `wisdom-<digest>.json` in `$HMFUSION_WISDOM_DIR`, else
`$XDG_CACHE_HOME/hmfusion`, else `~/.cache/hmfusion`, written atomically (a temporary file in
the folder, then a rename; other processes' plans are merged under a lock beside the file, not
lost). A corrupt file, or one
written for another fingerprint, is ignored with a one-line warning, never an error.
[`hmfusion.ops.tuning`][hmfusion.ops.tuning] reads and adds to it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import warnings
from pathlib import Path
from typing import Any

import torch

from hmfusion.ops import costmodel, files
from hmfusion.ops.cpuinfo import cpu_model

__all__ = ["export_wisdom", "fingerprint", "import_wisdom", "wisdom_path"]

_FORMAT = 1
_wisdom: dict[str, dict[str, dict[str, Any]]] = {}  # fingerprint digest → key text → entry


@functools.cache
def _version() -> str:
    try:
        return importlib.metadata.version("hmfusion")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@functools.cache
def _code() -> str:
    """A digest of the code that runs and ranks the plans (`hmfusion/ops/`, its C++ included):
    an edit of a kernel or the cost model makes earlier measurements no longer count."""
    digest = hashlib.sha256()
    folder = Path(__file__).parent
    for path in sorted(folder.rglob("*")):
        if path.suffix in (".py", ".cpp", ".h"):
            digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def fingerprint(device_type: str = "cpu") -> dict[str, Any]:
    """What a measured plan depends on besides its key: the machine and the software.

    The CPU's model name, architecture and the capability the cost model reads (torch's vector
    dispatch level, whether 16-bit GEMMs run on oneDNN), torch's thread count, torch's and
    hmfusion's versions and a digest of its `ops/` code; on CUDA also the GPU's name and compute
    capability.

    Args:
        device_type: `"cpu"`, `"cuda"`, …

    Returns:
        A JSON-able dict; wisdom is used only where it matches exactly.

    Example:
        >>> import torch
        >>> from hmfusion import planner
        >>> planner.fingerprint()["threads"] == torch.get_num_threads()
        True
    """
    found: dict[str, Any] = {
        "device_type": device_type,
        "cpu": cpu_model(),
        "machine": platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "half_gemms_fast": {
            str(k): v for k, v in sorted(costmodel.HALF_GEMMS_FAST.items(), key=str)
        },
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "hmfusion": _version(),
        "code": _code(),
    }
    if device_type == "cuda" and torch.cuda.is_available():
        found["gpu"] = torch.cuda.get_device_name()
        found["gpu_capability"] = list(torch.cuda.get_device_capability())
    return found


def _digest(found: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(found, sort_keys=True).encode()).hexdigest()[:16]


def wisdom_path(device_type: str = "cpu") -> Path:
    """The file this machine's wisdom for `device_type` is kept in.

    `wisdom-<digest of the fingerprint>.json` in `$HMFUSION_WISDOM_DIR`, else
    `$XDG_CACHE_HOME/hmfusion`, else `~/.cache/hmfusion`.

    Args:
        device_type: `"cpu"`, `"cuda"`, …

    Returns:
        The path (the file may not exist yet).

    Example:
        >>> from hmfusion import planner
        >>> planner.wisdom_path().name.startswith("wisdom-")
        True
    """
    folder = os.environ.get("HMFUSION_WISDOM_DIR")
    if not folder:
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
        folder = os.path.join(cache, "hmfusion")
    return Path(folder) / f"wisdom-{_digest(fingerprint(device_type))}.json"


def _read(path: Path, expected: dict[str, Any]) -> dict[str, dict[str, Any]] | None:
    """The plans of a wisdom file written for `expected`; None (with a warning) otherwise."""
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValueError(f"not hmfusion wisdom format {_FORMAT}")
        plans = data["plans"]
        if not isinstance(plans, dict) or not all(isinstance(v, dict) for v in plans.values()):
            raise ValueError("'plans' is not a mapping of plans")
    except (OSError, ValueError, KeyError) as error:
        warnings.warn(f"hmfusion: ignoring wisdom file {path}: {error}", stacklevel=3)
        return None
    if data.get("fingerprint") != expected:
        warnings.warn(
            f"hmfusion: ignoring wisdom file {path}: written for another machine or version",
            stacklevel=3,
        )
        return None
    return plans


def known(device_type: str) -> tuple[dict[str, dict[str, Any]], dict[str, Any], Path]:
    """This fingerprint's wisdom in memory (read from its file on first use)."""
    found = fingerprint(device_type)
    digest = _digest(found)
    path = wisdom_path(device_type)
    if digest not in _wisdom:
        _wisdom[digest] = (_read(path, found) or {}) if path.exists() else {}
    return _wisdom[digest], found, path


def _write(path: Path, found: dict[str, Any], plans: dict[str, dict[str, Any]]) -> None:
    """Write a wisdom file atomically (a temporary file in its folder, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"format": _FORMAT, "fingerprint": found, "plans": plans}, indent=1)
    with files.atomic_write(path, prefix=".wisdom-", follow_umask=False) as staged:
        staged.write_text(text)


#: How long a process waits for another's wisdom write (a read, a merge and a rename: ms).
_LOCK_WAIT_S = 10.0


def remember(device_type: str, key: str, entry: dict[str, Any]) -> None:
    """Add the plan `entry`, measured for `key`, to this process's wisdom and to this machine's
    wisdom file ([`wisdom_path`][hmfusion.ops.wisdom.wisdom_path]).

    The file is read, merged and replaced under the lock `<wisdom file>.lock` beside it
    ([`files.held`][hmfusion.ops.files.held]), so that processes measuring at once keep each
    other's plans. Where the file or its lock cannot be written (a read-only cache folder,
    another process holding the lock for over 10 s) the plan stays in this process only and a
    one-line warning says so; it never raises for that.

    Example:
        >>> import os, tempfile
        >>> os.environ["HMFUSION_WISDOM_DIR"] = tempfile.mkdtemp()
        >>> remember("cpu", "example-key", {"plan": "composite"})
        >>> known("cpu")[0]["example-key"]
        {'plan': 'composite'}
        >>> del known("cpu")[0]["example-key"], os.environ["HMFUSION_WISDOM_DIR"]
    """
    plans, found, path = known(device_type)
    plans[key] = entry
    try:
        _merge_into(path, found, plans)
    except (OSError, files.LockHeld) as error:
        warnings.warn(f"hmfusion: could not save wisdom to {path}: {error}", stacklevel=2)


def _merge_into(path: Path, found: dict[str, Any], plans: dict[str, dict[str, Any]]) -> None:
    """Add `plans` to the wisdom file `path` under its lock (other processes' plans kept)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with files.held(path.with_name(path.name + ".lock"), _LOCK_WAIT_S):
        on_disk = (_read(path, found) or {}) if path.exists() else {}
        _write(path, found, {**on_disk, **plans})


def export_wisdom(path: str | os.PathLike[str], device_type: str = "cpu") -> int:
    """Write this machine's wisdom (the plans measured for `device_type`) to `path`.

    Args:
        path: the file to write (JSON; replaced atomically).
        device_type: `"cpu"`, `"cuda"`, …

    Returns:
        The number of plans written.

    Example:
        >>> import os, tempfile
        >>> from hmfusion import planner
        >>> path = os.path.join(tempfile.mkdtemp(), "wisdom.json")
        >>> planner.export_wisdom(path) >= 0
        True
    """
    plans, found, _ = known(device_type)
    _write(Path(path), found, plans)
    return len(plans)


def import_wisdom(path: str | os.PathLike[str]) -> int:
    """Add the plans of a wisdom file written on a machine like this one to this process and
    to this machine's wisdom.

    A file written for another fingerprint (another CPU, thread count, torch or hmfusion
    version), or one that is not wisdom, is ignored with a warning.

    Args:
        path: a file written by [`export_wisdom`][hmfusion.ops.wisdom.export_wisdom] (or a
            wisdom file from the cache folder).

    Returns:
        The number of plans imported (0 where the file was ignored).

    Raises:
        FileNotFoundError: `path` does not exist.

    Example:
        >>> import os, tempfile
        >>> from hmfusion import planner
        >>> path = os.path.join(tempfile.mkdtemp(), "wisdom.json")
        >>> count = planner.export_wisdom(path)
        >>> planner.import_wisdom(path) == count
        True
    """
    source = Path(path)
    if not source.exists():
        raise FileNotFoundError(f"no wisdom file at {source}")
    try:
        device_type = json.loads(source.read_text())["fingerprint"]["device_type"]
    except (OSError, ValueError, KeyError, TypeError):
        device_type = "cpu"  # (_read warns below)
    plans, found, target = known(str(device_type))
    imported = _read(source, found)
    if not imported:
        return 0
    plans.update(imported)
    with contextlib.suppress(OSError, files.LockHeld):
        _merge_into(target, found, plans)
    return len(imported)
