"""The planner's cost model: what each way of applying a Kronecker-structured W costs.

Costs are multiply-add equivalents of a large float32 GEMM on the benchmark CPU: a GEMM whose
smallest dimension is d runs at min(1, 0.8·(d/64)^0.45) of a large GEMM's rate, a batched GEMM
costs at least `BMM_ROW_MACS` a row, a kernel launch `OP_OVERHEAD_MACS`, a pass over a formed W
`WEIGHT_ELEMENT_MACS` an element; the compiled operator's loops and calls have constants of
their own. On accelerators work runs `DEVICE_SPEEDUP` times faster but every dispatched
operator costs host time (`DEVICE_OP_MACS`; [`device_ops`][hmfusion.ops.launches.device_ops]);
on CUDA with Triton the fused plan's kernels are charged their padded tiles and launches
([`triton_ops`][hmfusion.ops.launches.triton_ops]).
The constants were fitted on two CPUs (benchmarks/RESULTS.md, notes): the model *ranks*
[`candidates`][hmfusion.ops.costmodel.candidates], the measuring planner
([`hmfusion.ops.tuning`][hmfusion.ops.tuning]) decides among the best where a call is long
enough to time, and the model alone decides elsewhere or with measuring off.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch

from hmfusion.ops import kernels
from hmfusion.ops.chunking import chunk_rows, native_chunk_rows, split_pays, tiled_chunk_rows
from hmfusion.ops.launches import (
    DEVICE_OP_MACS,
    DEVICE_SPEEDUP,
    device_ops,
    triton_ops,
    triton_row_macs,
)

__all__ = [
    "Candidate",
    "Kernel",
    "KronSpec",
    "Method",
    "Order",
    "candidates",
    "estimate",
    "fused_order",
    "half_gemms_fast",
    "native_transposed",
    "tiled_pays",
]

#: How W is applied (see [`hmfusion.ops.planner`][hmfusion.ops.planner]).
Method = Literal["materialize", "fused", "composite"]
#: Which contraction comes first.
Order = Literal["right_first", "left_first"]
#: Which code runs a fused plan: the compiled BLAS (`native`) or tiled loops, pure PyTorch, or
#: on CUDA the Triton kernels.
Kernel = Literal["native", "tiled", "pytorch", "triton"]


class KronSpec(NamedTuple):
    """The structure of W: n×D, the top-left block of Σ_τ A_τ ⊗ B_τ with A: p×q, B: s×t.

    `rank_a` / `rank_b` are the ranks of low-rank factors (None: dense).

    Example:
        >>> from hmfusion.ops.costmodel import KronSpec
        >>> KronSpec(64, 64, 8, 8, 8, 8).terms
        1
    """

    n: int
    D: int
    p: int
    q: int
    s: int
    t: int
    terms: int = 1
    rank_a: int | None = None
    rank_b: int | None = None


#: GEMM efficiency at the smallest dimension d = 64 (MKL, float32: ≈ 0.43 at d = 16, ~1 from
#: 128 on), modelled as min(1, 0.8·(d/64)^0.45).
GEMM_EFFICIENCY_AT_64 = 0.8
#: 16-bit GEMMs below 256 wide lose most of their speed-up over float32 (oneDNN, AVX-512).
HALF_SMALL_GEMM_FACTOR = 0.3
#: A fused plan with grad leaves the forward rule's order only where the other one saves at
#: least this much a row (p = q = 1 at m = 4096 and p = 4 at m = 256 measured slower).
ORDER_MIN_SAVING_MACS = 1.0e4
#: A batched GEMM costs at least this per row and call (≈ 0.1 µs).
BMM_ROW_MACS = 1.0e4
#: One extra kernel launch (≈ 11 µs at 90 GMAC/s).
OP_OVERHEAD_MACS = 1.0e6
#: One pass over a materialized W (writing it, page faults included, or reading it back).
WEIGHT_ELEMENT_MACS = 60.0
#: NATIVE: the compiled BLAS kernel's time per row relative to the pure-PyTorch model, and its
#: call (custom-op dispatch, autograd context): ≈ 50 µs forward, ≈ 0.2 ms with grad.
NATIVE_ROW_FACTOR = 0.75
NATIVE_CALL_MACS = 5.0e6
NATIVE_CALL_MACS_GRAD = 2.0e7
#: TILED: the register-tiled loops (`csrc/tiled.h`), ≈ 1.2 units per multiply-add over the
#: vector lanes filled; a call ≈ 20 µs forward, ≈ 70 µs with grad.
TILED_ROW_FACTOR = 1.2
TILED_CALL_MACS = 1.8e6
TILED_CALL_MACS_GRAD = 6.0e6
#: 16-bit inputs: from this many elements (m·q·t) the BLAS kernel beats the tiled loops.
TILED_HALF_MAX_ELEMENTS = 4096 * 1024
#: Without 512-bit vectors the tiled loops lose to BLAS once B holds more than this many values
#: (AVX2 EPYC; benchmarks/RESULTS.md, "The tiled loops on AVX2").
TILED_MAX_B_NARROW = 128 * 128
#: The BLAS kernel runs right-first plans with B under TRANSPOSED_MAX_S both ways transposed
#: (`kTransposedMaxS` in `csrc/kron_concat.cpp`), and wins there over the tiled loops once A
#: holds more than TILED_MAX_A_SMALL_B values ("A large A beside a tiny B"); its loops over B
#: run at SMALL_B_LOOP_EFFICIENCY of a large GEMM's rate.
TRANSPOSED_MAX_S = 16
TILED_MAX_A_SMALL_B = 128 * 128
SMALL_B_LOOP_EFFICIENCY = 0.1
#: Whether this CPU has 512-bit vectors (torch's own dispatch level; tests patch it).
WIDE_VECTORS = torch.backends.cpu.get_cpu_capability() == "AVX512"
#: The composite path's full-size intermediates, per element and pass, out of and in cache
#: (working sets up to CACHE_BYTES).
COMPOSITE_ELEMENT_MACS = 30.0
COMPOSITE_ELEMENT_MACS_CACHED = 8.0
CACHE_BYTES = 8 << 20


def _half_gemms_supported(dtype: torch.dtype) -> bool:
    """Whether torch dispatches CPU GEMMs in `dtype` to oneDNN (torch's own check)."""
    check = {
        torch.bfloat16: "_is_mkldnn_bf16_supported",
        torch.float16: "_is_mkldnn_fp16_supported",
    }[dtype]
    try:
        return bool(torch.backends.mkldnn.is_available() and getattr(torch.ops.mkldnn, check)())
    except (AttributeError, RuntimeError):  # a build without oneDNN: ATen's own loops
        return False


#: Per 16-bit dtype, whether this CPU's GEMMs in it are fast (read once; tests patch it).
HALF_GEMMS_FAST: dict[torch.dtype, bool] = {
    dtype: _half_gemms_supported(dtype) for dtype in (torch.bfloat16, torch.float16)
}


def half_gemms_fast(dtype: torch.dtype, device_type: str = "cpu") -> bool:
    """Whether GEMMs in `dtype` run at least at float32's rate on `device_type`.

    True for float32, float64 and every dtype off the CPU. For bfloat16 and float16 on the
    CPU, whether torch runs their matmuls on oneDNN (on x86 bfloat16 needs AVX-512 or
    AVX-NE-CONVERT, float16 AVX512-FP16 or AMX-FP16); elsewhere torch's portable loops run
    at ≈ 1 % of float32's rate, and the planner computes 16-bit inputs in float32
    (`Plan.upcast`; the tiled loops stage them in float32 anyway).

    Example:
        >>> import torch
        >>> from hmfusion.ops.costmodel import half_gemms_fast
        >>> half_gemms_fast(torch.float32), half_gemms_fast(torch.bfloat16, "cuda")
        (True, True)
    """
    if device_type != "cpu" or dtype.itemsize >= 4:
        return True
    return HALF_GEMMS_FAST.get(dtype, False)


def _efficiency(dim: int, itemsize: int = 4) -> float:
    efficiency = min(1.0, GEMM_EFFICIENCY_AT_64 * (max(dim, 1) / 64) ** 0.45)
    return efficiency if itemsize >= 4 or dim >= 256 else efficiency * HALF_SMALL_GEMM_FACTOR


def _gemm_cost(macs: int, *dims: int, itemsize: int = 4) -> float:
    """Cost of a GEMM of `macs` multiply-adds whose smallest dimension is min(dims)."""
    return macs / _efficiency(min(dims), itemsize)


def _batched_gemm_row_cost(macs: int, *dims: int, itemsize: int = 4) -> float:
    """Cost per row of a batched GEMM (one small matrix product per row)."""
    return max(_gemm_cost(macs, *dims, itemsize=itemsize), BMM_ROW_MACS)


def _factored_row_cost(
    spec: KronSpec,
    order: Order,
    grad: bool,
    itemsize: int,
    composite: bool = False,
    transposed: bool = False,
) -> float:
    """Cost per row of the two contractions with dense factors, forward (+ backward).

    Right first `Z = X Bᵀ` is a GEMM over the rows and `Y_r = A Z_r` a batched one; left first
    the reverse. The backward recomputes the first contraction: right first runs the GEMM
    three more times and the batched one twice, left first the reverse (the composite path is
    charged the same). `transposed` (`native_transposed`): A's product is one GEMM over
    rows·s rows and B's runs as loops.
    """
    p, q, s, t = spec.p, spec.q, spec.s, spec.t
    if order == "right_first":
        last_axis = _gemm_cost(q * s * t, s, t, itemsize=itemsize)  # (rows·q, t) @ Bᵀ
        middle_macs, middle_dims = p * q * s, (p, q, s)  # A (q, s) per row
    else:
        last_axis = _gemm_cost(p * t * s, s, t, itemsize=itemsize)  # (rows·p, t) @ Bᵀ
        middle_macs, middle_dims = p * q * t, (p, q, t)  # A (q, t) per row
    # unchunked (composite), a batched GEMM over all rows runs at its middle dimension's rate
    if transposed:
        last_axis = q * s * t / SMALL_B_LOOP_EFFICIENCY
        middle_axis = _gemm_cost(middle_macs, p, q, itemsize=itemsize)
    else:
        dims = sorted(middle_dims)[1:] if composite else middle_dims
        middle_axis = _batched_gemm_row_cost(middle_macs, *dims, itemsize=itemsize)
    forward = last_axis + middle_axis
    backward = 0.0
    if grad:  # (dA accumulates per-row products, one more pass; transposed: one GEMM)
        per_row_da = 0.0 if transposed else BMM_ROW_MACS
        if order == "right_first":
            backward = 3 * last_axis + 2 * middle_axis + per_row_da
        else:
            backward = 2 * last_axis + 3 * middle_axis + per_row_da
    return spec.terms * (forward + backward)


def _lanes(n: int, itemsize: int = 4) -> float:
    """The share of the tiled loops' vector lanes that n columns fill (n = 48: all)."""
    full = 8 if itemsize == 8 else 16
    width = full // 2 if n <= full // 2 else full
    return n / (-(-n // width) * width)


def _tiled_row_cost(spec: KronSpec, order: Order, grad: bool, itemsize: int = 4) -> float:
    """Cost per row of the register-tiled loops: each contraction's multiply-adds over the
    share of vector lanes its output columns fill (≈ 4× with grad; float64 lanes hold half)."""
    p, q, s, t = spec.p, spec.q, spec.s, spec.t
    size = 8 if itemsize == 8 else 4
    if order == "right_first":  # Z = X Bᵀ (s wide), Y = A Z (s wide)
        first, second = q * s * t / _lanes(s, size), p * q * s / _lanes(s, size)
    else:  # U = A X (t wide), Y = U Bᵀ (s wide)
        first, second = p * q * t / _lanes(t, size), p * t * s / _lanes(s, size)
    work = 4 * first + 3 * second if grad else first + second
    return spec.terms * TILED_ROW_FACTOR * (size / 4) * work


def _lowrank_row_cost(spec: KronSpec, order: Order, grad: bool, itemsize: int) -> float:
    """Cost per row of the composite path with low-rank factors (backward ≈ 2× forward)."""
    cost_a = kernels.factor_cost(spec.p, spec.q, spec.rank_a)
    cost_b = kernels.factor_cost(spec.s, spec.t, spec.rank_b)
    rank = min(r for r in (spec.rank_a, spec.rank_b, spec.p, spec.s) if r is not None)
    if order == "right_first":
        forward = spec.q * cost_b + spec.s * cost_a
    else:
        forward = spec.t * cost_a + spec.p * cost_b
    return spec.terms * _gemm_cost(forward, rank, itemsize=itemsize) * (3 if grad else 1)


def fused_order(
    spec: KronSpec, grad: bool, tiled: bool, itemsize: int = 4, native: bool = False
) -> Order:
    """The contraction order of a fused plan: the cheaper one forward and, with grad, backward.

    The fused kernels' backward recomputes a chunk's first contraction (`X Bᵀ` right first,
    `A X` left first), so with grad the order whose first contraction is cheap wins even where
    both cost the same forward (p = q = 2, s = t = 512: left first 80 ms against 101). Savings
    below `ORDER_MIN_SAVING_MACS` a row keep [`kron_order`][hmfusion.ops.kernels.kron_order]'s
    forward rule. `tiled`: the
    register-tiled loops run (their cost counts vector lanes); `native`: the BLAS kernel does
    (`native_transposed`); `itemsize`: bytes per value computed.

    Example:
        >>> from hmfusion.ops.costmodel import KronSpec, fused_order
        >>> spec = KronSpec(1024, 1024, 2, 2, 512, 512)
        >>> fused_order(spec, grad=False, tiled=False), fused_order(spec, grad=True, tiled=False)
        ('right_first', 'left_first')
    """
    forward: Order = kernels.kron_order(spec.p, spec.q, spec.s, spec.t, None, None)
    if not grad and (tiled or not native):  # (the BLAS kernel's orders differ forward too)
        return forward
    other: Order = "left_first" if forward == "right_first" else "right_first"
    if tiled:
        costs = [_tiled_row_cost(spec, order, grad, itemsize) for order in (forward, other)]
    else:
        costs = [
            _factored_row_cost(
                spec, order, grad, itemsize, transposed=native and native_transposed(spec, order)
            )
            for order in (forward, other)
        ]
    return other if costs[0] - costs[1] >= ORDER_MIN_SAVING_MACS else forward


def _pytorch_fused_ops(k: int, terms: int, chunks: int, grad: bool, split: bool) -> int:
    """Kernel launches of the pure-PyTorch fused kernel."""
    per_chunk = (2 * k if split else 3) * terms  # GEMM + batched GEMM per part (+ gather)
    if grad:
        per_chunk += (6 * k if split else 8) * terms
    return chunks * per_chunk


def native_transposed(spec: KronSpec, order: Order) -> bool:
    """Whether the BLAS kernel runs A's product transposed (right first, B smaller than
    `TRANSPOSED_MAX_S` both ways: one GEMM over rows·s rows).

    Example:
        >>> from hmfusion.ops.costmodel import KronSpec, native_transposed
        >>> native_transposed(KronSpec(1024, 1024, 512, 512, 2, 2), "right_first")
        True
    """
    small = spec.s < TRANSPOSED_MAX_S and spec.t < TRANSPOSED_MAX_S
    return order == "right_first" and small


def tiled_pays(
    spec: KronSpec, m: int, itemsize: int, grad: bool = True, order: Order | None = None
) -> bool:
    """Whether a compiled fused plan runs the register-tiled loops rather than BLAS GEMMs.

    Never where the BLAS kernel would run its transposed path (`native_transposed`) and A
    holds more than `TILED_MAX_A_SMALL_B` values. Otherwise, for float32 and float64, always
    on CPUs with 512-bit vectors, elsewhere while B holds at most `TILED_MAX_B_NARROW`
    values; for 16-bit inputs below `TILED_HALF_MAX_ELEMENTS` input elements (m rows of
    `itemsize` bytes). `order`: a forced order (None: the BLAS kernel's, `fused_order`).

    Example:
        >>> from hmfusion.ops.costmodel import KronSpec, tiled_pays
        >>> tiled_pays(KronSpec(64, 384, 8, 8, 8, 48), 128, 2)
        True
        >>> tiled_pays(KronSpec(1024, 1024, 512, 512, 2, 2), 4096, 4)
        False
    """
    if spec.p * spec.q > TILED_MAX_A_SMALL_B and native_transposed(spec, "right_first"):
        blas_order = order or fused_order(spec, grad, False, itemsize, native=True)
        if blas_order == "right_first":
            return False
    if itemsize >= 4:
        return WIDE_VECTORS or spec.s * spec.t <= TILED_MAX_B_NARROW
    return m * spec.q * spec.t < TILED_HALF_MAX_ELEMENTS


def estimate(
    spec: KronSpec,
    m: int,
    dims: tuple[int, ...],
    dtype: torch.dtype,
    device_type: str,
    grad: bool,
    *,
    native: bool,
    fused_chunk_rows: int,
    split: bool,
    tiled: bool = False,
    order: Order | None = None,
    triton: bool = False,
) -> dict[Method, float]:
    """The estimated cost of each method for m rows (see the module docstring).

    Args:
        spec: the structure of W.
        m: rows of the batch (≥ 1).
        dims: the input widths.
        dtype: the computation's dtype.
        device_type: `"cpu"`, `"cuda"`, …
        grad: whether a backward follows.
        native: whether a fused plan runs the compiled operator.
        fused_chunk_rows: rows per chunk of a fused plan.
        split: whether a pure-PyTorch fused plan reads the inputs in place.
        tiled: whether the compiled operator runs its register-tiled loops (`tiled_pays`).
        order: the fused plan's order (None: `fused_order`'s).
        triton: whether a fused plan runs the Triton kernels (on accelerators: their
            multiply-adds on padded tiles and `triton_ops`).

    Returns:
        `{method: multiply-add equivalents}` for fused, materialize and composite.

    Example:
        >>> import torch
        >>> from hmfusion.ops.costmodel import KronSpec, estimate
        >>> costs = estimate(KronSpec(64, 64, 8, 8, 8, 8), 32, (64,), torch.float32, "cuda",
        ...                  True, native=False, fused_chunk_rows=32, split=True)
        >>> min(costs, key=costs.__getitem__)
        'composite'
    """
    itemsize = dtype.itemsize
    chunks = -(-m // fused_chunk_rows)
    dense_order = kernels.kron_order(spec.p, spec.q, spec.s, spec.t, None, None)
    order = order or fused_order(spec, grad, native and tiled, itemsize, native=native)
    transposed = native and native_transposed(spec, order)  # (the BLAS kernel's path)
    row_cost = _factored_row_cost(spec, order, grad, itemsize, transposed=transposed)
    # materialize: the dense GEMMs and forming W (with grad: again, dW read twice, rearranged)
    dense_gemm = _gemm_cost(spec.n * spec.D * m, spec.n, spec.D, m, itemsize=itemsize)
    weight = spec.terms * spec.p * spec.q * spec.s * spec.t * (5 if grad else 1)
    materialize = dense_gemm * (3 if grad else 1) + weight * WEIGHT_ELEMENT_MACS
    # composite: unchunked GEMMs; X, the middle product and Y passed ≈ 4× (12× with grad)
    if spec.rank_a is not None or spec.rank_b is not None:
        lowrank_order = kernels.kron_order(spec.p, spec.q, spec.s, spec.t, spec.rank_a, spec.rank_b)
        composite_rows = _lowrank_row_cost(spec, lowrank_order, grad, 4)
    else:
        composite_rows = _factored_row_cost(spec, dense_order, grad, 4, composite=True)
    widths = spec.q * spec.t + spec.p * spec.s + min(spec.q * spec.s, spec.p * spec.t)
    resident = m * widths * itemsize <= CACHE_BYTES
    element = COMPOSITE_ELEMENT_MACS_CACHED if resident else COMPOSITE_ELEMENT_MACS
    passes = (12 if grad else 4) * widths * m * element
    composite = composite_rows * m + passes
    k = len(dims)
    if device_type != "cpu":  # launch-bound: work / DEVICE_SPEEDUP + operators × host time

        def on_device(work: float, method: Method, chunks: int = 1) -> float:
            ops = device_ops(method, k, spec.terms, chunks, grad)
            return work / DEVICE_SPEEDUP + ops * DEVICE_OP_MACS

        if triton:  # (reads X and writes Y once: no full-size passes)
            work = triton_row_macs(spec, order, grad) * m
            fused_device = work / DEVICE_SPEEDUP + triton_ops(k, grad) * DEVICE_OP_MACS
        else:
            fused_device = on_device(row_cost * m + passes, "fused", chunks)
        return {  # (on a tie the first wins: the composite path, the simplest code)
            "composite": on_device(composite, "composite"),
            "materialize": on_device(materialize, "materialize"),
            "fused": fused_device,
        }
    if native and tiled:
        fused = _tiled_row_cost(spec, order, grad, itemsize) * m + (
            TILED_CALL_MACS_GRAD if grad else TILED_CALL_MACS
        )
    elif native:
        fused = NATIVE_ROW_FACTOR * row_cost * m + (
            NATIVE_CALL_MACS_GRAD if grad else NATIVE_CALL_MACS
        )
    else:
        fused = (
            row_cost * m + _pytorch_fused_ops(k, spec.terms, chunks, grad, split) * OP_OVERHEAD_MACS
        )
    return {
        "fused": fused,
        "materialize": materialize + (8 if grad else 3) * OP_OVERHEAD_MACS,
        "composite": composite + (10 if grad else 4) * spec.terms * OP_OVERHEAD_MACS,
    }


class Candidate(NamedTuple):
    """One way to run a plan key, with its estimated cost (multiply-add equivalents)."""

    method: Method
    kernel: Kernel
    order: Order
    cost: float


def candidates(
    spec: KronSpec,
    m: int,
    dims: tuple[int, ...],
    dtype: torch.dtype,
    device_type: str,
    grad: bool,
    *,
    compiled: bool,
    triton: bool = False,
) -> list[Candidate]:
    """Every plan the planner may run for this key, cheapest estimate first.

    Fused plans in both orders with each kernel that can run (`triton` on CUDA with Triton,
    else the compiled operator's `tiled` and `native` where it is loaded, `compiled`, else
    `pytorch`), the composite path in its
    cheaper order and materialize, for m ≥ 1 rows of inputs of widths `dims`; 16-bit inputs
    on a CPU whose 16-bit GEMMs are slow are priced in float32, as they run. The measuring
    planner ([`hmfusion.ops.tuning`][hmfusion.ops.tuning]) times the first few.

    Example:
        >>> import torch
        >>> from hmfusion.ops.costmodel import KronSpec, candidates
        >>> ranked = candidates(KronSpec(64, 64, 8, 8, 8, 8), 32, (64,), torch.float32, "cpu",
        ...                     True, compiled=False)
        >>> sorted({c.method for c in ranked})
        ['composite', 'fused', 'materialize']
    """
    if not half_gemms_fast(dtype, device_type):
        dtype = torch.float32  # (computed in float32; the tiled loops stage in it too)
    size = dtype.itemsize
    split = not compiled and split_pays(spec, dims)
    found: list[Candidate] = []
    costs: dict[Method, float] = {}
    kinds: tuple[Kernel, ...] = ("tiled", "native") if compiled else ("pytorch",)
    for kernel in ("triton",) if triton else kinds:
        tiled = kernel == "tiled"
        if tiled:
            rows = tiled_chunk_rows(spec, m, size)
        elif kernel == "native":
            rows = native_chunk_rows(spec, m, size)
        elif kernel == "triton":
            rows = m
        else:
            rows = chunk_rows(spec, m, size, device_type)
        for order in ("right_first", "left_first"):
            costs = estimate(
                spec, m, dims, dtype, device_type, grad,
                native=compiled, fused_chunk_rows=rows, split=split, tiled=tiled, order=order,
                triton=kernel == "triton",
            )  # fmt: skip
            found.append(Candidate("fused", kernel, order, costs["fused"]))
    composite = kernels.kron_order(spec.p, spec.q, spec.s, spec.t, spec.rank_a, spec.rank_b)
    dense = kernels.kron_order(spec.p, spec.q, spec.s, spec.t, None, None)
    found.append(Candidate("composite", "pytorch", composite, costs["composite"]))
    found.append(Candidate("materialize", "pytorch", dense, costs["materialize"]))
    return sorted(found, key=lambda candidate: candidate.cost)
