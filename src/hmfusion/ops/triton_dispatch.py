"""When the operator runs its Triton kernels, and their module, imported on first use.

[`hmfusion.ops.native`][hmfusion.ops.native] runs the variant `"triton"` of
`hmfusion::fused_kron_concat`
(the planner's `Plan.kernel == "triton"`) through
[`hmfusion.ops.triton_kernels`][hmfusion.ops.triton_kernels] where
[`use`][hmfusion.ops.triton_dispatch.use] says so, and the pure-PyTorch kernel elsewhere.
Triton is imported only by the first such call (or the first CUDA plan), so CPU-only users
without Triton are unaffected.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from types import ModuleType

import torch
from torch import Tensor

__all__ = ["DTYPES", "kernels", "runs", "use"]

#: dtypes the Triton kernels handle (float64 runs the pure-PyTorch kernel).
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
#: `hmfusion.ops.triton_kernels` once imported (None: Triton is missing or does not load).
_LOADED: dict[str, ModuleType | None] = {}


def kernels() -> ModuleType | None:
    """`hmfusion.ops.triton_kernels`, imported on first use.

    Returns:
        The module, or None where Triton is not installed or does not load.
    """
    if "module" not in _LOADED:
        try:
            from hmfusion.ops import triton_kernels
        except ImportError:  # (the pure-PyTorch kernel runs instead)
            _LOADED["module"] = None
        else:
            _LOADED["module"] = triton_kernels
    return _LOADED["module"]


def use(tensors: Sequence[Tensor], variant: str) -> bool:
    """Whether the operator's call runs the Triton kernels: `variant="triton"` on CUDA tensors
    of `DTYPES` with Triton installed, or on CPU tensors where the kernels run in Triton's
    interpreter (`TRITON_INTERPRET=1` before they were imported: the tests).

    Args:
        tensors: the call's inputs (the first one's device and dtype decide).
        variant: the operator's variant.

    Returns:
        Whether the Triton kernels run.
    """
    first = tensors[0]
    if variant != "triton" or first.dtype not in DTYPES:
        return False
    device = first.device.type
    if device != "cuda" and not (device == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"):
        return False
    module = kernels()
    return module is not None and (device == "cuda" or module.interpreted())


def runs(dtype: torch.dtype, device_type: str) -> bool:
    """Whether a fused plan with `kernel="triton"` would run the Triton kernels: CUDA, a dtype
    of `DTYPES`, Triton installed (importing it on first use; while torch.compile traces,
    whether it is imported already, as torch.compile does itself on CUDA).

    Args:
        dtype: the computation's dtype.
        device_type: `"cpu"`, `"cuda"`, …

    Returns:
        Whether the Triton kernels run.

    Example:
        >>> import torch
        >>> from hmfusion.ops import triton_dispatch
        >>> triton_dispatch.runs(torch.float32, "cpu"), triton_dispatch.runs(torch.float64, "cuda")
        (False, False)
    """
    if device_type != "cuda" or dtype not in DTYPES:
        return False
    if torch.compiler.is_compiling():  # (no import while tracing)
        return _LOADED.get("module") is not None or sys.modules.get("triton") is not None
    return kernels() is not None
