"""The compiled extension: build it on first use, load it, or fall back, once per process.

`csrc/kron_concat.cpp` (which includes the register-tiled loops of `csrc/tiled.h`) is compiled
with `torch.utils.cpp_extension.load` (the machine's C++ compiler and ninja) into the torch
extensions cache (`TORCH_EXTENSIONS_DIR`, by default `~/.cache/torch_extensions`), in a folder
named after a hash of the sources, the compiler flags and the CPU (`-march=native` on x86-64),
so that checkouts with different sources never rebuild over each other and a build for one
CPU's instructions is never loaded on another; later processes load it from there. It
registers the operators `torch.ops.hmfusion_native.{forward, backward, tiled_forward,
tiled_backward}`, which [`hmfusion.ops.native`][hmfusion.ops.native] wraps.

Where the build fails (no compiler, no ninja, missing headers) a one-line `RuntimeWarning` is
issued once and [`available`][hmfusion.ops.build.available] answers False: the operator then
runs its pure-PyTorch fallback. Setting the environment variable `HMFUSION_NATIVE=0` skips the
build. This module never changes the process environment.
"""

from __future__ import annotations

import hashlib
import os
import platform
import threading
import time
import warnings
from pathlib import Path
from typing import Literal

import torch

__all__ = ["available", "status"]

_SOURCE = Path(__file__).with_name("csrc") / "kron_concat.cpp"
#: Every file of the extension (the operator and the register-tiled loops it includes).
_SOURCES = (_SOURCE, _SOURCE.with_name("tiled.h"))
_EXTENSION = "hmfusion_native"
#: Where the compiled path stands in this process (see [`status`][hmfusion.ops.build.status]).
_STATE: Literal["unloaded", "loaded", "disabled", "failed"] = "unloaded"
_LOCK = threading.Lock()


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
    try:
        info = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return platform.processor()
    lines = [line for line in info.splitlines() if line.startswith(("model name", "flags"))]
    return "\n".join(sorted(set(lines)))


def _extension_name(*sources: Path) -> str:
    """The extension's name, and so its cache folder: one per source text, compiler flags and
    CPU, so that two checkouts (or versions) of hmfusion never rebuild over each other's build,
    nor wait on the lock of the other's interrupted build, and a build for one CPU's
    instructions is never loaded on another."""
    digest = hashlib.sha256()
    for source in sources or _SOURCES:
        digest.update(source.read_bytes())
    digest.update(" ".join(_cflags()).encode())
    digest.update(_cpu_fingerprint().encode())
    return f"{_EXTENSION}_{digest.hexdigest()[:12]}"


#: How long to wait for another process's build (one takes 10–60 s here) before falling back.
BUILD_LOCK_WAIT_S = 300.0


def _wait_for_build_lock(lock: Path, timeout: float) -> None:
    """Wait while another process holds the build's lock file; after `timeout` seconds raise
    (the caller falls back), since torch itself would wait forever on a lock that an
    interrupted build (Ctrl-C, SIGKILL) left behind."""
    deadline = time.monotonic() + timeout
    while lock.exists():
        if time.monotonic() >= deadline:
            raise RuntimeError(
                f"the build lock {lock} has been held for over {timeout:.0f} s: another "
                "process is building, or a build was interrupted (then delete that file)"
            )
        time.sleep(min(0.5, max(timeout / 10, 0.01)))


def _registered() -> bool:
    """Whether `torch.ops.hmfusion_native` is registered in this process already."""
    return hasattr(torch.ops.hmfusion_native, "forward")


def _build() -> None:
    """Compile (or load from the cache) and register `torch.ops.hmfusion_native`."""
    from torch.utils import cpp_extension

    if _registered():
        return

    name = _extension_name(*_SOURCES)
    build_directory = Path(cpp_extension._get_build_directory(name, verbose=False))
    _wait_for_build_lock(build_directory / "lock", BUILD_LOCK_WAIT_S)
    cpp_extension.load(
        name=name,
        sources=[str(_SOURCE)],
        extra_cflags=_cflags(),
        extra_ldflags=["-fopenmp"],
        is_python_module=False,
        verbose=False,
    )


def status() -> Literal["unloaded", "loaded", "disabled", "failed"]:
    """Where the compiled operator stands in this process, without building it.

    Returns:
        `"unloaded"` (not tried yet), `"loaded"`, `"disabled"` (`HMFUSION_NATIVE=0`)
        or `"failed"` (the build failed; the fallback runs).

    Example:
        >>> from hmfusion.ops import native
        >>> native.status() in ("unloaded", "loaded", "disabled", "failed")
        True
    """
    return _STATE


def available() -> bool:
    """Whether the compiled CPU operator is loaded, building it on the first call.

    Honours `HMFUSION_NATIVE=0` (never build). A failed build warns once (one line,
    `RuntimeWarning`) and is not retried in this process.

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
                if os.environ.get("HMFUSION_NATIVE", "1").strip() == "0":
                    _STATE = "disabled"
                else:
                    try:
                        _build()
                        _STATE = "loaded"
                    except Exception as error:  # any build or load failure: fall back
                        _STATE = "failed"
                        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
                        warnings.warn(
                            f"hmfusion: native kernel unavailable ({reason[:160]}); "
                            "using the pure-PyTorch path",
                            RuntimeWarning,
                            stacklevel=2,
                        )
    return _STATE == "loaded"
