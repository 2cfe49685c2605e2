"""The operator's GPU kernels in Triton: `cat(xs) (Σ_τ A_τ ⊗ B_τ)ᵀ` and its gradients.

For factor stacks A (T, p, q) and B (T, s, t), each row of the (m, D) concatenation X (D ≤ q·t;
the missing columns read as zeros) is the q×t matrix X_r (row-major: `X_r[j, l] = x[r, j·t + l]`)
and row r of Y (m, p·s) is the p×s matrix `Y_r = Σ_τ A_τ X_r B_τᵀ`. W (n×D) is never formed.
[`hmfusion.ops.native`][hmfusion.ops.native] registers these launchers as the `variant="triton"`
kernel of
the operator `hmfusion::fused_kron_concat` (and its backward op), so that the module, the planner,
`torch.compile` and `torch.func` see one op on every device.

Every launch evaluates chained products `L · C · R` per row of X, one (rows, columns) output tile
per program, with `tl.dot` on tiles of at least 16 × 16 (masked: odd sizes, s = 1 or t = 1, and
the zero padding of X past D cost no extra pass):

- forward, grid (m, tiles of Y_r): `Y_r = Σ_τ A_τ · X_r · B_τᵀ`, one (BP, BS) tile a program;
- dX, grid (m, tiles of X_r): `dX_r = Σ_τ A_τᵀ · dY_r · B_τ`, one (BQ, BT) tile a program;
- dA and dB partials, grid (row groups, tiles of dA and dB): one tile of
  `dA_τ = Σ_r dY_r · B_τ · X_rᵀ` (BP, BQ) or of `dB_τ = Σ_r dY_rᵀ · A_τ · X_r` (BS, BT) summed
  over the group's rows, into a float32 workspace (groups, T·p·q + T·s·t);
- dA and dB sum, grid (blocks of the workspace's columns): the sum over the groups in a fixed
  order, written as dA and dB in their dtype.

So forward is one launch and backward three (dX; the two reduction stages, as in Triton's
layer-norm-backward tutorial: deterministic, no atomics). With k > 1 inputs the forward reads
their concatenation (one `torch.cat` more) and dX is written once and split into the k inputs'
gradients (one `split_with_sizes_copy` more).

Each chained product runs in the contraction order of the plan (`left_first`): right first,
`X_r B_τᵀ` is computed first (a (BQ, BS) tile per block of A's columns, then multiplied by A's
tile), left first `A_τ X_r`; the backward takes the matching orders of
[`hmfusion.ops.fused`][hmfusion.ops.fused] (right first: G = Aᵀ dY, dA = Σ dY Zᵀ, dB = Σ Gᵀ X, dX =
G B;
left first: V = dY B, dA = Σ V Xᵀ, dB = Σ dYᵀ U, dX = Aᵀ V). The intermediate tile is
recomputed for every output tile and nothing is saved between launches.

Precision: every product accumulates in float32. float32 inputs are multiplied in IEEE float32
unless `torch.backends.cuda.matmul.allow_tf32` is True (which `torch.set_float32_matmul_precision`
sets), then in TF32: the rule of dense `F.linear`. bfloat16 and float16 inputs are multiplied as
they are, their intermediate tile rounded to their dtype before the second product (as the
two-matmul code rounds its intermediate), and the results written in their dtype.

Nothing reads device values on the host (no `.item()`, no synchronisation): the launches can be
captured in a CUDA graph. The launchers also run on CPU tensors under Triton's interpreter
(`TRITON_INTERPRET=1` set before this module is first imported), which is how the tests run
them without a GPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["DTYPES", "backward", "forward", "interpreted", "precision"]

#: The dtypes the kernels compute (float64 runs the operator's pure-PyTorch kernel).
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
#: Tile edges: powers of two from 16 (the least `tl.dot` takes) to 64.
_MIN_BLOCK, _MAX_BLOCK = 16, 64
#: Programs per streaming multiprocessor the reductions aim for (their row groups fill the GPU).
_PROGRAMS_PER_SM = 4
#: Columns of the workspace per program of the reductions' second stage.
_SUM_BLOCK = 256


# the kernels ----------------------------------------------------------------------------------
@triton.jit
def _tile(ptr, rows, cols, stride_row, stride_col, n_rows, n_cols, limit):
    """The (rows, cols) tile of a matrix at `ptr`, zero outside it and at offsets ≥ `limit`."""
    offsets = rows[:, None] * stride_row + cols[None, :] * stride_col
    inside = (rows[:, None] < n_rows) & (cols[None, :] < n_cols) & (offsets < limit)
    return tl.load(ptr + offsets, mask=inside, other=0.0)


@triton.jit
def _dot(a, b, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """a · b in float32; `UPCAST` (bfloat16 in the interpreter, whose bfloat16 dot multiplies
    the raw bits) converts the operands to float32 first: the same products, exactly."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def _chain(
    acc,
    l_ptr,
    l_stride_row,
    l_stride_col,
    l_limit,
    c_ptr,
    c_stride_row,
    c_stride_col,
    c_limit,
    r_ptr,
    r_stride_row,
    r_stride_col,
    r_limit,
    rows,
    cols,
    n_rows,
    inner_left,
    inner_right,
    n_cols,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_COLS: tl.constexpr,
    BLOCK_LEFT: tl.constexpr,
    BLOCK_RIGHT: tl.constexpr,
    RIGHT_FIRST: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """acc + L[rows, :] · C · R[:, cols] for L (n_rows, inner_left), C (inner_left, inner_right)
    and R (inner_right, n_cols), each given by its pointer, strides and offset limit.
    `RIGHT_FIRST`: C · R first, a (BLOCK_LEFT, columns) tile per block of L's columns; else
    L · C first, a (rows, BLOCK_RIGHT) tile per block of R's rows."""
    if RIGHT_FIRST:
        for start in range(0, inner_left, BLOCK_LEFT):
            middle = start + tl.arange(0, BLOCK_LEFT)
            part = tl.zeros((BLOCK_LEFT, BLOCK_COLS), dtype=tl.float32)
            for inner in range(0, inner_right, BLOCK_RIGHT):
                k = inner + tl.arange(0, BLOCK_RIGHT)
                c = _tile(
                    c_ptr, middle, k, c_stride_row, c_stride_col, inner_left, inner_right, c_limit
                )
                r = _tile(r_ptr, k, cols, r_stride_row, r_stride_col, inner_right, n_cols, r_limit)
                part += _dot(c, r, PRECISION, UPCAST)
            left = _tile(
                l_ptr, rows, middle, l_stride_row, l_stride_col, n_rows, inner_left, l_limit
            )
            acc += _dot(left, part.to(left.dtype), PRECISION, UPCAST)
    else:
        for start in range(0, inner_right, BLOCK_RIGHT):
            middle = start + tl.arange(0, BLOCK_RIGHT)
            part = tl.zeros((BLOCK_ROWS, BLOCK_RIGHT), dtype=tl.float32)
            for inner in range(0, inner_left, BLOCK_LEFT):
                k = inner + tl.arange(0, BLOCK_LEFT)
                left = _tile(
                    l_ptr, rows, k, l_stride_row, l_stride_col, n_rows, inner_left, l_limit
                )
                c = _tile(
                    c_ptr, k, middle, c_stride_row, c_stride_col, inner_left, inner_right, c_limit
                )
                part += _dot(left, c, PRECISION, UPCAST)
            r = _tile(r_ptr, middle, cols, r_stride_row, r_stride_col, inner_right, n_cols, r_limit)
            acc += _dot(part.to(r.dtype), r, PRECISION, UPCAST)
    return acc


@triton.jit
def _rows_kernel(
    l_ptr,
    l_stride_row,
    l_stride_col,
    c_ptr,
    c_stride,
    c_stride_row,
    c_stride_col,
    c_limit,
    r_ptr,
    r_stride_row,
    r_stride_col,
    out_ptr,
    out_stride,
    out_limit,
    n_rows,
    inner_left,
    inner_right,
    n_cols,
    terms,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_COLS: tl.constexpr,
    BLOCK_LEFT: tl.constexpr,
    BLOCK_RIGHT: tl.constexpr,
    RIGHT_FIRST: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """Row `program_id(0)` of the output, tile `program_id(1)`: Σ_τ L_τ · C_r · R_τ, with C_r
    the row of the (·, c_stride) input viewed as an (inner_left, inner_right) matrix (offsets
    from `c_limit` on read as zeros) and the output row (n_rows, n_cols) row-major (offsets from
    `out_limit` on not written). The forward (L = A, C = X, R = Bᵀ) and dX (L = Aᵀ, C = dY,
    R = B)."""
    row = tl.program_id(0).to(tl.int64)
    tile = tl.program_id(1)
    col_tiles = tl.cdiv(n_cols, BLOCK_COLS)
    rows = (tile // col_tiles) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    cols = (tile % col_tiles) * BLOCK_COLS + tl.arange(0, BLOCK_COLS)
    l_size = n_rows * inner_left
    r_size = inner_right * n_cols
    acc = tl.zeros((BLOCK_ROWS, BLOCK_COLS), dtype=tl.float32)
    for term in range(terms):
        acc = _chain(
            acc,
            l_ptr + term * l_size,
            l_stride_row,
            l_stride_col,
            l_size,
            c_ptr + row * c_stride,
            c_stride_row,
            c_stride_col,
            c_limit,
            r_ptr + term * r_size,
            r_stride_row,
            r_stride_col,
            r_size,
            rows,
            cols,
            n_rows,
            inner_left,
            inner_right,
            n_cols,
            BLOCK_ROWS,
            BLOCK_COLS,
            BLOCK_LEFT,
            BLOCK_RIGHT,
            RIGHT_FIRST,
            PRECISION,
            UPCAST,
        )
    offsets = rows[:, None] * n_cols + cols[None, :]
    inside = (rows[:, None] < n_rows) & (cols[None, :] < n_cols) & (offsets < out_limit)
    tl.store(out_ptr + row * out_stride + offsets, acc.to(out_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _row_sum_tile(
    out_ptr,
    tile,
    first,
    rows_per_group,
    m,
    gy_row,
    gy_stride,
    l_stride_row,
    l_stride_col,
    l_limit,
    c_ptr,
    c_stride_row,
    c_stride_col,
    x_row,
    x_stride,
    r_stride_row,
    r_stride_col,
    r_limit,
    n_rows,
    inner_left,
    inner_right,
    n_cols,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_COLS: tl.constexpr,
    BLOCK_LEFT: tl.constexpr,
    BLOCK_RIGHT: tl.constexpr,
    RIGHT_FIRST: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """Tile `tile` (of term τ = tile // tiles per term) of Σ_r L_r · C_τ · R_r over the rows
    [first, first + rows_per_group) below m, from `gy_row` and `x_row` (L_r read from dY's
    row, R_r from X's), stored in float32 at `out_ptr` as the (terms, n_rows, n_cols) values.
    (A loop of fixed length with the rows past m read as zeros: the interpreter of Triton 3.6
    takes no tensor as a loop bound.)"""
    col_tiles = tl.cdiv(n_cols, BLOCK_COLS)
    per_term = tl.cdiv(n_rows, BLOCK_ROWS) * col_tiles
    term = tile // per_term
    rest = tile % per_term
    rows = (rest // col_tiles) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    cols = (rest % col_tiles) * BLOCK_COLS + tl.arange(0, BLOCK_COLS)
    c_size = inner_left * inner_right
    acc = tl.zeros((BLOCK_ROWS, BLOCK_COLS), dtype=tl.float32)
    for index in range(rows_per_group):
        inside_m = first + index < m
        acc = _chain(
            acc,
            gy_row,
            l_stride_row,
            l_stride_col,
            tl.where(inside_m, l_limit, 0),
            c_ptr + term * c_size,
            c_stride_row,
            c_stride_col,
            c_size,
            x_row,
            r_stride_row,
            r_stride_col,
            tl.where(inside_m, r_limit, 0),
            rows,
            cols,
            n_rows,
            inner_left,
            inner_right,
            n_cols,
            BLOCK_ROWS,
            BLOCK_COLS,
            BLOCK_LEFT,
            BLOCK_RIGHT,
            RIGHT_FIRST,
            PRECISION,
            UPCAST,
        )
        gy_row += gy_stride
        x_row += x_stride
    offsets = rows[:, None] * n_cols + cols[None, :]
    inside = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    tl.store(out_ptr + term * n_rows * n_cols + offsets, acc, mask=inside)


@triton.jit
def _partials_kernel(
    x_ptr,
    x_stride,
    width,
    gy_ptr,
    gy_stride,
    a_ptr,
    b_ptr,
    work_ptr,
    work_stride,
    b_offset,
    m,
    rows_per_group,
    P,
    Q,
    S,
    T,
    tiles_a,
    BP: tl.constexpr,
    BQ: tl.constexpr,
    BS: tl.constexpr,
    BT: tl.constexpr,
    RIGHT_FIRST: tl.constexpr,
    LEFT_FIRST: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """Program (group g, tile i): the sum over the group's rows of one tile of dA_τ (the first
    `tiles_a` tiles: Σ_r dY_r · B_τ · X_rᵀ) or of dB_τ (the others: Σ_r dY_rᵀ · A_τ · X_r),
    in float32, into row g of the workspace (dA's (T, P, Q) values from column 0, dB's (T, S, T)
    from `b_offset`)."""
    group = tl.program_id(0)
    tile = tl.program_id(1)
    first = group * rows_per_group
    work = work_ptr + group.to(tl.int64) * work_stride
    gy_row = gy_ptr + first.to(tl.int64) * gy_stride
    x_row = x_ptr + first.to(tl.int64) * x_stride
    if tile < tiles_a:  # L = dY_r (P, S), C = B_τ, R = X_rᵀ (T, Q); right first: B Xᵀ first
        _row_sum_tile(
            work, tile, first, rows_per_group, m,
            gy_row, gy_stride, S, 1, P * S,
            b_ptr, T, 1,
            x_row, x_stride, 1, T, width,
            P, S, T, Q,
            BP, BQ, BS, BT, RIGHT_FIRST, PRECISION, UPCAST,
        )  # fmt: skip
    else:  # L = dY_rᵀ (S, P), C = A_τ, R = X_r (Q, T); left first: A X first
        _row_sum_tile(
            work + b_offset, tile - tiles_a, first, rows_per_group, m,
            gy_row, gy_stride, 1, S, P * S,
            a_ptr, Q, 1,
            x_row, x_stride, T, 1, width,
            S, P, Q, T,
            BS, BT, BP, BQ, LEFT_FIRST, PRECISION, UPCAST,
        )  # fmt: skip


@triton.jit
def _sum_kernel(
    work_ptr,
    work_stride,
    groups,
    a_width,
    total,
    da_ptr,
    db_ptr,
    BLOCK: tl.constexpr,
):
    """Columns [i·BLOCK, (i+1)·BLOCK) of the workspace summed over its `groups` rows in order:
    dA's values (below `a_width`) into da, dB's into db, each in its dtype."""
    cols = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = cols < total
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for group in range(groups):
        acc += tl.load(work_ptr + group * work_stride + cols, mask=inside, other=0.0)
    tl.store(da_ptr + cols, acc.to(da_ptr.dtype.element_ty), mask=cols < a_width)
    in_b = inside & (cols >= a_width)
    tl.store(db_ptr + (cols - a_width), acc.to(db_ptr.dtype.element_ty), mask=in_b)


# the launchers --------------------------------------------------------------------------------
def interpreted() -> bool:
    """Whether the kernels run in Triton's interpreter (`TRITON_INTERPRET=1` when this module
    was imported): then they take CPU tensors, else CUDA tensors only.

    Returns:
        True under the interpreter.
    """
    return not isinstance(_rows_kernel, triton.runtime.JITFunction)


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
    _rows_kernel[grid](
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
            _rows_kernel[grid](
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
    _partials_kernel[(groups, tiles_a + tiles_b)](
        x, x.stride(0), width, gy, gy.stride(0), a, b, work, work.stride(0), a_width,
        m, rows_per_group, p, q, s, t, tiles_a,
        BP=bp, BQ=bq, BS=bs, BT=bt,
        RIGHT_FIRST=not left_first, LEFT_FIRST=left_first, PRECISION=mode,
        UPCAST=_upcast(gy.dtype),
    )  # fmt: skip
    out_a = da if da is not None else db
    out_b = db if db is not None else da
    _sum_kernel[(_cdiv(total, _SUM_BLOCK),)](
        work, work.stride(0), groups, a_width, total, out_a, out_b, BLOCK=_SUM_BLOCK
    )
    return dxs, da, db
