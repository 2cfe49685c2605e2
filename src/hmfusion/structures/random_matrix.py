"""W = diag(λ₁) R₁ diag(λ₂) R₂ᵀ: the random-matrix adaptation (fixed random R₁, R₂)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from hmfusion.structures.base import (
    Factors,
    FactorSpec,
    FlatPiece,
    Structure,
    _uniform_,
    linear_weight_variance,
)

__all__ = ["RandomMatrixStructure"]


@dataclass(frozen=True)
class RandomMatrixStructure(Structure):
    """W = diag(λ₁) R₁ diag(λ₂) R₂ᵀ with fixed random R₁: n×r, R₂: D×r; only λ₁ (n), λ₂ (r) train.

    R₁ and R₂ are drawn once from `torch.Generator().manual_seed(seed)` on the CPU in float64
    (so every device and dtype sees the same values) with unit-variance uniform entries. λ₁
    starts at 1 and λ₂ at √(1/(3D·r)), which gives W the variance 1/(3D) of `nn.Linear`.
    Flat w = [λ₁ | λ₂].

    Args:
        n: output width.
        D: input width Σ n_i.
        r: the inner dimension.
        seed: the seed of R₁ and R₂.
    """

    n: int
    D: int
    r: int
    seed: int = 0

    @property
    def factor_specs(self) -> tuple[FactorSpec, ...]:
        return (
            FactorSpec("lambda1", (self.n,)),
            FactorSpec("lambda2", (self.r,)),
            FactorSpec("R1", (self.n, self.r), trainable=False),
            FactorSpec("R2", (self.D, self.r), trainable=False),
        )

    @property
    def flat_layout(self) -> tuple[FlatPiece, ...]:
        return (FlatPiece("lambda1"), FlatPiece("lambda2"))

    def random_matrices(self) -> tuple[Tensor, Tensor]:
        """R₁ (n×r) and R₂ (D×r) for this seed, float64 on the CPU."""
        generator = torch.Generator(device="cpu").manual_seed(self.seed)
        try:
            r1 = torch.empty(self.n, self.r, dtype=torch.float64)
            r2 = torch.empty(self.D, self.r, dtype=torch.float64)
        except RuntimeError as error:  # the allocator's refusal, as for every factor
            raise ValueError(
                f"n={self.n}, D={self.D}: r={self.r} needs random matrices of "
                f"{(self.n + self.D) * self.r} float64 values, which cannot be allocated; "
                "choose a smaller r"
            ) from error
        _uniform_(r1, 1.0, generator)
        _uniform_(r2, 1.0, generator)
        return r1, r2

    def materialize(self, f: Factors) -> Tensor:
        return (f["lambda1"][:, None] * f["R1"] * f["lambda2"]) @ f["R2"].transpose(0, 1)

    def apply_transposed(self, x: Tensor, f: Factors) -> Tensor:
        z = x @ f["R2"]
        z = z * f["lambda2"].to(z.dtype)
        y = z @ f["R1"].transpose(0, 1)
        return y * f["lambda1"].to(y.dtype)

    def init_factors_(self, f: Factors, generator: torch.Generator | None = None) -> None:
        r1, r2 = self.random_matrices()
        f["R1"].copy_(r1)
        f["R2"].copy_(r2)
        f["lambda1"].fill_(1.0)
        f["lambda2"].fill_(math.sqrt(linear_weight_variance(self.D) / self.r))

    def describe(self) -> str:
        return f"r={self.r}, seed={self.seed}"
