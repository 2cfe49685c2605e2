"""Structures of the fusion weight W: how W is fabricated from its factors, and how Wᵀ is applied.

**Conventions** (used throughout hmfusion).
A fusion maps k inputs x_i of shape (*lead, n_i) to `Y = cat(x_1, …, x_k) Wᵀ` of shape
(*lead, n); D = Σ n_i. **W is n×D**, like `torch.nn.Linear.weight`. The reference
documentation (tinybig's RPN 2 papers and code) writes the same operator as `X W` with a D×n
matrix: its W is our Wᵀ. All matrices are flattened row-major.

The family (each factor initialised so that W has the variance of `nn.Linear`'s default
weight, 1/(3D), split evenly between the factors; the uniform distribution is used throughout):

| member | W (n×D) | l (number of trained values) |
| --- | --- | --- |
| dense | W | n·D |
| low-rank (r) | U Vᵀ, U: n×r, V: D×r | r·(n + D) |
| HM (p, q) | A ⊗ B, A: p×q, B: s×t | p·q + s·t (= p·q + n·D/(p·q)) |
| sum of Kronecker | Σ_{j<terms} A_j ⊗ B_j | terms·(p·q + s·t) |
| LPHM (p, q, r) | A ⊗ (S Tᵀ), S: s×r, T: t×r | p·q + r·(s + t) |
| dual-LPHM | (P Qᵀ) ⊗ (S Tᵀ), P: p×r, Q: q×r | r·(p + q + s + t) |
| random-matrix (r) | diag(λ₁) R₁ diag(λ₂) R₂ᵀ | n + r (R₁: n×r, R₂: D×r fixed random) |

with s = n/p and t = D/q. Block sizes must divide: p | n and q | D. With `pad=True` any n and
D work: n is rounded up to n' = p·⌈n/p⌉ and D to D' = q·⌈D/q⌉, s = n'/p, t = D'/q, and W is the
top-left n×D block of the n'×D' Kronecker product (equivalently: X is zero-padded to D' columns
and the first n outputs are kept). Padding costs (n'·D' − n·D)/(p·q) extra entries of B.

The Kronecker members apply Wᵀ without forming W (see [`hmfusion.kernels`][hmfusion.kernels]): per
row the cost is min(q·s·(t + p), p·t·(q + s)) multiply-adds instead of n·D — except under the
planner's `materialize` plan, which forms W and runs one dense GEMM. Its cost model picks that plan
when forming W costs less than the factored product saves: small layers at enough rows, and block
sizes that save little (p and q near 1 or near n and D). `plan(m)` tells, per number of rows m.
The low-rank and random-matrix members never form W; the dense member's W is its parameter. Block
sizes are chosen in [`hmfusion.blocksizes`][hmfusion.blocksizes], factors fitted in
[`hmfusion.fitting`][hmfusion.fitting].
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from hmfusion import _validation as V
from hmfusion import blocksizes, fitting, kernels, planner

__all__ = [
    "DenseStructure",
    "FactorSpec",
    "KroneckerStructure",
    "LowRankStructure",
    "RandomMatrixStructure",
    "Structure",
    "linear_weight_variance",
]

Factors = Mapping[str, Tensor]


def linear_weight_variance(D: int) -> float:
    """Variance of `nn.Linear`'s default weight for fan-in D: U(-1/√D, 1/√D) has 1/(3D).

    Args:
        D: the fan-in (input width), a positive int (not checked).

    Returns:
        1/(3D).

    Example:
        >>> linear_weight_variance(4) == 1 / 12
        True
    """
    return 1.0 / (3.0 * D)


def _uniform_(tensor: Tensor, variance: float, generator: torch.Generator | None) -> None:
    """Fill with U(-b, b) of the given variance (b = √(3·variance))."""
    bound = math.sqrt(3.0 * variance)
    tensor.uniform_(-bound, bound, generator=generator)


@dataclass(frozen=True)
class FactorSpec:
    """One factor of a structure: its attribute name, shape and whether it is trained.

    Trained factors become `nn.Parameter`s of the fusion module; fixed ones (the random
    matrices) become persistent buffers, saved in the `state_dict`.

    Attributes:
        name: the attribute name on the module (`"A"`, `"U"`, `"R1"`, …).
        shape: the factor's shape.
        trainable: whether the factor is trained (counted in l) or fixed.
    """

    name: str
    shape: tuple[int, ...]
    trainable: bool = True


@dataclass(frozen=True)
class FlatPiece:
    """One piece of the flat vector w: `factor[index]` (or the whole factor), maybe transposed."""

    name: str
    index: int | None = None
    transposed: bool = False


class Structure(ABC):
    """The structure ψ of an n×D fusion weight W = ψ(w).

    A structure is a plain description (sizes and block sizes); the factor tensors belong to the
    module and are passed in as a mapping `{name: tensor}` following `factor_specs`.
    """

    n: int
    D: int

    @property
    @abstractmethod
    def factor_specs(self) -> tuple[FactorSpec, ...]:
        """The factors, in the order of the flat vector w."""

    @property
    @abstractmethod
    def flat_layout(self) -> tuple[FlatPiece, ...]:
        """How w is cut into factors (tinybig 0.2.1's flat layout, each piece row-major)."""

    @property
    def num_parameters(self) -> int:
        """l: the number of trained values (the length of w)."""
        return sum(math.prod(spec.shape) for spec in self.factor_specs if spec.trainable)

    @abstractmethod
    def materialize(self, f: Factors) -> Tensor:
        """The n×D weight W. For inspection, export and tests; the forward never calls it (the
        planner's `materialize` plan forms a Kronecker W in its own kernel).

        Args:
            f: the factor tensors by name, as `factor_specs` lists them.

        Returns:
            W, of shape (n, D), differentiable in the factors.
        """

    @abstractmethod
    def apply_transposed(self, x: Tensor, f: Factors) -> Tensor:
        """`x Wᵀ` for x of shape (m, D); returns (m, n).

        Args:
            x: the rows, shape (m, D), in the factors' dtype and device (not checked).
            f: the factor tensors by name, as `factor_specs` lists them.
        """

    def apply_concat(self, xs: Sequence[Tensor], f: Factors) -> Tensor:
        """`cat(xs, -1) Wᵀ` for xs of shapes (m, n_i); returns (m, n).

        Args:
            xs: the inputs, shapes (m, n_i) with Σ n_i = D (not checked: the fusion module
                validates them).
            f: the factor tensors by name, as `factor_specs` lists them.
        """
        return self.apply_transposed(torch.cat(list(xs), dim=-1) if len(xs) > 1 else xs[0], f)

    @abstractmethod
    def init_factors_(self, f: Factors, generator: torch.Generator | None = None) -> None:
        """Initialise the factors in place (W gets variance 1/(3D), as `nn.Linear`'s weight).

        Args:
            f: the factor tensors by name; the trained ones are overwritten.
            generator: the random generator to draw from (default: torch's global one).
        """

    def fit(self, weight: Tensor) -> dict[str, Tensor]:
        """Factors whose W is closest to `weight` (n×D) in Frobenius norm.

        Args:
            weight: a floating tensor of shape (n, D).

        Returns:
            The factor tensors by name (the trained ones; fixed factors keep their values).

        Raises:
            TypeError: the structure cannot be fitted (the random-matrix structure).
        """
        raise TypeError(f"{type(self).__name__} cannot be fitted to a dense weight")

    @abstractmethod
    def describe(self) -> str:
        """The structure's hyper-parameters, for `extra_repr`."""

    # flat vector <-> factors (shared by every member) ------------------------------------
    def to_flat(self, f: Factors) -> Tensor:
        """w: the trained factors cut and flattened per `flat_layout`, concatenated.

        Args:
            f: the factor tensors by name.

        Returns:
            w, of shape (l,).
        """
        pieces = []
        for piece in self.flat_layout:
            value = f[piece.name] if piece.index is None else f[piece.name][piece.index]
            pieces.append((value.transpose(0, 1) if piece.transposed else value).reshape(-1))
        return torch.cat(pieces)

    def from_flat(self, w: Tensor) -> dict[str, Tensor]:
        """The trained factors held in w, as views of w (differentiable in w).

        Args:
            w: the flat vector, shape (l,) (its length is not checked here).

        Returns:
            The trained factor tensors by name.
        """
        shapes = {spec.name: spec.shape for spec in self.factor_specs}
        pieces: dict[str, list[Tensor]] = {}
        offset = 0
        for piece in self.flat_layout:
            shape = shapes[piece.name][1:] if piece.index is not None else shapes[piece.name]
            stored = shape[::-1] if piece.transposed else shape
            size = math.prod(stored)
            value = w[offset : offset + size].reshape(stored)
            pieces.setdefault(piece.name, []).append(
                value.transpose(0, 1) if piece.transposed else value
            )
            offset += size
        return {
            name: torch.stack(values) if len(values) > 1 else values[0]
            for name, values in pieces.items()
        }


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


# Kronecker family (HM, sum of Kronecker products, LPHM, dual-LPHM) ---------------------------
def _spec_property(name: str, doc: str) -> property:
    return property(lambda self: getattr(self.spec, name), doc=doc)


@dataclass(frozen=True)
class KroneckerStructure(Structure):
    """W = Σ_{j<terms} A_j ⊗ B_j (top-left n×D block), each factor dense or low-rank.

    - HM: `rank_a = rank_b = None`, terms = 1: A (p×q), B (s×t); w = [A | B].
    - sum of Kronecker products: terms > 1: A (terms×p×q), B (terms×s×t); w = [A₁|B₁|A₂|B₂|…].
    - LPHM: `rank_b = r`: A (p×q), B = S Tᵀ with S: s×r, T: t×r; w = [A | S | Tᵀ].
    - dual-LPHM: `rank_a = rank_b = r`: A = P Qᵀ with P: p×r, Q: q×r; w = [P | Qᵀ | S | Tᵀ].

    The sizes live in one place, `spec` (the planner's [`KronSpec`][hmfusion.planner.KronSpec],
    with s = ⌈n/p⌉ and t = ⌈D/q⌉); `n`, `p`, `s`… read it. Use `create` to validate
    arguments and resolve `"auto"` block sizes
    ([`hmfusion.blocksizes.choose_block_sizes`][hmfusion.blocksizes.choose_block_sizes]).

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
        """Validate the block sizes against n and D and build the structure.

        Args:
            n: output width, a positive int.
            D: input width Σ n_i, a positive int.
            p: rows of A: a positive int or `"auto"` (the value minimising l).
            q: columns of A: a positive int, `"auto"`, or `None` (q = p).
            terms: the number of Kronecker products summed, a positive int.
            rank_a: the rank of A = P Qᵀ, or `None` for a dense A.
            rank_b: the rank of B = S Tᵀ, or `None` for a dense B.
            pad: allow p ∤ n or q ∤ D by zero-padding to multiples of p and q.

        Returns:
            The structure, with `"auto"` block sizes resolved.

        Raises:
            TypeError: n, D, p, q, terms or a rank is not an int (p, q may also be `"auto"`);
                pad is not a bool.
            ValueError: a value is not positive; n or D exceeds 2⁴⁸; p does not divide n or q
                does not divide D (without `pad`; the message lists the valid divisors);
                p > n or q > D.
        """
        n, D = V.check_size("n", n), V.check_size("D", D)
        p, q, terms, rank_a, rank_b, pad = V.check_kronecker_arguments(
            p, q, terms, rank_a, rank_b, pad
        )
        p_val, q_val = blocksizes.choose_block_sizes(
            n, D, p, q, pad=pad, terms=terms, rank_a=rank_a, rank_b=rank_b
        )
        V.check_block_sizes_fit(n, D, p_val, q_val, tied=q is None, pad=pad)
        s, t = -(-n // p_val), -(-D // q_val)
        return cls(planner.KronSpec(n, D, p_val, q_val, s, t, terms, rank_a, rank_b), pad)

    @property
    def factor_specs(self) -> tuple[FactorSpec, ...]:
        lead = () if self.terms == 1 else (self.terms,)
        a, b = self.rank_a, self.rank_b
        left = (
            (FactorSpec("A", (*lead, self.p, self.q)),)
            if a is None
            else (FactorSpec("P", (self.p, a)), FactorSpec("Q", (self.q, a)))
        )
        right = (
            (FactorSpec("B", (*lead, self.s, self.t)),)
            if b is None
            else (FactorSpec("S", (self.s, b)), FactorSpec("T", (self.t, b)))
        )
        return left + right

    @property
    def flat_layout(self) -> tuple[FlatPiece, ...]:
        if self.terms > 1:
            return tuple(FlatPiece(name, j) for j in range(self.terms) for name in ("A", "B"))
        left = (
            (FlatPiece("A"),)
            if self.rank_a is None
            else (FlatPiece("P"), FlatPiece("Q", transposed=True))
        )
        right = (
            (FlatPiece("B"),)
            if self.rank_b is None
            else (FlatPiece("S"), FlatPiece("T", transposed=True))
        )
        return left + right

    def _pair(self, f: Factors) -> tuple[kernels.Factor, kernels.Factor]:
        """A and B as the planner takes them: a tensor, or a low-rank pair (P, Q) / (S, T)."""
        left = (f["P"], f["Q"]) if self.rank_a is not None else f["A"]
        right = (f["S"], f["T"]) if self.rank_b is not None else f["B"]
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
        """How `apply_concat` computes m rows of inputs of widths `dims` (default: one
        input of width D): materialize, fused or composite, order, input handling, row chunk.
        See [`hmfusion.planner`][hmfusion.planner];
        [`force_plan`][hmfusion.planner.force_plan] overrides it.

        Args:
            m: the number of rows (not checked here: the fusion module's `plan` checks it).
            dims: the input widths; default `(D,)`.
            dtype: the dtype of the computation.
            device: the device (only its type matters).
            requires_grad: whether the backward is costed too.
        """
        widths = (self.D,) if dims is None else tuple(dims)
        device_type = torch.device(device).type
        return planner.choose_plan(self.spec, m, widths, dtype, device_type, requires_grad)

    def apply_transposed(self, x: Tensor, f: Factors) -> Tensor:
        return self.apply_concat([x], f)

    def apply_concat(self, xs: Sequence[Tensor], f: Factors) -> Tensor:
        # The planner reads each input in place where the layout allows (no cat(xs)), pads D
        # inside its one staging copy otherwise, and crops the padded rows of W itself.
        return planner.kron_concat(self.spec, xs, *self._pair(f))

    def init_factors_(self, f: Factors, generator: torch.Generator | None = None) -> None:
        # Var(W) = terms·Var(A)·Var(B) = 1/(3D), split evenly: Var(A) = Var(B) = √(1/(3D·terms)).
        # A low-rank factor X Yᵀ of rank r has Var = r·Var(X)·Var(Y), so each gets √(Var/r).
        factor_variance = math.sqrt(linear_weight_variance(self.D) / self.terms)
        for dense, pair, rank in (("A", ("P", "Q"), self.rank_a), ("B", ("S", "T"), self.rank_b)):
            if rank is None:
                _uniform_(f[dense], factor_variance, generator)
            else:
                for name in pair:
                    _uniform_(f[name], math.sqrt(factor_variance / rank), generator)

    def fit(self, weight: Tensor) -> dict[str, Tensor]:
        """Nearest sum of Kronecker products
        ([`hmfusion.fitting.fit_kronecker`][hmfusion.fitting.fit_kronecker]: Van Loan & Pitsianis,
        with hard impute of the padded entries); a low-rank Kronecker factor is
        then truncated by SVD (not jointly optimal, but exact when W has that structure)."""
        a, b = fitting.fit_kronecker(weight, self.p, self.q, self.s, self.t, self.terms)
        out: dict[str, Tensor] = {}
        for dense, pair, rank, stack in (("A", "PQ", self.rank_a, a), ("B", "ST", self.rank_b, b)):
            if rank is None:
                out[dense] = stack[0] if self.terms == 1 else stack
            else:
                out[pair[0]], out[pair[1]] = fitting.truncated_svd(stack[0], rank)
        return out

    def describe(self) -> str:
        rank = self.rank_b if self.rank_b is not None else self.rank_a
        return ", ".join(
            [f"p={self.p}", f"q={self.q}", f"s={self.s}", f"t={self.t}"]
            + [f"terms={self.terms}"] * (self.terms > 1)
            + [f"r={rank}"] * (rank is not None)
            + [f"pad=True (n'={self.p * self.s}, D'={self.q * self.t})"] * self.pad
        )


# random-matrix adaptation --------------------------------------------------------------------
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
        r1 = torch.empty(self.n, self.r, dtype=torch.float64)
        r2 = torch.empty(self.D, self.r, dtype=torch.float64)
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
