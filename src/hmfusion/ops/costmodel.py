"""The planner's cost model: what each way of applying a Kronecker-structured W costs.

Costs are in multiply-add equivalents of a large float32 GEMM on the benchmark CPU, with
constants measured there (see `benchmarks/RESULTS.md`): a GEMM whose smallest dimension is d
runs at a fraction min(1, 0.8·(d/64)^0.45) of a large GEMM's rate, a batched GEMM costs at
least `BMM_ROW_MACS` per row, a kernel launch `OP_OVERHEAD_MACS` and a pass over a formed W
`WEIGHT_ELEMENT_MACS` per element. The compiled operator's register-tiled loops are charged
their multiply-adds over the share of vector lanes their output columns fill
(`TILED_ROW_FACTOR`) plus a call (`TILED_CALL_MACS`);
[`tiled_pays`][hmfusion.ops.costmodel.tiled_pays]
says when they run rather than its BLAS GEMMs.

16-bit GEMMs on CPU run on oneDNN only where the CPU has the instructions for them
([`half_gemms_fast`][hmfusion.ops.costmodel.half_gemms_fast]); elsewhere torch runs them with
portable single-threaded loops, two orders of magnitude slower than float32, and the planner
computes 16-bit inputs in float32 (`Plan.upcast`; the tiled loops do so by themselves).

On accelerators ([`estimate`][hmfusion.ops.costmodel.estimate] with `device_type != "cpu"`) work
runs `DEVICE_SPEEDUP` times faster, but every dispatched operator costs host time
(`DEVICE_OP_MACS`, ≈ 15 µs): up to m = D = 4096 the H200 run was launch-bound (dense
forward+backward ≈ 0.5–0.7 ms at every size). So there each method is charged its operator
count ([`device_ops`][hmfusion.ops.costmodel.device_ops], counted with a dispatch mode), which
grows with the number of chunks; the pure-PyTorch fused kernel also pays the composite path's
full-size passes, and no compiled operator runs.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch

from hmfusion.ops import kernels

__all__ = [
    "Candidate",
    "Kernel",
    "KronSpec",
    "Method",
    "Order",
    "candidates",
    "chunk_rows",
    "tiled_chunk_rows",
    "tiled_pays",
    "device_ops",
    "estimate",
    "fused_order",
    "half_gemms_fast",
    "native_chunk_rows",
    "native_transposed",
    "split_pays",
]

#: How W is applied (see [`hmfusion.ops.planner`][hmfusion.ops.planner]).
Method = Literal["materialize", "fused", "composite"]
#: Which contraction comes first.
Order = Literal["right_first", "left_first"]
#: Which code runs a fused plan: the compiled operator with per-chunk BLAS GEMMs (`native`) or
#: with its own register-tiled loops (`tiled`), or the pure-PyTorch kernels (`pytorch`).
Kernel = Literal["native", "tiled", "pytorch"]


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


#: GEMM efficiency vs the smallest matrix dimension d (MKL, float32, measured on the benchmark
#: machine): ≈ 0.43 at d = 16, 0.6 at 32, 0.8 at 64, ~1 from 128 on. Modelled as
#: min(1, 0.8·(d/64)^0.45).
GEMM_EFFICIENCY_AT_64 = 0.8
#: 16-bit GEMMs: large ones ran ≈ 6× faster than float32 on an AVX-512 benchmark CPU (oneDNN), the
#: fused kernel's small ones only ≈ 1.5–2×; their efficiency relative to a large GEMM drops.
HALF_SMALL_GEMM_FACTOR = 0.3
#: A fused plan with grad leaves the forward rule's order only where the other one saves at
#: least this much a row: below it per-row overhead decides (p = q = 1, D = 128, n = 64,
#: m = 4096, tiled: left first saves ≈ 9,400 and measured 3.95 ms against 4.09, both slower
#: than forming W, 3.60; p = q = 4 at D = n = 256 ≈ 18,400 and measured 0.86 ms against
#: 0.92 at m = 256, 6.5 against 7.4 at m = 4096).
ORDER_MIN_SAVING_MACS = 1.0e4
#: A batched GEMM costs at least this per row and call (tiny per-row matrices: ≈ 0.1 µs).
BMM_ROW_MACS = 1.0e4
#: Cost of one extra kernel launch, in multiply-adds of a large GEMM (≈ 11 µs at 90 GMAC/s).
OP_OVERHEAD_MACS = 1.0e6
#: One pass over a materialized W (writing it, page faults included, or reading it back).
WEIGHT_ELEMENT_MACS = 60.0
#: Target size of a row chunk of the pure-PyTorch fused kernel on CPU (its intermediates stay
#: in L2/L3); measured best among 1–8 MiB on the four target shapes, within noise of 2 MiB.
CHUNK_BYTES_CPU = 4 << 20
#: The compiled kernel's chunks: ≈ 1 MiB of input rows (4096, 1024, 32: 8.8× dense with 1 MiB,
#: 5.4× with 4 MiB; benchmarks/RESULTS.md), and at least NATIVE_CHUNKS_PER_THREAD chunks per
#: thread (of ≥ NATIVE_MIN_CHUNK_ROWS rows) so that the dynamic schedule can balance a
#: descheduled thread (256, 4096, 64: 16 chunks 23.0×, 2 chunks 20.1×).
CHUNK_BYTES_NATIVE = 1 << 20
NATIVE_CHUNKS_PER_THREAD = 8
NATIVE_MIN_CHUNK_ROWS = 16
#: Inputs up to this size run as one chunk (each chunk costs a few µs of dispatch).
NATIVE_SINGLE_CHUNK_BYTES = 256 << 10
#: Inputs up to this size are processed in one chunk.
SINGLE_CHUNK_BYTES = 1 << 20
#: On accelerators chunks only bound the scratch memory; launches are what cost.
CHUNK_BYTES_DEVICE = 256 << 20
#: Split inputs only when each covers at least this many blocks of A's columns: below it the
#: per-input batched GEMMs (inner dimension q_i) cost more than gathering a chunk in cache.
SPLIT_MIN_BLOCKS = 64


#: NATIVE: the compiled kernel's time per row relative to the pure-PyTorch cost model (fused
#: forward+backward measured 1.1–1.8× faster at the four target shapes; benchmarks/RESULTS.md).
NATIVE_ROW_FACTOR = 0.75
#: A call of the registered operator (custom-op dispatch, autograd context, the backward op):
#: ≈ 50 µs forward, ≈ 0.2 ms with grad (benchmarks/RESULTS.md, the small layers).
NATIVE_CALL_MACS = 5.0e6
NATIVE_CALL_MACS_GRAD = 2.0e7
#: TILED: the register-tiled loops of the compiled operator (`csrc/tiled.h`). Forward+backward
#: runs ≈ 4× the forward's multiply-adds (Z again, G, dB, dX, dA) at ≈ 75 GMAC/s on the
#: benchmark CPU's two cores from 16-wide blocks up, ≈ 1.2 units per multiply-add; a call costs
#: ≈ 20 µs forward, ≈ 70 µs with grad (the main job's layer; benchmarks/RESULTS.md).
TILED_ROW_FACTOR = 1.2
TILED_CALL_MACS = 1.8e6
TILED_CALL_MACS_GRAD = 6.0e6
#: 16-bit inputs: the tiled loops compute in float32, while the BLAS kernel's bfloat16 GEMMs
#: run ≈ 2× faster than float32 once they are large; from this many input elements (m·q·t),
#: or where A exceeds TILED_HALF_MAX_A or B TILED_HALF_MAX_B values, BLAS GEMMs win (bfloat16:
#: 4096 × 1024 at p = 32 1.17× faster, 256 × 4096 at p = 64 1.2× and at p = 16, a 256 × 256
#: B, 1.9×; 256 × 1024 at p = 32 0.38×, 256 × 256 at p = 4 with its 64 × 64 B 1.0×).
TILED_HALF_MAX_ELEMENTS = 4096 * 1024
TILED_HALF_MAX_A = 1024
TILED_HALF_MAX_B = 4096
#: Rows per chunk of the tiled loops: ≈ 64 KiB of staged (float32) input rows (16 to 128
#: rows), and a single chunk (no parallel region, whose thread wake-up costs ≈ 20–40 µs under
#: OMP_WAIT_POLICY=PASSIVE) while the whole input is below TILED_SINGLE_CHUNK_BYTES.
#: Without 512-bit vectors (AVX2 and older; the loops are built with `-march=native`) the tiled
#: loops lose to BLAS GEMMs once B holds more than this many values (AVX2 EPYC, float32,
#: forward+backward, tiled / BLAS kernel: 4096 × 1024 at p = 2, a 512 × 512 B, 193 / 134 ms;
#: 256 × 4096 at p = 16, 256 × 256, 25.6 / 22.8 ms; 4096² at p = 64, 64 × 64, 196 / 215 ms;
#: with AVX-512 the tiled loops won at every one of those shapes).
TILED_MAX_B_NARROW = 128 * 128
#: The compiled operator's BLAS kernel runs right-first plans whose B is smaller than this both
#: ways transposed: A's product as one GEMM over the chunk's rows·s rows, B's as plain loops
#: (`kTransposedMaxS` in `csrc/kron_concat.cpp`). There it beats the tiled loops once A holds
#: more than `TILED_MAX_A_SMALL_B` values (AVX2 EPYC, float32, forward+backward, m = 4096,
#: D = n = 1024: p = 512, s = 2, BLAS 109 ms, tiled 652, two-matmul code 138; p = 256, s = 4,
#: 74 / 154 / 95; p = 128, s = 8, 61 / 47 / 71).
TRANSPOSED_MAX_S = 16
TILED_MAX_A_SMALL_B = 128 * 128
#: The transposed path's loops over B run at this fraction of a large GEMM's rate.
SMALL_B_LOOP_EFFICIENCY = 0.1
#: Whether this CPU has 512-bit vectors (torch's own dispatch level).
WIDE_VECTORS = torch.backends.cpu.get_cpu_capability() == "AVX512"
TILED_CHUNK_BYTES = 64 << 10
TILED_SINGLE_CHUNK_BYTES = 224 << 10

#: The composite path's full-size intermediates: multiply-add equivalents per element and pass
#: once they leave the cache (two-matmul code at m = 65536, D = 256: 0.77× dense;
#: benchmarks/RESULTS.md), and while they stay in it.
COMPOSITE_ELEMENT_MACS = 30.0
COMPOSITE_ELEMENT_MACS_CACHED = 8.0
#: Working sets up to this size stay in cache (the benchmark machine's L2 + L3 share).
CACHE_BYTES = 8 << 20


def _half_gemms_supported(dtype: torch.dtype) -> bool:
    """Whether torch dispatches CPU GEMMs in `dtype` to oneDNN (the check is torch's own; on
    x86 bfloat16 needs AVX-512 or AVX-NE-CONVERT, float16 AVX512-FP16 or AMX-FP16)."""
    check = {
        torch.bfloat16: "_is_mkldnn_bf16_supported",
        torch.float16: "_is_mkldnn_fp16_supported",
    }[dtype]
    try:
        return bool(torch.backends.mkldnn.is_available() and getattr(torch.ops.mkldnn, check)())
    except (AttributeError, RuntimeError):  # a build without oneDNN: ATen's own loops
        return False


#: Per 16-bit dtype, whether this CPU's GEMMs in it are fast (read once, at import; tests
#: patch it). Measured on an AVX2 AMD EPYC without them, 2 threads: bfloat16 matmul
#: 0.47 GMAC/s at 1024³ and 1.05 at (8192 × 64) · (64 × 64), float32 66 and 59.
HALF_GEMMS_FAST: dict[torch.dtype, bool] = {
    dtype: _half_gemms_supported(dtype) for dtype in (torch.bfloat16, torch.float16)
}


def half_gemms_fast(dtype: torch.dtype, device_type: str = "cpu") -> bool:
    """Whether GEMMs in `dtype` run at least at float32's rate on `device_type`.

    True for float32, float64 and every dtype off the CPU. For bfloat16 and float16 on the
    CPU, whether torch runs their matmuls on oneDNN (torch's own check; on x86 bfloat16
    needs AVX-512 or AVX-NE-CONVERT, float16 AVX512-FP16 or AMX-FP16, so a CPU with plain
    AVX-512 but neither float16 extension runs bfloat16 on oneDNN and float16 on the slow
    loops): without those instructions torch falls back to portable loops on one
    thread, ≈ 1 % of float32's rate (an AVX2 AMD EPYC: bfloat16 0.47 GMAC/s at 1024³,
    float32 66). There the planner computes 16-bit inputs in float32 (`Plan.upcast`, or the
    tiled loops, which stage them in float32 anyway), and `hmfusion bench` leaves out the
    16-bit cases whose dense baseline would take longer than its per-call budget.

    Args:
        dtype: a floating dtype.
        device_type: `"cpu"`, `"cuda"`, …

    Returns:
        Whether its GEMMs are fast there.

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

    Right first, `Z = X Bᵀ` is one GEMM over the rows (rows·q, t) and `Y_r = A Z_r` a
    batched one; left first, `U_r = A X_r` is the batched one and `Y = U Bᵀ` the GEMM over
    (rows·p, t). The fused kernels' backward recomputes the first contraction (they save
    nothing), so right first runs the GEMM over B three more times (Z again, dB, dX) and the
    batched one twice (dA, G); left first the GEMM twice (dB, V) and the batched one three times
    (U again, dA, dX). The composite path (`composite`: autograd keeps Z or U) is charged the
    same counts, which its constants were calibrated with. `transposed` (the BLAS kernel's
    path for a small B, `native_transposed`): A's product is one GEMM over rows·s rows and
    B's runs as loops.
    """
    p, q, s, t = spec.p, spec.q, spec.s, spec.t
    if order == "right_first":
        last_axis = _gemm_cost(q * s * t, s, t, itemsize=itemsize)  # (rows·q, t) @ Bᵀ
        middle_macs, middle_dims = p * q * s, (p, q, s)  # A (q, s) per row
    else:
        last_axis = _gemm_cost(p * t * s, s, t, itemsize=itemsize)  # (rows·p, t) @ Bᵀ
        middle_macs, middle_dims = p * q * t, (p, q, t)  # A (q, t) per row
    # Unchunked (the composite path), one batched GEMM over all m rows runs at the rate of its
    # middle dimension (p = q = 512 with s = 2 ran at a large GEMM's rate: two-matmul code
    # 1.5× faster than forming W); per chunk, at that of its smallest.
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
    """The share of the tiled loops' vector lanes that n columns fill (8- or 16-wide float32
    vectors, 4- or 8-wide float64 ones: n = 2 fills a quarter of a float32 vector, n = 48
    all)."""
    full = 8 if itemsize == 8 else 16
    width = full // 2 if n <= full // 2 else full
    return n / (-(-n // width) * width)


def _tiled_row_cost(spec: KronSpec, order: Order, grad: bool, itemsize: int = 4) -> float:
    """Cost per row of the register-tiled loops: each contraction's multiply-adds over the
    share of vector lanes its output columns fill (forward; ≈ 4× that with grad). float64
    vectors hold half as many values; 16-bit inputs compute in float32."""
    p, q, s, t = spec.p, spec.q, spec.s, spec.t
    size = 8 if itemsize == 8 else 4
    if order == "right_first":  # Z = X Bᵀ (s wide), Y = A Z (s wide)
        first, second = q * s * t / _lanes(s, size), p * q * s / _lanes(s, size)
    else:  # U = A X (t wide), Y = U Bᵀ (s wide)
        first, second = p * q * t / _lanes(t, size), p * t * s / _lanes(s, size)
    # with grad the first contraction runs twice more (recomputed, then dB or dA) and dX;
    # the second three times (dA or dB, G or V, and the forward)
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

    The fused kernels' backward recomputes the first contraction of a chunk (`X Bᵀ` right
    first, `A X` left first) instead of saving it, so with grad the order whose first
    contraction is the cheap one wins even where both orders cost the same forward: for
    p = q = 2 and s = t = 512 (m = 4096, D = n = 1024), left first runs 4 · 2 · 2 · 512 +
    3 · 2 · 512 · 512 multiply-adds per row against right first's 4 · 2 · 512 · 512 + 3 · 2 · 2
    · 512 (measured forward+backward with the BLAS kernel: 80 ms against 101). Savings below
    `ORDER_MIN_SAVING_MACS` a row keep [`kron_order`][hmfusion.ops.kernels.kron_order]'s forward
    rule.

    Args:
        spec: the structure of W (dense factors; low-rank ones are multiplied out first).
        grad: whether a backward follows.
        tiled: whether the register-tiled loops run (their cost counts vector lanes).
        itemsize: bytes per value of the computation.
        native: whether the compiled operator's BLAS kernel runs (`native_transposed`).

    Returns:
        `"right_first"` or `"left_first"`.

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


def native_chunk_rows(spec: KronSpec, m: int, itemsize: int) -> int:
    """Rows per chunk of the compiled kernel (see `CHUNK_BYTES_NATIVE`).

    Args:
        spec: the structure of W.
        m: rows of the batch.
        itemsize: bytes per element of the computation's dtype.

    Returns:
        The rows per chunk (m for a single chunk).

    Example:
        >>> from hmfusion.ops.costmodel import KronSpec, native_chunk_rows
        >>> native_chunk_rows(KronSpec(64, 64, 8, 8, 8, 8), 128, 4)
        128
    """
    row_bytes = max(spec.q * spec.t, spec.p * spec.s) * itemsize
    if m * row_bytes <= NATIVE_SINGLE_CHUNK_BYTES:
        return max(m, 1)
    rows = max(1, CHUNK_BYTES_NATIVE // row_bytes)
    balanced = -(-m // (NATIVE_CHUNKS_PER_THREAD * torch.get_num_threads()))
    return max(1, min(m, max(min(rows, balanced), NATIVE_MIN_CHUNK_ROWS)))


def native_transposed(spec: KronSpec, order: Order) -> bool:
    """Whether the compiled operator's BLAS kernel runs A's product transposed: right first
    with B smaller than `TRANSPOSED_MAX_S` both ways (one GEMM over rows·s rows instead of a
    GEMM of s columns per row).

    Args:
        spec: the structure of W.
        order: the plan's order.

    Returns:
        Whether that path runs.

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

    Never where the BLAS kernel would run its transposed path (`native_transposed`: right
    first, the order it would take or `order`, with B smaller than `TRANSPOSED_MAX_S` both
    ways) and A holds more than `TILED_MAX_A_SMALL_B` values. Otherwise, for float32 and
    float64 on CPUs with 512-bit vectors always (faster at every measured shape, up to
    m = D = 4096 at p = 64), elsewhere while B holds at most `TILED_MAX_B_NARROW` values;
    for 16-bit inputs below `TILED_HALF_MAX_ELEMENTS` input elements with A and B within
    `TILED_HALF_MAX_A` and `TILED_HALF_MAX_B` values.

    Args:
        spec: the structure of W.
        m: rows of the batch.
        itemsize: bytes per element of the computation's dtype.
        grad: whether a backward follows (it can change the BLAS kernel's order).
        order: the plan's order where it is forced (None: the one the BLAS kernel would take,
            `fused_order`).

    Returns:
        Whether the tiled kernel runs.

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
    small_blocks = spec.p * spec.q <= TILED_HALF_MAX_A and spec.s * spec.t <= TILED_HALF_MAX_B
    return m * spec.q * spec.t < TILED_HALF_MAX_ELEMENTS and small_blocks


def tiled_chunk_rows(spec: KronSpec, m: int, itemsize: int) -> int:
    """Rows per chunk of the register-tiled loops (see `TILED_CHUNK_BYTES`).

    Args:
        spec: the structure of W.
        m: rows of the batch.
        itemsize: bytes per element of the computation's dtype.

    Returns:
        The rows per chunk (m for a single chunk).

    Example:
        >>> from hmfusion.ops.costmodel import KronSpec, tiled_chunk_rows
        >>> tiled_chunk_rows(KronSpec(1024, 1024, 32, 32, 32, 32), 4096, 4)
        16
    """
    # (sized in the loops' float32 or float64 staging buffers, whatever the inputs' dtype)
    row_bytes = max(spec.q * spec.t, spec.p * spec.s) * max(itemsize, 4)
    if m * row_bytes <= TILED_SINGLE_CHUNK_BYTES:
        return max(m, 1)
    rows = min(128, max(16, TILED_CHUNK_BYTES // row_bytes))
    return max(1, min(rows, -(-m // 2)))


def chunk_rows(spec: KronSpec, m: int, itemsize: int, device_type: str) -> int:
    """Rows per chunk of the pure-PyTorch fused kernel.

    On CPU ≈ `CHUNK_BYTES_CPU` of staged input, and at least two chunks unless the whole input
    is small (a lone 4 MiB chunk measured slower than two of 2 MiB: its scratch is allocated
    afresh on every call, and the OS pages it in again). On accelerators one chunk up to
    `CHUNK_BYTES_DEVICE` (chunks only bound scratch memory there; each costs launches).

    Args:
        spec: the structure of W.
        m: rows of the batch.
        itemsize: bytes per element of the computation's dtype.
        device_type: `"cpu"`, `"cuda"`, …

    Returns:
        The rows per chunk (m for a single chunk).

    Example:
        >>> from hmfusion.ops.costmodel import KronSpec, chunk_rows
        >>> chunk_rows(KronSpec(64, 64, 8, 8, 8, 8), 128, 4, "cuda")
        128
    """
    target = CHUNK_BYTES_CPU if device_type == "cpu" else CHUNK_BYTES_DEVICE
    row_bytes = max(spec.q * spec.t, spec.p * spec.s) * itemsize
    if m * row_bytes <= (SINGLE_CHUNK_BYTES if device_type == "cpu" else CHUNK_BYTES_DEVICE):
        return max(m, 1)
    rows = max(8, target // row_bytes)
    return max(1, min(rows, -(-m // 2)))


def split_pays(spec: KronSpec, dims: tuple[int, ...]) -> bool:
    """Whether the pure-PyTorch fused kernel should read the inputs in place (`"split"`).

    True for one input that needs no padding, or inputs aligned on multiples of t that each
    cover at least `SPLIT_MIN_BLOCKS` of A's columns.

    Args:
        spec: the structure of W.
        dims: the input widths.

    Returns:
        Whether splitting pays.

    Example:
        >>> from hmfusion.ops.costmodel import KronSpec, split_pays
        >>> split_pays(KronSpec(64, 64, 8, 8, 8, 8), (64,))
        True
    """
    blocks = kernels.input_blocks(dims, spec.t)
    if blocks is None:
        return False
    return len(dims) == 1 or min(j1 - j0 for j0, j1 in blocks) >= SPLIT_MIN_BLOCKS


#: Accelerators: how many times faster than the benchmark CPU the arithmetic and memory passes
#: run (H200, float32: dense forward+backward at m = D = 4096 ≈ 8.2 ms, ≈ 25 TMAC/s, vs
#: ≈ 90 GMAC/s).
DEVICE_SPEEDUP = 250.0
#: Accelerators: host time of one dispatched operator (≈ 15 µs), in the units above.
DEVICE_OP_MACS = 1.35e6


def device_ops(method: Method, k: int, terms: int, chunks: int, grad: bool) -> int:
    """Operators dispatched by one call of `method` (forward, + backward with `grad`).

    Counted with a `TorchDispatchMode` on the pure-PyTorch paths (views included: each costs
    host time): materialize 15 + k forward, 49 + 5k with grad; composite 17 + k, 44 + 5k per
    term; the pure-PyTorch fused kernel 17 + k, 59 + 5k for one chunk per term, and 4k (12k
    with grad) per further chunk.

    Args:
        method: the method.
        k: the number of inputs.
        terms: the number of Kronecker terms.
        chunks: the row chunks of a fused plan (1 for the other methods).
        grad: whether a backward follows.

    Returns:
        The operator count.

    Example:
        >>> from hmfusion.ops.costmodel import device_ops
        >>> device_ops("composite", 4, 1, 1, True)
        64
    """
    if method == "materialize":
        return (49 + 5 * k if grad else 15 + k) + 4 * (terms - 1)
    if method == "composite":
        return terms * (44 + 5 * k if grad else 17 + k)
    first = 59 + 5 * k if grad else 17 + k
    return terms * (first + (chunks - 1) * (12 * k if grad else 4 * k))


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
    # materialize: the dense GEMMs, forming W (and, with grad, forming it again, reading dW
    # twice and rearranging it once)
    dense_gemm = _gemm_cost(spec.n * spec.D * m, spec.n, spec.D, m, itemsize=itemsize)
    weight = spec.terms * spec.p * spec.q * spec.s * spec.t * (5 if grad else 1)
    materialize = dense_gemm * (3 if grad else 1) + weight * WEIGHT_ELEMENT_MACS
    # composite: its GEMMs are unchunked, m·q rows (16-bit ones run at a large GEMM's
    # efficiency); full-size intermediates X, the middle product and Y, passed ≈ 4× forward,
    # 12× with grad
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

        return {  # (on a tie the first wins: the composite path, the simplest code)
            "composite": on_device(composite, "composite"),
            "materialize": on_device(materialize, "materialize"),
            "fused": on_device(row_cost * m + passes, "fused", chunks),
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
) -> list[Candidate]:
    """Every plan the planner may run for this key, cheapest estimate first.

    Fused plans in both orders with each kernel that can run (the compiled operator's `tiled`
    and `native` where it is loaded, else `pytorch`), the composite path in its cheaper order
    and materialize; 16-bit inputs on a CPU whose 16-bit GEMMs are slow are priced in float32,
    as they run. The measuring planner ([`hmfusion.ops.tuning`][hmfusion.ops.tuning]) times
    the first few.

    Args:
        spec: the structure of W.
        m: rows of the batch (≥ 1).
        dims: the input widths.
        dtype: the inputs' dtype.
        device_type: `"cpu"`, `"cuda"`, …
        grad: whether a backward follows.
        compiled: whether the compiled operator runs fused plans here.

    Returns:
        The candidates, sorted by estimated cost.

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
    for kernel in ("tiled", "native") if compiled else ("pytorch",):
        tiled = kernel == "tiled"
        if tiled:
            rows = tiled_chunk_rows(spec, m, size)
        elif compiled:
            rows = native_chunk_rows(spec, m, size)
        else:
            rows = chunk_rows(spec, m, size, device_type)
        for order in ("right_first", "left_first"):
            costs = estimate(
                spec, m, dims, dtype, device_type, grad,
                native=compiled, fused_chunk_rows=rows, split=split, tiled=tiled, order=order,
            )  # fmt: skip
            found.append(Candidate("fused", kernel, order, costs["fused"]))
    composite = kernels.kron_order(spec.p, spec.q, spec.s, spec.t, spec.rank_a, spec.rank_b)
    dense = kernels.kron_order(spec.p, spec.q, spec.s, spec.t, None, None)
    found.append(Candidate("composite", "pytorch", composite, costs["composite"]))
    found.append(Candidate("materialize", "pytorch", dense, costs["materialize"]))
    return sorted(found, key=lambda candidate: candidate.cost)
