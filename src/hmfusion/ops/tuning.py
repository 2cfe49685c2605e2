"""The measuring planner: time the cost model's best candidates on this machine, keep the fastest.

As FFTW's planner with *wisdom*, cuDNN's benchmark mode and Triton's autotuner do: the cost model
([`candidates`][hmfusion.ops.costmodel.candidates]) ranks, a measurement decides, the result is
cached in the process and kept on disk, and it can be shipped or turned off.

**What is measured.** For a new plan key (W's structure, rows m, input widths, dtype, device,
grad) the cost model's own pick and the cheapest other candidates within `SPREAD` of the
cheapest estimate, at most `MAX_CANDIDATES` in all, each run as
[`force_plan`][hmfusion.ops.planner.force_plan] would run it, on fresh random inputs of the
exact shape on the actual device: forward+backward (`torch.autograd.grad`, so no `.grad` is
left anywhere) when grad is on, forward under `torch.no_grad()` otherwise. `WARMUP_CALLS`
untimed calls of each, then up to `REPEATS` timed rounds, the candidates interleaved, each
sample as many calls as last `SAMPLE_SECONDS` (5 ms; at most `MAX_CALLS_PER_SAMPLE`); the
fastest median wins.

**The bound.** No sample starts once `BUDGET_SECONDS` (2 s) have passed after the untimed
round: a key costs at most that round (2 calls of each of ≤ `MAX_CANDIDATES` = 4
candidates), plus 2 s, plus one sample (5 ms, or one call where a call takes longer). Each
measured key is logged at INFO on `logging.getLogger("hmfusion.ops.tuning")` with its
candidates' times and how long it took.

**Where it pays.** Only where the cost model predicts a call of at least `MIN_MEASURED_MACS`
(1e7 multiply-add equivalents, ≈ 0.1 ms): below that every fused candidate's fixed per-call
cost dominates, the candidates differ by less than a scheduler's jitter, and a program that
meets many small shapes (inference at varying batch sizes) would pay that for each.
Above it a training run makes thousands of calls of one key, so the measuring is repaid by
any saving over a few percent. [`tune`][hmfusion.ops.tuning.tune] measures every key a
module meets, small ones included.

**Wisdom.** Measured plans are kept on disk per machine
([`hmfusion.ops.wisdom`][hmfusion.ops.wisdom]):
a second process on the same machine plans a known key from it without measuring; a
remembered plan that is not a candidate here any more (the compiled operator did not build,
say) is not used.

**The switch.** `HMFUSION_TUNE=0` in the environment,
[`set_measuring`][hmfusion.ops.tuning.set_measuring] or the
[`measuring`][hmfusion.ops.tuning.measuring] context manager turn measuring off: then
the cost model decides, deterministically (wisdom is not read either). Measuring is also off
under `torch.use_deterministic_algorithms(True)`.

**Where it never runs** (the cost model's plan is used): while `torch.compile` traces, while
a CUDA graph is captured, inside `torch.func` transforms and under a `TorchDispatchMode` (such
as `FlopCounterMode`). Under `torch.distributed` (initialised, world size > 1) a key is
measured only inside [`tune`][hmfusion.ops.tuning.tune], which every rank calls alike: rank 0
decides (from its wisdom or by measuring) and broadcasts the plan, so every rank runs the same
one. A key met first during training (ranks see different row counts in evaluation, say, so
they do not meet new keys in step) takes the cost model's plan on every rank: no rank waits on
a broadcast another rank never makes. Tune a distributed model before training.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple, Protocol, TypeVar

import torch
from torch import Tensor, nn

from hmfusion.ops.costmodel import KronSpec
from hmfusion.ops.wisdom import known, remember

__all__ = [
    "BUDGET_SECONDS",
    "MAX_CANDIDATES",
    "MIN_MEASURED_MACS",
    "MAX_CALLS_PER_SAMPLE",
    "REPEATS",
    "SAMPLE_SECONDS",
    "SPREAD",
    "WARMUP_CALLS",
    "PlanKey",
    "measuring",
    "set_measuring",
    "tune",
]

logger = logging.getLogger(__name__)

#: At most this many candidates are measured per key (the cost model's pick among them).
MAX_CANDIDATES = 4
#: Candidates estimated above this multiple of the cheapest estimate are not measured.
SPREAD = 4.0
#: Timed rounds after the untimed one (each round calls every candidate once).
REPEATS = 5
#: No sample starts once this many seconds of timed rounds have passed.
BUDGET_SECONDS = 2.0
#: Untimed calls of each candidate before the timed rounds.
WARMUP_CALLS = 2
#: A timed sample of a candidate lasts about this long (several calls of a fast one) ...
SAMPLE_SECONDS = 0.005
#: ... and holds at most this many calls.
MAX_CALLS_PER_SAMPLE = 16
#: Keys whose pick the cost model prices below this (≈ 0.1 ms a call) are not measured.
MIN_MEASURED_MACS = 1.0e7


class PlanKey(NamedTuple):
    """What a plan is chosen for: W's structure, rows, input widths, dtype, device, grad."""

    spec: KronSpec
    m: int
    dims: tuple[int, ...]
    dtype: torch.dtype
    device_type: str
    grad: bool

    def text(self) -> str:
        """The key as wisdom stores it (one JSON line)."""
        parts = [list(self.spec), self.m, list(self.dims), str(self.dtype).removeprefix("torch.")]
        return json.dumps([*parts, self.device_type, self.grad])


class _Plan(Protocol):
    @property
    def upcast(self) -> bool: ...

    def _asdict(self) -> dict[str, Any]: ...


P = TypeVar("P", bound=_Plan)
_enabled: bool | None = None  # None: HMFUSION_TUNE decides


class _ThreadState(threading.local):
    """Per thread: a `tune()` in one thread neither widens nor collects another's plans."""

    everywhere = False  # inside tune(): measure every new key, small ones included
    met: list[Any] | None = None  # inside tune(): the plans of the keys met
    busy = False  # measuring now (the candidates' calls plan nothing new, but never recurse)


_state = _ThreadState()


# the switch ----------------------------------------------------------------------------------
def set_measuring(enabled: bool) -> None:
    """Turn the measuring planner on or off for this process (overrides `HMFUSION_TUNE`).

    Off, the cost model alone decides each new plan, deterministically, and wisdom is not read.
    Plans already chosen in this process stay chosen.

    Args:
        enabled: whether new plan keys may be measured.

    Raises:
        TypeError: `enabled` is not a bool.

    Example:
        >>> from hmfusion import planner
        >>> planner.set_measuring(False)
        >>> planner.set_measuring(True)
    """
    global _enabled
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool, got {type(enabled).__name__} {enabled!r}")
    _enabled = enabled


@contextlib.contextmanager
def measuring(enabled: bool) -> Iterator[None]:
    """[`set_measuring`][hmfusion.ops.tuning.set_measuring] within a `with` block.

    Args:
        enabled: whether new plan keys may be measured inside the block.

    Raises:
        TypeError: `enabled` is not a bool.

    Example:
        >>> import torch
        >>> from hmfusion import HMConcatFusion, planner
        >>> fusion = HMConcatFusion([256, 256], n=512, p=16)
        >>> with planner.measuring(False):  # the cost model decides
        ...     fusion.plan(4096).method
        'fused'
    """
    global _enabled
    previous = _enabled
    set_measuring(enabled)
    try:
        yield
    finally:
        _enabled = previous


def _switched_on() -> bool:
    if _enabled is not None:
        return _enabled
    return os.environ.get("HMFUSION_TUNE", "1").strip().lower() not in ("0", "false", "off", "no")


def _blocked(device_type: str) -> str | None:
    """Why measuring cannot run here (None: it can)."""
    if _state.busy:
        return "measuring already"
    if not (_state.everywhere or _switched_on()):
        return "measuring is off"
    if torch.are_deterministic_algorithms_enabled() and not _state.everywhere:
        return "deterministic algorithms"
    if torch.compiler.is_compiling():
        return "torch.compile is tracing"
    if device_type == "meta":
        return "meta tensors"
    if torch.cuda.is_initialized() and torch.cuda.is_current_stream_capturing():
        return "a CUDA graph is being captured"
    if torch._C._functorch.peek_interpreter_stack() is not None:
        return "inside a torch.func transform"
    if torch.utils._python_dispatch._get_current_dispatch_mode() is not None:
        return "under a TorchDispatchMode"
    return None


# measuring -----------------------------------------------------------------------------------
def _factor(rows: int, cols: int, rank: int | None, terms: int, make: Callable) -> Any:
    if rank is not None:
        return (make(rows, rank), make(cols, rank))
    return make(terms, rows, cols) if terms > 1 else make(rows, cols)


def _steps(
    key: PlanKey, plans: Sequence[P], apply: Callable[..., Tensor]
) -> list[Callable[[], None]]:
    """One call per plan on fresh inputs of the key's shape (the user's RNG untouched)."""
    spec, device = key.spec, torch.device(key.device_type)
    generator = torch.Generator(device=device).manual_seed(0)

    def make(*size: int) -> Tensor:
        value = torch.randn(*size, generator=generator, device=device, dtype=key.dtype)
        return value.div_(max(size[-1], 1) ** 0.5).requires_grad_(key.grad)

    xs = [make(key.m, d) for d in key.dims]
    left = _factor(spec.p, spec.q, spec.rank_a, spec.terms, make)
    right = _factor(spec.s, spec.t, spec.rank_b, spec.terms, make)
    dy = torch.randn(key.m, spec.n, generator=generator, device=device, dtype=key.dtype)
    leaves = [*xs, *(left if isinstance(left, tuple) else (left,))]
    leaves += list(right if isinstance(right, tuple) else (right,))

    def cast(factor: Any) -> Any:
        return tuple(f.float() for f in factor) if isinstance(factor, tuple) else factor.float()

    def step(plan: P) -> Callable[[], None]:
        def call() -> None:
            with (
                torch.autocast(device.type, enabled=False)
                if device.type in ("cpu", "cuda")
                else contextlib.nullcontext()
            ):
                with torch.enable_grad() if key.grad else torch.no_grad():
                    if plan.upcast:
                        y = apply(plan, spec, [x.float() for x in xs], cast(left), cast(right))
                        y = y.to(key.dtype)
                    else:
                        y = apply(plan, spec, xs, left, right)
                    if key.grad:
                        torch.autograd.grad(y, leaves, dy, allow_unused=True)

        return call

    return [step(plan) for plan in plans]


def _synchronize(device_type: str) -> None:
    synchronize = getattr(getattr(torch, device_type, None), "synchronize", None)
    if device_type != "cpu" and synchronize is not None:
        synchronize()


def _time(steps: Sequence[Callable[[], None]], device_type: str) -> tuple[list[float], int]:
    """Each step's median time per call, and the number of calls made.

    Untimed round: `WARMUP_CALLS` calls of each step (first-call costs: allocations, BLAS and
    oneDNN set-up). Then ≤ REPEATS interleaved timed rounds within BUDGET_SECONDS; in each, a
    step's sample is as many calls as last about `SAMPLE_SECONDS` (at most
    `MAX_CALLS_PER_SAMPLE`), so that a call of well under a millisecond is not timed within the
    clock's and the scheduler's jitter (six single calls of a 0.6 ms layer misranked it).
    """
    first: list[float] = []
    calls = 0
    for step in steps:  # (untimed; the last call's time sizes the samples)
        for _ in range(WARMUP_CALLS):
            begin = time.perf_counter()
            step()
            _synchronize(device_type)
            calls += 1
        first.append(time.perf_counter() - begin)
    per_sample = [
        max(1, min(MAX_CALLS_PER_SAMPLE, round(SAMPLE_SECONDS / max(f, 1e-9)))) for f in first
    ]
    times: list[list[float]] = [[] for _ in steps]
    start = time.perf_counter()
    for round_index in range(REPEATS):
        for offset in range(len(steps)):
            if time.perf_counter() - start > BUDGET_SECONDS:
                break
            index = (round_index + offset) % len(steps)
            begin = time.perf_counter()
            for _ in range(per_sample[index]):
                steps[index]()
            _synchronize(device_type)
            times[index].append((time.perf_counter() - begin) / per_sample[index])
            calls += per_sample[index]
    medians = [statistics.median(t) if t else f for t, f in zip(times, first)]
    return medians, calls


def _label(plan: Any) -> str:
    return (
        f"{plan.method}/{plan.kernel}/{plan.order}"
        if plan.method == "fused"
        else (f"{plan.method}/{plan.order}")
    )


def _fields(plan: Any) -> dict[str, Any]:
    fields = dict(plan._asdict())
    fields.pop("reason", None)
    return fields


def _measure(
    key: PlanKey, options: Sequence[tuple[P, float]], apply: Callable[..., Tensor]
) -> dict[str, Any] | None:
    """Time the candidates worth it; the winner's wisdom entry (None: nothing to measure)."""
    cheapest = min(cost for _, cost in options)
    chosen = [options[0]] + [o for o in options[1:] if o[1] <= SPREAD * cheapest]
    plans = [plan for plan, _ in chosen[:MAX_CANDIDATES]]
    if len(plans) < 2:
        return None
    begin = time.perf_counter()
    _state.busy = True
    try:
        medians, calls = _time(_steps(key, plans, apply), key.device_type)
    except (RuntimeError, MemoryError) as error:  # (out of memory, say: the pick runs as planned)
        logger.warning("measuring %s failed (%s): the cost model's plan runs", key.text(), error)
        return None
    finally:
        _state.busy = False
    took = time.perf_counter() - begin
    best = min(range(len(plans)), key=medians.__getitem__)
    times = ", ".join(f"{_label(p)} {1e3 * t:.3g} ms" for p, t in zip(plans, medians))
    logger.info(
        "measured %d candidates for %s in %.0f ms (%d calls): %s; picked %s",
        len(plans), key.text(), 1e3 * took, calls, times, _label(plans[best]),
    )  # fmt: skip
    return {**_fields(plans[best]), "measured": times, "seconds": took, "calls": calls}


def _agree(decide: Callable[[], dict[str, Any] | None]) -> dict[str, Any] | None:
    """`decide()` on this process, or rank 0's decision on every rank of a process group."""
    if not _distributed():
        return decide()
    dist = torch.distributed
    box = [decide() if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def tuned(
    pick: P,
    key: PlanKey,
    options: Callable[[], Sequence[tuple[P, float]]],
    apply: Callable[..., Tensor],
) -> P:
    """The plan for a new key: remembered, measured where it pays, or the cost model's `pick`.

    `options()` lists the candidate plans with their estimated costs, `pick` first; `apply`
    runs a plan (`hmfusion.ops.execute.run`). Called by the planner once per new key.
    """
    if _blocked(key.device_type) is not None or (_distributed() and not _state.everywhere):
        return _note(pick)
    candidates = list(options())
    if len(candidates) < 2:
        return _note(pick)
    text = key.text()

    def decide() -> dict[str, Any] | None:
        remembered = known(key.device_type)[0].get(text)
        if remembered is not None and _matching(remembered, candidates) is not None:
            return remembered
        # (none, or a plan that is no candidate here any more: measured afresh, and replaced)
        if not _state.everywhere and candidates[0][1] < MIN_MEASURED_MACS:
            return None
        entry = _measure(key, candidates, apply)
        if entry is not None:
            remember(key.device_type, text, entry)
        return entry

    entry = _agree(decide)
    plan = None if entry is None else _matching(entry, candidates)
    if entry is None or plan is None:
        return _note(pick)
    reason = f"measured on this machine: {entry.get('measured', '?')}"
    return _note(plan._replace(reason=reason))  # type: ignore[attr-defined]


def _matching(entry: dict[str, Any], candidates: Sequence[tuple[P, float]]) -> P | None:
    """The candidate a wisdom entry names (None: it names none of them)."""
    for plan, _ in candidates:
        fields = _fields(plan)
        if fields == {k: v for k, v in entry.items() if k in fields}:
            return plan
    return None


def _distributed() -> bool:
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _note(plan: P) -> P:
    if _state.met is not None:
        _state.met.append(plan)
    return plan


def tune(module: nn.Module, *example_inputs: Any, grad: bool = True, **example_kwargs: Any) -> list:
    """Measure, ahead of time, the plans a module's calls on these inputs will use.

    Runs `module(*example_inputs, **example_kwargs)` once (under `torch.enable_grad()` when
    `grad`, else `torch.no_grad()`) with measuring on for every new key it meets, small ones
    included and whatever the switch says; the plans are kept as wisdom, so later processes on
    this machine reuse them. Plans this process had already chosen are chosen afresh: from
    wisdom where this machine has measured the key (with this code), else by measuring. Under
    `torch.distributed` every rank must call it alike (rank 0's plans are broadcast).

    Args:
        module: any module whose forward runs hmfusion layers.
        *example_inputs: positional inputs of the shapes, dtype and device to tune for.
        grad: whether to tune the training plans (forward+backward) or the no-grad ones.
        **example_kwargs: keyword inputs of the forward.

    Returns:
        The plans chosen, one per distinct key the forward met, in the order met.

    Example:
        >>> import torch
        >>> from hmfusion import HMConcatFusion, planner
        >>> fusion = HMConcatFusion([64, 64], n=64, p=8)
        >>> plans = planner.tune(fusion, [torch.randn(32, 64), torch.randn(32, 64)])
        >>> len(plans)
        1
    """
    from hmfusion.ops import planner  # (the planner calls this module: imported at use)

    previous = (_state.everywhere, _state.met)
    _state.everywhere, _state.met = True, []
    planner._CACHE.clear()
    try:
        with torch.enable_grad() if grad else torch.no_grad():
            module(*example_inputs, **example_kwargs)
        return list(_state.met)
    finally:
        _state.everywhere, _state.met = previous
