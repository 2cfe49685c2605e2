"""Kernels: apply a Kronecker-structured matrix to a batch of rows without forming it.

The one identity everything here rests on (row-major flattening, W = A ⊗ B with A: p×q and
B: s×t, so W is (p·s)×(q·t)): for a row x of length q·t viewed as a q×t matrix X,

    (x Wᵀ) viewed as p×s  =  A X Bᵀ.

So ``X Wᵀ`` for m rows is two small contractions, "right first" ``A (X Bᵀ)`` or "left first"
``(A X) Bᵀ``; their costs per row are ``q·cost(B) + s·cost(A)`` and ``t·cost(A) + p·cost(B)``,
where cost(M) is rows·cols for a dense factor and r·(rows + cols) for a low-rank factor U Vᵀ.
A sum of Kronecker products is the sum of such contractions.

A *factor* here is either a dense matrix (a ``Tensor`` of shape rows×cols) or a low-rank pair
``(U, V)`` standing for ``U @ V.T`` with U: rows×r and V: cols×r.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

from torch import Tensor

Factor = Union[Tensor, tuple[Tensor, Tensor]]

__all__ = ["Factor", "apply_factor", "factor_cost", "kron_matmul", "kron_order"]


def factor_cost(rows: int, cols: int, rank: int | None) -> int:
    """Multiply-adds to apply a rows×cols factor (dense, or of the given rank) to one vector."""
    return rows * cols if rank is None else rank * (rows + cols)


def kron_order(p: int, q: int, s: int, t: int, rank_a: int | None, rank_b: int | None) -> str:
    """The cheaper contraction order for ``X (A ⊗ B)ᵀ``: ``"right_first"`` or ``"left_first"``."""
    cost_a = factor_cost(p, q, rank_a)
    cost_b = factor_cost(s, t, rank_b)
    right_first = q * cost_b + s * cost_a
    left_first = t * cost_a + p * cost_b
    return "right_first" if right_first <= left_first else "left_first"


def apply_factor(x: Tensor, factor: Factor) -> Tensor:
    """(…, cols) → (…, rows): x Mᵀ for a dense or low-rank factor M."""
    if isinstance(factor, tuple):
        u, v = factor
        return (x @ v) @ u.transpose(0, 1)
    return x @ factor.transpose(0, 1)


def _apply_middle(x: Tensor, factor: Factor) -> Tensor:
    """(m, cols, k) → (m, rows, k): M x, contracting the middle axis."""
    return apply_factor(x.transpose(1, 2), factor).transpose(1, 2)


def kron_matmul(
    x: Tensor,
    left: Sequence[Factor],
    right: Sequence[Factor],
    shape: tuple[int, int, int, int],
    order: str,
) -> Tensor:
    """``x (Σ_j left[j] ⊗ right[j])ᵀ`` for x of shape (m, q·t); returns (m, p·s).

    ``shape`` is (p, q, s, t): left factors are p×q, right factors s×t. ``order`` is
    ``"right_first"`` or ``"left_first"`` (see :func:`kron_order`).
    """
    p, q, s, t = shape
    m = x.shape[0]
    x3 = x.reshape(m, q, t)
    out = None
    for a, b in zip(left, right):
        if order == "right_first":
            y = _apply_middle(apply_factor(x3, b), a)  # (m, q, s) -> (m, p, s)
        else:
            y = apply_factor(_apply_middle(x3, a), b)  # (m, p, t) -> (m, p, s)
        out = y if out is None else out + y
    return out.reshape(m, p * s)
