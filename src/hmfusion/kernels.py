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
- :func:`fused_forward` and :func:`fused_backward` are the fused path in pure PyTorch: they
  walk the rows in chunks and turn each contraction into one large GEMM or one strided batched
  GEMM, with the backward written out so that dA and dB are contractions (no n×D gradient).
  :mod:`hmfusion.native` registers them as the PyTorch operator ``hmfusion::fused_kron_concat``,
  whose CPU kernel is compiled C++ when available; these functions are its fallback (and its
  ``inputs="split"`` layout).

Layout of the fused path (chosen by measurement on a 2-core AVX-512 CPU with MKL; the numbers
are in ``benchmarks/RESULTS.md``). Rows keep their natural layout: a chunk of c rows of X is a
(c, q, t) tensor, of Y a (c, p, s) tensor. The B contraction acts on the last axis, so it is
one GEMM ``(c·q, t) @ Bᵀ``. The A contraction acts on the middle axis; instead of permuting to
(q, c·t) so that it too is one GEMM — strided copies in and out that ran 3–5× slower than plain
copies, making that layout as fast at 64-wide blocks and 20–25 % slower at 16–32 — it is a
batched GEMM with A broadcast over the batch (batch stride 0), which MKL runs close to the
equivalent single GEMM. Chunks of ≈ 4 MiB keep every intermediate in cache, so each call reads
X and writes Y from memory once and allocates nothing of size m·D but its outputs. The
backward recomputes the chunk's X Bᵀ (or A X) instead of saving it, which keeps the extra
memory of forward + backward at the size of the activations for one more GEMM.

The k inputs are either contracted one by one with their own columns of A (``split``: no copy
at all) or copied, a chunk of rows at a time, into one staging buffer (``gather``: one
``torch.cat(out=)`` kernel into cache, never the full ``cat(xs)``). Splitting turns the A
contraction into k batched GEMMs of inner size q_i = n_i/t: with q_i below ≈ 64 those ran
slower than the gather copy (e.g. 1.3–1.8× slower end to end at q_i = 4–16), so the planner
splits only wide inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple, Union

import torch
from torch import Tensor

Factor = Union[Tensor, tuple[Tensor, Tensor]]

__all__ = [
    "Factor",
    "FusedLayout",
    "apply_factor",
    "dense_factor",
    "factor_cost",
    "kron_linear",
    "kron_matmul",
    "kron_order",
    "kron_weight",
    "autocast_dtype",
    "fused_backward",
    "fused_forward",
    "needs_grad",
    "pad_concat",
]


def factor_cost(rows: int, cols: int, rank: int | None) -> int:
    """Multiply-adds to apply a rows×cols factor (dense, or of the given rank) to one vector."""
    return rows * cols if rank is None else rank * (rows + cols)


def kron_order(
    p: int, q: int, s: int, t: int, rank_a: int | None, rank_b: int | None
) -> Literal["right_first", "left_first"]:
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


def pad_concat(xs: Sequence[Tensor], width: int) -> Tensor:
    """``cat(xs, -1)`` with zero columns appended up to ``width`` (the input itself when there is
    one input of that width): X as the (m, q·t) matrix a factored W reads."""
    parts = list(xs)
    missing = width - sum(x.shape[-1] for x in parts)
    if missing:
        parts.append(parts[0].new_zeros(*parts[0].shape[:-1], missing))
    return torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]


def autocast_dtype(tensors: Sequence[Tensor]) -> torch.dtype | None:
    """The dtype autocast would run a matmul in for these tensors' device, or None when
    autocast is off there (or the device has no autocast)."""
    device_type = tensors[0].device.type
    # (meta and other devices without autocast: asking would raise)
    if not torch.amp.is_autocast_available(device_type):
        return None
    if not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def needs_grad(*tensors: Tensor | tuple[Tensor, ...] | Sequence[Tensor]) -> bool:
    """Whether autograd will record an op on these tensors (or tuples/lists of them)."""
    if not torch.is_grad_enabled():
        return False
    for value in tensors:
        if isinstance(value, Tensor):
            if value.requires_grad:
                return True
        elif any(item.requires_grad for item in value):
            return True
    return False


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
        ctx.save_for_backward(x, a, b)
        ctx.sizes = (n, D)
        return x @ kron_weight(a, b)[:n, :D].t()

    @staticmethod
    def backward(ctx, gy: Tensor):
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
    """``x Wᵀ`` for x (m, D) with W the top-left n×D block of Σ_τ a[τ] ⊗ b[τ], formed once.

    a: (terms, p, q), b: (terms, s, t). Returns (m, n); differentiable in x, a and b.
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


def _bmm(batched: Tensor, x3: Tensor, out: Tensor | None = None, accumulate: bool = False):
    """batched @ x3 (both (c, ·, ·)), into ``out`` if given (added to it with ``accumulate``)."""
    if out is None:
        return torch.bmm(batched, x3)
    if accumulate:
        out.baddbmm_(batched, x3)
    else:
        torch.bmm(batched, x3, out=out)
    return out


def _terms(factor: Tensor) -> int:
    return 1 if factor.dim() == 2 else factor.shape[0]


def _term(factor: Tensor, index: int) -> Tensor:
    """Term ``index`` of a (rows, cols) matrix (one term) or a (terms, rows, cols) stack."""
    return factor if factor.dim() == 2 else factor[index]


class _Factors:
    """Per term τ and input part i: B_τᵀ, A_τ[:, J_i] and its transpose, broadcast over a
    chunk's rows (batch stride 0: the A contraction is one batched GEMM, with neither A copied
    nor the rows permuted). Built once per call: in the chunk loop every view costs a
    dispatcher round trip."""

    def __init__(self, a: Tensor, b: Tensor, cols: list[tuple[int, int]]):
        self.terms = _terms(a)
        self.b = [b] if b.dim() == 2 else list(b.unbind(0))
        self.b_t = [b_term.t() for b_term in self.b]
        q = a.shape[-1]
        self.a = [
            [a_term if (j0, j1) == (0, q) else a_term[:, j0:j1] for j0, j1 in cols]
            for a_term in ([a] if a.dim() == 2 else a.unbind(0))
        ]
        self._broadcast: dict[tuple[int, bool], list[list[Tensor]]] = {}

    def a_rows(self, c: int, transposed: bool = False) -> list[list[Tensor]]:
        """[τ][i] → A_τ[:, J_i] (or its transpose) expanded to (c, ·, ·)."""
        key = (c, transposed)
        if key not in self._broadcast:
            self._broadcast[key] = [
                [(part.t() if transposed else part).expand(c, -1, -1) for part in term]
                for term in self.a
            ]
        return self._broadcast[key]


def _middle_grad(acc: list, index: int, g3: Tensor, z3: Tensor) -> None:
    """Accumulate Σ_r g3[r] z3[r]ᵀ over the chunk's rows r, for g3 (c, r, k), z3 (c, q_i, k):
    the gradient of a factor broadcast over rows. Two ways, by which moves less data:

    - per-row products, accumulated in place across chunks (one batched GEMM with beta = 1)
      and summed over rows once at the end: a (c, r, q_i) accumulator, read and written once
      per chunk. Cheaper than summing each chunk's products separately.
    - when r·q_i exceeds (r + q_i)·k (a wide A with narrow B), that accumulator would outgrow
      the chunk itself; then g3 and z3 are transposed to (r, c·k) and (q_i, c·k) and the sum
      over rows is the inner dimension of one GEMM into an (r, q_i) accumulator.

    :func:`_sum_rows` finishes either.
    """
    c, rows, k = g3.shape
    cols = z3.shape[1]
    if rows * cols > (rows + cols) * k:
        g2 = g3.transpose(0, 1).reshape(rows, c * k)
        z2 = z3.transpose(0, 1).reshape(cols, c * k)
        if acc[index] is None:
            acc[index] = g2 @ z2.t()
        else:
            acc[index].addmm_(g2, z2.t())
        return
    if acc[index] is None:
        acc[index] = torch.bmm(g3, z3.transpose(1, 2))
    else:
        acc[index][:c].baddbmm_(g3, z3.transpose(1, 2))


def _sum_rows(acc: list, target: Tensor, cols: list[tuple[int, int]]) -> None:
    """target[:, j0:j1] = the accumulated Σ_r for each part i covering A's columns [j0, j1)."""
    for values, (j0, j1) in zip(acc, cols):
        if values is not None:
            target[:, j0:j1] = values.sum(0) if values.dim() == 3 else values


def _chunks(m: int, chunk_rows: int) -> list[tuple[int, int]]:
    step = max(1, chunk_rows)
    return [(r0, min(m, r0 + step)) for r0 in range(0, m, step)]


class _Rows:
    """Reads chunks of rows of the k inputs: as (c, q_i, t) views of each input (split, or one
    input without padding), or through one staging buffer (c, q, t) filled by one copy kernel.
    ``cols`` gives each part's range of A's columns."""

    def __init__(self, xs: Sequence[Tensor], layout: FusedLayout, q: int, t: int):
        self.xs, self.q, self.t = xs, q, t
        self.dims = [x.shape[1] for x in xs]
        blocks = input_blocks(self.dims, t) if layout.inputs == "split" else None
        self.staging = None
        if blocks is not None:
            self.cols = blocks
        else:
            self.cols = [(0, q)]
            if len(xs) > 1 or self.dims[0] != q * t:
                rows = min(layout.chunk_rows, xs[0].shape[0])
                self.staging = xs[0].new_empty(rows, q * t)
        self.padding = q * t - sum(self.dims)

    def read(self, r0: int, r1: int) -> list[Tensor]:
        c, t = r1 - r0, self.t
        whole = c == self.xs[0].shape[0]  # (one chunk: no slicing, fewer dispatcher calls)
        pieces = list(self.xs) if whole else [x[r0:r1] for x in self.xs]
        if self.staging is None:
            return [x.reshape(c, j1 - j0, t) for x, (j0, j1) in zip(pieces, self.cols)]
        buffer = self.staging if whole else self.staging[:c]
        if self.padding:  # (cat writes only contiguous outputs under torch.compile)
            pieces.append(buffer.new_zeros(c, self.padding))
        torch.cat(pieces, dim=1, out=buffer)  # one copy kernel for the k inputs
        return [buffer.view(c, self.q, t)]


def fused_forward(layout: FusedLayout, shape: tuple[int, int, int, int], a: Tensor, b: Tensor,
                  xs: Sequence[Tensor]) -> Tensor:
    """``cat(xs) (Σ_τ A_τ ⊗ B_τ)ᵀ`` chunk by chunk, without autograd (see the module docstring)."""
    p, q, s, t = shape
    m = xs[0].shape[0]
    rows = _Rows(xs, layout, q, t)
    factors = _Factors(a, b, rows.cols)
    y = xs[0].new_empty(m, p * s)
    for r0, r1 in _chunks(m, layout.chunk_rows):
        parts = rows.read(r0, r1)
        y_rows = y if r1 - r0 == m else y[r0:r1]
        _forward_chunk(parts, factors, y_rows.view(r1 - r0, p, s), layout.order)
    return y


def fused_backward(
    layout: FusedLayout,
    shape: tuple[int, int, int, int],
    a: Tensor,
    b: Tensor,
    xs: Sequence[Tensor],
    gy: Tensor,
    needs: tuple[bool, bool, bool],
) -> tuple[Tensor | None, Tensor | None, list[Tensor] | None]:
    """(dA, dB, [dX_i]) of the fused product for dY = gy, chunk by chunk (see the module
    docstring); ``needs`` says which of (dX, dA, dB) to compute, the others come back None."""
    (p, q, s, t) = shape
    need_x, need_a, need_b = needs
    m = xs[0].shape[0]
    gy = gy.contiguous()
    rows = _Rows(xs, layout, q, t)
    factors = _Factors(a, b, rows.cols)
    db = torch.zeros_like(b) if need_b else None
    # per term and part: Σ over rows of the chunk's per-row products (see _middle_grad)
    da_acc = [[None] * len(rows.cols) for _ in range(factors.terms)] if need_a else None
    # Each input's gradient is its own contiguous tensor, written chunk by chunk (so that
    # AccumulateGrad can keep it without the copy a slice of one (m, D) gradient needs).
    dxs = (
        [torch.empty_like(x, memory_format=torch.contiguous_format) for x in xs]
        if need_x else None
    )
    dx_staging = None
    if need_x and rows.staging is not None:
        # With one term, dX is the chunk's last product, written over its staged X (no
        # longer needed by then): one chunk buffer less. Several terms accumulate dX while
        # every term still reads X, so they get their own buffer. (Writing each input's dX
        # directly from per-input products instead measured 6–13 % slower.)
        dx_staging = rows.staging if factors.terms == 1 else torch.empty_like(rows.staging)
    for r0, r1 in _chunks(m, layout.chunk_rows):
        c = r1 - r0
        parts = rows.read(r0, r1)
        if dxs is None:
            dx3 = None
        elif dx_staging is not None:
            dx3 = [dx_staging[:c].view(c, q, t)]
        else:
            dx3 = [dx[r0:r1].view(c, j1 - j0, t) for dx, (j0, j1) in zip(dxs, rows.cols)]
        g3 = gy[r0:r1].view(c, p, s)
        _backward_chunk(parts, factors, g3, dx3, da_acc, db, layout.order)
        if dx_staging is not None:
            torch.split_with_sizes_copy(
                dx_staging[:c, : sum(rows.dims)], rows.dims, dim=1,
                out=[dx[r0:r1] for dx in dxs],
            )
    da = None
    if need_a:
        da = torch.zeros_like(a)
        for term in range(factors.terms):
            _sum_rows(da_acc[term], _term(da, term), rows.cols)
    return da, db, dxs


def _forward_chunk(parts: list[Tensor], factors: _Factors, y3: Tensor, order: str) -> None:
    """y3 (c, p, s) = Σ_τ A_τ X Bᵀ_τ for the chunk's rows."""
    c = y3.shape[0]
    a_rows = factors.a_rows(c)
    y2 = y3.view(-1, y3.shape[2])
    first = True
    for term in range(factors.terms):
        if order == "right_first":
            # Z_i = X_i Bᵀ: one GEMM per part; then Y += A[:, J_i] Z_i, batched over rows.
            for x3, a_part in zip(parts, a_rows[term]):
                z3 = torch.mm(x3.reshape(-1, x3.shape[2]), factors.b_t[term])
                _bmm(a_part, z3.view(c, x3.shape[1], -1), y3, accumulate=not first)
                first = False
        else:
            # U = Σ_i A[:, J_i] X_i (batched over rows); then Y = U Bᵀ: one GEMM.
            u3 = _bmm(a_rows[term][0], parts[0])
            for x3, a_part in zip(parts[1:], a_rows[term][1:]):
                _bmm(a_part, x3, u3, accumulate=True)
            _mm(u3.view(-1, u3.shape[2]), factors.b_t[term], y2, not first)
            first = False


def _backward_chunk(parts, factors: _Factors, g3, dx3, da_acc, db, order) -> None:
    """Accumulate dA (per-row products, see :func:`_middle_grad`) and dB, and write dX, for the
    chunk's rows given dY as g3 (c, p, s).

    Right first (Y = A Z, Z = X Bᵀ):  G = Aᵀ dY;  dA = Σ dY Zᵀ;  dB = Σ Gᵀ X;  dX = G B.
    Left first  (Y = U Bᵀ, U = A X):  V = dY B;  dA = Σ V Xᵀ;  dB = Σ dYᵀ U;  dX = Aᵀ V.
    Z (or U) is recomputed from X rather than saved (see the module docstring). dX comes last
    in each term: it may overwrite the staged X (see :func:`fused_backward`).
    """
    c = g3.shape[0]
    need_g = dx3 is not None or db is not None
    for term in range(factors.terms):
        first = term == 0
        b_term, b_t = factors.b[term], factors.b_t[term]
        if order == "right_first":
            if da_acc is not None:
                for index, x3 in enumerate(parts):
                    z3 = torch.mm(x3.reshape(-1, x3.shape[2]), b_t).view(c, x3.shape[1], -1)
                    _middle_grad(da_acc[term], index, g3, z3)
                    del z3  # before G: one chunk-sized temporary at a time
            if need_g:
                a_rows_t = factors.a_rows(c, transposed=True)[term]
                for index, x3 in enumerate(parts):
                    g2 = _bmm(a_rows_t[index], g3).view(-1, g3.shape[2])
                    if db is not None:
                        _term(db, term).addmm_(g2.t(), x3.reshape(-1, x3.shape[2]))
                    if dx3 is not None:
                        out = dx3[index]
                        _mm(g2, b_term, out.view(-1, out.shape[2]), not first)
        else:
            v3 = None
            if dx3 is not None or da_acc is not None:
                v3 = torch.mm(g3.view(-1, g3.shape[2]), b_term).view(c, g3.shape[1], -1)
            if da_acc is not None:
                for index, x3 in enumerate(parts):
                    _middle_grad(da_acc[term], index, v3, x3)
            if db is not None:
                a_rows = factors.a_rows(c)[term]
                u3 = _bmm(a_rows[0], parts[0])
                for x3, a_part in zip(parts[1:], a_rows[1:]):
                    _bmm(a_part, x3, u3, accumulate=True)
                _term(db, term).addmm_(g3.view(-1, g3.shape[2]).t(), u3.view(-1, u3.shape[2]))
                del u3
            if dx3 is not None:
                for index, a_part_t in enumerate(factors.a_rows(c, transposed=True)[term]):
                    _bmm(a_part_t, v3, dx3[index], accumulate=not first)
