"""The fused path in pure PyTorch: `cat(xs) (Σ_τ A_τ ⊗ B_τ)ᵀ` and its gradients, row chunk
by row chunk, without forming W.

[`fused_forward`][hmfusion.ops.fused.fused_forward] and
[`fused_backward`][hmfusion.ops.fused.fused_backward] walk the rows in chunks and turn each
contraction into one large GEMM or one strided batched GEMM, with the backward written out so
that dA and dB are contractions (no n×D gradient). [`hmfusion.ops.native`][hmfusion.ops.native]
registers them as the PyTorch operator `hmfusion::fused_kron_concat`, whose CPU kernel is
compiled C++ when available; these functions are its fallback (and its `inputs="split"`
layout). [`hmfusion.ops.planner`][hmfusion.ops.planner] decides when the fused plan runs and with
which
[`FusedLayout`][hmfusion.ops.fused.FusedLayout]; [`hmfusion.ops.kernels`][hmfusion.ops.kernels]
holds the
other two ways (forming W; plain torch ops).

Layout (chosen by measurement on a 2-core AVX-512 CPU with MKL; the numbers are in
`benchmarks/RESULTS.md`). Rows keep their natural layout: a chunk of c rows of X is a
(c, q, t) tensor, of Y a (c, p, s) tensor. The B contraction acts on the last axis, so it is
one GEMM `(c·q, t) @ Bᵀ`. The A contraction acts on the middle axis; instead of permuting to
(q, c·t) so that it too is one GEMM — strided copies in and out that ran 3–5× slower than plain
copies, making that layout as fast at 64-wide blocks and 20–25 % slower at 16–32 — it is a
batched GEMM with A broadcast over the batch (batch stride 0), which MKL runs close to the
equivalent single GEMM. Chunks of ≈ 4 MiB keep every intermediate in cache, so each call reads
X and writes Y from memory once and allocates nothing of size m·D but its outputs. The
backward recomputes the chunk's X Bᵀ (or A X) instead of saving it, which keeps the extra
memory of forward + backward at the size of the activations for one more GEMM.

The k inputs are either contracted one by one with their own columns of A (`split`: no copy
at all) or copied, a chunk of rows at a time, into one staging buffer (`gather`: one
`torch.cat(out=)` kernel into cache, never the full `cat(xs)`). Splitting turns the A
contraction into k batched GEMMs of inner size q_i = n_i/t: with q_i below ≈ 64 those ran
slower than the gather copy (e.g. 1.3–1.8× slower end to end at q_i = 4–16), so the planner
splits only wide inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["FusedLayout", "fused_backward", "fused_forward", "input_blocks", "split_aligned"]


class FusedLayout(NamedTuple):
    """How the fused kernel walks the inputs (decided by
    [`hmfusion.ops.planner`][hmfusion.ops.planner]).

    - `order`: `"right_first"` (B, then A) or `"left_first"` (A, then B).
    - `inputs`: `"split"` contracts each input with its own columns of A (no copy of the
      inputs at all; needs every input boundary on a multiple of t), `"gather"` copies each
      chunk of rows of the k inputs into one cache-sized staging buffer (any boundaries,
      zero padding of D included). With one input that needs no padding, both read it in place.
    - `chunk_rows`: rows per chunk.
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


def _bmm(
    batched: Tensor, x3: Tensor, out: Tensor | None = None, accumulate: bool = False
) -> Tensor:
    """batched @ x3 (both (c, ·, ·)), into `out` if given (added to it with `accumulate`)."""
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
    """Term `index` of a (rows, cols) matrix (one term) or a (terms, rows, cols) stack."""
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


def _middle_grad(acc: list[Tensor | None], index: int, g3: Tensor, z3: Tensor) -> None:
    """Accumulate Σ_r g3[r] z3[r]ᵀ over the chunk's rows r, for g3 (c, r, k), z3 (c, q_i, k):
    the gradient of a factor broadcast over rows. Two ways, by which moves less data:

    - per-row products, accumulated in place across chunks (one batched GEMM with beta = 1)
      and summed over rows once at the end: a (c, r, q_i) accumulator, read and written once
      per chunk. Cheaper than summing each chunk's products separately.
    - when r·q_i exceeds (r + q_i)·k (a wide A with narrow B), that accumulator would outgrow
      the chunk itself; then g3 and z3 are transposed to (r, c·k) and (q_i, c·k) and the sum
      over rows is the inner dimension of one GEMM into an (r, q_i) accumulator.

    `_sum_rows` finishes either.
    """
    c, rows, k = g3.shape
    cols = z3.shape[1]
    total = acc[index]
    if rows * cols > (rows + cols) * k:
        g2 = g3.transpose(0, 1).reshape(rows, c * k)
        z2 = z3.transpose(0, 1).reshape(cols, c * k)
        if total is None:
            acc[index] = g2 @ z2.t()
        else:
            total.addmm_(g2, z2.t())
        return
    if total is None:
        acc[index] = torch.bmm(g3, z3.transpose(1, 2))
    else:
        total[:c].baddbmm_(g3, z3.transpose(1, 2))


def _sum_rows(acc: list[Tensor | None], target: Tensor, cols: list[tuple[int, int]]) -> None:
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
    `cols` gives each part's range of A's columns."""

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


def fused_forward(
    layout: FusedLayout,
    shape: tuple[int, int, int, int],
    a: Tensor,
    b: Tensor,
    xs: Sequence[Tensor],
) -> Tensor:
    """`cat(xs) (Σ_τ A_τ ⊗ B_τ)ᵀ` chunk by chunk, without autograd (see the module docstring).

    Args:
        layout: the order, the inputs' layout and the rows per chunk.
        shape: (p, q, s, t).
        a: the left factors, (p, q) or a stack (terms, p, q).
        b: the right factors, (s, t) or a stack (terms, s, t).
        xs: the inputs, each (m, n_i), Σ n_i ≤ q·t (the rest is read as zeros).

    Returns:
        Of shape (m, p·s).

    Example:
        >>> x = torch.randn(5, 6, dtype=torch.float64)
        >>> a = torch.randn(1, 2, 3, dtype=torch.float64)
        >>> b = torch.randn(1, 2, 2, dtype=torch.float64)
        >>> layout = FusedLayout("right_first", "gather", chunk_rows=2)
        >>> y = fused_forward(layout, (2, 3, 2, 2), a, b, [x[:, :4], x[:, 4:]])
        >>> torch.allclose(y, x @ torch.kron(a[0], b[0]).T)
        True
    """
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
    docstring); dA and dB are contractions, no n×D gradient is formed.

    Args:
        layout: as in [`fused_forward`][hmfusion.ops.fused.fused_forward].
        shape: (p, q, s, t).
        a: the left factors, (p, q) or (terms, p, q).
        b: the right factors, (s, t) or (terms, s, t).
        xs: the inputs of the forward, each (m, n_i).
        gy: the gradient of the output, (m, p·s).
        needs: which of (dX, dA, dB) to compute; the others come back None.

    Returns:
        dA (a's shape), dB (b's shape) and one gradient per input (its shape, contiguous).

    Example:
        >>> x = torch.randn(5, 6, dtype=torch.float64)
        >>> a = torch.randn(1, 2, 3, dtype=torch.float64, requires_grad=True)
        >>> b = torch.randn(1, 2, 2, dtype=torch.float64, requires_grad=True)
        >>> gy = torch.randn(5, 4, dtype=torch.float64)
        >>> layout = FusedLayout("left_first", "gather", chunk_rows=2)
        >>> da, db, dxs = fused_backward(
        ...     layout, (2, 3, 2, 2), a.detach(), b.detach(), [x[:, :4], x[:, 4:]], gy,
        ...     (True, True, True),
        ... )
        >>> (x @ torch.kron(a[0], b[0]).T).mul(gy).sum().backward()
        >>> torch.allclose(da, a.grad), torch.allclose(db, b.grad)
        (True, True)
        >>> torch.allclose(torch.cat(dxs, 1), gy @ torch.kron(a[0], b[0]).detach())
        True
    """
    (p, q, s, t) = shape
    need_x, need_a, need_b = needs
    m = xs[0].shape[0]
    gy = gy.contiguous()
    rows = _Rows(xs, layout, q, t)
    factors = _Factors(a, b, rows.cols)
    db = torch.zeros_like(b) if need_b else None
    # per term and part: Σ over rows of the chunk's per-row products (see _middle_grad)
    da_acc: list[list[Tensor | None]] | None = (
        [[None] * len(rows.cols) for _ in range(factors.terms)] if need_a else None
    )
    # Each input's gradient is its own contiguous tensor, written chunk by chunk (so that
    # AccumulateGrad can keep it without the copy a slice of one (m, D) gradient needs).
    dxs: list[Tensor] | None = (
        [torch.empty_like(x, memory_format=torch.contiguous_format) for x in xs] if need_x else None
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
        if dx_staging is not None and dxs is not None:
            torch.split_with_sizes_copy(
                dx_staging[:c, : sum(rows.dims)],
                rows.dims,
                dim=1,
                out=[dx[r0:r1] for dx in dxs],
            )
    da = None
    if da_acc is not None:
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


def _backward_chunk(
    parts: list[Tensor],
    factors: _Factors,
    g3: Tensor,
    dx3: list[Tensor] | None,
    da_acc: list[list[Tensor | None]] | None,
    db: Tensor | None,
    order: str,
) -> None:
    """Accumulate dA (per-row products, see `_middle_grad`) and dB, and write dX, for the
    chunk's rows given dY as g3 (c, p, s).

    Right first (Y = A Z, Z = X Bᵀ):  G = Aᵀ dY;  dA = Σ dY Zᵀ;  dB = Σ Gᵀ X;  dX = G B.
    Left first  (Y = U Bᵀ, U = A X):  V = dY B;  dA = Σ V Xᵀ;  dB = Σ dYᵀ U;  dX = Aᵀ V.
    Z (or U) is recomputed from X rather than saved (see the module docstring). dX comes last
    in each term: it may overwrite the staged X (see `fused_backward`).
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
            v3 = None  # V = dY B, read by dA and dX (dB reads U instead)
            if dx3 is not None or da_acc is not None:
                v3 = torch.mm(g3.view(-1, g3.shape[2]), b_term).view(c, g3.shape[1], -1)
            if da_acc is not None and v3 is not None:
                for index, x3 in enumerate(parts):
                    _middle_grad(da_acc[term], index, v3, x3)
            if db is not None:
                a_rows = factors.a_rows(c)[term]
                u3 = _bmm(a_rows[0], parts[0])
                for x3, a_part in zip(parts[1:], a_rows[1:]):
                    _bmm(a_part, x3, u3, accumulate=True)
                _term(db, term).addmm_(g3.view(-1, g3.shape[2]).t(), u3.view(-1, u3.shape[2]))
                del u3
            if dx3 is not None and v3 is not None:
                for index, a_part_t in enumerate(factors.a_rows(c, transposed=True)[term]):
                    _bmm(a_part_t, v3, dx3[index], accumulate=not first)
