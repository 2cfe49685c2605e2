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

Three ways to compute ``cat(xs) Wᵀ`` live here; :mod:`hmfusion.planner` decides which one runs.

- :func:`kron_linear` forms W (:func:`kron_weight`), then one dense GEMM: the "materialize"
  plan, for shapes where the factored product saves too little.
- :func:`kron_matmul` composes differentiable torch ops; autograd derives the backward. It is
  the path for low-rank factors, whose thin matmuls are cheaper than any dense factor.
- :func:`kron_concat` is the fused path: a custom :class:`torch.autograd.Function` that walks
  the rows in chunks and turns each contraction into one large GEMM or one strided batched
  GEMM, with the backward written out so that dA and dB are contractions (no n×D gradient).

Layout of the fused path (chosen by measurement on a 2-core AVX-512 CPU, see
``benchmarks/RESULTS.md``). Rows keep their natural layout: a chunk of c rows of X is a
(c, q, t) tensor, of Y a (c, p, s) tensor. The B contraction acts on the last axis, so it is
one GEMM ``(c·q, t) @ Bᵀ``. The A contraction acts on the middle axis; instead of permuting to
(q, c·t) — a strided copy that ran 3–5× slower than a plain copy and cost more than the GEMM it
enabled — it is a batched GEMM with A broadcast over the batch (stride 0), which MKL runs at the
speed of the equivalent single GEMM. Chunking keeps every intermediate (c·D values, ≈ 2 MiB)
in cache, so each call reads X and writes Y from memory once and no intermediate of size m·D is
ever allocated (fresh allocations above 32 MiB are page-faulted in by the OS: as slow as a copy).
The backward recomputes the chunk's intermediate instead of saving it for the same reason: it
keeps the extra memory of forward + backward at the size of the activations.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Union

import torch
from torch import Tensor

Factor = Union[Tensor, tuple[Tensor, Tensor]]

__all__ = [
    "Factor",
    "FusedLayout",
    "apply_factor",
    "dense_factor",
    "factor_cost",
    "kron_concat",
    "kron_linear",
    "kron_matmul",
    "kron_order",
    "kron_weight",
]


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


def dense_factor(factor: Factor) -> Tensor:
    """The rows×cols matrix of a factor (``U @ V.T`` for a low-rank pair)."""
    if isinstance(factor, tuple):
        u, v = factor
        return u @ v.transpose(0, 1)
    return factor


def kron_weight(a: Tensor, b: Tensor) -> Tensor:
    """W = Σ_τ a[τ] ⊗ b[τ] for stacks a (terms, p, q) and b (terms, s, t); shape (p·s, q·t)."""
    terms, p, q = a.shape
    s, t = b.shape[1:]
    if terms == 1:  # one broadcast multiply writes W
        return (a[0, :, None, :, None] * b[0, None, :, None, :]).reshape(p * s, q * t)
    # W[(i, k), (j, l)] = Σ_τ A[τ, i, j] B[τ, k, l]
    return torch.einsum("zij,zkl->ikjl", a, b).reshape(p * s, q * t)


class _KronLinear(torch.autograd.Function):
    """``x Wᵀ`` with W = Σ_τ a[τ] ⊗ b[τ] formed (cropped to n×D), for the "materialize" plan.

    Autograd's own backward of forming W reduces dW over strided axes and took 10–15× longer
    than forming W; here dW (one GEMM) is rearranged once to R (p·q × s·t, row (i, j), column
    (k, l)) and dA = R vec(B), dB = vec(A)ᵀ R are two GEMMs over it.
    """

    @staticmethod
    def forward(ctx, x: Tensor, a: Tensor, b: Tensor, n: int, D: int) -> Tensor:
        weight = kron_weight(a, b)[:n, :D]
        ctx.save_for_backward(x, a, b)
        ctx.sizes = (n, D)
        return x @ weight.t()

    @staticmethod
    def backward(ctx, gy: Tensor):
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
    """``x Wᵀ`` for x (m, D) with W the top-left n×D block of Σ_τ a[τ] ⊗ b[τ], formed once.

    a: (terms, p, q), b: (terms, s, t). Returns (m, n); differentiable in x, a and b.
    """
    return _KronLinear.apply(x, a, b, n, D)


# composite path (autograd derives the backward) ------------------------------------------------
def _apply_middle(x3: Tensor, factor: Factor) -> Tensor:
    """(m, cols, k) → (m, rows, k): M x, contracting the middle axis (A broadcast over m)."""
    if isinstance(factor, tuple):
        u, v = factor
        return torch.matmul(u, torch.matmul(v.transpose(0, 1), x3))
    return torch.matmul(factor, x3)


def kron_matmul(
    x: Tensor,
    left: Sequence[Factor],
    right: Sequence[Factor],
    shape: tuple[int, int, int, int],
    order: str,
) -> Tensor:
    """``x (Σ_j left[j] ⊗ right[j])ᵀ`` for x of shape (m, q·t); returns (m, p·s).

    ``shape`` is (p, q, s, t): left factors are p×q, right factors s×t. ``order`` is
    ``"right_first"`` or ``"left_first"`` (see :func:`kron_order`). Differentiable by autograd.
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


# fused path ----------------------------------------------------------------------------------
class FusedLayout(NamedTuple):
    """How the fused kernel walks the inputs (decided by :mod:`hmfusion.planner`).

    - ``order``: ``"right_first"`` (B, then A) or ``"left_first"`` (A, then B).
    - ``inputs``: ``"split"`` contracts each input with its own columns of A (no copy of the
      inputs at all; needs every input boundary on a multiple of t), ``"gather"`` copies each
      chunk of rows of the k inputs into one cache-sized staging buffer (any boundaries,
      zero padding of D included). With one input that needs no padding, both read it in place.
    - ``chunk_rows``: rows per chunk.
    """

    order: str
    inputs: str
    chunk_rows: int


def input_blocks(dims: Sequence[int], t: int) -> list[tuple[int, int]] | None:
    """Per input, its range of A's columns [j0, j1) when every boundary is a multiple of t."""
    blocks, offset = [], 0
    for width in dims:
        if offset % t or width % t:
            return None
        blocks.append((offset // t, (offset + width) // t))
        offset += width
    return blocks


def split_aligned(dims: Sequence[int], t: int) -> bool:
    """True when the inputs can be contracted separately (each boundary on a multiple of t)."""
    return input_blocks(dims, t) is not None


def _mm(a: Tensor, b: Tensor, out: Tensor, accumulate: bool) -> None:
    """out (+)= a @ b for 2-D operands, written in place."""
    if accumulate:
        out.addmm_(a, b)
    else:
        torch.mm(a, b, out=out)


def _bmm_left(a: Tensor, x3: Tensor, out: Tensor | None = None, accumulate: bool = False) -> Tensor:
    """a (r×c) applied to the middle axis of x3 (m, c, k): (m, r, k). Broadcasting ``a`` with a
    zero batch stride keeps it one batched GEMM without copying a or permuting x3."""
    batched = a.expand(x3.shape[0], *a.shape)
    if out is None:
        return torch.bmm(batched, x3)
    if accumulate:
        out.baddbmm_(batched, x3)
    else:
        torch.bmm(batched, x3, out=out)
    return out


def _middle_grad(acc: list[Tensor], index: int, g3: Tensor, z3: Tensor) -> None:
    """acc[index] += g3[r] z3[r]ᵀ per row r, for g3 (c, r, k), z3 (c, q_i, k).

    The gradient of a factor broadcast over rows is Σ_r g3[r] z3[r]ᵀ. Summing over r inside
    each chunk (bmm, then sum) costs a pass over c·r·q_i values per chunk; instead the per-row
    products accumulate in place across chunks (one batched GEMM with beta = 1) and are summed
    once at the end (:func:`_sum_rows`).
    """
    c = g3.shape[0]
    if acc[index] is None:
        acc[index] = torch.bmm(g3, z3.transpose(1, 2))
    else:
        acc[index][:c].baddbmm_(g3, z3.transpose(1, 2))


def _sum_rows(acc: list, target: Tensor, blocks: list[tuple[int, int]]) -> None:
    """target[:, j0:j1] = Σ_r acc[i][r] for each part i covering A's columns [j0, j1)."""
    for values, (j0, j1) in zip(acc, blocks):
        if values is not None:
            target[:, j0:j1] = values.sum(0)


class _Chunk:
    """The rows [r0, r1) of the k inputs, as (c, q_i, t) views (split) or one staging tensor."""

    def __init__(self, xs, blocks, staging, dims, q, t, r0, r1):
        c = r1 - r0
        if blocks is not None:
            self.parts = [
                (x[r0:r1].reshape(c, j1 - j0, t), j0, j1) for x, (j0, j1) in zip(xs, blocks)
            ]
        elif staging is None:  # one input, no padding: read it in place
            self.parts = [(xs[0][r0:r1].reshape(c, q, t), 0, q)]
        else:
            buffer = staging[:c]
            pieces = [x[r0:r1] for x in xs]
            padding = q * t - sum(dims)
            if padding:  # cat only writes contiguous outputs under torch.compile
                pieces.append(buffer.new_zeros(c, padding))
            torch.cat(pieces, dim=1, out=buffer)  # one copy kernel for the k inputs
            self.parts = [(buffer.view(c, q, t), 0, q)]


class _KronConcat(torch.autograd.Function):
    """``cat(xs) (Σ_τ A_τ ⊗ B_τ)ᵀ`` with dense factor stacks A (T, p, q), B (T, s, t)."""

    @staticmethod
    def forward(ctx, layout: FusedLayout, shape, a: Tensor, b: Tensor, *xs: Tensor) -> Tensor:
        p, q, s, t = shape
        dims = [x.shape[1] for x in xs]
        blocks = input_blocks(dims, t) if layout.inputs == "split" else None
        m = xs[0].shape[0]
        y = xs[0].new_empty(m, p * s)
        staging = _staging(xs, dims, q, t, layout, blocks)
        for r0, r1 in _chunks(m, layout.chunk_rows):
            chunk = _Chunk(xs, blocks, staging, dims, q, t, r0, r1)
            _forward_chunk(chunk, a, b, y[r0:r1].view(r1 - r0, p, s), layout.order)
        ctx.save_for_backward(a, b, *xs)
        ctx.layout, ctx.shape = layout, shape
        return y

    @staticmethod
    def backward(ctx, gy: Tensor):
        a, b, *xs = ctx.saved_tensors
        layout, (p, q, s, t) = ctx.layout, ctx.shape
        need_a, need_b = ctx.needs_input_grad[2], ctx.needs_input_grad[3]
        need_x = any(ctx.needs_input_grad[4:])
        dims = [x.shape[1] for x in xs]
        blocks = input_blocks(dims, t) if layout.inputs == "split" else None
        m = xs[0].shape[0]
        gy = gy.contiguous()
        da = torch.zeros_like(a) if need_a else None
        db = torch.zeros_like(b) if need_b else None
        # Each input's gradient is its own contiguous tensor, written chunk by chunk (so that
        # AccumulateGrad can keep it without the copy a slice of one (m, D) gradient needs).
        dxs = (
            [torch.empty_like(x, memory_format=torch.contiguous_format) for x in xs]
            if need_x else None
        )
        staging = _staging(xs, dims, q, t, layout, blocks)
        dx_staging = None
        if need_x and staging is not None:
            # With one term, dX is the chunk's last product, written over its staged X (no
            # longer needed by then): one chunk buffer less. Several terms accumulate dX while
            # every term still reads X, so they get their own buffer.
            dx_staging = staging if a.shape[0] == 1 else torch.empty_like(staging)
        # per term and part: Σ over rows of the chunk's per-row products (see _middle_grad)
        da_acc = None
        for r0, r1 in _chunks(m, layout.chunk_rows):
            c = r1 - r0
            chunk = _Chunk(xs, blocks, staging, dims, q, t, r0, r1)
            if da is not None and da_acc is None:
                da_acc = [[None] * len(chunk.parts) for _ in range(a.shape[0])]
            if dxs is None:
                dx3 = None
            elif dx_staging is not None:
                dx3 = [dx_staging[:c].view(c, q, t)]
            else:
                dx3 = [dx[r0:r1].view(c, j1 - j0, t) for dx, (_, j0, j1) in zip(dxs, chunk.parts)]
            _backward_chunk(chunk, a, b, gy[r0:r1].view(c, p, s), dx3, da_acc, db, layout.order)
            if dxs is not None and dx_staging is not None:
                torch.split_with_sizes_copy(
                    dx_staging[:c, : sum(dims)], dims, dim=1, out=[dx[r0:r1] for dx in dxs]
                )
        if da_acc is not None:  # (None when there are no rows: dA stays zero)
            parts = [(j0, j1) for _, j0, j1 in chunk.parts]
            for term in range(a.shape[0]):
                _sum_rows(da_acc[term], da[term], parts)
        grads_x = dxs if dxs is not None else [None] * len(xs)
        return (None, None, da, db, *grads_x)


def _chunks(m: int, chunk_rows: int) -> list[tuple[int, int]]:
    step = max(1, chunk_rows)
    return [(r0, min(m, r0 + step)) for r0 in range(0, m, step)]


def _staging(xs, dims, q, t, layout, blocks) -> Tensor | None:
    """The gather buffer (chunk_rows, q·t); None where the inputs are read in place."""
    if blocks is not None or (len(xs) == 1 and dims[0] == q * t):
        return None
    rows = min(layout.chunk_rows, xs[0].shape[0])
    return xs[0].new_empty(rows, q * t)


def _forward_chunk(chunk: _Chunk, a: Tensor, b: Tensor, y3: Tensor, order: str) -> None:
    """y3 (c, p, s) = Σ_τ A_τ X Bᵀ_τ for the chunk's rows."""
    c = y3.shape[0]
    first = True
    for a_term, b_term in zip(a, b):
        if order == "right_first":
            # Z_i = X_i Bᵀ: one GEMM per input; then Y += A[:, J_i] Z_i, batched over rows.
            for x3, j0, j1 in chunk.parts:
                z3 = torch.mm(x3.reshape(-1, x3.shape[2]), b_term.t()).view(c, j1 - j0, -1)
                _bmm_left(a_term[:, j0:j1], z3, y3, accumulate=not first)
                first = False
        else:
            # U = Σ_i A[:, J_i] X_i (batched over rows); then Y = U Bᵀ: one GEMM.
            u3 = None
            for x3, j0, j1 in chunk.parts:
                if u3 is None:
                    u3 = _bmm_left(a_term[:, j0:j1], x3)
                else:
                    _bmm_left(a_term[:, j0:j1], x3, u3, accumulate=True)
            _mm(u3.view(-1, u3.shape[2]), b_term.t(), y3.view(-1, y3.shape[2]), not first)
            first = False


def _backward_chunk(chunk, a, b, g3, dx3, da_acc, db, order) -> None:
    """Accumulate dA (per-row products, see :func:`_middle_grad`) and dB, and write dX, for the
    chunk's rows given dY as g3 (c, p, s).

    Right first (Y = A Z, Z = X Bᵀ):  G = Aᵀ dY;  dA = Σ dY Zᵀ;  dB = Σ Gᵀ X;  dX = G B.
    Left first  (Y = U Bᵀ, U = A X):  V = dY B;  dA = Σ V Xᵀ;  dB = Σ dYᵀ U;  dX = Aᵀ V.
    Z (or U) is recomputed from X rather than saved (see the module docstring). dX comes last
    in each term: it may overwrite the staged X (see ``_KronConcat.backward``).
    """
    c = g3.shape[0]
    for term, (a_term, b_term) in enumerate(zip(a, b)):
        first = term == 0
        if order == "right_first":
            for index, (x3, j0, j1) in enumerate(chunk.parts):
                x2 = x3.reshape(-1, x3.shape[2])
                if da_acc is not None:
                    z3 = torch.mm(x2, b_term.t()).view(c, j1 - j0, -1)
                    _middle_grad(da_acc[term], index, g3, z3)
                    del z3  # before G: one chunk-sized temporary at a time
                if dx3 is not None or db is not None:
                    g2 = _bmm_left(a_term[:, j0:j1].t(), g3).view(c * (j1 - j0), -1)
                    if db is not None:
                        db[term].addmm_(g2.t(), x2)
                    if dx3 is not None:
                        out = dx3[index]
                        _mm(g2, b_term, out.view(-1, out.shape[2]), not first)
        else:
            v3 = None
            if dx3 is not None or da_acc is not None:
                v3 = torch.mm(g3.view(-1, g3.shape[2]), b_term).view(c, g3.shape[1], -1)
            if da_acc is not None:
                for index, (x3, _, _) in enumerate(chunk.parts):
                    _middle_grad(da_acc[term], index, v3, x3)
            if db is not None:
                u3 = None
                for x3, j0, j1 in chunk.parts:
                    if u3 is None:
                        u3 = _bmm_left(a_term[:, j0:j1], x3)
                    else:
                        _bmm_left(a_term[:, j0:j1], x3, u3, accumulate=True)
                db[term].addmm_(g3.view(-1, g3.shape[2]).t(), u3.view(-1, u3.shape[2]))
                del u3
            if dx3 is not None:
                for index, (_, j0, j1) in enumerate(chunk.parts):
                    _bmm_left(a_term[:, j0:j1].t(), v3, dx3[index], accumulate=not first)


def kron_concat(
    xs: Sequence[Tensor],
    a: Tensor,
    b: Tensor,
    shape: tuple[int, int, int, int],
    layout: FusedLayout,
) -> Tensor:
    """``cat(xs, -1) (Σ_τ a[τ] ⊗ b[τ])ᵀ`` without forming W or, where possible, ``cat(xs)``.

    xs: k tensors (m, n_i) with Σ n_i ≤ q·t (missing columns are zero padding); a: (T, p, q);
    b: (T, s, t); all of one dtype and device. Returns (m, p·s). Differentiable in xs, a and b
    through a hand-written backward (see :class:`FusedLayout` for the layout choices).
    """
    if layout.inputs == "split" and not split_aligned([x.shape[1] for x in xs], shape[3]):
        raise ValueError(
            f"inputs='split' needs every input boundary on a multiple of t={shape[3]}, "
            f"got widths {[x.shape[1] for x in xs]}"
        )
    return _KronConcat.apply(layout, tuple(shape), a, b, *xs)
