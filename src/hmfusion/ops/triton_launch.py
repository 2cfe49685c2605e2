"""The launchers of the Triton kernels: grids, tile sizes, precision and workspaces.

The kernels and the math they compute are in
[`hmfusion.ops.triton_kernels`][hmfusion.ops.triton_kernels]; this module calls them for
`cat(xs) (Σ_τ A_τ ⊗ B_τ)ᵀ` (one launch) and its gradients (three launches), on CUDA tensors, or
on CPU tensors under Triton's interpreter (`TRITON_INTERPRET=1` set before the kernels are
first imported). [`hmfusion.ops.triton_dispatch`][hmfusion.ops.triton_dispatch] imports it on
the first CUDA call.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
from torch import Tensor

from hmfusion.ops import triton_kernels as kernels
from hmfusion.ops.triton_dispatch import DTYPES

__all__ = ["DTYPES", "backward", "forward", "interpreted", "precision"]

#: Tile edges: powers of two from 16 (the least `tl.dot` takes) to 64.
_MIN_BLOCK, _MAX_BLOCK = 16, 64
#: Programs per streaming multiprocessor the reductions aim for (their row groups fill the GPU).
_PROGRAMS_PER_SM = 4
#: Columns of the workspace per program of the reductions' second stage.
_SUM_BLOCK = 256


# the launchers --------------------------------------------------------------------------------
def interpreted() -> bool:
    """Whether the kernels run in Triton's interpreter (`TRITON_INTERPRET=1` when this module
    was imported): then they take CPU tensors, else CUDA tensors only.

    Returns:
        True under the interpreter.
    """
    return not isinstance(kernels.rows_kernel, triton.runtime.JITFunction)


def precision(dtype: torch.dtype) -> str:
    """The `tl.dot` input precision for `dtype`: `"tf32"` for float32 where
    `torch.backends.cuda.matmul.allow_tf32` allows it (as for `F.linear`), else `"ieee"`
    (16-bit inputs are multiplied as they are either way).

    Args:
        dtype: the inputs' dtype.

    Returns:
        `"tf32"` or `"ieee"`.
    """
    tf32 = dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32
    return "tf32" if tf32 and not interpreted() else "ieee"


def _upcast(dtype: torch.dtype) -> bool:
    """bfloat16 in the interpreter: multiplied in float32 (see `_dot`)."""
    return dtype == torch.bfloat16 and interpreted()


def _block(size: int) -> int:
    return min(_MAX_BLOCK, max(_MIN_BLOCK, triton.next_power_of_2(size)))


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _concatenated(xs: Sequence[Tensor]) -> Tensor:
    """The (m, D) concatenation with unit column stride (the inputs themselves when k = 1)."""
    x = xs[0] if len(xs) == 1 else torch.cat(list(xs), dim=1)
    return x if x.stride(1) == 1 else x.contiguous()


def _row_groups(m: int, tiles: int, device: torch.device) -> int:
    """Row groups of the reductions: enough programs to fill the GPU, each with rows to sum."""
    if device.type == "cuda":
        processors = torch.cuda.get_device_properties(device).multi_processor_count
    else:  # (the interpreter: a few groups, so that the second stage sums something)
        processors = 2
    return max(1, min(m, _cdiv(_PROGRAMS_PER_SM * processors, max(tiles, 1))))


def forward(xs: Sequence[Tensor], a: Tensor, b: Tensor, left_first: bool) -> Tensor:
    """`Y = cat(xs, 1) (Σ_τ a[τ] ⊗ b[τ])ᵀ` in one launch (one more, a `torch.cat`, for k > 1).

    Args:
        xs: k tensors (m, n_i), Σ n_i = D ≤ q·t (the missing columns read as zeros); one dtype
            of `DTYPES` and one device (CUDA, or the CPU under the interpreter) with a and b.
        a: the stack (T, p, q) of left factors.
        b: the stack (T, s, t) of right factors.
        left_first: `A X_r` first (else `X_r Bᵀ` first).

    Returns:
        Y, (m, p·s), in the inputs' dtype.
    """
    x = _concatenated(xs)
    a, b = a.contiguous(), b.contiguous()
    terms, p, q = a.shape
    s, t = b.shape[1], b.shape[2]
    m, width = x.shape
    y = x.new_empty(m, p * s)
    if m == 0:
        return y
    bp, bq, bs, bt = _block(p), _block(q), _block(s), _block(t)
    grid = (m, _cdiv(p, bp) * _cdiv(s, bs))
    kernels.rows_kernel[grid](
        a, q, 1,  # L = A (p, q)
        x, x.stride(0), t, 1, width,  # C = X_r (q, t)
        b, 1, t,  # R = Bᵀ (t, s)
        y, y.stride(0), p * s,
        p, q, t, s, terms,
        BLOCK_ROWS=bp, BLOCK_COLS=bs, BLOCK_LEFT=bq, BLOCK_RIGHT=bt,
        RIGHT_FIRST=not left_first, PRECISION=precision(x.dtype), UPCAST=_upcast(x.dtype),
    )  # fmt: skip
    return y


def backward(
    gy: Tensor,
    xs: Sequence[Tensor],
    a: Tensor,
    b: Tensor,
    left_first: bool,
    needs: tuple[bool, bool, bool],
) -> tuple[list[Tensor] | None, Tensor | None, Tensor | None]:
    """([dX_i], dA, dB) for dY = gy: at most three launches (dX; dA and dB's partial sums over
    row groups; their sum), one more for k > 1 inputs (a `torch.cat` of the inputs where dA or
    dB are needed, a `split_with_sizes_copy` of dX).

    Args:
        gy: the gradient of Y, (m, p·s).
        xs: the inputs of the forward, each (m, n_i).
        a: the stack (T, p, q) of left factors.
        b: the stack (T, s, t) of right factors.
        left_first: the forward's order (the backward takes the matching orders).
        needs: which of (dX, dA, dB) to compute; the others come back None.

    Returns:
        One contiguous gradient per input (their shapes), dA (T, p, q) and dB (T, s, t), in the
        inputs' dtype.
    """
    need_x, need_a, need_b = needs
    a, b = a.contiguous(), b.contiguous()
    gy = gy if gy.stride(1) == 1 else gy.contiguous()
    terms, p, q = a.shape
    s, t = b.shape[1], b.shape[2]
    m = gy.shape[0]
    dims = [x.shape[1] for x in xs]
    width = sum(dims)
    bp, bq, bs, bt = _block(p), _block(q), _block(s), _block(t)
    mode = precision(gy.dtype)
    dxs = None
    if need_x:
        dxs = [torch.empty_like(x, memory_format=torch.contiguous_format) for x in xs]
        dx = dxs[0] if len(xs) == 1 else gy.new_empty(m, width)
        if m:
            grid = (m, _cdiv(q, bq) * _cdiv(t, bt))
            kernels.rows_kernel[grid](
                a, 1, q,  # L = Aᵀ (q, p)
                gy, gy.stride(0), s, 1, p * s,  # C = dY_r (p, s)
                b, t, 1,  # R = B (s, t)
                dx, dx.stride(0), width,
                q, p, s, t, terms,
                BLOCK_ROWS=bq, BLOCK_COLS=bt, BLOCK_LEFT=bp, BLOCK_RIGHT=bs,
                RIGHT_FIRST=left_first, PRECISION=mode, UPCAST=_upcast(gy.dtype),
            )  # fmt: skip
        if len(xs) > 1:
            torch.split_with_sizes_copy(dx, dims, dim=1, out=dxs)
    da = torch.empty_like(a) if need_a else None
    db = torch.empty_like(b) if need_b else None
    if not (need_a or need_b):
        return dxs, da, db
    if m == 0:
        return dxs, None if da is None else da.zero_(), None if db is None else db.zero_()
    x = _concatenated(xs)
    tiles_a = terms * _cdiv(p, bp) * _cdiv(q, bq) if need_a else 0
    tiles_b = terms * _cdiv(s, bs) * _cdiv(t, bt) if need_b else 0
    a_width = terms * p * q if need_a else 0
    total = a_width + (terms * s * t if need_b else 0)
    groups = _row_groups(m, tiles_a + tiles_b, gy.device)
    rows_per_group = _cdiv(m, groups)
    groups = _cdiv(m, rows_per_group)
    work = gy.new_empty(groups, total, dtype=torch.float32)
    kernels.partials_kernel[(groups, tiles_a + tiles_b)](
        x, x.stride(0), width, gy, gy.stride(0), a, b, work, work.stride(0), a_width,
        m, rows_per_group, p, q, s, t, tiles_a,
        BP=bp, BQ=bq, BS=bs, BT=bt,
        RIGHT_FIRST=not left_first, LEFT_FIRST=left_first, PRECISION=mode,
        UPCAST=_upcast(gy.dtype),
    )  # fmt: skip
    out_a = da if da is not None else db
    out_b = db if db is not None else da
    kernels.sum_kernel[(_cdiv(total, _SUM_BLOCK),)](
        work, work.stride(0), groups, a_width, total, out_a, out_b, BLOCK=_SUM_BLOCK
    )
    return dxs, da, db
