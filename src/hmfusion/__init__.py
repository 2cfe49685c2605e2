"""hmfusion: structured parameterized concatenation fusion for PyTorch.

`Y = cat(x_1, …, x_k, dim=-1) Wᵀ` with W (n×D) built from a few small factors — above all the
hierarchical-matrix (HM) fusion W = A ⊗ B, applied without ever forming W. The math and its
conventions are documented in [`hmfusion.structures`][hmfusion.structures].
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hmfusion.fusion import (
        ConcatFusion,
        DenseConcatFusion,
        DualLPHMConcatFusion,
        HMConcatFusion,
        LowRankConcatFusion,
        LPHMConcatFusion,
        RandomMatrixConcatFusion,
    )

__all__ = [
    "ConcatFusion",
    "DenseConcatFusion",
    "DualLPHMConcatFusion",
    "HMConcatFusion",
    "LPHMConcatFusion",
    "LowRankConcatFusion",
    "RandomMatrixConcatFusion",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # The modules are imported on first use (PEP 562), so that `import hmfusion.apps.cli` does not
    # load torch: the `hmfusion` command sets its OpenMP defaults before torch starts.
    if name in __all__:
        value = getattr(importlib.import_module("hmfusion.fusion"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hmfusion' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
