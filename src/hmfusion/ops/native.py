"""The native CPU operator and its PyTorch registration (its build: `hmfusion.ops.build`).

[`fused_kron_concat`][hmfusion.ops.native.fused_kron_concat] computes `cat(xs) (Σ_τ A_τ ⊗ B_τ)ᵀ`
for factor stacks A (T, p, q) and B (T, s, t) without forming W. (This operator is the
planner's "fused" plan; where factoring saves nothing, p = q = 1 over a large batch, the
planner's "materialize" plan forms W instead, in
[`kron_linear`][hmfusion.ops.kernels.kron_linear].) On the CPU it runs `csrc/kron_concat.cpp`: one
parallel region per call whose workers take row chunks from an atomic counter (dynamic
scheduling, so a descheduled thread delays one chunk, not a static share of the rows) and run
single-threaded GEMMs on cache-resident blocks, forward and backward (dX, dA, dB; per-worker
dA/dB reduced at the end). For small factors (`Plan.kernel == "tiled"`) the same walk runs
register-tiled loops of its own (`csrc/tiled.h`) instead of BLAS calls, whose set-up costs
more than the arithmetic there. [`hmfusion.ops.build`][hmfusion.ops.build] builds and loads
the compiled code ([`available`][hmfusion.ops.build.available] and
[`status`][hmfusion.ops.build.status] are re-exported here).

Fallback: where the build failed, or `HMFUSION_NATIVE=0`, the same operator runs the
pure-PyTorch chunked kernel of [`hmfusion.ops.fused`][hmfusion.ops.fused]; so it does on other
devices
(CI runs the kernel tests both ways). On CUDA the variant `"triton"` (the planner's
`Plan.kernel == "triton"`) runs the Triton kernels of
[`hmfusion.ops.triton_kernels`][hmfusion.ops.triton_kernels] (one launch forward, three
backward), imported on the first such call; without Triton, or for float64, the fallback runs.

The forward and the backward are operators registered with `torch.library.custom_op`
(`hmfusion::fused_kron_concat` and `hmfusion::fused_kron_concat_backward`, with fake
implementations and a vmap rule), tied together by an autograd Function with
`setup_context`: it works under `torch.compile(fullgraph=True)`, `torch.func.grad` and
`torch.func.vmap`. (A custom op's own `register_autograd` does not compose with torch.func
transforms in torch 2.13.) A backward that is itself differentiated (`create_graph=True`) runs
through differentiable composite ops.

In plain eager mode (not tracing, no torch.func transform) where the compiled operator runs, the
call skips all of that: `torch.ops.hmfusion_native.kron_concat` carries its own autograd node in
C++ (`csrc/kron_concat.cpp`), so neither the forward nor the backward enters Python (a Python
autograd Function and the custom-op dispatch cost more than the arithmetic of a small layer;
see `benchmarks/RESULTS.md`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from hmfusion.ops import fused, kernels, triton_dispatch
from hmfusion.ops.build import available as available
from hmfusion.ops.build import status as status

__all__ = ["available", "fused_kron_concat", "status"]

#: dtypes the compiled operator handles (others run the fallback).
NATIVE_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _use_native(tensors: Sequence[Tensor], variant: str) -> bool:
    first = tensors[0]
    return (
        variant not in ("split", "pytorch", "triton")
        and first.device.type == "cpu"
        and first.dtype in NATIVE_DTYPES
        and available()
    )


def _layout(left_first: bool, variant: str, chunk_rows: int) -> fused.FusedLayout:
    order = "left_first" if left_first else "right_first"
    return fused.FusedLayout(order, "split" if variant == "split" else "gather", chunk_rows)


def _shape(a: Tensor, b: Tensor) -> tuple[int, int, int, int]:
    return (a.shape[1], a.shape[2], b.shape[1], b.shape[2])


# the operators --------------------------------------------------------------------------------
def _forward_kernel(
    xs: list[Tensor],
    a: Tensor,
    b: Tensor,
    left_first: bool,
    variant: str,
    chunk_rows: int,
) -> Tensor:
    if triton_dispatch.use(xs, variant):
        return triton_dispatch.kernels().forward(xs, a, b, left_first)  # type: ignore[union-attr]
    if _use_native(xs, variant):
        ops = torch.ops.hmfusion_native
        op = ops.tiled_forward if variant == "tiled" else ops.forward
        return op(xs, a, b, left_first, chunk_rows)
    return fused.fused_forward(_layout(left_first, variant, chunk_rows), _shape(a, b), a, b, xs)


_kron_concat_op = torch.library.custom_op(
    "hmfusion::fused_kron_concat", _forward_kernel, mutates_args=()
)


@_kron_concat_op.register_fake
def _(
    xs: list[Tensor],
    a: Tensor,
    b: Tensor,
    left_first: bool,
    variant: str,
    chunk_rows: int,
) -> Tensor:
    return xs[0].new_empty(xs[0].shape[0], a.shape[1] * b.shape[1])


def _backward_kernel(
    gy: Tensor,
    xs: list[Tensor],
    a: Tensor,
    b: Tensor,
    left_first: bool,
    variant: str,
    chunk_rows: int,
    need_x: bool,
    need_a: bool,
    need_b: bool,
) -> list[Tensor]:
    """[dA, dB, dX_1 … dX_k]; gradients not needed come back as empty tensors."""
    if triton_dispatch.use(xs, variant):
        dxs, da, db = triton_dispatch.kernels().backward(  # type: ignore[union-attr]
            gy, xs, a, b, left_first, (need_x, need_a, need_b)
        )
    elif _use_native(xs, variant):
        ops = torch.ops.hmfusion_native
        op = ops.tiled_backward if variant == "tiled" else ops.backward
        dxs, da, db = op(gy, xs, a, b, left_first, chunk_rows, need_x, need_a, need_b)
        return [da, db, *dxs]
    else:
        da, db, dxs = fused.fused_backward(
            _layout(left_first, variant, chunk_rows),
            _shape(a, b),
            a,
            b,
            xs,
            gy,
            (need_x, need_a, need_b),
        )
    empty = a.new_empty(0)
    return [
        empty if da is None else da,
        empty.clone() if db is None else db,
        *(dxs if dxs is not None else []),
    ]


_kron_concat_backward_op = torch.library.custom_op(
    "hmfusion::fused_kron_concat_backward", _backward_kernel, mutates_args=()
)


@_kron_concat_backward_op.register_fake
def _(
    gy: Tensor,
    xs: list[Tensor],
    a: Tensor,
    b: Tensor,
    left_first: bool,
    variant: str,
    chunk_rows: int,
    need_x: bool,
    need_a: bool,
    need_b: bool,
) -> list[Tensor]:
    da = a.new_empty(a.shape) if need_a else a.new_empty(0)
    db = b.new_empty(b.shape) if need_b else b.new_empty(0)
    return [da, db, *([x.new_empty(x.shape) for x in xs] if need_x else [])]


def _traced() -> bool:
    """Inside torch.compile or a torch.func transform: the registered operators must be called
    (fake tensors, vmap rule); in plain eager mode the compiled operator with its C++ autograd
    node runs (or, on the fallback, the kernels are called directly), which saves the custom-op
    dispatch (≈ 40 µs a call, most of a small layer's time)."""
    return torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active()


def _forward(
    xs: list[Tensor], a: Tensor, b: Tensor, left_first: bool, variant: str, chunk_rows: int
) -> Tensor:
    if _traced():
        return _kron_concat_op(xs, a, b, left_first, variant, chunk_rows)
    return _forward_kernel(xs, a, b, left_first, variant, chunk_rows)


def _backward_grads(
    gy: Tensor,
    xs: list[Tensor],
    a: Tensor,
    b: Tensor,
    left_first: bool,
    variant: str,
    chunk_rows: int,
    need_x: bool,
    need_a: bool,
    need_b: bool,
) -> list[Tensor]:
    op = _kron_concat_backward_op if _traced() else _backward_kernel
    return op(gy, xs, a, b, left_first, variant, chunk_rows, need_x, need_a, need_b)


class _KronConcat(torch.autograd.Function):
    """Autograd for the operator: forward and backward are the two registered ops (an
    autograd.Function with `setup_context`, so torch.func transforms apply; vmap of the
    forward uses the operator's vmap rule)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(
        left_first: bool, variant: str, chunk_rows: int, a: Tensor, b: Tensor, *xs: Tensor
    ) -> Tensor:
        return _forward(list(xs), a, b, left_first, variant, chunk_rows)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        left_first, variant, chunk_rows, a, b, *xs = inputs
        ctx.save_for_backward(a, b, *xs)
        ctx.left_first, ctx.variant, ctx.chunk_rows = left_first, variant, chunk_rows

    @staticmethod
    def backward(ctx: Any, gy: Tensor) -> tuple:
        a, b, *xs = ctx.saved_tensors
        need_a, need_b = ctx.needs_input_grad[3], ctx.needs_input_grad[4]
        need_x = any(ctx.needs_input_grad[5:])
        if torch.is_grad_enabled():  # create_graph: a backward that is differentiable itself
            da, db, dxs = _differentiable_grads(
                ctx.left_first, a, b, xs, gy, (need_x, need_a, need_b)
            )
        else:
            grads = _backward_grads(
                gy.contiguous(),
                xs,
                a,
                b,
                ctx.left_first,
                ctx.variant,
                ctx.chunk_rows,
                need_x,
                need_a,
                need_b,
            )
            da = grads[0] if need_a else None
            db = grads[1] if need_b else None
            dxs = list(grads[2:]) if need_x else None
        return (None, None, None, da, db, *(dxs if dxs is not None else [None] * len(xs)))


class _KronConcatEager(torch.autograd.Function):
    """`_KronConcat` for plain eager calls: the same forward, context and backward in the
    classic form (`forward(ctx, …)`). `Function.apply` binds the arguments of a forward with a
    separate `setup_context` through `inspect.signature` on every call, ≈ 50 µs: a quarter of
    the main job's layer (benchmarks/RESULTS.md). torch.func transforms need `_KronConcat`."""

    @staticmethod
    def forward(
        ctx: Any,
        left_first: bool,
        variant: str,
        chunk_rows: int,
        a: Tensor,
        b: Tensor,
        *xs: Tensor,
    ) -> Tensor:
        output = _forward(list(xs), a, b, left_first, variant, chunk_rows)
        _KronConcat.setup_context(ctx, (left_first, variant, chunk_rows, a, b, *xs), output)
        return output

    backward = _KronConcat.backward


def _differentiable_grads(
    left_first: bool,
    a: Tensor,
    b: Tensor,
    xs: list[Tensor],
    gy: Tensor,
    needs: tuple[bool, bool, bool],
) -> tuple:
    """The gradients through [`kron_matmul`][hmfusion.ops.kernels.kron_matmul] (recorded for double
    backward); only used with `create_graph=True`."""
    need_x, need_a, need_b = needs
    with torch.enable_grad():
        p, q, s, t = _shape(a, b)
        x = kernels.pad_concat(xs, q * t)
        order = "left_first" if left_first else "right_first"
        y = kernels.kron_matmul(x, list(a.unbind(0)), list(b.unbind(0)), (p, q, s, t), order)
        wanted = [*(xs if need_x else []), *([a] if need_a else []), *([b] if need_b else [])]
        grads = list(torch.autograd.grad(y, wanted, gy, create_graph=True))
    dxs = [grads.pop(0) for _ in xs] if need_x else None
    da = grads.pop(0) if need_a else None
    db = grads.pop(0) if need_b else None
    return da, db, dxs


@_kron_concat_op.register_vmap
def _vmap(
    info: Any,
    in_dims: tuple,
    xs: list[Tensor],
    a: Tensor,
    b: Tensor,
    left_first: bool,
    variant: str,
    chunk_rows: int,
) -> tuple[Tensor, int]:
    x_dims, a_dim, b_dim = in_dims[0], in_dims[1], in_dims[2]
    size = info.batch_size
    if a_dim is None and b_dim is None:  # the batch joins the rows: one call
        rows = []
        for x, dim in zip(xs, x_dims):
            x = x.movedim(dim, 0) if dim is not None else x.expand(size, *x.shape)
            rows.append(x.reshape(size * x.shape[1], x.shape[2]))
        y = _kron_concat_op(rows, a, b, left_first, variant, chunk_rows)
        return y.view(size, -1, y.shape[-1]), 0
    outputs = []
    for index in range(size):
        x_i = [x if dim is None else x.select(dim, index) for x, dim in zip(xs, x_dims)]
        a_i = a if a_dim is None else a.select(a_dim, index)
        b_i = b if b_dim is None else b.select(b_dim, index)
        outputs.append(_kron_concat_op(x_i, a_i, b_i, left_first, variant, chunk_rows))
    return torch.stack(outputs), 0


def fused_kron_concat(
    xs: Sequence[Tensor],
    a: Tensor,
    b: Tensor,
    order: Literal["right_first", "left_first"],
    chunk_rows: int,
    inputs: Literal["gather", "split"] = "gather",
    *,
    tiled: bool = False,
    fallback: bool = False,
    triton: bool = False,
) -> Tensor:
    """`cat(xs, -1) (Σ_τ a[τ] ⊗ b[τ])ᵀ` through the native operator (or its fallback).

    Args:
        xs: k tensors (m, n_i), Σ n_i ≤ q·t (missing columns are zero padding).
        a: the left factors, a (p, q) matrix or a (T, p, q) stack.
        b: the right factors likewise, (s, t) or (T, s, t); one dtype and device with a and xs.
        order: `"right_first"` (X Bᵀ, then A) or `"left_first"` (A X, then Bᵀ).
        chunk_rows: rows per chunk (≥ 1).
        inputs: `"gather"` copies each chunk of the k inputs into a cache-sized buffer (the
            compiled kernel; one unpadded input is read in place); `"split"` contracts each
            input with its own columns of A (pure PyTorch only; every boundary on a multiple
            of t).
        tiled: run the compiled operator's register-tiled loops (`csrc/tiled.h`: no BLAS
            call, 16-bit inputs accumulated in float32) instead of its per-chunk BLAS GEMMs;
            the planner's `Plan.kernel == "tiled"`. Needs `inputs="gather"`; where the
            compiled operator is unavailable the fallback runs either way.
        fallback: run the pure-PyTorch kernel even where the compiled operator is loaded
            (the planner's `Plan.kernel == "pytorch"`, e.g. under
            `force_plan(kernel="pytorch")`).
        triton: run the Triton kernels of
            [`hmfusion.ops.triton_kernels`][hmfusion.ops.triton_kernels] (the planner's
            `Plan.kernel == "triton"`, on CUDA): one launch forward, three backward. Needs
            `inputs="gather"`; where they cannot run (not CUDA, float64, no Triton; CPU tensors
            run them under `TRITON_INTERPRET=1`) the pure-PyTorch kernel runs.

    Returns:
        (m, p·s), differentiable in xs, a and b.

    Shape:
        xs[i]: (m, n_i); output: (m, p·s).

    Raises:
        ValueError: an unknown order or inputs, a chunk_rows below 1, `inputs="split"`
            with an input boundary off a multiple of t, `tiled` with `inputs="split"`, or
            `tiled` with `fallback`, or `triton` with `inputs="split"`, `tiled` or
            `fallback`.

    Example:
        >>> import torch
        >>> from hmfusion.ops import native
        >>> xs = [torch.randn(5, 4), torch.randn(5, 4)]
        >>> a, b = torch.randn(1, 2, 2), torch.randn(1, 3, 4)
        >>> native.fused_kron_concat(xs, a, b, "right_first", 4).shape
        torch.Size([5, 6])
    """
    if order not in ("right_first", "left_first"):
        raise ValueError(f"order must be 'right_first' or 'left_first', got {order!r}")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be a positive int, got {chunk_rows!r}")
    if inputs not in ("gather", "split"):
        raise ValueError(f"inputs must be 'gather' or 'split', got {inputs!r}")
    split = inputs == "split"
    if split and tiled:
        raise ValueError("tiled=True reads the inputs by gathering; it needs inputs='gather'")
    if tiled and fallback:
        raise ValueError("tiled=True runs the compiled operator; it excludes fallback=True")
    if triton and (split or tiled or fallback):
        raise ValueError(
            "triton=True runs the Triton kernels on gathered inputs; it excludes "
            "inputs='split', tiled=True and fallback=True"
        )
    variant = "split" if split else ("tiled" if tiled else "pytorch" if fallback else "gather")
    variant = "triton" if triton else variant
    if split and not fused.split_aligned([x.shape[1] for x in xs], b.shape[-1]):
        raise ValueError(
            f"inputs='split' needs every input boundary on a multiple of t={b.shape[-1]}, "
            f"got widths {[x.shape[1] for x in xs]}"
        )
    traced = _traced()
    if not traced and _use_native(xs, variant):  # eager: the operator with its C++ autograd node
        return torch.ops.hmfusion_native.kron_concat(
            list(xs), a, b, order == "left_first", chunk_rows, variant == "tiled"
        )
    a, b = (factor if factor.dim() == 3 else factor.unsqueeze(0) for factor in (a, b))
    if not kernels.needs_grad(a, b, xs):  # inference: the operator alone
        return _forward(list(xs), a, b, order == "left_first", variant, chunk_rows)
    function = _KronConcat if traced else _KronConcatEager
    return function.apply(order == "left_first", variant, chunk_rows, a, b, *xs)
