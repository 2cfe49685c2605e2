"""Kernels: apply a Kronecker-structured matrix to a batch of rows, with or without forming it.

The one identity everything here rests on (row-major flattening, W = A ⊗ B with A: p×q and
B: s×t, so W is (p·s)×(q·t)): for a row x of length q·t viewed as a q×t matrix X,

    (x Wᵀ) viewed as p×s  =  A X Bᵀ.

So `X Wᵀ` for m rows is two small contractions, "right first" `A (X Bᵀ)` or "left first"
`(A X) Bᵀ`; their costs per row are `q·cost(B) + s·cost(A)` and `t·cost(A) + p·cost(B)`,
where cost(M) is rows·cols for a dense factor and r·(rows + cols) for a low-rank factor U Vᵀ.
A sum of Kronecker products is the sum of such contractions.

A *factor* here is either a dense matrix (a `Tensor` of shape rows×cols) or a low-rank pair
`(U, V)` standing for `U @ V.T` with U: rows×r and V: cols×r.

Three ways to compute `cat(xs) Wᵀ` exist; [`hmfusion.ops.planner`][hmfusion.ops.planner] decides
which
one runs.

- [`kron_linear`][hmfusion.ops.kernels.kron_linear] forms W
  ([`kron_weight`][hmfusion.ops.kernels.kron_weight]), then one dense GEMM: the "materialize"
  plan, for shapes where the factored product saves nothing (p = q = 1 over a large batch).
- [`kron_matmul`][hmfusion.ops.kernels.kron_matmul] composes differentiable torch ops; autograd
  derives the backward. It is the path for low-rank factors, whose thin matmuls are cheaper
  than any dense factor.
- the fused path, row chunk by row chunk without forming W, lives in
  [`hmfusion.ops.fused`][hmfusion.ops.fused] (its names are re-exported here):
  [`fused_forward`][hmfusion.ops.fused.fused_forward] and
  [`fused_backward`][hmfusion.ops.fused.fused_backward], the pure-PyTorch fallback of the operator
  [`hmfusion.ops.native`][hmfusion.ops.native] registers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

# The fused path's names, re-exported for the planner (`kernels.fused_forward`, …): the one
# import of this module it needs. They are documented in `hmfusion.ops.fused`.
from hmfusion.ops.fused import FusedLayout as FusedLayout
from hmfusion.ops.fused import fused_backward as fused_backward
from hmfusion.ops.fused import fused_forward as fused_forward
from hmfusion.ops.fused import input_blocks as input_blocks
from hmfusion.ops.fused import split_aligned as split_aligned

#: A factor: a dense (rows, cols) matrix, or a low-rank pair (U, V) standing for U Vᵀ.
Factor = Tensor | tuple[Tensor, Tensor]

__all__ = [
    "Factor",
    "apply_factor",
    "dense_factor",
    "factor_cost",
    "ideal_speedup",
    "kron_linear",
    "kron_matmul",
    "kron_order",
    "kron_weight",
    "autocast_dtype",
    "autocast_dtype_for",
    "needs_grad",
    "pad_concat",
]


def factor_cost(rows: int, cols: int, rank: int | None) -> int:
    """Multiply-adds to apply a rows×cols factor (dense, or of the given rank) to one vector."""
    return rows * cols if rank is None else rank * (rows + cols)


def kron_order(
    p: int, q: int, s: int, t: int, rank_a: int | None, rank_b: int | None
) -> Literal["right_first", "left_first"]:
    """The cheaper contraction order for `X (A ⊗ B)ᵀ`: `"right_first"` or `"left_first"`."""
    cost_a = factor_cost(p, q, rank_a)
    cost_b = factor_cost(s, t, rank_b)
    right_first = q * cost_b + s * cost_a
    left_first = t * cost_a + p * cost_b
    return "right_first" if right_first <= left_first else "left_first"


def ideal_speedup(p: int, q: int, s: int, t: int) -> float:
    """n·D over the cheaper factored cost per row: max(p·t/(p + t), q·s/(q + s)).

    Args:
        p: rows of A.
        q: columns of A.
        s: rows of B.
        t: columns of B.

    Returns:
        The flop ratio of a dense n×D GEMM to the cheaper contraction order.

    Example:
        >>> from hmfusion.ops.kernels import ideal_speedup
        >>> ideal_speedup(64, 64, 64, 64)
        32.0
    """
    dense = p * q * s * t
    return dense / min(q * s * (t + p), p * t * (q + s))


def apply_factor(x: Tensor, factor: Factor) -> Tensor:
    """(…, cols) → (…, rows): x Mᵀ for a dense or low-rank factor M."""
    if isinstance(factor, tuple):
        u, v = factor
        return (x @ v) @ u.transpose(0, 1)
    return x @ factor.transpose(0, 1)


def dense_factor(factor: Factor) -> Tensor:
    """The rows×cols matrix of a factor (`U @ V.T` for a low-rank pair)."""
    if isinstance(factor, tuple):
        u, v = factor
        return u @ v.transpose(0, 1)
    return factor


def pad_concat(xs: Sequence[Tensor], width: int) -> Tensor:
    """`cat(xs, -1)` with zero columns appended up to `width` (the input itself when there is
    one input of that width): X as the (m, q·t) matrix a factored W reads."""
    parts = list(xs)
    missing = width - sum(x.shape[-1] for x in parts)
    if missing:
        parts.append(parts[0].new_zeros(*parts[0].shape[:-1], missing))
    return torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]


def autocast_dtype_for(device_type: str) -> torch.dtype | None:
    """The dtype autocast would run a matmul in on `device_type`, or None when autocast is off
    there (or the device type has no autocast, like `meta`, where asking would raise).

    Example:
        >>> with torch.autocast("cpu", dtype=torch.bfloat16):
        ...     autocast_dtype_for("cpu")
        torch.bfloat16
    """
    # cpu and cuda always have autocast: asking torch would be a builtin call that some
    # torch.compile versions cannot trace under fullgraph (seen with torch 2.11 on CUDA).
    if device_type not in ("cpu", "cuda") and not torch.amp.is_autocast_available(device_type):
        return None
    if not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def autocast_dtype(tensors: Sequence[Tensor]) -> torch.dtype | None:
    """[`autocast_dtype_for`][hmfusion.ops.kernels.autocast_dtype_for] the first tensor's device."""
    return autocast_dtype_for(tensors[0].device.type)


def needs_grad(*tensors: Tensor | tuple[Tensor, ...] | Sequence[Tensor]) -> bool:
    """Whether autograd will record an op on these tensors (or tuples/lists of them)."""
    if not torch.is_grad_enabled():
        return False
    for value in tensors:
        if isinstance(value, Tensor):
            if value.requires_grad:
                return True
        else:
            for item in value:  # (a loop, not any(genexpr): one Python frame less per call)
                if item.requires_grad:
                    return True
    return False


def kron_weight(a: Tensor, b: Tensor) -> Tensor:
    """W = Σ_τ a[τ] ⊗ b[τ], formed.

    Args:
        a: the left factors, a stack of shape (terms, p, q).
        b: the right factors, a stack of shape (terms, s, t).

    Returns:
        W of shape (p·s, q·t).

    Example:
        >>> a, b = torch.randn(1, 2, 3), torch.randn(1, 4, 5)
        >>> torch.allclose(kron_weight(a, b), torch.kron(a[0], b[0]))
        True
    """
    terms, p, q = a.shape
    s, t = b.shape[1:]
    if terms == 1:  # one broadcast multiply writes W
        return (a[0, :, None, :, None] * b[0, None, :, None, :]).reshape(p * s, q * t)
    # W[(i, k), (j, l)] = Σ_τ A[τ, i, j] B[τ, k, l]
    return torch.einsum("zij,zkl->ikjl", a, b).reshape(p * s, q * t)


class _KronLinear(torch.autograd.Function):
    """`x Wᵀ` with W = Σ_τ a[τ] ⊗ b[τ] formed (cropped to n×D), for the "materialize" plan.

    Autograd's own backward of forming W reduces dW over strided axes and took 10–15× longer
    than forming W; here dW (one GEMM) is rearranged once to R (p·q × s·t, row (i, j), column
    (k, l)) and dA = R vec(B), dB = vec(A)ᵀ R are two GEMMs over it.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, a: Tensor, b: Tensor, n: int, D: int) -> Tensor:
        ctx.save_for_backward(x, a, b)
        ctx.sizes = (n, D)
        return x @ kron_weight(a, b)[:n, :D].t()

    @staticmethod
    def backward(
        ctx: Any, gy: Tensor
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None, None, None]:
        # W is formed again rather than saved: this way the backward is itself differentiable
        # in a and b (double backward, gradgradcheck), and holds no n×D tensor in between.
        x, a, b = ctx.saved_tensors
        n, D = ctx.sizes
        terms, p, q = a.shape
        s, t = b.shape[1:]
        dx = da = db = None
        if ctx.needs_input_grad[0]:
            dx = gy @ kron_weight(a, b)[:n, :D]
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            dw = gy.reshape(-1, n).t() @ x.reshape(-1, D)
            if (n, D) != (p * s, q * t):
                dw = torch.nn.functional.pad(dw, (0, q * t - D, 0, p * s - n))
            r = dw.view(p, s, q, t).permute(0, 2, 1, 3).reshape(p * q, s * t)
            if ctx.needs_input_grad[1]:
                da = (r @ b.reshape(terms, s * t).t()).t().reshape(terms, p, q)
            if ctx.needs_input_grad[2]:
                db = (a.reshape(terms, p * q) @ r).reshape(terms, s, t)
        return dx, da, db, None, None


def kron_linear(x: Tensor, a: Tensor, b: Tensor, n: int, D: int) -> Tensor:
    """`x Wᵀ` with W the top-left n×D block of Σ_τ a[τ] ⊗ b[τ], formed once: the
    "materialize" plan, where one dense GEMM beats the factored contractions (p = q = 1).

    Differentiable in x, a and b; the backward forms W again rather than saving it.

    Args:
        x: the rows, (m, D) with D ≤ q·t.
        a: the left factors, (terms, p, q).
        b: the right factors, (terms, s, t).
        n: the output width, ≤ p·s.
        D: the input width (x's columns).

    Returns:
        `x Wᵀ`, of shape (m, n).

    Example:
        >>> x = torch.randn(5, 6, dtype=torch.float64)
        >>> a = torch.randn(1, 2, 3, dtype=torch.float64)
        >>> b = torch.randn(1, 2, 2, dtype=torch.float64)
        >>> w = torch.kron(a[0], b[0])  # (4, 6)
        >>> torch.allclose(kron_linear(x, a, b, 3, 6), x @ w[:3].T)
        True
    """
    if not needs_grad(x, a, b):
        return x @ kron_weight(a, b)[:n, :D].t()
    return _KronLinear.apply(x, a, b, n, D)


# composite path (autograd derives the backward) ------------------------------------------------
def _apply_middle(x3: Tensor, factor: Factor) -> Tensor:
    """(m, cols, k) → (m, rows, k): M x, contracting the middle axis (A broadcast over m)."""
    if isinstance(factor, tuple):
        u, v = factor
        return torch.matmul(u, torch.matmul(v.transpose(0, 1), x3))
    if x3.dtype in (torch.bfloat16, torch.float16) and 1024 <= factor.numel() <= 4096:
        # one GEMM over all rows (einsum permutes x3 to (cols, m·k)): 16-bit batched GEMMs of
        # 64×64 matrices ran 1.25× slower end to end (256 × 4096, p = 64); outside this range
        # the permuted copies cost more (p = q = 512: 1.3× slower; p = q = 8: 1.2× slower)
        return torch.einsum("ij,mjk->mik", factor, x3)
    return torch.matmul(factor, x3)


def kron_matmul(
    x: Tensor,
    left: Sequence[Factor],
    right: Sequence[Factor],
    shape: tuple[int, int, int, int],
    order: str,
) -> Tensor:
    """`x (Σ_j left[j] ⊗ right[j])ᵀ` for x of shape (m, q·t); returns (m, p·s).

    Composed of differentiable torch ops (autograd derives the backward); the path for
    low-rank factors.

    Args:
        x: the rows, (m, q·t).
        left: the left factors, each p×q (dense, or a low-rank pair).
        right: the right factors, each s×t, as many as `left`.
        shape: (p, q, s, t).
        order: `"right_first"` (X Bᵀ, then A) or `"left_first"` (A X, then Bᵀ); see
            [`kron_order`][hmfusion.ops.kernels.kron_order].

    Returns:
        Of shape (m, p·s).

    Raises:
        ValueError: `left` and `right` hold no factors.

    Example:
        >>> x = torch.randn(5, 6, dtype=torch.float64)
        >>> a, b = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 2, dtype=torch.float64)
        >>> y = kron_matmul(x, [a], [b], (2, 3, 2, 2), "right_first")
        >>> torch.allclose(y, x @ torch.kron(a, b).T)
        True
    """
    p, q, s, t = shape
    m = x.shape[0]
    x3 = x.reshape(m, q, t)
    out: Tensor | None = None
    for a, b in zip(left, right):
        if order == "right_first":
            y = _apply_middle(apply_factor(x3, b), a)  # (m, q, s) -> (m, p, s)
        else:
            y = apply_factor(_apply_middle(x3, a), b)  # (m, p, t) -> (m, p, s)
        out = y if out is None else out + y
    if out is None:
        raise ValueError("kron_matmul: left and right hold no factors")
    return out.reshape(m, p * s)
