"""W = Σ A_j ⊗ B_j: the Kronecker family (HM, sum of Kronecker products, LPHM, dual-LPHM)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from hmfusion import _validation as V
from hmfusion.ops import kernels, planner
from hmfusion.structures import fitting
from hmfusion.structures.base import (
    Factors,
    FactorSpec,
    FlatPiece,
    Structure,
    _uniform_,
    linear_weight_variance,
)

__all__ = ["KroneckerStructure"]


#: Per Kronecker factor (left, right): its name when dense, its two names when low-rank.
_NAMES = (("A", ("P", "Q")), ("B", ("S", "T")))


def _spec_property(name: str, doc: str) -> property:
    return property(lambda self: getattr(self.spec, name), doc=doc)


@dataclass(frozen=True)
class KroneckerStructure(Structure):
    """W = Σ_{j<terms} A_j ⊗ B_j (top-left n×D block), each factor dense or low-rank.

    - HM: `rank_a = rank_b = None`, terms = 1: A (p×q), B (s×t); w = [A | B].
    - sum of Kronecker products: terms > 1: A (terms×p×q), B (terms×s×t); w = [A₁|B₁|A₂|B₂|…].
    - LPHM: `rank_b = r`: A (p×q), B = S Tᵀ with S: s×r, T: t×r; w = [A | S | Tᵀ].
    - dual-LPHM: `rank_a = rank_b = r`: A = P Qᵀ with P: p×r, Q: q×r; w = [P | Qᵀ | S | Tᵀ].

    The sizes live in one place, `spec` (the planner's [`KronSpec`][hmfusion.ops.planner.KronSpec],
    with s = ⌈n/p⌉ and t = ⌈D/q⌉); `n`, `p`, `s`… read it. `create` validates arguments and
    resolves `"auto"` block sizes
    ([`choose_block_sizes`][hmfusion.structures.blocksizes.choose_block_sizes]).

    Args:
        spec: the sizes n, D, p, q, s, t, terms and ranks (not checked: `create` checks them).
        pad: whether W is the top-left n×D block of a padded n'×D' product.
    """

    spec: planner.KronSpec
    pad: bool = False

    n = _spec_property("n", "Output width.")
    D = _spec_property("D", "Input width Σ n_i.")
    p = _spec_property("p", "Rows of A.")
    q = _spec_property("q", "Columns of A.")
    s = _spec_property("s", "Rows of B, n'/p = ⌈n/p⌉.")
    t = _spec_property("t", "Columns of B, D'/q = ⌈D/q⌉.")
    terms = _spec_property("terms", "Number of Kronecker products summed.")
    rank_a = _spec_property("rank_a", "Rank of A = P Qᵀ (dual-LPHM), or None for a dense A.")
    rank_b = _spec_property("rank_b", "Rank of B = S Tᵀ (LPHM, dual), or None for a dense B.")

    @classmethod
    def create(
        cls,
        n: int,
        D: int,
        p: object,
        q: object,
        *,
        terms: object = 1,
        rank_a: object = None,
        rank_b: object = None,
        pad: object = False,
    ) -> KroneckerStructure:
        """Validate the arguments and build the structure, `"auto"` block sizes resolved.

        Args:
            n: output width, a positive int.
            D: input width Σ n_i, a positive int.
            p: rows of A: a positive int or `"auto"` (the value minimising l).
            q: columns of A: a positive int, `"auto"`, or `None` (q = p).
            terms: the number of Kronecker products summed, a positive int.
            rank_a: the rank of A = P Qᵀ, or `None` for a dense A.
            rank_b: the rank of B = S Tᵀ, or `None` for a dense B.
            pad: allow p ∤ n or q ∤ D by zero-padding to multiples of p and q.

        Raises:
            TypeError: n, D, p, q, terms or a rank is not an int (p, q may also be `"auto"`);
                pad is not a bool.
            ValueError: a value is not positive; n or D exceeds 2⁴⁸; p ∤ n or q ∤ D without
                `pad` (the message lists the valid divisors); p > n or q > D.
        """
        return cls(*V.check_kronecker_structure(n, D, p, q, terms, rank_a, rank_b, pad))

    def _sides(self) -> tuple[tuple[str, tuple[str, str], int, int, int | None], ...]:
        (a, pq), (b, st) = _NAMES  # per factor (left, right): names, shape and rank
        return ((a, pq, self.p, self.q, self.rank_a), (b, st, self.s, self.t, self.rank_b))

    @property
    def factor_specs(self) -> tuple[FactorSpec, ...]:
        lead = () if self.terms == 1 else (self.terms,)
        specs: list[FactorSpec] = []
        for dense, (u, v), rows, cols, rank in self._sides():
            if rank is None:
                specs.append(FactorSpec(dense, (*lead, rows, cols)))
            else:
                specs += [FactorSpec(u, (rows, rank)), FactorSpec(v, (cols, rank))]
        return tuple(specs)

    @property
    def flat_layout(self) -> tuple[FlatPiece, ...]:
        if self.terms > 1:
            return tuple(FlatPiece(name, j) for j in range(self.terms) for name in ("A", "B"))
        return tuple(FlatPiece(f.name, transposed=f.name in "QT") for f in self.factor_specs)

    def _pair(self, f: Factors) -> tuple[kernels.Factor, kernels.Factor]:
        """A and B as the planner takes them: a tensor, or a low-rank pair (P, Q) / (S, T)."""
        left = (f["P"], f["Q"]) if self.spec.rank_a is not None else f["A"]
        right = (f["S"], f["T"]) if self.spec.rank_b is not None else f["B"]
        return left, right

    def dense_factors(self, f: Factors) -> tuple[Tensor, Tensor]:
        """A (terms×p×q) and B (terms×s×t) as dense tensors."""
        a, b = (kernels.dense_factor(factor) for factor in self._pair(f))
        return a.reshape(self.terms, self.p, self.q), b.reshape(self.terms, self.s, self.t)

    def materialize(self, f: Factors) -> Tensor:
        return kernels.kron_weight(*self.dense_factors(f))[: self.n, : self.D]

    def plan(
        self,
        m: int,
        dims: Sequence[int] | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        requires_grad: bool = True,
    ) -> planner.Plan:
        """[`choose_plan`][hmfusion.ops.planner.choose_plan] for this `spec`: how `apply_concat`
        computes m rows (not checked) of inputs of widths `dims` (default `(D,)`) in `dtype` on
        `device` (its type), the backward costed too with `requires_grad`."""
        widths = (self.D,) if dims is None else tuple(dims)
        device_type = torch.device(device).type
        return planner.choose_plan(self.spec, m, widths, dtype, device_type, requires_grad)

    def apply_transposed(self, x: Tensor, f: Factors) -> Tensor:
        return self.apply_concat([x], f)

    def apply_concat(self, xs: Sequence[Tensor], f: Factors) -> Tensor:
        return planner.kron_concat(self.spec, xs, *self._pair(f))

    def init_factors_(self, f: Factors, generator: torch.Generator | None = None) -> None:
        # Var(W) = terms·Var(A)·Var(B) = 1/(3D), split evenly: Var(A) = Var(B) = √(1/(3D·terms)).
        # A low-rank factor X Yᵀ of rank r has Var = r·Var(X)·Var(Y), so each gets √(Var/r).
        factor_variance = math.sqrt(linear_weight_variance(self.D) / self.terms)
        for dense, pair, _, _, rank in self._sides():
            variance = factor_variance if rank is None else math.sqrt(factor_variance / rank)
            for name in (dense,) if rank is None else pair:
                _uniform_(f[name], variance, generator)

    def fit(self, weight: Tensor) -> dict[str, Tensor]:
        """Nearest sum of Kronecker products (Van Loan & Pitsianis, padded entries hard-imputed:
        [`fit_kronecker`][hmfusion.structures.fitting.fit_kronecker]); a low-rank factor is then
        truncated by SVD (not jointly optimal, but exact when W has that structure)."""
        stacks = fitting.fit_kronecker(weight, self.p, self.q, self.s, self.t, self.terms)
        out: dict[str, Tensor] = {}
        for (dense, (u, v), _, _, rank), stack in zip(self._sides(), stacks):
            if rank is None:
                out[dense] = stack[0] if self.terms == 1 else stack
            else:
                out[u], out[v] = fitting.truncated_svd(stack[0], rank)
        return out

    def describe(self) -> str:
        rank = self.rank_b if self.rank_b is not None else self.rank_a
        parts = [f"p={self.p}", f"q={self.q}", f"s={self.s}", f"t={self.t}"]
        parts += [f"terms={self.terms}"] * (self.terms > 1) + [f"r={rank}"] * (rank is not None)
        parts += [f"pad=True (n'={self.p * self.s}, D'={self.q * self.t})"] * self.pad
        return ", ".join(parts)
