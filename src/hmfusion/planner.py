"""The planner: how to apply ``cat(xs) Wᵀ`` for a Kronecker-structured W, per shape and dtype.

W = Σ_τ A_τ ⊗ B_τ (A: p×q, B: s×t, each dense or low-rank; see :mod:`hmfusion.structures`). For
m rows the candidates are (all computed by :mod:`hmfusion.kernels`):

``materialize``
    form W, then one dense GEMM: m·n·D multiply-adds plus writing W. Wins only when the
    factored product saves little (p or q near 1 or near n, D) and the layer is small.
``fused``
    the custom autograd Function :func:`hmfusion.kernels.kron_concat` on dense factors,
    right-first or left-first (the cheaper: ``min(q·s·(t + p), p·t·(q + s))`` per row and term),
    in row chunks of ≈ 4 MiB, reading the inputs in place (``split``) or through a cache-sized
    staging buffer (``gather``). Low-rank factors are multiplied out first (p×q and s×t only).
``composite``
    :func:`hmfusion.kernels.kron_matmul` with autograd's backward, applying low-rank factors as
    two thin matmuls; chosen when that is cheaper than densifying them for the fused kernel.

The choice is a cost model in multiply-add equivalents with constants measured on the benchmark
machine (see ``benchmarks/RESULTS.md``): a GEMM whose smallest dimension is d runs at a
fraction min(1, 0.8·(d/64)^0.45) of a large GEMM's rate, a batched GEMM costs at least
:data:`BMM_ROW_MACS` per row, a kernel launch :data:`OP_OVERHEAD_MACS` and a pass over a formed
W :data:`WEIGHT_ELEMENT_MACS` per element. It is evaluated once per (shape, input widths,
dtype, device type, grad) and cached; ``logging.getLogger("hmfusion.planner")`` logs each new
plan at DEBUG (with the estimates in ``Plan.reason``), and
:meth:`hmfusion.structures.KroneckerStructure.plan` returns it. :func:`force_plan` overrides it
(for tests and benchmarks).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from hmfusion import kernels
from hmfusion.kernels import Factor

__all__ = [
    "KronSpec",
    "Plan",
    "choose_plan",
    "force_plan",
    "ideal_speedup",
    "kron_concat",
]

logger = logging.getLogger(__name__)

METHODS = ("materialize", "fused", "composite")
ORDERS = ("right_first", "left_first")
INPUTS = ("split", "gather", "concat")

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
#: Target size of a row chunk of the fused kernel on CPU (its intermediates stay in L2/L3);
#: measured best among 1–8 MiB on the four target shapes, within noise of 2 MiB.
CHUNK_BYTES_CPU = 4 << 20
#: Inputs up to this size are processed in one chunk.
SINGLE_CHUNK_BYTES = 1 << 20
#: On accelerators chunks only bound the scratch memory; launches are what cost.
CHUNK_BYTES_DEVICE = 256 << 20
#: Split inputs only when each covers at least this many blocks of A's columns: below it the
#: per-input batched GEMMs (inner dimension q_i) cost more than gathering a chunk in cache.
SPLIT_MIN_BLOCKS = 64


class KronSpec(NamedTuple):
    """The structure of W: n×D, the top-left block of Σ_τ A_τ ⊗ B_τ with A: p×q, B: s×t."""

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
    """How :func:`kron_concat` applies W (see the module docstring for the methods)."""

    method: str
    order: str
    inputs: str
    chunk_rows: int
    reason: str = ""


_FORCED: tuple[tuple[str, object], ...] = ()
_CACHE: dict[tuple, Plan] = {}


@contextlib.contextmanager
def force_plan(
    method: str | None = None,
    order: str | None = None,
    inputs: str | None = None,
    chunk_rows: int | None = None,
) -> Iterator[None]:
    """Override the planner's choices inside the ``with`` block (fields left ``None`` stay free).

    Raises:
        ValueError: an unknown method, order or inputs value, or a chunk_rows below 1.
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


def _gemm(macs: int, *dims: int, itemsize: int = 4) -> float:
    """Cost of a GEMM of ``macs`` multiply-adds whose smallest dimension is min(dims)."""
    return macs / _efficiency(min(dims), itemsize)


def _bmm(macs: int, *dims: int, itemsize: int = 4) -> float:
    """Cost per row of a batched GEMM (one small matrix product per row)."""
    return max(_gemm(macs, *dims, itemsize=itemsize), BMM_ROW_MACS)


def _fused_row_cost(spec: KronSpec, order: str, grad: bool, itemsize: int) -> float:
    """Cost per row of the fused kernel (dense factors), forward (+ backward)."""
    p, q, s, t = spec.p, spec.q, spec.s, spec.t
    if order == "left_first":  # the same kernel with the roles of (p, q) and (s, t) swapped
        p, q, s, t = s, t, p, q
    last_axis = _gemm(q * s * t, s, t, itemsize=itemsize)  # (rows·q, t) @ Bᵀ
    middle_axis = _bmm(p * q * s, p, q, s, itemsize=itemsize)  # A (q, s) per row
    forward = last_axis + middle_axis
    # backward: Z again + dA, G, dB, dX (dA accumulates per-row products: one more pass)
    backward = 3 * last_axis + 2 * middle_axis + BMM_ROW_MACS if grad else 0.0
    return spec.terms * (forward + backward)


def _lowrank_row_cost(spec: KronSpec, order: str, grad: bool, itemsize: int) -> float:
    """Cost per row of the composite path with low-rank factors (backward ≈ 2× forward)."""
    cost_a = kernels.factor_cost(spec.p, spec.q, spec.rank_a)
    cost_b = kernels.factor_cost(spec.s, spec.t, spec.rank_b)
    rank = min(r for r in (spec.rank_a, spec.rank_b, spec.p, spec.s) if r is not None)
    if order == "right_first":
        forward = spec.q * cost_b + spec.s * cost_a
    else:
        forward = spec.t * cost_a + spec.p * cost_b
    return spec.terms * _gemm(forward, rank, itemsize=itemsize) * (3 if grad else 1)


def _fused_ops(k: int, terms: int, chunks: int, grad: bool, split: bool) -> int:
    per_chunk = (2 * k if split else 3) * terms  # GEMM + batched GEMM per part (+ gather)
    if grad:
        per_chunk += (6 * k if split else 8) * terms
    return chunks * per_chunk


def _chunk_rows(spec: KronSpec, m: int, itemsize: int, device_type: str) -> int:
    """Rows per chunk: ≈ CHUNK_BYTES of staged input, and at least two chunks unless the whole
    input is small (a lone 4 MiB chunk measured slower than two of 2 MiB: its scratch is
    allocated afresh on every call, and the OS pages it in again)."""
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


def _choose(spec: KronSpec, m: int, dims: tuple[int, ...], itemsize: int, device_type: str,
            grad: bool) -> Plan:
    m_eff = max(m, 1)
    lowrank = spec.rank_a is not None or spec.rank_b is not None
    dense_order = kernels.kron_order(spec.p, spec.q, spec.s, spec.t, None, None)
    chunk_rows = _chunk_rows(spec, m_eff, itemsize, device_type)
    chunks = -(-m_eff // chunk_rows)
    split = _split_pays(spec, dims)
    inputs = "split" if split else "gather"

    fused = (
        _fused_row_cost(spec, dense_order, grad, itemsize) * m_eff
        + _fused_ops(len(dims), spec.terms, chunks, grad, split) * OP_OVERHEAD_MACS
    )
    # materialize: the dense GEMMs, forming W (and, with grad, forming it again, reading dW
    # twice and rearranging it once), a handful of launches
    dense_gemm = _gemm(spec.n * spec.D * m_eff, spec.n, spec.D, m_eff, itemsize=itemsize)
    dense_gemm *= 3 if grad else 1
    weight = spec.terms * spec.p * spec.q * spec.s * spec.t * (5 if grad else 1)
    materialize = (
        dense_gemm + weight * WEIGHT_ELEMENT_MACS + (8 if grad else 3) * OP_OVERHEAD_MACS
    )
    candidates = {"fused": fused, "materialize": materialize}
    if lowrank:
        lr_order = kernels.kron_order(spec.p, spec.q, spec.s, spec.t, spec.rank_a, spec.rank_b)
        composite = (
            _lowrank_row_cost(spec, lr_order, grad, itemsize) * m_eff
            + (10 if grad else 4) * spec.terms * OP_OVERHEAD_MACS
        )
        if composite < fused:
            candidates["composite"] = composite
            del candidates["fused"]
    # (plain loops: this also runs while torch.compile traces, which lacks min(key=...))
    method, best = "", math.inf
    for name, cost in candidates.items():
        if cost < best:
            method, best = name, cost
    if method == "fused":
        order = dense_order
    else:
        order = kernels.kron_order(spec.p, spec.q, spec.s, spec.t, spec.rank_a, spec.rank_b)
        inputs, chunk_rows = "concat", 0
    reason = ""
    if not torch.compiler.is_compiling():
        costs = ", ".join(f"{name}≈{cost:.3g}" for name, cost in candidates.items())
        reason = f"estimated multiply-add equivalents: {costs}"
    return Plan(method, order, inputs, chunk_rows, reason)


def _apply_forced(plan: Plan, spec: KronSpec, m: int, dims: tuple[int, ...], itemsize: int,
                  device_type: str) -> Plan:
    forced = dict(_FORCED)
    if not forced:
        return plan
    method = forced.get("method", plan.method)
    order = forced.get("order", plan.order)
    inputs = forced.get("inputs", plan.inputs if method == plan.method else None)
    chunk_rows = forced.get("chunk_rows", plan.chunk_rows)
    if method == "fused":
        if inputs in (None, "concat"):
            inputs = "split" if _split_pays(spec, dims) else "gather"
        if inputs == "split" and not kernels.split_aligned(dims, spec.t):
            raise ValueError(
                f"inputs='split' needs every input boundary on a multiple of t={spec.t}; "
                f"input widths {list(dims)} are not"
            )
        if not chunk_rows:
            chunk_rows = _chunk_rows(spec, max(m, 1), itemsize, device_type)
    else:
        inputs, chunk_rows = "concat", 0
    return Plan(method, order, inputs, int(chunk_rows), "forced by force_plan")


def choose_plan(
    spec: KronSpec,
    m: int,
    dims: Sequence[int],
    dtype: torch.dtype = torch.float32,
    device_type: str = "cpu",
    requires_grad: bool = True,
) -> Plan:
    """The plan for m rows of inputs of widths ``dims`` (cached; see the module docstring)."""
    dims = tuple(int(d) for d in dims)
    itemsize = dtype.itemsize
    if torch.compiler.is_compiling():  # traced once per graph: no cache, no logging
        plan = _choose(spec, int(m), dims, itemsize, device_type, requires_grad)
        return _apply_forced(plan, spec, int(m), dims, itemsize, device_type)
    key = (spec, int(m), dims, dtype, device_type, requires_grad)
    plan = _CACHE.get(key)
    if plan is None:
        plan = _choose(spec, int(m), dims, itemsize, device_type, requires_grad)
        if len(_CACHE) > 4096:
            _CACHE.clear()
        _CACHE[key] = plan
        logger.debug("plan for %s, m=%d, dims=%s, %s on %s, grad=%s: %s",
                     spec, m, dims, dtype, device_type, requires_grad, plan)
    return _apply_forced(plan, spec, int(m), dims, itemsize, device_type)


# applying a plan -----------------------------------------------------------------------------
def _as_stack(factor: Tensor | tuple[Tensor, Tensor]) -> Tensor:
    """A dense (terms, rows, cols) stack from a stack or a low-rank pair."""
    if isinstance(factor, tuple):
        return kernels.dense_factor(factor).unsqueeze(0)
    return factor if factor.dim() == 3 else factor.unsqueeze(0)


def _as_list(factor: Tensor | tuple[Tensor, Tensor]) -> list[Factor]:
    """Per-term factors (kernels.kron_matmul's form) from a stack or a low-rank pair."""
    if isinstance(factor, tuple):
        return [factor]
    return [factor] if factor.dim() == 2 else list(factor.unbind(0))


def _concat_padded(xs: Sequence[Tensor], width: int) -> Tensor:
    parts = list(xs)
    missing = width - sum(x.shape[1] for x in parts)
    if missing:
        parts.append(parts[0].new_zeros(parts[0].shape[0], missing))
    return torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]


def _autocast_dtype(tensors: Sequence[Tensor]) -> torch.dtype | None:
    """The dtype autocast would run a matmul in, if autocast is on for these tensors' device."""
    device_type = tensors[0].device.type
    # (meta and other devices without autocast: asking would raise)
    if not torch.amp.is_autocast_available(device_type):
        return None
    if not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def _cast(value, dtype: torch.dtype):
    if isinstance(value, tuple):
        return tuple(_cast(v, dtype) for v in value)
    # autocast leaves float64 alone; so do we
    return value if value.dtype in (dtype, torch.float64) else value.to(dtype)


def kron_concat(
    spec: KronSpec,
    xs: Sequence[Tensor],
    left: Tensor | tuple[Tensor, Tensor],
    right: Tensor | tuple[Tensor, Tensor],
) -> Tensor:
    """``cat(xs, -1) Wᵀ`` for xs of shapes (m, n_i), Σ n_i = D; returns (m, n).

    ``left`` is A as a (p, q) or (terms, p, q) tensor, or a low-rank pair (P, Q); ``right`` is
    B likewise ((s, t), (terms, s, t) or (S, T)). Under autocast the inputs and factors are cast
    to the autocast dtype (float64 excepted) and the plan runs with autocast off, so that the
    fused kernel's forward and backward see one dtype.
    """
    xs = list(xs)
    autocast_dtype = _autocast_dtype(xs)
    if autocast_dtype is not None:
        xs = [_cast(x, autocast_dtype) for x in xs]
        left, right = _cast(left, autocast_dtype), _cast(right, autocast_dtype)
        with torch.autocast(xs[0].device.type, enabled=False):
            return _run(spec, xs, left, right)
    return _run(spec, xs, left, right)


def _run(spec: KronSpec, xs: list[Tensor], left, right) -> Tensor:
    m = xs[0].shape[0]
    grad = torch.is_grad_enabled() and (
        any(x.requires_grad for x in xs)
        or any(t.requires_grad for t in (left if isinstance(left, tuple) else (left,)))
        or any(t.requires_grad for t in (right if isinstance(right, tuple) else (right,)))
    )
    dims = tuple(x.shape[1] for x in xs)
    plan = choose_plan(spec, m, dims, xs[0].dtype, xs[0].device.type, grad)
    shape = (spec.p, spec.q, spec.s, spec.t)
    n_padded, d_padded = spec.p * spec.s, spec.q * spec.t
    if plan.method == "materialize":
        x = torch.cat(xs, dim=-1) if len(xs) > 1 else xs[0]
        return kernels.kron_linear(x, _as_stack(left), _as_stack(right), spec.n, spec.D)
    if plan.method == "composite":
        x = _concat_padded(xs, d_padded)
        y = kernels.kron_matmul(x, _as_list(left), _as_list(right), shape, plan.order)
    else:
        layout = kernels.FusedLayout(plan.order, plan.inputs, plan.chunk_rows)
        a = kernels.dense_factor(left) if isinstance(left, tuple) else left
        b = kernels.dense_factor(right) if isinstance(right, tuple) else right
        y = kernels.kron_concat(xs, a, b, shape, layout)
    return y[:, : spec.n] if n_padded != spec.n else y


def ideal_speedup(p: int, q: int, s: int, t: int) -> float:
    """n·D over the cheaper factored cost per row: max(p·t/(p + t), q·s/(q + s))."""
    dense = p * q * s * t
    return dense / min(q * s * (t + p), p * t * (q + s))
