"""hmfusion: structured parameterized concatenation fusion for PyTorch.

`Y = cat(x_1, …, x_k, dim=-1) Wᵀ` with W (n×D) built from a few small factors — above all the
hierarchical-matrix (HM) fusion W = A ⊗ B, applied without ever forming W. The math and its
conventions are documented in [`hmfusion.structures`][hmfusion.structures].
"""

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
