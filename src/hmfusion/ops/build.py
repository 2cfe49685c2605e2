"""The compiled extension: build it on first use, verify and load it, or fall back, once per
process.

`csrc/kron_concat.cpp` (which includes the register-tiled loops of `csrc/tiled.h`) is compiled
with `torch.utils.cpp_extension.load` (the machine's C++ compiler and ninja) into the torch
extensions cache (`TORCH_EXTENSIONS_DIR`, by default `~/.cache/torch_extensions`), in a folder
named after a hash of the sources, the compiler flags and the CPU (`-march=native` on x86-64),
so that checkouts with different sources never rebuild over each other and a build for one
CPU's instructions is never loaded on another. It registers the operators
`torch.ops.hmfusion_native.{forward, backward, tiled_forward, tiled_backward}`, which
[`hmfusion.ops.native`][hmfusion.ops.native] wraps.

The first use on a machine builds it once (one line on stderr says so: about 20–60 s) and
records the library's size and SHA-256 beside it (`<name>.so.verified`). Later processes load
it without any lock, after checking it against that record: a truncated or replaced library
is never mapped (it would crash the process with SIGBUS) but rebuilt. A build holds the lock
`hmfusion.lock` in that folder, which records its owner (pid, host, start time); the lock is
an advisory file lock that the system releases when its owner dies, so a killed build never
stalls later processes (a live build elsewhere is waited for up to
[`BUILD_LOCK_WAIT_S`][hmfusion.ops.build.BUILD_LOCK_WAIT_S]).

Where the build or the load fails (no compiler, no ninja, missing headers, a library that
registers no operator) a one-line `RuntimeWarning` is issued once and
[`available`][hmfusion.ops.build.available] answers False: the operator then runs its
pure-PyTorch fallback. The environment variable `HMFUSION_NATIVE` switches it: `0`, `false`,
`no`, `off` (any case) never build; `1`, `true`, `yes`, `on` or unset build; any other value
warns once and is taken as off (the conservative reading of a switch someone set). This module
never changes the process environment.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch

from hmfusion.ops import cpuinfo, files

__all__ = ["BUILD_LOCK_WAIT_S", "available", "status"]

_SOURCE = Path(__file__).with_name("csrc") / "kron_concat.cpp"
#: Every file of the extension (the operator and the register-tiled loops it includes).
_SOURCES = (_SOURCE, _SOURCE.with_name("tiled.h"))
_EXTENSION = "hmfusion_native"
#: Where the compiled path stands in this process (see [`status`][hmfusion.ops.build.status]).
_STATE: Literal["unloaded", "loaded", "disabled", "failed"] = "unloaded"
_LOCK = threading.Lock()
_OFF = ("0", "false", "no", "off")
_ON = ("", "1", "true", "yes", "on")

#: How long to wait for another live process's build (one takes 20–60 s) before falling back.
BUILD_LOCK_WAIT_S = 300.0


def _cflags() -> list[str]:
    """The compiler flags: optimised, OpenMP, and on x86-64 the building CPU's vector
    instructions (`-march=native`: the register-tiled loops of `csrc/tiled.h` are vectorised by
    the compiler)."""
    flags = ["-O3", "-fopenmp"]
    if platform.machine().lower() in ("x86_64", "amd64"):
        flags.append("-march=native")
    return flags


def _cpu_fingerprint() -> str:
    """What `-march=native` compiles for: the CPU's model and instruction-set flags (so that a
    cache folder shared by machines with other CPUs is never loaded by the wrong one)."""
    fields = cpuinfo.cpu_fields("model name", "flags")
    return platform.processor() if fields is None else fields


def _extension_name(*sources: Path) -> str:
    """The extension's name, and so its cache folder: one per source text, compiler flags and
    CPU, so that two checkouts (or versions) of hmfusion never rebuild over each other's build,
    and a build for one CPU's instructions is never loaded on another."""
    digest = hashlib.sha256(b"verified builds")  # never the folder of an unverified build
    for source in sources or _SOURCES:
        digest.update(source.read_bytes())
    digest.update(" ".join(_cflags()).encode())
    digest.update(_cpu_fingerprint().encode())
    return f"{_EXTENSION}_{digest.hexdigest()[:12]}"


def _switch() -> bool:
    """Whether `HMFUSION_NATIVE` lets the operator be built (see the module's text)."""
    value = os.environ.get("HMFUSION_NATIVE", "").strip().lower()
    if value in _OFF:
        return False
    if value not in _ON:
        warnings.warn(
            f"hmfusion: HMFUSION_NATIVE={value!r} is not one of {', '.join(_ON[1:])} or "
            f"{', '.join(_OFF)}; the compiled operator stays off",
            RuntimeWarning,
            stacklevel=3,
        )
        return False
    return True


# the record of a build: its size and SHA-256 -----------------------------------------------------
def _fingerprint(library: Path) -> dict[str, Any]:
    return {"size": library.stat().st_size, "sha256": files.sha256_file(library)}


def _record(library: Path) -> Path:
    return library.with_name(library.name + ".verified")


def _verified(library: Path) -> bool:
    """Whether `library` is the file its build recorded (size first: a truncated file is
    never read whole)."""
    try:
        recorded = json.loads(_record(library).read_text())
        if library.stat().st_size != recorded["size"]:
            return False
        return bool(_fingerprint(library) == recorded)
    except (OSError, ValueError, KeyError, TypeError):
        return False


# the lock of a build ----------------------------------------------------------------------------
@contextlib.contextmanager
def _build_lock(lock: Path, timeout: float) -> Iterator[None]:
    """Hold `lock` while building ([`files.held`][hmfusion.ops.files.held]: an advisory file lock
    released when the holder dies, or the file's existence, broken when its owner is gone).
    Raises RuntimeError (the caller falls back) after `timeout` seconds behind a live owner."""

    def waiting(who: str) -> None:
        print(f"hmfusion: waiting for {who} to build the compiled operator", file=sys.stderr)

    try:
        handle = files.lock_file(lock, timeout, on_wait=waiting)
    except files.LockHeld as held:
        raise RuntimeError(
            f"the build lock {lock} has been held by {held.who} for over {timeout:.0f} s"
        ) from None
    try:
        yield
    finally:
        files.unlock_file(lock, handle)


# build and load ---------------------------------------------------------------------------------
def _registered() -> bool:
    """Whether `torch.ops.hmfusion_native` is registered in this process already."""
    return hasattr(torch.ops.hmfusion_native, "forward")


def _load(library: Path) -> None:
    torch.ops.load_library(str(library))
    if not _registered():
        raise RuntimeError(
            f"{library} loads but registers no operator hmfusion_native.forward (not a build "
            "of this operator; delete that file to rebuild)"
        )


def _compile(name: str, folder: Path, library: Path) -> None:
    """Build into `folder` from scratch (under the build lock), load, and record the result."""
    from torch.utils import cpp_extension

    _record(library).unlink(missing_ok=True)
    for stale in (library, *folder.glob("*.o"), folder / "lock"):  # torch's own lock is stale
        stale.unlink(missing_ok=True)  # under ours; a truncated output must not be "up to date"
    print(
        "hmfusion: building the compiled operator once for this machine (about 20-60 s; "
        f"later processes load it from {folder})",
        file=sys.stderr,
        flush=True,
    )
    cpp_extension.load(
        name=name,
        sources=[str(_SOURCE)],
        extra_cflags=_cflags(),
        extra_ldflags=["-fopenmp"],
        build_directory=str(folder),
        is_python_module=False,
        verbose=False,
    )
    if not _registered():
        raise RuntimeError(f"the build in {folder} registers no operator hmfusion_native.forward")
    staged = _record(library).with_suffix(".tmp")
    staged.write_text(json.dumps(_fingerprint(library)))
    os.replace(staged, _record(library))


def _build() -> None:
    """Load the verified build of the cache, or build it (under the lock) and load it."""
    from torch.utils import cpp_extension

    if _registered():
        return
    name = _extension_name(*_SOURCES)
    folder = Path(cpp_extension._get_build_directory(name, verbose=False))
    library = folder / f"{name}.so"
    if _verified(library):  # the ordinary case: no lock, nothing written
        _load(library)
        return
    with _build_lock(folder / "hmfusion.lock", BUILD_LOCK_WAIT_S):
        if _verified(library):  # another process built it while we waited
            _load(library)
        else:
            _compile(name, folder, library)


def status() -> Literal["unloaded", "loaded", "disabled", "failed"]:
    """Where the compiled operator stands in this process, without building it.

    Returns:
        `"unloaded"` (not tried yet), `"loaded"` (its operators are registered),
        `"disabled"` (`HMFUSION_NATIVE` off) or `"failed"` (the build or load failed; the
        fallback runs).

    Example:
        >>> from hmfusion.ops import native
        >>> native.status() in ("unloaded", "loaded", "disabled", "failed")
        True
    """
    return _STATE


def available() -> bool:
    """Whether the compiled CPU operator is loaded, building it on the first call.

    Honours `HMFUSION_NATIVE` (see the module's text). A failed build or load warns once (one
    line, `RuntimeWarning`) and is not retried in this process.

    Returns:
        True when `torch.ops.hmfusion_native` runs the CPU kernels.

    Example:
        >>> from hmfusion.ops import native
        >>> isinstance(native.available(), bool)
        True
    """
    global _STATE
    if _STATE == "unloaded":
        with _LOCK:
            if _STATE == "unloaded":
                if not _switch():
                    _STATE = "disabled"
                else:
                    try:
                        _build()
                        _STATE = "loaded" if _registered() else "failed"
                    except Exception as error:  # any build or load failure: fall back
                        _STATE = "failed"
                        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
                        warnings.warn(
                            f"hmfusion: native kernel unavailable ({reason[:200]}); "
                            "using the pure-PyTorch path",
                            RuntimeWarning,
                            stacklevel=2,
                        )
    return _STATE == "loaded"
