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

The Kronecker members apply Wᵀ without forming W (see
[`hmfusion.ops.kernels`][hmfusion.ops.kernels]): per
row the cost is min(q·s·(t + p), p·t·(q + s)) multiply-adds instead of n·D — except under the
planner's `materialize` plan, which forms W and runs one dense GEMM. Its cost model picks that plan
when forming W costs less than the factored product saves: block sizes that save nothing
(p = q = 1) over a large batch. `plan(m)` tells, per number of rows m.
The low-rank and random-matrix members never form W; the dense member's W is its parameter. Block
sizes are chosen in [`hmfusion.structures.blocksizes`][hmfusion.structures.blocksizes], factors
fitted in
[`hmfusion.structures.fitting`][hmfusion.structures.fitting].

The package holds one module per job: `hmfusion.structures.base` the contract every structure
follows ([`Structure`][hmfusion.structures.Structure], its factors and flat vector w, the
initialisation variance), `hmfusion.structures.dense` the dense and low-rank W,
`hmfusion.structures.kronecker` the Kronecker family and `hmfusion.structures.random_matrix` the
random-matrix adaptation.
"""

from hmfusion.structures.base import Factors as Factors  # the factor mapping's type
from hmfusion.structures.base import FactorSpec, Structure, linear_weight_variance
from hmfusion.structures.base import FlatPiece as FlatPiece  # the flat layout's pieces
from hmfusion.structures.dense import DenseStructure, LowRankStructure
from hmfusion.structures.kronecker import KroneckerStructure
from hmfusion.structures.random_matrix import RandomMatrixStructure

__all__ = [
    "DenseStructure",
    "FactorSpec",
    "KroneckerStructure",
    "LowRankStructure",
    "RandomMatrixStructure",
    "Structure",
    "linear_weight_variance",
]
