"""The planner: how to apply ``cat(xs) Wᵀ`` for a Kronecker-structured W, per shape and dtype.

W = Σ_τ A_τ ⊗ B_τ (A: p×q, B: s×t, each dense or low-rank; see :mod:`hmfusion.structures`). For
m rows the candidates (the :data:`Method` vocabulary) are:

``materialize``
    form W, then one dense GEMM (:func:`hmfusion.kernels.kron_linear`): m·n·D multiply-adds
    plus writing W. Wins when the factored product saves little (p or q near 1 or near n, D)
    or the layer is so small that a single GEMM's low overhead decides.
``fused``
    the operator ``hmfusion::fused_kron_concat`` (:func:`hmfusion.native.fused_kron_concat`): row chunks
    (≈ 1 MiB, several per thread) in one parallel region, W never formed. Its CPU kernel is
    compiled C++ when the build succeeded (``Plan.kernel == "native"``), else the pure-PyTorch
    chunked kernel of :mod:`hmfusion.kernels`. Low-rank factors are multiplied out first
    (p×q and s×t only).
``composite``
    :func:`hmfusion.kernels.kron_matmul`, the two contractions as plain torch ops with
    autograd's backward: the near-zero-overhead path for small layers with dense factors, and
    the thin-matmul path for low-rank factors.

Each contraction runs right first, ``A (X Bᵀ)``, or left first, ``(A X) Bᵀ`` (:data:`Order`;
the cheaper: ``min(q·s·(t + p), p·t·(q + s))`` per row and term). The inputs are read as
(:data:`Inputs`) ``gather`` (a chunk of rows of every input copied into one cache-sized
buffer; one unpadded input is read in place), ``split`` (each input contracted with its own
columns of A; pure PyTorch only) or ``cat`` (``torch.cat`` of the zero-padded inputs, for the
unchunked methods). ``chunk_rows`` is the number of rows computed at once (m for the
unchunked methods).

The choice is a cost model in multiply-add equivalents with constants measured on the benchmark
machine (see ``benchmarks/RESULTS.md``): a GEMM whose smallest dimension is d runs at a
fraction min(1, 0.8·(d/64)^0.45) of a large GEMM's rate, a batched GEMM costs at least
:data:`BMM_ROW_MACS` per row, a kernel launch :data:`OP_OVERHEAD_MACS` and a pass over a formed
W :data:`WEIGHT_ELEMENT_MACS` per element. Factors are normalised once here (a (terms, rows,
cols) stack for the fused and materialize kernels, per-term factors for the composite one).
The plan is evaluated once per (shape, input widths, dtype, device type, grad) and cached: a
call on a known shape costs one dictionary lookup. ``logging.getLogger("hmfusion.planner")``
logs each new plan at DEBUG (with the estimates in ``Plan.reason``), and
:meth:`hmfusion.structures.KroneckerStructure.plan` returns it. :func:`force_plan` overrides it
(for tests and benchmarks).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Sequence
from typing import Literal, NamedTuple, cast

import torch
from torch import Tensor

from hmfusion import kernels, native
from hmfusion.kernels import Factor

__all__ = [
    "Inputs",
    "Kernel",
    "KronSpec",
    "Method",
    "Order",
    "Plan",
    "choose_plan",
    "force_plan",
    "ideal_speedup",
    "kron_concat",
]

logger = logging.getLogger(__name__)

#: How W is applied (see the module docstring).
Method = Literal["materialize", "fused", "composite"]
#: Which contraction comes first.
Order = Literal["right_first", "left_first"]
#: How the k inputs are read.
Inputs = Literal["split", "gather", "cat"]
#: Which code runs a fused plan: the compiled operator or the pure-PyTorch kernels.
Kernel = Literal["native", "pytorch"]
METHODS: tuple[Method, ...] = ("materialize", "fused", "composite")
ORDERS: tuple[Order, ...] = ("right_first", "left_first")
INPUTS: tuple[Inputs, ...] = ("split", "gather", "cat")

#: GEMM efficiency vs the smallest matrix dimension d (MKL, float32, measured on the benchmark
#: machine): ≈ 0.43 at d = 16, 0.6 at 32, 0.8 at 64, ~1 from 128 on. Modelled as
#: min(1, 0.8·(d/64)^0.45).
GEMM_EFFICIENCY_AT_64 = 0.8
#: 16-bit GEMMs: large ones run ≈ 6× faster than float32 on the benchmark CPU (AMX), the
#: fused kernel's small ones only ≈ 1.5–2×; their efficiency relative to a large GEMM drops.
HALF_SMALL_GEMM_FACTOR = 0.3
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


class KronSpec(NamedTuple):
    """The structure of W: n×D, the top-left block of Σ_τ A_τ ⊗ B_τ with A: p×q, B: s×t.

    ``rank_a`` / ``rank_b`` are the ranks of low-rank factors (None: dense).
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


class Plan(NamedTuple):
    """How :func:`kron_concat` applies W (see the module docstring for the vocabulary).

    ``chunk_rows`` is the number of rows computed at once (m for the unchunked methods);
    ``kernel`` says whether a fused plan runs the compiled operator or the pure-PyTorch one.
    """

    method: Method
    order: Order
    inputs: Inputs
    chunk_rows: int
    reason: str = ""
    kernel: Kernel = "pytorch"


#: NATIVE: the compiled kernel's time per row relative to the pure-PyTorch cost model (fused
#: forward+backward measured 1.1–1.8× faster at the four target shapes; benchmarks/RESULTS.md).
NATIVE_ROW_FACTOR = 0.75
#: A call of the registered operator (custom-op dispatch, autograd context, the backward op):
#: ≈ 50 µs forward, ≈ 0.2 ms with grad (benchmarks/RESULTS.md, the small layers).
NATIVE_CALL_MACS = 5.0e6
NATIVE_CALL_MACS_GRAD = 2.0e7
#: The composite path's full-size intermediates: multiply-add equivalents per element and pass
#: once they leave the cache (two-matmul code at m = 65536, D = 256: 0.77× dense;
#: benchmarks/RESULTS.md), and while they stay in it.
COMPOSITE_ELEMENT_MACS = 30.0
COMPOSITE_ELEMENT_MACS_CACHED = 8.0
#: Working sets up to this size stay in cache (the benchmark machine's L2 + L3 share).
CACHE_BYTES = 8 << 20

_FORCED: tuple[tuple[str, object], ...] = ()
_CACHE: dict[tuple, Plan] = {}


@contextlib.contextmanager
def force_plan(
    method: Method | None = None,
    order: Order | None = None,
    inputs: Inputs | None = None,
    chunk_rows: int | None = None,
) -> Iterator[None]:
    """Override the planner's choices inside the ``with`` block (fields left ``None`` stay free).

    Args:
        method: one of :data:`METHODS`.
        order: one of :data:`ORDERS`.
        inputs: ``"split"`` or ``"gather"`` (fused plans; the others read ``"cat"``).
        chunk_rows: rows per chunk of a fused plan (≥ 1).

    Raises:
        ValueError: an unknown method, order or inputs value, or a chunk_rows below 1.

    Example:
        >>> from hmfusion import HMConcatFusion, planner
        >>> module = HMConcatFusion([8, 8], n=16, p=4)
        >>> with planner.force_plan(method="materialize"):
        ...     module.plan(10).method
        'materialize'
    """
    global _FORCED
    for name, value, allowed in (("method", method, METHODS), ("order", order, ORDERS),
                                 ("inputs", inputs, INPUTS)):
        if value is not None and value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    if chunk_rows is not None and (not isinstance(chunk_rows, int) or chunk_rows < 1):
        raise ValueError(f"chunk_rows must be a positive int, got {chunk_rows!r}")
    previous = _FORCED
    forced = {"method": method, "order": order, "inputs": inputs, "chunk_rows": chunk_rows}
    _FORCED = tuple((k, v) for k, v in forced.items() if v is not None)
    try:
        yield
    finally:
        _FORCED = previous


# cost model ----------------------------------------------------------------------------------
def _efficiency(dim: int, itemsize: int = 4) -> float:
    efficiency = min(1.0, GEMM_EFFICIENCY_AT_64 * (max(dim, 1) / 64) ** 0.45)
    return efficiency if itemsize >= 4 or dim >= 256 else efficiency * HALF_SMALL_GEMM_FACTOR


def _gemm_cost(macs: int, *dims: int, itemsize: int = 4) -> float:
    """Cost of a GEMM of ``macs`` multiply-adds whose smallest dimension is min(dims)."""
    return macs / _efficiency(min(dims), itemsize)


def _batched_gemm_row_cost(macs: int, *dims: int, itemsize: int = 4) -> float:
    """Cost per row of a batched GEMM (one small matrix product per row)."""
    return max(_gemm_cost(macs, *dims, itemsize=itemsize), BMM_ROW_MACS)


def _factored_row_cost(spec: KronSpec, order: Order, grad: bool, itemsize: int) -> float:
    """Cost per row of the two contractions with dense factors, forward (+ backward)."""
    p, q, s, t = spec.p, spec.q, spec.s, spec.t
    if order == "left_first":  # the same kernel with the roles of (p, q) and (s, t) swapped
        p, q, s, t = s, t, p, q
    last_axis = _gemm_cost(q * s * t, s, t, itemsize=itemsize)  # (rows·q, t) @ Bᵀ
    middle_axis = _batched_gemm_row_cost(p * q * s, p, q, s, itemsize=itemsize)  # A (q, s)
    forward = last_axis + middle_axis
    # backward: Z again + dA, G, dB, dX (dA accumulates per-row products: one more pass)
    backward = 3 * last_axis + 2 * middle_axis + BMM_ROW_MACS if grad else 0.0
    return spec.terms * (forward + backward)


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


def _pytorch_fused_ops(k: int, terms: int, chunks: int, grad: bool, split: bool) -> int:
    """Kernel launches of the pure-PyTorch fused kernel."""
    per_chunk = (2 * k if split else 3) * terms  # GEMM + batched GEMM per part (+ gather)
    if grad:
        per_chunk += (6 * k if split else 8) * terms
    return chunks * per_chunk


def _native_chunk_rows(spec: KronSpec, m: int, itemsize: int) -> int:
    """Rows per chunk of the compiled kernel (see CHUNK_BYTES_NATIVE)."""
    row_bytes = max(spec.q * spec.t, spec.p * spec.s) * itemsize
    if m * row_bytes <= NATIVE_SINGLE_CHUNK_BYTES:
        return max(m, 1)
    rows = max(1, CHUNK_BYTES_NATIVE // row_bytes)
    balanced = -(-m // (NATIVE_CHUNKS_PER_THREAD * torch.get_num_threads()))
    return max(1, min(m, max(min(rows, balanced), NATIVE_MIN_CHUNK_ROWS)))


def _chunk_rows(spec: KronSpec, m: int, itemsize: int, device_type: str) -> int:
    """Rows per chunk of the pure-PyTorch kernel: ≈ CHUNK_BYTES of staged input, and at least
    two chunks unless the whole input is small (a lone 4 MiB chunk measured slower than two of
    2 MiB: its scratch is allocated afresh on every call, and the OS pages it in again)."""
    target = CHUNK_BYTES_CPU if device_type == "cpu" else CHUNK_BYTES_DEVICE
    row_bytes = max(spec.q * spec.t, spec.p * spec.s) * itemsize
    if m * row_bytes <= SINGLE_CHUNK_BYTES:
        return max(m, 1)
    rows = max(8, target // row_bytes)
    return max(1, min(rows, -(-m // 2)))


def _split_pays(spec: KronSpec, dims: tuple[int, ...]) -> bool:
    """Read the inputs in place: one input that needs no padding, or inputs aligned on
    multiples of t that each cover at least SPLIT_MIN_BLOCKS of A's columns."""
    blocks = kernels.input_blocks(dims, spec.t)
    if blocks is None:
        return False
    return len(dims) == 1 or min(j1 - j0 for j0, j1 in blocks) >= SPLIT_MIN_BLOCKS


def _native_runs(dtype: torch.dtype, device_type: str) -> bool:
    """Whether a fused plan would run the compiled operator (building it on first use; while
    torch.compile traces, only whether it is already loaded)."""
    if device_type != "cpu" or dtype not in native.NATIVE_DTYPES:
        return False
    if torch.compiler.is_compiling():
        return native.status() == "loaded"
    return native.available()


def _choose(spec: KronSpec, m: int, dims: tuple[int, ...], dtype: torch.dtype,
            device_type: str, grad: bool) -> Plan:
    itemsize = dtype.itemsize
    m_eff = max(m, 1)
    lowrank = spec.rank_a is not None or spec.rank_b is not None
    dense_order: Order = kernels.kron_order(spec.p, spec.q, spec.s, spec.t, None, None)
    compiled = _native_runs(dtype, device_type)
    if compiled:
        chunk_rows = _native_chunk_rows(spec, m_eff, itemsize)
    else:
        chunk_rows = _chunk_rows(spec, m_eff, itemsize, device_type)
    chunks = -(-m_eff // chunk_rows)
    split = not compiled and _split_pays(spec, dims)
    row_cost = _factored_row_cost(spec, dense_order, grad, itemsize)
    if compiled:
        fused = (NATIVE_ROW_FACTOR * row_cost * m_eff
                 + (NATIVE_CALL_MACS_GRAD if grad else NATIVE_CALL_MACS))
    else:
        fused = (row_cost * m_eff + _pytorch_fused_ops(len(dims), spec.terms, chunks, grad, split)
                 * OP_OVERHEAD_MACS)
    # materialize: the dense GEMMs, forming W (and, with grad, forming it again, reading dW
    # twice and rearranging it once), a handful of launches
    dense_gemm = _gemm_cost(spec.n * spec.D * m_eff, spec.n, spec.D, m_eff, itemsize=itemsize)
    dense_gemm *= 3 if grad else 1
    weight = spec.terms * spec.p * spec.q * spec.s * spec.t * (5 if grad else 1)
    materialize = (
        dense_gemm + weight * WEIGHT_ELEMENT_MACS + (8 if grad else 3) * OP_OVERHEAD_MACS
    )
    candidates: dict[Method, float] = {"fused": fused, "materialize": materialize}
    composite_order = kernels.kron_order(spec.p, spec.q, spec.s, spec.t, spec.rank_a, spec.rank_b)
    # (its GEMMs are unchunked, m·q rows: 16-bit ones run at a large GEMM's efficiency)
    if lowrank:
        composite_rows = _lowrank_row_cost(spec, composite_order, grad, 4)
    else:
        composite_rows = _factored_row_cost(spec, dense_order, grad, 4)
    # full-size intermediates: X, the middle product and Y, passed ≈ 4× forward, 12× with grad
    widths = spec.q * spec.t + spec.p * spec.s + min(spec.q * spec.s, spec.p * spec.t)
    resident = m_eff * widths * itemsize <= CACHE_BYTES
    element = COMPOSITE_ELEMENT_MACS_CACHED if resident else COMPOSITE_ELEMENT_MACS
    candidates["composite"] = (
        composite_rows * m_eff
        + (12 if grad else 4) * widths * m_eff * element
        + (10 if grad else 4) * spec.terms * OP_OVERHEAD_MACS
    )
    # (plain loops: this also runs while torch.compile traces, which lacks min(key=...))
    method: Method = "fused"
    best = math.inf
    for name, cost in candidates.items():
        if cost < best:
            method, best = name, cost
    reason = ""
    if not torch.compiler.is_compiling():
        costs = ", ".join(f"{name}≈{cost:.3g}" for name, cost in candidates.items())
        reason = f"estimated multiply-add equivalents: {costs}"
    if method == "fused":
        inputs: Inputs = "split" if split else "gather"
        return Plan("fused", dense_order, inputs, chunk_rows, reason,
                    "native" if compiled else "pytorch")
    order = composite_order if method == "composite" else dense_order
    return Plan(method, order, "cat", m_eff, reason)


def _apply_forced(plan: Plan, spec: KronSpec, m: int, dims: tuple[int, ...],
                  dtype: torch.dtype, device_type: str) -> Plan:
    forced = dict(_FORCED)
    method = cast(Method, forced.get("method", plan.method))
    order = cast(Order, forced.get("order", plan.order))
    inputs = cast("Inputs | None",
                  forced.get("inputs", plan.inputs if method == plan.method else None))
    chunk_rows = cast("int | None", forced.get(
        "chunk_rows", plan.chunk_rows if method == plan.method else None
    ))
    if method != "fused":
        return Plan(method, order, "cat", max(m, 1), "forced by force_plan")
    if inputs in (None, "cat"):
        inputs = "split" if not _native_runs(dtype, device_type) and _split_pays(spec, dims) \
            else "gather"
    if inputs == "split" and not kernels.split_aligned(dims, spec.t):
        raise ValueError(
            f"inputs='split' needs every input boundary on a multiple of t={spec.t}; "
            f"input widths {list(dims)} are not"
        )
    kernel: Kernel = "native" if inputs == "gather" and _native_runs(dtype, device_type) \
        else "pytorch"
    if chunk_rows is None and kernel == "native":
        chunk_rows = _native_chunk_rows(spec, max(m, 1), dtype.itemsize)
    elif chunk_rows is None:
        chunk_rows = _chunk_rows(spec, max(m, 1), dtype.itemsize, device_type)
    return Plan("fused", order, inputs, int(chunk_rows), "forced by force_plan", kernel)


def choose_plan(
    spec: KronSpec,
    m: int,
    dims: Sequence[int],
    dtype: torch.dtype = torch.float32,
    device_type: str = "cpu",
    requires_grad: bool = True,
) -> Plan:
    """The plan for m rows of inputs of widths ``dims`` (cached; see the module docstring).

    Args:
        spec: the structure of W.
        m: rows of the batch.
        dims: the input widths n_1 … n_k (Σ n_i = D).
        dtype: the computation's dtype.
        device_type: ``"cpu"``, ``"cuda"``, …
        requires_grad: whether a backward will follow.

    Returns:
        The :class:`Plan` (the one :func:`force_plan` imposes, inside its block).

    Example:
        >>> from hmfusion import planner
        >>> spec = planner.KronSpec(4096, 4096, 64, 64, 64, 64)
        >>> planner.choose_plan(spec, 4096, (1024,) * 4).method
        'fused'
    """
    if torch.compiler.is_compiling():  # traced once per graph: no cache, no logging
        dims = tuple(int(d) for d in dims)
        plan = _choose(spec, m, dims, dtype, device_type, requires_grad)
        return _apply_forced(plan, spec, m, dims, dtype, device_type) if _FORCED else plan
    key = (spec, m, tuple(dims), dtype, device_type, requires_grad)
    cached = _CACHE.get(key)
    if cached is not None:
        plan = cached
    else:
        dims = tuple(int(d) for d in dims)
        plan = _choose(spec, int(m), dims, dtype, device_type, requires_grad)
        if len(_CACHE) > 4096:
            _CACHE.clear()
        _CACHE[key] = plan
        logger.debug("plan for %s, m=%d, dims=%s, %s on %s, grad=%s: %s",
                     spec, m, dims, dtype, device_type, requires_grad, plan)
    if _FORCED:
        return _apply_forced(plan, spec, int(m), tuple(int(d) for d in dims), dtype,
                             device_type)
    return plan


# applying a plan -----------------------------------------------------------------------------
def _as_stack(factor: Factor) -> Tensor:
    """A dense (terms, rows, cols) stack from a matrix, a stack or a low-rank pair."""
    if isinstance(factor, tuple):
        return kernels.dense_factor(factor).unsqueeze(0)
    return factor if factor.dim() == 3 else factor.unsqueeze(0)


def _as_list(factor: Factor) -> list[Factor]:
    """Per-term factors (kernels.kron_matmul's form) from a matrix, a stack or a low-rank pair."""
    if isinstance(factor, tuple):
        return [factor]
    return [factor] if factor.dim() == 2 else list(factor.unbind(0))


def _cast(value: Factor, dtype: torch.dtype) -> Factor:
    if isinstance(value, tuple):
        return (_cast(value[0], dtype), _cast(value[1], dtype))  # type: ignore[return-value]
    # autocast leaves float64 alone; so do we
    return value if value.dtype in (dtype, torch.float64) else value.to(dtype)


def kron_concat(spec: KronSpec, xs: Sequence[Tensor], left: Factor, right: Factor) -> Tensor:
    """``cat(xs, -1) Wᵀ`` for xs of shapes (m, n_i), Σ n_i = D, by the planner's choice.

    Args:
        spec: the structure of W.
        xs: the inputs, (m, n_i) each, one dtype and device.
        left: A as a (p, q) or (terms, p, q) tensor, or a low-rank pair (P, Q).
        right: B likewise ((s, t), (terms, s, t) or (S, T)).

    Returns:
        Y of shape (m, n), differentiable in xs and the factors.

    Under autocast the inputs and factors are cast to the autocast dtype (float64 excepted) and
    the plan runs with autocast off, so that the fused kernel's forward and backward see one
    dtype.

    Example:
        >>> import torch
        >>> from hmfusion import planner
        >>> spec = planner.KronSpec(6, 8, 2, 2, 3, 4)
        >>> y = planner.kron_concat(spec, [torch.randn(5, 8)], torch.randn(2, 2),
        ...                         torch.randn(3, 4))
        >>> y.shape
        torch.Size([5, 6])
    """
    autocast_dtype = kernels.autocast_dtype(xs)
    if autocast_dtype is not None:
        xs = [_cast(x, autocast_dtype) for x in xs]  # type: ignore[misc]
        left, right = _cast(left, autocast_dtype), _cast(right, autocast_dtype)
        with torch.autocast(xs[0].device.type, enabled=False):
            return _run(spec, xs, left, right)
    return _run(spec, xs, left, right)


def _run(spec: KronSpec, xs: Sequence[Tensor], left: Factor, right: Factor) -> Tensor:
    first = xs[0]
    grad = kernels.needs_grad(xs, left, right)
    plan = choose_plan(spec, first.shape[0], [x.shape[1] for x in xs], first.dtype,
                       first.device.type, grad)
    if plan.method == "materialize":
        x = torch.cat(list(xs), dim=-1) if len(xs) > 1 else first
        return kernels.kron_linear(x, _as_stack(left), _as_stack(right), spec.n, spec.D)
    if plan.method == "composite":
        x = kernels.pad_concat(xs, spec.q * spec.t)
        shape = (spec.p, spec.q, spec.s, spec.t)
        y = kernels.kron_matmul(x, _as_list(left), _as_list(right), shape, plan.order)
    else:
        inputs: Literal["gather", "split"] = "split" if plan.inputs == "split" else "gather"
        y = native.fused_kron_concat(xs, _as_stack(left), _as_stack(right), plan.order,
                               plan.chunk_rows, inputs)
    return y[:, : spec.n] if spec.p * spec.s != spec.n else y


def ideal_speedup(p: int, q: int, s: int, t: int) -> float:
    """n·D over the cheaper factored cost per row: max(p·t/(p + t), q·s/(q + s)).

    Args:
        p, q: the shape of A.
        s, t: the shape of B.

    Returns:
        The flop ratio of a dense n×D GEMM to the cheaper contraction order.

    Example:
        >>> from hmfusion import planner
        >>> planner.ideal_speedup(64, 64, 64, 64)
        32.0
    """
    dense = p * q * s * t
    return dense / min(q * s * (t + p), p * t * (q + s))
