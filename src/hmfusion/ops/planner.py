"""The planner: how to apply `cat(xs) Wᵀ` for a Kronecker-structured W, per shape and dtype.

W = Σ_τ A_τ ⊗ B_τ (A: p×q, B: s×t, each dense or low-rank; see `hmfusion.structures`). For
m rows the candidates (`Method`) are `materialize` (form W, one dense GEMM: wins where factoring
saves nothing, p = q = 1, over a large batch), `fused` (the operator
`hmfusion::fused_kron_concat`: row chunks over the threads of one parallel region, W never
formed; `Plan.kernel` `"tiled"`, its register-tiled loops, `"native"`, a BLAS GEMM per chunk,
`"pytorch"`, the pure-PyTorch kernel where the build failed or on other devices, or on CUDA
with Triton `"triton"`, the kernels of `hmfusion.ops.triton_kernels`; low-rank factors
multiplied out first) and `composite` (`hmfusion.ops.kernels.kron_matmul`, the two
contractions as plain torch ops: thin matmuls for low-rank factors, the fewest launches on
accelerators). Each runs right first, `A (X Bᵀ)`, or left first, `(A X) Bᵀ` (`Order`; a fused
plan with grad counts its backward's recomputed first contraction,
[`fused_order`][hmfusion.ops.costmodel.fused_order]). The inputs are read as (`Inputs`)
`gather` (a chunk of rows of every input copied into one buffer), `split` (each input with its
own columns of A; pure PyTorch only) or `cat` (the unchunked methods); `chunk_rows` rows are
computed at once (m for the unchunked methods).

The cost model ([`hmfusion.ops.costmodel`][hmfusion.ops.costmodel]) ranks the candidates and
picks one; for a key whose call it predicts at ≥ 0.1 ms the measuring planner
([`hmfusion.ops.tuning`][hmfusion.ops.tuning]) times the best few on this machine and keeps
the fastest (remembered as *wisdom* across processes; `HMFUSION_TUNE=0` turns it off). The
plan is chosen once per (shape, input widths, dtype, device type, grad) and cached: a call on a
known key costs one dictionary lookup. `logging.getLogger("hmfusion.ops.planner")` logs each
new plan at DEBUG (with the estimates or the measured times in `Plan.reason`),
`hmfusion.structures.KroneckerStructure.plan` returns it, and `force_plan` overrides it.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Sequence
from typing import Literal, NamedTuple, cast

import torch
from torch import Tensor

from hmfusion.ops import chunking, costmodel, execute, kernels, native, triton_dispatch, tuning
from hmfusion.ops.costmodel import Kernel, KronSpec, Method, Order
from hmfusion.ops.kernels import Factor

__all__ = [
    "Inputs",
    "Kernel",
    "KronSpec",
    "Method",
    "Order",
    "Plan",
    "candidate_plans",
    "choose_plan",
    "force_plan",
    "kron_concat",
]

logger = logging.getLogger(__name__)

#: How the k inputs are read.
Inputs = Literal["split", "gather", "cat"]
METHODS: tuple[Method, ...] = ("materialize", "fused", "composite")
KERNELS: tuple[Kernel, ...] = ("native", "tiled", "pytorch", "triton")
ORDERS: tuple[Order, ...] = ("right_first", "left_first")
INPUTS: tuple[Inputs, ...] = ("split", "gather", "cat")


class Plan(NamedTuple):
    """How `kron_concat` applies W (see the module docstring for the vocabulary).

    `chunk_rows` is the number of rows computed at once (m for the unchunked methods);
    `kernel` says which code runs a fused plan: the compiled operator's register-tiled loops
    (`"tiled"`) or BLAS GEMMs (`"native"`), the pure-PyTorch kernel (`"pytorch"`), or the
    Triton kernels on CUDA (`"triton"`).
    `upcast` says that 16-bit inputs and factors are cast to float32 for the computation and
    Y back to their dtype: on a CPU whose 16-bit GEMMs are slow
    ([`half_gemms_fast`][hmfusion.ops.costmodel.half_gemms_fast]), for every plan but the tiled
    loops, which stage 16-bit values in float32 themselves.
    """

    method: Method
    order: Order
    inputs: Inputs
    chunk_rows: int
    reason: str = ""
    kernel: Kernel = "pytorch"
    upcast: bool = False


_FORCED: tuple[tuple[str, object], ...] = ()
_CACHE: dict[tuple, Plan] = {}


@contextlib.contextmanager
def force_plan(
    method: Method | None = None,
    order: Order | None = None,
    inputs: Inputs | None = None,
    chunk_rows: int | None = None,
    kernel: Kernel | None = None,
) -> Iterator[None]:
    """Override the planner's choices inside the `with` block (fields left `None` stay free).

    Args:
        method: one of `METHODS`.
        order: one of `ORDERS`.
        inputs: `"split"` or `"gather"` (fused plans; the others read `"cat"`).
        chunk_rows: rows per chunk of a fused plan (≥ 1).
        kernel: the code of a fused plan, one of `KERNELS`: `"native"` or `"tiled"` (the
            compiled operator; where it is unavailable, or the inputs are split, the
            pure-PyTorch kernel runs and the plan says so), `"pytorch"`, or `"triton"` (CUDA
            with Triton; elsewhere the pure-PyTorch kernel runs and the plan says so).

    Raises:
        ValueError: an unknown method, order, inputs or kernel value, or a chunk_rows below 1.
        TypeError: a chunk_rows that is not an int (a bool included).

    Example:
        >>> from hmfusion import HMConcatFusion, planner
        >>> module = HMConcatFusion([8, 8], n=16, p=4)
        >>> with planner.force_plan(method="materialize"):
        ...     module.plan(10).method
        'materialize'
    """
    global _FORCED
    for name, value, allowed in (
        ("method", method, METHODS),
        ("order", order, ORDERS),
        ("inputs", inputs, INPUTS),
        ("kernel", kernel, KERNELS),
    ):
        if value is not None and value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    if chunk_rows is not None:
        if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int):
            raise TypeError(
                f"chunk_rows must be a positive int, got {type(chunk_rows).__name__} {chunk_rows!r}"
            )
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be a positive int, got {chunk_rows!r}")
    previous = _FORCED
    forced = {
        "method": method,
        "order": order,
        "inputs": inputs,
        "chunk_rows": chunk_rows,
        "kernel": kernel,
    }
    _FORCED = tuple((k, v) for k, v in forced.items() if v is not None)
    try:
        yield
    finally:
        _FORCED = previous


def _native_runs(dtype: torch.dtype, device_type: str) -> bool:
    """Whether a fused plan would run the compiled operator (building it on first use; while
    torch.compile traces, only whether it is already loaded)."""
    if device_type != "cpu" or dtype not in native.NATIVE_DTYPES:
        return False
    if torch.compiler.is_compiling():
        return native.status() == "loaded"
    return native.available()


def _upcasts(dtype: torch.dtype, device_type: str) -> bool:
    """Whether a plan computes in float32, not `dtype` (16-bit without fast 16-bit GEMMs)."""
    return not costmodel.half_gemms_fast(dtype, device_type)


def _cheapest(candidates: dict[Method, float], what: str = "") -> tuple[Method, str]:
    """The method the cost model prices lowest, and the estimates as the plan's reason."""
    # (plain loops: this also runs while torch.compile traces, which lacks min(key=...))
    method: Method = "fused"
    best = math.inf
    for name, cost in candidates.items():
        if cost < best:
            method, best = name, cost
    if torch.compiler.is_compiling():
        return method, ""
    costs = ", ".join(f"{name}≈{cost:.3g}" for name, cost in candidates.items())
    return method, f"estimated multiply-add equivalents{what}: {costs}"


def _choose_triton(
    spec: KronSpec, m: int, dims: tuple[int, ...], dtype: torch.dtype, grad: bool
) -> Plan:
    """On CUDA with Triton: the Triton kernels (a fused plan), composite or materialize,
    ranked by the cost model's launch counting (`costmodel.estimate(..., triton=True)`)."""
    m_eff = max(m, 1)
    candidates = costmodel.estimate(
        spec, m_eff, dims, dtype, "cuda", grad,
        native=False, fused_chunk_rows=m_eff, split=False, triton=True,
    )  # fmt: skip
    method, reason = _cheapest(candidates, " (fused: Triton)")
    if method == "fused":
        order = costmodel.fused_order(spec, grad, False, dtype.itemsize)
        return Plan("fused", order, "gather", m_eff, reason, "triton")
    rank_a, rank_b = (spec.rank_a, spec.rank_b) if method == "composite" else (None, None)
    order = kernels.kron_order(spec.p, spec.q, spec.s, spec.t, rank_a, rank_b)
    return Plan(method, order, "cat", m_eff, reason)


def _choose(
    spec: KronSpec, m: int, dims: tuple[int, ...], dtype: torch.dtype, device_type: str, grad: bool
) -> Plan:
    if triton_dispatch.runs(dtype, device_type):
        return _choose_triton(spec, m, dims, dtype, grad)
    if _upcasts(dtype, device_type):
        # priced and run as float32 (the casts are two passes over X and Y, against 16-bit
        # GEMMs at ≈ 1 % of float32's rate); the tiled loops read the 16-bit values directly
        plan = _choose(spec, m, dims, torch.float32, device_type, grad)
        reason = ""
        if plan.reason:  # (empty while torch.compile traces)
            reason = f"{dtype} GEMMs are slow on this CPU: computed in float32; {plan.reason}"
        upcast = plan.kernel != "tiled"
        return Plan(
            plan.method, plan.order, plan.inputs, plan.chunk_rows, reason, plan.kernel, upcast
        )
    m_eff = max(m, 1)
    dense_order: Order = kernels.kron_order(spec.p, spec.q, spec.s, spec.t, None, None)
    compiled = _native_runs(dtype, device_type)
    tiled = compiled and costmodel.tiled_pays(spec, m_eff, dtype.itemsize, grad)
    if tiled:
        chunk_rows = chunking.tiled_chunk_rows(spec, m_eff, dtype.itemsize)
    elif compiled:
        chunk_rows = chunking.native_chunk_rows(spec, m_eff, dtype.itemsize)
    else:
        chunk_rows = chunking.chunk_rows(spec, m_eff, dtype.itemsize, device_type)
    split = not compiled and chunking.split_pays(spec, dims)
    candidates = costmodel.estimate(
        spec,
        m_eff,
        dims,
        dtype,
        device_type,
        grad,
        native=compiled,
        fused_chunk_rows=chunk_rows,
        split=split,
        tiled=tiled,
    )
    method, reason = _cheapest(candidates)
    if method == "fused":
        inputs: Inputs = "split" if split else "gather"
        kernel: Kernel = "tiled" if tiled else "native" if compiled else "pytorch"
        order = costmodel.fused_order(spec, grad, tiled, dtype.itemsize, native=compiled)
        return Plan("fused", order, inputs, chunk_rows, reason, kernel)
    if method == "composite":
        order = kernels.kron_order(spec.p, spec.q, spec.s, spec.t, spec.rank_a, spec.rank_b)
    else:
        order = dense_order
    return Plan(method, order, "cat", m_eff, reason)


def _apply_forced(
    plan: Plan,
    spec: KronSpec,
    m: int,
    dims: tuple[int, ...],
    dtype: torch.dtype,
    device_type: str,
    grad: bool,
    forced: dict[str, object] | None = None,
) -> Plan:
    forced = dict(_FORCED) if forced is None else forced
    method = cast(Method, forced.get("method", plan.method))
    same = method == plan.method
    order = cast("Order | None", forced.get("order"))
    inputs = cast("Inputs | None", forced.get("inputs", plan.inputs if same else None))
    own_kernel = same and order in (None, plan.order)  # (another order may want another kernel)
    wanted = cast("Kernel | None", forced.get("kernel", plan.kernel if own_kernel else None))
    upcast = _upcasts(dtype, device_type)
    if method != "fused":
        if order is None and same:
            order = plan.order
        elif order is None:
            order = kernels.kron_order(spec.p, spec.q, spec.s, spec.t, spec.rank_a, spec.rank_b)
        return Plan(method, order, "cat", max(m, 1), "forced by force_plan", upcast=upcast)
    if (
        inputs != "split"
        and wanted in (None, "triton")
        and triton_dispatch.runs(dtype, device_type)
    ):
        if order is None:
            own_order = plan.kernel == "triton" and same
            order = plan.order if own_order else costmodel.fused_order(spec, grad, False)
        rows = cast(int, forced.get("chunk_rows", max(m, 1)))
        return Plan("fused", order, "gather", rows, "forced by force_plan", "triton")
    if wanted == "triton":  # (Triton does not run here: the pure-PyTorch kernel does)
        wanted = "pytorch"
    compiled = _native_runs(dtype, device_type)
    if inputs in (None, "cat"):
        pays = wanted == "pytorch" or not compiled
        inputs = "split" if pays and chunking.split_pays(spec, dims) else "gather"
    if inputs == "split" and not kernels.split_aligned(dims, spec.t):
        raise ValueError(
            f"inputs='split' needs every input boundary on a multiple of t={spec.t}; "
            f"input widths {list(dims)} are not"
        )
    kernel: Kernel = "pytorch"
    if inputs == "gather" and compiled and wanted != "pytorch":
        if wanted is None:
            itemsize = 4 if upcast else dtype.itemsize
            pays = costmodel.tiled_pays(spec, max(m, 1), itemsize, grad, order)
            wanted = "tiled" if pays else "native"
        kernel = wanted
    # the plan's chunk holds only where the plan's own kernel runs
    own = plan.chunk_rows if same and kernel == plan.kernel else None
    chunk_rows = cast("int | None", forced.get("chunk_rows", own))
    upcast = upcast and kernel != "tiled"
    itemsize = 4 if upcast else dtype.itemsize
    if order is None and own is not None:  # the plan's own kernel: its own order
        order = plan.order
    elif order is None:
        tiled = kernel == "tiled"
        order = costmodel.fused_order(spec, grad, tiled, itemsize, native=kernel == "native")
    if chunk_rows is None and kernel == "tiled":
        chunk_rows = chunking.tiled_chunk_rows(spec, max(m, 1), itemsize)
    elif chunk_rows is None and kernel == "native":
        chunk_rows = chunking.native_chunk_rows(spec, max(m, 1), itemsize)
    elif chunk_rows is None:
        chunk_rows = chunking.chunk_rows(spec, max(m, 1), itemsize, device_type)
    return Plan("fused", order, inputs, int(chunk_rows), "forced by force_plan", kernel, upcast)


def _options(pick: Plan, key: tuning.PlanKey) -> list[tuple[Plan, float]]:
    """`candidate_plans` of a key whose cost-model pick is `pick`."""
    spec, m, dims, dtype, device_type, grad = key
    compiled = _native_runs(dtype, device_type)
    triton = triton_dispatch.runs(dtype, device_type)
    ranked = costmodel.candidates(
        spec, max(m, 1), dims, dtype, device_type, grad, compiled=compiled, triton=triton
    )
    own = [c.cost for c in ranked if c[:3] == (pick.method, pick.kernel, pick.order)]
    options = [(pick, min(own, default=ranked[0].cost))]
    seen = {pick._replace(reason="")}
    for candidate in ranked:
        forced: dict[str, object] = dict(zip(("method", "kernel", "order"), candidate[:3]))
        plan = _apply_forced(pick, spec, m, dims, dtype, device_type, grad, forced)
        if plan._replace(reason="") not in seen:
            seen.add(plan._replace(reason=""))
            options.append((plan, candidate.cost))
    return options


def choose_plan(
    spec: KronSpec,
    m: int,
    dims: Sequence[int],
    dtype: torch.dtype = torch.float32,
    device_type: str = "cpu",
    requires_grad: bool = True,
) -> Plan:
    """The plan for m rows of inputs of widths `dims` (cached; see the module docstring).

    Args:
        spec: the structure of W.
        m: rows of the batch.
        dims: the input widths n_1 … n_k (Σ n_i = D).
        dtype: the computation's dtype.
        device_type: `"cpu"`, `"cuda"`, …
        requires_grad: whether a backward will follow.

    Returns:
        The `Plan` (the one `force_plan` imposes, inside its block).

    Example:
        >>> from hmfusion.ops import planner
        >>> spec = planner.KronSpec(4096, 4096, 64, 64, 64, 64)
        >>> planner.choose_plan(spec, 4096, (1024,) * 4).method
        'fused'
    """
    if torch.compiler.is_compiling():  # traced once per graph: no cache, no logging
        dims = tuple(int(d) for d in dims)
        plan = _choose(spec, m, dims, dtype, device_type, requires_grad)
        if _FORCED:
            return _apply_forced(plan, spec, m, dims, dtype, device_type, requires_grad)
        return plan
    # (the thread count too: row chunks and measured plans depend on it)
    key = (spec, m, tuple(dims), dtype, device_type, requires_grad, torch.get_num_threads())
    cached = _CACHE.get(key)
    if cached is not None:
        plan = cached
    elif _FORCED:  # (not measured, not cached: the next call outside the block decides)
        plan = _choose(spec, int(m), tuple(int(d) for d in dims), dtype, device_type, requires_grad)
    else:
        dims = tuple(int(d) for d in dims)
        plan = _choose(spec, int(m), dims, dtype, device_type, requires_grad)
        tuning_key = tuning.PlanKey(spec, int(m), dims, dtype, device_type, requires_grad)
        plan = tuning.tuned(plan, tuning_key, lambda: _options(plan, tuning_key), execute.run)
        if len(_CACHE) > 4096:
            _CACHE.clear()
        _CACHE[key] = plan
        logger.debug("plan for m=%d (key %s): %s", m, tuning_key.text(), plan)
    if _FORCED:  # (kept beside the plans, so that a forced call costs one lookup too)
        forced = _CACHE.get((key, _FORCED))
        if forced is None:
            dims = tuple(int(d) for d in dims)
            forced = _apply_forced(plan, spec, int(m), dims, dtype, device_type, requires_grad)
            _CACHE[(key, _FORCED)] = forced
        return forced
    return plan


def candidate_plans(
    spec: KronSpec,
    m: int,
    dims: Sequence[int],
    dtype: torch.dtype = torch.float32,
    device_type: str = "cpu",
    requires_grad: bool = True,
) -> list[tuple[Plan, float]]:
    """Every plan the planner considers for a key (the arguments of `choose_plan`), each as
    `force_plan` would run it, as `(plan, estimated multiply-add equivalents)` pairs.

    The cost model's own pick first, then the other candidates of
    [`costmodel.candidates`][hmfusion.ops.costmodel.candidates], cheapest estimate first. The
    measuring planner ([`hmfusion.ops.tuning`][hmfusion.ops.tuning]) times the first few;
    `hmfusion bench` times them all to report the planner's regret.

    Example:
        >>> from hmfusion.ops import planner
        >>> spec = planner.KronSpec(256, 256, 4, 4, 64, 64)
        >>> plans = planner.candidate_plans(spec, 256, (64,) * 4)
        >>> sorted({plan.method for plan, _ in plans})
        ['composite', 'fused', 'materialize']
    """
    dims = tuple(int(d) for d in dims)
    pick = _choose(spec, int(m), dims, dtype, device_type, requires_grad)
    return _options(pick, tuning.PlanKey(spec, int(m), dims, dtype, device_type, requires_grad))


def kron_concat(spec: KronSpec, xs: Sequence[Tensor], left: Factor, right: Factor) -> Tensor:
    """`cat(xs, -1) Wᵀ` for xs of shapes (m, n_i), Σ n_i = D, by the planner's choice.

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
        >>> from hmfusion.ops import planner
        >>> spec = planner.KronSpec(6, 8, 2, 2, 3, 4)
        >>> y = planner.kron_concat(spec, [torch.randn(5, 8)], torch.randn(2, 2),
        ...                         torch.randn(3, 4))
        >>> y.shape
        torch.Size([5, 6])
    """
    first = xs[0]
    autocast_dtype = kernels.autocast_dtype_for(first.device.type)
    if autocast_dtype is not None:  # cast, then the same call with autocast off
        xs = [execute.cast(x, autocast_dtype) for x in xs]  # type: ignore[misc]
        left, right = execute.cast(left, autocast_dtype), execute.cast(right, autocast_dtype)
        with torch.autocast(first.device.type, enabled=False):
            return kron_concat(spec, xs, left, right)
    grad = kernels.needs_grad(xs, left, right)
    plan = choose_plan(
        spec, first.shape[0], tuple([x.shape[1] for x in xs]), first.dtype, first.device.type, grad
    )
    if plan.upcast:  # (casts are differentiable: the gradients come back in the inputs' dtypes)
        xs = [x.float() for x in xs]
        left, right = execute.cast(left, torch.float32), execute.cast(right, torch.float32)
        return execute.run(plan, spec, xs, left, right).to(first.dtype)
    return execute.run(plan, spec, xs, left, right)
