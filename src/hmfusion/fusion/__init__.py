"""Concatenation-fusion modules: `Y = cat(x_1, …, x_k, dim=-1) Wᵀ (+ bias)` with structured W.

`hmfusion.fusion.base` holds the module contract ([`ConcatFusion`][hmfusion.fusion.ConcatFusion]),
`hmfusion.fusion.members` one class per member of the family.
"""

from hmfusion.fusion.base import ConcatFusion
from hmfusion.fusion.members import (
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
