"""W as a plain matrix: the dense baseline and the low-rank product U Vᵀ."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from hmfusion.ops import kernels
from hmfusion.structures import fitting
from hmfusion.structures.base import (
    Factors,
    FactorSpec,
    FlatPiece,
    Structure,
    _uniform_,
    linear_weight_variance,
)

__all__ = ["DenseStructure", "LowRankStructure"]


# dense ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DenseStructure(Structure):
    """W itself (n×D): the unstructured baseline, `nn.Linear` on the concatenation.

    Args:
        n: output width.
        D: input width Σ n_i.
    """

    n: int
    D: int

    @property
    def factor_specs(self) -> tuple[FactorSpec, ...]:
        return (FactorSpec("W", (self.n, self.D)),)

    @property
    def flat_layout(self) -> tuple[FlatPiece, ...]:
        return (FlatPiece("W"),)

    def materialize(self, f: Factors) -> Tensor:
        return f["W"]

    def apply_transposed(self, x: Tensor, f: Factors) -> Tensor:
        return F.linear(x, f["W"])

    def init_factors_(self, f: Factors, generator: torch.Generator | None = None) -> None:
        _uniform_(f["W"], linear_weight_variance(self.D), generator)

    def fit(self, weight: Tensor) -> dict[str, Tensor]:
        return {"W": weight.clone()}

    def describe(self) -> str:
        return ""


# low rank ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LowRankStructure(Structure):
    """W = U Vᵀ with U: n×r, V: D×r. Flat w = [U (n×r) | Vᵀ (r×D)].

    Args:
        n: output width.
        D: input width Σ n_i.
        r: the rank.
    """

    n: int
    D: int
    r: int

    @property
    def factor_specs(self) -> tuple[FactorSpec, ...]:
        return (FactorSpec("U", (self.n, self.r)), FactorSpec("V", (self.D, self.r)))

    @property
    def flat_layout(self) -> tuple[FlatPiece, ...]:
        return (FlatPiece("U"), FlatPiece("V", transposed=True))

    def materialize(self, f: Factors) -> Tensor:
        return f["U"] @ f["V"].transpose(0, 1)

    def apply_transposed(self, x: Tensor, f: Factors) -> Tensor:
        return kernels.apply_factor(x, (f["U"], f["V"]))

    def init_factors_(self, f: Factors, generator: torch.Generator | None = None) -> None:
        # Var(W) = r·Var(U)·Var(V); split evenly: Var(U) = Var(V) = √(1/(3D)/r).
        variance = math.sqrt(linear_weight_variance(self.D) / self.r)
        _uniform_(f["U"], variance, generator)
        _uniform_(f["V"], variance, generator)

    def fit(self, weight: Tensor) -> dict[str, Tensor]:
        # Eckart–Young: the truncated SVD is the best rank-r approximation.
        u, v = fitting.truncated_svd(weight, self.r)
        return {"U": u, "V": v}

    def describe(self) -> str:
        return f"r={self.r}"
