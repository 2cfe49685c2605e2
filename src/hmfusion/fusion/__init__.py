"""Concatenation-fusion modules: `Y = cat(x_1, …, x_k, dim=-1) Wᵀ (+ bias)` with structured W.

`hmfusion.fusion.base` holds the module contract ([`ConcatFusion`][hmfusion.fusion.ConcatFusion]),
`hmfusion.fusion.dense` the dense, low-rank and random-matrix members,
`hmfusion.fusion.kronecker` the Kronecker members (HM, LPHM, dual-LPHM).
"""

from hmfusion.fusion.base import ConcatFusion
from hmfusion.fusion.dense import DenseConcatFusion, LowRankConcatFusion, RandomMatrixConcatFusion
from hmfusion.fusion.kronecker import DualLPHMConcatFusion, HMConcatFusion, LPHMConcatFusion

__all__ = [
    "ConcatFusion",
    "DenseConcatFusion",
    "DualLPHMConcatFusion",
    "HMConcatFusion",
    "LPHMConcatFusion",
    "LowRankConcatFusion",
    "RandomMatrixConcatFusion",
]
