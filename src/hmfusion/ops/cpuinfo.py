"""The CPU's identity as the system reports it (`/proc/cpuinfo` on Linux, else `platform`).

One reader for what depends on the CPU: the wisdom fingerprint
([`hmfusion.ops.wisdom`][hmfusion.ops.wisdom]), the compiled operator's cache folder
([`hmfusion.ops.build`][hmfusion.ops.build]) and the machine a benchmark records
(`hmfusion.apps.bench`).
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

__all__ = ["cpu_fields", "cpu_model"]


@functools.cache
def _cpuinfo() -> str | None:
    """The text of `/proc/cpuinfo` (read once per process), None where there is none."""
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return None


def cpu_model() -> str:
    """The CPU's model name (the first `model name` of `/proc/cpuinfo`), else what `platform`
    says (the processor, else the architecture).

    Example:
        >>> isinstance(cpu_model(), str) and cpu_model() != ""
        True
    """
    for line in (_cpuinfo() or "").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_fields(*names: str) -> str | None:
    """The distinct lines of `/proc/cpuinfo` that start with one of `names` (e.g. `"flags"`),
    sorted and joined by newlines: the same text on every machine with that CPU, whatever its
    core count. None where there is no `/proc/cpuinfo`.

    Example:
        >>> fields = cpu_fields("model name", "flags")
        >>> fields is None or all(line.startswith(("model name", "flags"))
        ...                       for line in fields.splitlines())
        True
    """
    info = _cpuinfo()
    if info is None:
        return None
    return "\n".join(sorted({line for line in info.splitlines() if line.startswith(names)}))
