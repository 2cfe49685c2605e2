"""The measuring planner: time the cost model's best candidates on this machine, keep the fastest.

As FFTW's planner with *wisdom*, cuDNN's benchmark mode and Triton's autotuner do: the cost model
([`candidates`][hmfusion.ops.costmodel.candidates]) ranks, a measurement decides, the result is
cached in the process and kept on disk, and it can be shipped or turned off.

**What is measured.** For a new plan key (W's structure, rows m, input widths, dtype, device,
grad) the cost model's own pick and the cheapest other candidates within `SPREAD` of the
cheapest estimate, at most `MAX_CANDIDATES` in all, each run as
[`force_plan`][hmfusion.ops.planner.force_plan] would run it, on fresh random inputs of the
exact shape on the actual device: forward+backward (`torch.autograd.grad`, so no `.grad` is
left anywhere) when grad is on, forward under `torch.no_grad()` otherwise. One untimed call of
each, then up to `REPEATS` timed rounds, the candidates interleaved; the fastest median wins.

**The bound.** At most `MAX_CANDIDATES` × (1 + `REPEATS`) = 24 calls, and no call starts once
`BUDGET_SECONDS` (2 s) have passed after the untimed round: a key costs at most that round,
plus 2 s, plus one call. Each measured key is logged at INFO on
`logging.getLogger("hmfusion.ops.tuning")` with its candidates' times and how long it took.

**Where it pays.** Only where the cost model predicts a call of at least `MIN_MEASURED_MACS`
(1e7 multiply-add equivalents, ≈ 0.1 ms): below that every fused candidate's fixed per-call
cost dominates, the candidates differ by less than a scheduler's jitter, and a program that
meets many small shapes (inference at varying batch sizes) would pay the 24 calls for each.
Above it a training run makes thousands of calls of one key, so the ≤ 24 calls of measuring are
repaid by any saving over a few percent. [`tune`][hmfusion.ops.tuning.tune] measures every key a
module meets, small ones included.

**Wisdom.** Measured plans are kept per device fingerprint (CPU model, the vector capability
and 16-bit GEMM support the cost model reads, torch's threads; GPU name and capability; torch
and hmfusion versions) in `wisdom-<digest>.json` in `$HMFUSION_WISDOM_DIR`, else
`$XDG_CACHE_HOME/hmfusion`, else `~/.cache/hmfusion`, written atomically. A second process on
the same machine plans a known key from it without measuring. A corrupt file, or one written
for another fingerprint, is ignored with a one-line warning; a remembered plan that is not a
candidate here any more (the compiled operator did not build, say) is not used.

**The switch.** `HMFUSION_TUNE=0` in the environment,
[`set_measuring`][hmfusion.ops.tuning.set_measuring] or the
[`measuring`][hmfusion.ops.tuning.measuring] context manager turn measuring off: then
the cost model decides, deterministically (wisdom is not read either). Measuring is also off
under `torch.use_deterministic_algorithms(True)`.

**Where it never runs** (the cost model's plan is used): while `torch.compile` traces, while
a CUDA graph is captured, inside `torch.func` transforms and under a `TorchDispatchMode` (such
as `FlopCounterMode`). Under `torch.distributed` (initialised, world size > 1) rank 0 decides
(from its wisdom or by measuring) and broadcasts the plan, so every rank runs the same one;
all ranks must then meet new keys in the same order, as data-parallel training does.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypeVar

import torch
from torch import Tensor, nn

from hmfusion.ops import costmodel
from hmfusion.ops.costmodel import KronSpec

__all__ = [
    "BUDGET_SECONDS",
    "MAX_CANDIDATES",
    "MIN_MEASURED_MACS",
    "REPEATS",
    "SPREAD",
    "PlanKey",
    "export_wisdom",
    "fingerprint",
    "import_wisdom",
    "measuring",
    "set_measuring",
    "tune",
    "wisdom_path",
]

logger = logging.getLogger(__name__)

#: At most this many candidates are measured per key (the cost model's pick among them).
MAX_CANDIDATES = 4
#: Candidates estimated above this multiple of the cheapest estimate are not measured.
SPREAD = 4.0
#: Timed rounds after the untimed one (each round calls every candidate once).
REPEATS = 5
#: No call starts once this many seconds of timed rounds have passed.
BUDGET_SECONDS = 2.0
#: Keys whose pick the cost model prices below this (≈ 0.1 ms a call) are not measured.
MIN_MEASURED_MACS = 1.0e7
_FORMAT = 1


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
_everywhere = False  # inside tune(): measure every new key, small ones included
_met: list[Any] | None = None  # inside tune(): the plans of the keys met
_busy = False  # measuring now (the candidates' calls plan nothing new, but never recurse)
_wisdom: dict[str, dict[str, dict[str, Any]]] = {}  # fingerprint digest → key text → entry


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
    if _busy:
        return "measuring already"
    if not (_everywhere or _switched_on()):
        return "measuring is off"
    if torch.are_deterministic_algorithms_enabled() and not _everywhere:
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


# the fingerprint and wisdom ------------------------------------------------------------------
@functools.cache
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.cache
def _version() -> str:
    try:
        return importlib.metadata.version("hmfusion")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def fingerprint(device_type: str = "cpu") -> dict[str, Any]:
    """What a measured plan depends on besides its key: the machine and the software.

    The CPU's model name, architecture and the capability the cost model reads (torch's vector
    dispatch level, whether 16-bit GEMMs run on oneDNN), torch's thread count, torch's and
    hmfusion's versions; on CUDA also the GPU's name and compute capability.

    Args:
        device_type: `"cpu"`, `"cuda"`, …

    Returns:
        A JSON-able dict; wisdom is used only where it matches exactly.

    Example:
        >>> from hmfusion import planner
        >>> sorted(planner.fingerprint())[:3]
        ['cpu', 'cpu_capability', 'device_type']
    """
    found: dict[str, Any] = {
        "device_type": device_type,
        "cpu": _cpu_model(),
        "machine": platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "half_gemms_fast": {
            str(k): v for k, v in sorted(costmodel.HALF_GEMMS_FAST.items(), key=str)
        },
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "hmfusion": _version(),
    }
    if device_type == "cuda" and torch.cuda.is_available():
        found["gpu"] = torch.cuda.get_device_name()
        found["gpu_capability"] = list(torch.cuda.get_device_capability())
    return found


def _digest(found: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(found, sort_keys=True).encode()).hexdigest()[:16]


def wisdom_path(device_type: str = "cpu") -> Path:
    """The file this machine's wisdom for `device_type` is kept in.

    `wisdom-<digest of the fingerprint>.json` in `$HMFUSION_WISDOM_DIR`, else
    `$XDG_CACHE_HOME/hmfusion`, else `~/.cache/hmfusion`.

    Args:
        device_type: `"cpu"`, `"cuda"`, …

    Returns:
        The path (the file may not exist yet).

    Example:
        >>> from hmfusion import planner
        >>> planner.wisdom_path().name.startswith("wisdom-")
        True
    """
    folder = os.environ.get("HMFUSION_WISDOM_DIR")
    if not folder:
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
        folder = os.path.join(cache, "hmfusion")
    return Path(folder) / f"wisdom-{_digest(fingerprint(device_type))}.json"


def _read(path: Path, expected: dict[str, Any]) -> dict[str, dict[str, Any]] | None:
    """The plans of a wisdom file written for `expected`; None (with a warning) otherwise."""
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValueError(f"not hmfusion wisdom format {_FORMAT}")
        plans = data["plans"]
        if not isinstance(plans, dict) or not all(isinstance(v, dict) for v in plans.values()):
            raise ValueError("'plans' is not a mapping of plans")
    except (OSError, ValueError, KeyError) as error:
        warnings.warn(f"hmfusion: ignoring wisdom file {path}: {error}", stacklevel=3)
        return None
    if data.get("fingerprint") != expected:
        warnings.warn(
            f"hmfusion: ignoring wisdom file {path}: written for another machine or version",
            stacklevel=3,
        )
        return None
    return plans


def _memory(device_type: str) -> tuple[dict[str, dict[str, Any]], dict[str, Any], Path]:
    """This fingerprint's wisdom in memory (read from its file on first use)."""
    found = fingerprint(device_type)
    digest = _digest(found)
    path = wisdom_path(device_type)
    if digest not in _wisdom:
        _wisdom[digest] = (_read(path, found) or {}) if path.exists() else {}
    return _wisdom[digest], found, path


def _write(path: Path, found: dict[str, Any], plans: dict[str, dict[str, Any]]) -> None:
    """Write a wisdom file atomically (a temporary file in its folder, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"format": _FORMAT, "fingerprint": found, "plans": plans}, indent=1)
    handle, temporary = tempfile.mkstemp(prefix=".wisdom-", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _remember(device_type: str, key: str, entry: dict[str, Any]) -> None:
    plans, found, path = _memory(device_type)
    plans[key] = entry
    try:
        on_disk = (_read(path, found) or {}) if path.exists() else {}
        _write(path, found, {**on_disk, **plans})  # (other processes' plans kept)
    except OSError as error:
        warnings.warn(f"hmfusion: could not save wisdom to {path}: {error}", stacklevel=2)


def export_wisdom(path: str | os.PathLike[str], device_type: str = "cpu") -> int:
    """Write this machine's wisdom (the plans measured for `device_type`) to `path`.

    Args:
        path: the file to write (JSON; replaced atomically).
        device_type: `"cpu"`, `"cuda"`, …

    Returns:
        The number of plans written.

    Example:
        >>> import os, tempfile
        >>> from hmfusion import planner
        >>> path = os.path.join(tempfile.mkdtemp(), "wisdom.json")
        >>> planner.export_wisdom(path) >= 0
        True
    """
    plans, found, _ = _memory(device_type)
    _write(Path(path), found, plans)
    return len(plans)


def import_wisdom(path: str | os.PathLike[str]) -> int:
    """Add the plans of a wisdom file written on a machine like this one to this process and
    to this machine's wisdom.

    A file written for another fingerprint (another CPU, thread count, torch or hmfusion
    version), or one that is not wisdom, is ignored with a warning.

    Args:
        path: a file written by [`export_wisdom`][hmfusion.ops.tuning.export_wisdom] (or a
            wisdom file from the cache folder).

    Returns:
        The number of plans imported (0 where the file was ignored).

    Raises:
        FileNotFoundError: `path` does not exist.

    Example:
        >>> import os, tempfile
        >>> from hmfusion import planner
        >>> path = os.path.join(tempfile.mkdtemp(), "wisdom.json")
        >>> count = planner.export_wisdom(path)
        >>> planner.import_wisdom(path) == count
        True
    """
    source = Path(path)
    if not source.exists():
        raise FileNotFoundError(f"no wisdom file at {source}")
    try:
        device_type = json.loads(source.read_text())["fingerprint"]["device_type"]
    except (OSError, ValueError, KeyError, TypeError):
        device_type = "cpu"  # (_read warns below)
    plans, found, target = _memory(str(device_type))
    imported = _read(source, found)
    if not imported:
        return 0
    plans.update(imported)
    with contextlib.suppress(OSError):
        _write(target, found, plans)
    return len(imported)


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
    """Each step's median time (untimed round, then ≤ REPEATS interleaved timed rounds within
    BUDGET_SECONDS), and the number of calls made."""
    first: list[float] = []
    for step in steps:  # (untimed: first-call costs; its time is used only if nothing else is)
        begin = time.perf_counter()
        step()
        _synchronize(device_type)
        first.append(time.perf_counter() - begin)
    times: list[list[float]] = [[] for _ in steps]
    calls, start = len(steps), time.perf_counter()
    for round_index in range(REPEATS):
        for offset in range(len(steps)):
            if time.perf_counter() - start > BUDGET_SECONDS:
                break
            index = (round_index + offset) % len(steps)
            begin = time.perf_counter()
            steps[index]()
            _synchronize(device_type)
            times[index].append(time.perf_counter() - begin)
            calls += 1
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
    global _busy
    begin = time.perf_counter()
    _busy = True
    try:
        medians, calls = _time(_steps(key, plans, apply), key.device_type)
    finally:
        _busy = False
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
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return decide()
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
    runs a plan (`hmfusion.ops.planner._apply`). Called by the planner once per new key.
    """
    if _blocked(key.device_type) is not None:
        return _note(pick)
    candidates = list(options())
    if len(candidates) < 2:
        return _note(pick)
    text = key.text()

    def decide() -> dict[str, Any] | None:
        remembered = _memory(key.device_type)[0].get(text)
        if remembered is not None:
            return remembered
        if not _everywhere and candidates[0][1] < MIN_MEASURED_MACS:
            return None
        entry = _measure(key, candidates, apply)
        if entry is not None:
            _remember(key.device_type, text, entry)
        return entry

    entry = _agree(decide)
    if entry is None:
        return _note(pick)
    for plan, _ in candidates:
        if _fields(plan) == {k: v for k, v in entry.items() if k in _fields(plan)}:
            reason = f"measured on this machine: {entry.get('measured', '?')}"
            return _note(plan._replace(reason=reason))  # type: ignore[attr-defined]
    return _note(pick)  # (a remembered plan that is not a candidate here any more)


def _note(plan: P) -> P:
    if _met is not None:
        _met.append(plan)
    return plan


def tune(module: nn.Module, *example_inputs: Any, grad: bool = True, **example_kwargs: Any) -> list:
    """Measure, ahead of time, the plans a module's calls on these inputs will use.

    Runs `module(*example_inputs, **example_kwargs)` once (under `torch.enable_grad()` when
    `grad`, else `torch.no_grad()`) with measuring on for every new key it meets, small ones
    included and whatever the switch says; the plans are kept as wisdom, so later processes on
    this machine reuse them. Plans this process had already chosen are chosen afresh.

    Args:
        module: any module whose forward runs hmfusion layers.
        *example_inputs: positional inputs of the shapes, dtype and device to tune for.
        grad: whether to tune the training plans (forward+backward) or the no-grad ones.
        **example_kwargs: keyword inputs of the forward.

    Returns:
        The plans chosen, one per hmfusion call of the forward, in call order.

    Example:
        >>> import torch
        >>> from hmfusion import HMConcatFusion, planner
        >>> fusion = HMConcatFusion([64, 64], n=64, p=8)
        >>> plans = planner.tune(fusion, [torch.randn(32, 64), torch.randn(32, 64)])
        >>> len(plans)
        1
    """
    from hmfusion.ops import planner  # (the planner calls this module: imported at use)

    global _everywhere, _met
    previous = (_everywhere, _met)
    _everywhere, _met = True, []
    planner._CACHE.clear()
    try:
        with torch.enable_grad() if grad else torch.no_grad():
            module(*example_inputs, **example_kwargs)
        return list(_met)
    finally:
        _everywhere, _met = previous
