"""The benchmark engine behind `hmfusion bench`: cases, methods, timing, competing load.

For each shape (m rows, k inputs of width D/k, output width n, A: p×q) and dtype, the ways a
user can compute `cat(xs) Wᵀ` with W = A ⊗ B (n×D) are timed (`METHODS`):

- `dense`: cat + `F.linear` with a dense n×D weight (`nn.Linear` on the concatenation);
- `kron`: `torch.kron(A, B)`, then `F.linear` (Kronecker adapters such as LoKr);
- `tinybig`: tinybig 0.2.1's way, W fabricated from the flat parameters with an einsum;
- `einsum`: the five-line code `X = cat(xs).view(m, q, t)`,
  `torch.einsum("pq,mqt,st->mps", A, X, B)`, autograd's backward;
- `two_matmul`: the same with `A @ (X @ B.T)`;
- `compiled`: `torch.compile` of the two-matmul code (`dynamic=True`, compiled afresh for
  each shape, dtype and mode on an empty dynamo cache; compile time excluded, reported
  separately);
- `hmfusion`: `HMConcatFusion` (W never formed; the planner picks the kernel).

In the quiet rounds the planner's candidates (`hmfusion.ops.planner.candidate_plans`, those the
cost model prices within `PLAN_SPREAD` of its cheapest) also run, each forced with `force_plan`:
a row's `regret` is the time of the plan hmfusion ran, forced like the others, over the fastest
forced plan's (1 where the planner's plan is the fastest). Both are timed alike, in the same
rounds: hmfusion's own time follows another method in the rotation, which at sub-millisecond
calls can differ from the same plan forced by more than the plans differ.

Methods are run interleaved (one call of each per round, the starting method rotated), after
warm-up; a time is the median over rounds and a ratio divides medians of the same run, so load
from other processes hits every method alike. Forward runs under `torch.no_grad`;
forward+backward calls `y.backward(dy)` with the inputs and parameters requiring grad. The
memory floor is one copy of X plus one of Y, timed in the same rounds. Peak extra memory is the
highest net bytes allocated during one step (CPU: the profiler's allocation events; CUDA: peak
stats), next to the activations any implementation allocates (Y, plus the input gradients in
forward+backward). With a competing load (`busy_processes`) every case is measured a
second time while N busy processes run, giving the loaded table.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from hmfusion.apps.bench.cases import (
    FULL_GRID,
    MAIN_JOB_SHAPE,
    METHODS,
    MODES,
    PLAN_SPREAD,
    QUICK_GRID,
    QUICK_METHODS,
    SIMPLE_METHODS,
    TARGET_SHAPES,
    Mode,
    Shape,
    _Case,
    plan_label,
)
from hmfusion.ops import costmodel, native, wisdom
from hmfusion.ops.cpuinfo import cpu_model
from hmfusion.ops.kernels import ideal_speedup

__all__ = [
    "FULL_GRID",
    "MAIN_JOB_SHAPE",
    "METHODS",
    "MODES",
    "PLAN_SPREAD",
    "QUICK_GRID",
    "QUICK_METHODS",
    "SIMPLE_METHODS",
    "TARGET_SHAPES",
    "Shape",
    "busy_processes",
    "gemm_rate",
    "run",
]

#: The most competing processes `--load` accepts, per CPU.
MAX_LOAD_PER_CPU = 4
#: A case is left out when one forward+backward call of its dense baseline is predicted to take
#: longer than this (`--max-call-seconds`): 16-bit GEMMs on a CPU without instructions for
#: them run at ≈ 1 % of float32's rate (`hmfusion.ops.costmodel.half_gemms_fast`), and dense
#: bfloat16 at m = D = n = 4096 would take ≈ 7 minutes a call there.
MAX_CALL_SECONDS = 10.0


# measurement -------------------------------------------------------------------------------
def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_interleaved(
    case: _Case, methods: Sequence[str], mode: Mode, repeats: int, warmup: int
) -> dict[str, list[float]]:
    steps = {method: case.step(method, mode) for method in methods}
    for _ in range(warmup):
        for method in methods:
            case.prepare(method, mode)
            steps[method]()
    times: dict[str, list[float]] = {method: [] for method in methods}
    for round_index in range(repeats):
        start = round_index % len(methods)
        for method in list(methods[start:]) + list(methods[:start]):
            case.prepare(method, mode)
            _synchronize(case.device)
            begin = time.perf_counter()
            steps[method]()
            _synchronize(case.device)
            times[method].append(time.perf_counter() - begin)
    return times


def _peak_extra_bytes(case: _Case, method: str, mode: Mode) -> int | None:
    """Highest net bytes allocated during one step (CPU: profiler events; CUDA: peak stats)."""
    case.prepare(method, mode)
    step = case.step(method, mode)
    device = case.device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    if device.type != "cpu":
        return None
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    try:
        # kineto and the allocator log on the C++ stderr around profiling (Python errors still
        # propagate as exceptions)
        with _stderr_silenced():
            prof.start()
            try:
                step()
            finally:
                prof.stop()
        results: Any = prof.profiler.kineto_results  # type: ignore[union-attr]  # (private)
        events: list[Any] = [e for e in results.events() if e.name() == "[memory]"]
    except (AttributeError, RuntimeError):  # the profiler's internals moved
        return None
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        if str(event.device_type()).endswith("CPU"):  # DeviceType.CPU
            live += event.nbytes()
            peak = max(peak, live)
    return peak


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null (C++ logging bypasses `sys.stderr`)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


# A busy process: spins until its parent goes away (so it never outlives the benchmark, even
# one killed with SIGKILL) or an hour has passed.
_BUSY_LOOP = (
    "import os, time\n"
    "parent, end = os.getppid(), time.monotonic() + 3600\n"
    "while os.getppid() == parent and time.monotonic() < end:\n"
    "    for _ in range(200000):\n"
    "        pass\n"
)


@contextlib.contextmanager
def busy_processes(count: int) -> Iterator[list[subprocess.Popen]]:
    """Run `count` competing CPU-bound processes inside the `with` block.

    They are terminated (then killed) when the block ends, on an exception or Ctrl-C too, and
    each exits by itself when its parent dies.

    Args:
        count: how many, 0 to `MAX_LOAD_PER_CPU` × the CPU count.

    Raises:
        ValueError: count out of that range.

    Example:
        >>> from hmfusion.apps.bench.engine import busy_processes
        >>> with busy_processes(1) as children:
        ...     len(children)
        1
    """
    limit = MAX_LOAD_PER_CPU * (os.cpu_count() or 1)
    if not 0 <= count <= limit:
        raise ValueError(f"count must be between 0 and {limit}, got {count}")
    children: list[subprocess.Popen] = []
    try:
        for _ in range(count):
            children.append(
                subprocess.Popen(
                    [sys.executable, "-c", _BUSY_LOOP],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        if children:
            time.sleep(0.3)  # let them start spinning
        yield children
    finally:
        for child in children:
            if child.poll() is None:
                child.terminate()
        for child in children:
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def _measure(
    case: _Case, methods: Sequence[str], mode: Mode, repeats: int, warmup: int, memory: bool
) -> dict[str, Any]:
    shape = case.shape
    forced = case.forced_plans(mode) if memory else []  # (quiet rows only)
    times = _time_interleaved(case, ("floor", *methods, *forced), mode, repeats, warmup)
    median = {method: statistics.median(values) for method, values in times.items()}
    plan_times = {name.removeprefix("plan:"): median.pop(name) for name in forced}
    for name in forced:
        times.pop(name)
    fastest = min(plan_times, key=plan_times.__getitem__) if plan_times else None
    dense = median["dense"]
    s, t = shape.n // shape.p, shape.D // shape.q
    plan = case.module.structure.plan(
        shape.m,
        case.widths,
        dtype=case.xs[0].dtype,
        device=case.xs[0].device,
        requires_grad=mode == "forward+backward",
    )
    chosen = plan_label(plan)  # (the plan hmfusion ran, also timed forced)
    speedups = {method: dense / median[method] for method in methods}
    simple = [name for name in SIMPLE_METHODS if name in speedups]
    best_simple: str | None = max(simple, key=lambda name: speedups[name]) if simple else None
    peak = {method: _peak_extra_bytes(case, method, mode) for method in methods} if memory else None
    activations = case.activation_bytes(mode)
    hmfusion_peak = None if peak is None else peak.get("hmfusion")
    return {
        "mode": mode,
        "time_ms": {method: 1e3 * value for method, value in median.items()},
        "time_ms_all": {method: [1e3 * v for v in values] for method, values in times.items()},
        "speedup_vs_dense": speedups,
        "best_simple": best_simple,
        "hmfusion_vs_best_simple": (
            None if best_simple is None else median[best_simple] / median["hmfusion"]
        ),
        "ideal_speedup": ideal_speedup(shape.p, shape.q, s, t),
        "floor_ms": 1e3 * median["floor"],
        "hmfusion_over_floor": median["hmfusion"] / median["floor"],
        "peak_extra_bytes": peak,
        "activation_bytes": activations,
        "hmfusion_memory_over_activations": (
            None if hmfusion_peak is None else hmfusion_peak / activations
        ),
        "compile_seconds": case.compile_seconds.get(mode),
        "plan": plan._asdict(),
        "plan_time_ms": {name: 1e3 * value for name, value in plan_times.items()},
        "fastest_plan": fastest,
        "chosen_plan": chosen,
        "regret": (
            None
            if fastest is None
            else plan_times.get(chosen, median["hmfusion"]) / plan_times[fastest]
        ),
    }


def gemm_rate(dtype: torch.dtype, device: torch.device | str = "cpu") -> float:
    """Multiply-adds per second of a 256 × 256 × 256 matmul in `dtype` (one untimed call, then
    the best of at least three timed ones and ≈ 50 ms).

    What `run` predicts a dense baseline's time from (its GEMMs are larger, and no slower).

    Args:
        dtype: a floating dtype.
        device: a torch device.

    Returns:
        The rate in multiply-adds per second.

    Example:
        >>> import torch
        >>> from hmfusion.apps.bench.engine import gemm_rate
        >>> gemm_rate(torch.float32) > 1e8
        True
    """
    device = torch.device(device)
    a = torch.ones(256, 256, dtype=dtype, device=device)
    a @ a  # (the first call pays the allocation and the BLAS set-up)
    _synchronize(device)
    best, calls = math.inf, 0
    start = time.perf_counter()
    while time.perf_counter() - start < 0.05 or calls < 3:
        begin = time.perf_counter()
        a @ a
        _synchronize(device)
        best, calls = min(best, time.perf_counter() - begin), calls + 1
    return 256**3 / best


def _dense_seconds(shape: Shape, modes: Sequence[Mode], rate: float) -> float:
    """The predicted time of one call of the dense baseline in the costliest mode."""
    return (3 if "forward+backward" in modes else 1) * shape.m * shape.n * shape.D / rate


def _too_slow(
    shape: Shape,
    dtype: torch.dtype,
    modes: Sequence[Mode],
    rates: dict[str, float],
    max_call_seconds: float | None,
    device_type: str = "cpu",
) -> str | None:
    """Why a case is left out (a 16-bit case on a CPU without fast 16-bit GEMMs whose dense call
    is predicted over the budget), or None."""
    if max_call_seconds is None or costmodel.half_gemms_fast(dtype, device_type):
        return None
    name = str(dtype).removeprefix("torch.")
    rate = rates[name]
    seconds = _dense_seconds(shape, modes, rate)
    if seconds <= max_call_seconds:
        return None
    return (
        f"dense would take ≈ {seconds:.0f} s a call (a {name} matmul runs "
        f"{rate / 1e9:.2g} GMAC/s here: this CPU has no instructions for 16-bit GEMMs), "
        f"over --max-call-seconds {max_call_seconds:g}"
    )


# entry point -------------------------------------------------------------------------------
def _machine(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "native_kernel": native.status(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "fast_half_gemms": {
            name: costmodel.half_gemms_fast(getattr(torch, name), device.type)
            for name in ("bfloat16", "float16")
        },
    }
    # OpenMP waiting policy matters on a shared machine (see benchmarks/RESULTS.md)
    info["environment"] = {
        name: os.environ[name]
        for name in (
            "OMP_NUM_THREADS",
            "OMP_WAIT_POLICY",
            "GOMP_SPINCOUNT",
            "MKL_NUM_THREADS",
            "HMFUSION_NATIVE",
            "HMFUSION_TUNE",
            "HMFUSION_WISDOM_DIR",
        )
        if name in os.environ
    }
    # the measuring planner's remembered plans the run started from (none: it measures anew)
    info["wisdom_file"] = str(wisdom.wisdom_path(device.type))
    info["wisdom_plans_at_start"] = len(wisdom.known(device.type)[0])
    if hasattr(os, "getloadavg"):
        info["load_average_start"] = os.getloadavg()
    return info


def run(
    shapes: Sequence[Shape],
    dtypes: Sequence[str] = ("float32",),
    *,
    methods: Sequence[str] = METHODS,
    modes: Sequence[Mode] = MODES,
    repeats: int = 7,
    warmup: int = 2,
    device: str = "cpu",
    load: int = 0,
    progress: bool = False,
    max_call_seconds: float | None = MAX_CALL_SECONDS,
) -> dict[str, Any]:
    """Measure every shape × dtype × mode, quiet and (with `load`) under competing load.

    Args:
        shapes: the grid.
        dtypes: dtype names (`"float32"`, `"bfloat16"`, …); unsupported ones are skipped.
        methods: a subset of `METHODS` (`dense` and `hmfusion` always run).
        modes: a subset of `MODES`.
        repeats: timed rounds (≥ 1).
        warmup: untimed rounds first (≥ 0).
        device: a torch device string.
        load: competing busy processes for the loaded measurement (0: none).
        progress: show a progress bar.
        max_call_seconds: leave out (into `skipped`, with the reason) each 16-bit case on a
            CPU without fast 16-bit GEMMs whose dense call is predicted to take longer
            (m·n·D multiply-adds, ×3 with a backward, at `gemm_rate`); None: no limit.

    Returns:
        The report written to `results.json`: `machine`, `config`, `results` (quiet
        rows), `loaded` (rows under load) and `skipped`
        (`hmfusion.apps.bench.report.check_targets` adds `targets`).
    """
    torch_device = torch.device(device)
    chosen = [m for m in METHODS if m in methods or m in ("dense", "hmfusion")]
    report: dict[str, Any] = {
        "machine": _machine(torch_device),
        "config": {
            "repeats": repeats,
            "warmup": warmup,
            "modes": list(modes),
            "dtypes": list(dtypes),
            "methods": chosen,
            "load": load,
            "max_call_seconds": max_call_seconds,
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
        },
        "results": [],
        "loaded": [],
        "skipped": [],
    }
    supported = [name for name in dtypes if _dtype_supported(getattr(torch, name), torch_device)]
    rates = {name: gemm_rate(getattr(torch, name), torch_device) for name in supported}
    report["machine"]["gemm_gmacs"] = {name: rate / 1e9 for name, rate in rates.items()}
    jobs = [(shape, dtype) for shape in shapes for dtype in dtypes]
    iterator: Any = jobs
    if progress:
        from tqdm import tqdm

        iterator = tqdm(jobs, desc="hmfusion bench", unit="case")
    for shape, dtype_name in iterator:
        dtype = getattr(torch, dtype_name)
        why = (
            "dtype not supported on this device"
            if dtype_name not in rates
            else _too_slow(shape, dtype, modes, rates, max_call_seconds, torch_device.type)
        )
        if why is not None:
            report["skipped"].append({"shape": shape._asdict(), "dtype": dtype_name, "why": why})
            continue
        case = _Case(shape, dtype, torch_device)
        quiet = {"shape": shape._asdict(), "dtype": dtype_name, "modes": []}
        loaded = {"shape": shape._asdict(), "dtype": dtype_name, "modes": [], "load": load}
        for mode in modes:
            # hmfusion's first call (where the planner measures its candidates) before
            # torch.compile, whose compile workers start in the background
            case.prepare("hmfusion", mode)
            case.step("hmfusion", mode)()
            if "compiled" in chosen:
                case.compile(mode)
            quiet["modes"].append(_measure(case, chosen, mode, repeats, warmup, memory=True))
            if load:
                with busy_processes(load):
                    loaded["modes"].append(
                        _measure(case, chosen, mode, repeats, warmup, memory=False)
                    )
        report["results"].append(quiet)
        if load:
            report["loaded"].append(loaded)
        del case
    native.available()  # (status after the run: the first hmfusion call builds the kernel)
    report["machine"]["native_kernel"] = native.status()
    if hasattr(os, "getloadavg"):
        report["machine"]["load_average_end"] = os.getloadavg()
    return report


def _dtype_supported(dtype: torch.dtype, device: torch.device) -> bool:
    try:
        x = torch.ones(4, 4, device=device, dtype=dtype, requires_grad=True)
        (x @ x).sum().backward()
        return True
    except (RuntimeError, TypeError):
        return False
