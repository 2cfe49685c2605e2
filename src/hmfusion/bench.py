"""Benchmark hmfusion's HM fusion against the alternatives users have, on a grid of shapes.

For each shape (m rows, k inputs of width D/k, output width n, A: p×q) and dtype, four ways of
computing ``cat(xs) Wᵀ`` with W = A ⊗ B (n×D) are timed, forward and forward+backward.
dense: cat + ``F.linear`` with a dense n×D weight (``nn.Linear`` on the concatenation);
kron: ``torch.kron(A, B)``, then ``F.linear`` (Kronecker adapters such as LoKr);
tinybig: tinybig 0.2.1's way, W fabricated from the flat parameters with an einsum (the outer
product of the two flat pieces, reshaped to n×D), then ``F.linear``;
hmfusion: ``HMConcatFusion`` (W never formed; the planner picks the contraction).

Methods are run interleaved (one call of each per round, starting method rotated), after
warm-up; each time is the median over rounds and each ratio ("×", speed-up over dense) divides
medians from the same run, so load from other processes hits every method alike. Forward runs
under ``torch.no_grad``; forward+backward calls ``y.backward(dy)`` with the inputs and the
parameters requiring grad. The memory floor is one copy of X plus one of Y (``torch.cat(xs)`` +
``y.clone()``), timed in the same rounds. Peak extra memory is the highest net bytes allocated
during one call, from the profiler's allocation events on CPU (``torch.cuda`` peak stats on
CUDA), next to the activations any implementation allocates: Y, plus the input gradients in
forward+backward. The ideal speed-up is max(p·t/(p + t), q·s/(q + s)) with s = n/p, t = D/q.

Writes ``results.json`` (every figure, the machine, the thread count and the target checks),
``results.md`` (the table, also printed) and ``speedup.png`` (speed-up vs ideal) to ``--out``.
``--quick`` is a small grid for CI (under a minute); the default is the full grid of
``benchmarks/RESULTS.md`` (several minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hmfusion import HMConcatFusion
from hmfusion.planner import ideal_speedup

__all__ = ["FULL_GRID", "QUICK_GRID", "Shape", "add_arguments", "main", "run"]

METHODS = ("dense", "kron", "tinybig", "hmfusion")
MODES = ("forward", "forward+backward")


class Shape(NamedTuple):
    """One grid point: m rows, k inputs of width D/k, output width n, A: p×q."""

    m: int
    D: int
    n: int
    p: int
    q: int
    k: int

    @property
    def label(self) -> str:
        return f"m={self.m} D={self.D} n={self.n} p={self.p} q={self.q} k={self.k}"


def _square(m: int, d: int, p: int, k: int = 4) -> Shape:
    return Shape(m, d, d, p, p, k)


#: The shapes of the performance targets (float32, 2 threads, forward+backward).
TARGET_SHAPES = {
    "compute_4096": _square(4096, 4096, 64),
    "compute_1024": _square(4096, 1024, 32),
    "small_batch_4096": _square(256, 4096, 64),
    "memory_bound": _square(65536, 256, 16),
}

FULL_GRID: tuple[Shape, ...] = (
    # D = n = 256
    _square(256, 256, 4), _square(256, 256, 16),
    _square(4096, 256, 4), _square(4096, 256, 16),
    _square(65536, 256, 4), _square(65536, 256, 16),
    # D = n = 1024
    _square(256, 1024, 8), _square(256, 1024, 32),
    _square(4096, 1024, 2), _square(4096, 1024, 8), _square(4096, 1024, 32),
    _square(4096, 1024, 512),
    _square(32768, 1024, 32),
    # D = n = 4096
    _square(256, 4096, 16), _square(256, 4096, 64),
    _square(4096, 4096, 16), _square(4096, 4096, 64),
    # rectangular, fewer / more inputs, unaligned input widths
    Shape(4096, 2048, 512, 16, 32, 2), Shape(4096, 1536, 1536, 32, 48, 3),
    Shape(4096, 1024, 1024, 32, 32, 1), Shape(1024, 1020, 1024, 32, 34, 3),
    Shape(4096, 4096, 1024, 64, 64, 8), Shape(2048, 4096, 4096, 128, 128, 2),
)

#: Three of the four target shapes (the 4096×4096 one takes ~1.5 s per dense step) and two
#: small ones, one of them in the regime where factoring saves little.
QUICK_GRID: tuple[Shape, ...] = (
    _square(4096, 1024, 32),
    _square(256, 4096, 64),
    _square(65536, 256, 16),
    _square(1024, 1024, 32, 2),
    _square(512, 512, 2),
)


# the methods -------------------------------------------------------------------------------
class _Case:
    """Inputs, parameters and the step functions of every method for one shape and dtype."""

    def __init__(self, shape: Shape, dtype: torch.dtype, device: torch.device, seed: int = 0):
        m, D, n, p, q, k = shape
        s, t = n // p, D // q
        generator = torch.Generator(device="cpu").manual_seed(seed)

        def rand(*size: int, scale: float = 1.0) -> Tensor:
            value = torch.rand(*size, generator=generator, dtype=torch.float32) * 2 - 1
            return (value * scale).to(device=device, dtype=dtype)

        widths = [D // k] * k
        widths[-1] += D - sum(widths)
        self.shape, self.widths = shape, widths
        self.xs = [rand(m, w) for w in widths]
        self.dy = rand(m, n)
        self.y_like = torch.empty(m, n, device=device, dtype=dtype)
        bound = 1 / math.sqrt(D)
        self.weight = nn.Parameter(rand(n, D, scale=bound))
        self.a = nn.Parameter(rand(p, q, scale=math.sqrt(bound)))
        self.b = nn.Parameter(rand(s, t, scale=math.sqrt(bound)))
        self.flat = nn.Parameter(rand(p * q + s * t, scale=math.sqrt(bound)))
        self.module = HMConcatFusion(widths, n=n, p=p, q=q, device=device, dtype=dtype)
        self.params = {
            "dense": [self.weight],
            "kron": [self.a, self.b],
            "tinybig": [self.flat],
            "hmfusion": list(self.module.parameters()),
        }

    def cat(self) -> Tensor:
        return torch.cat(self.xs, dim=-1)

    def forward(self, method: str) -> Tensor:
        m, D, n, p, q, k = self.shape
        if method == "dense":
            return F.linear(self.cat(), self.weight)
        if method == "kron":
            return F.linear(self.cat(), torch.kron(self.a, self.b))
        if method == "tinybig":
            # tinybig 0.2.1 (hm_reconciliation): split w, einsum the flat pieces, view as n×D.
            a, b = torch.split(self.flat.view(1, -1), [p * q, n * D // (p * q)], dim=1)
            weight = torch.einsum("pq,st->psqt", a, b).view(n, D)
            return F.linear(self.cat(), weight)
        return self.module(self.xs)

    def floor(self) -> None:
        """One copy of X and one of Y: the memory floor of any implementation."""
        self.cat()
        self.y_like.clone()

    def step(self, method: str, mode: str) -> Callable[[], None]:
        if method == "floor":
            return self.floor
        if mode == "forward":
            def forward_step() -> None:
                with torch.no_grad():
                    self.forward(method)
            return forward_step

        def train_step() -> None:
            self.forward(method).backward(self.dy)

        return train_step

    def prepare(self, method: str, mode: str) -> None:
        """Reset what a step leaves behind (gradients), outside the timed region."""
        grad = mode == "forward+backward" and method != "floor"
        for x in self.xs:
            x.grad = None
            x.requires_grad_(grad)
        for params in self.params.values():
            for param in params:
                param.grad = None

    def activation_bytes(self, mode: str) -> int:
        y = self.y_like.numel() * self.y_like.element_size()
        if mode == "forward":
            return y
        return y + sum(x.numel() * x.element_size() for x in self.xs)


# measurement -------------------------------------------------------------------------------
def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_interleaved(
    case: _Case, methods: Sequence[str], mode: str, repeats: int, warmup: int,
    device: torch.device,
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
            _synchronize(device)
            begin = time.perf_counter()
            steps[method]()
            _synchronize(device)
            times[method].append(time.perf_counter() - begin)
    return times


def _peak_extra_bytes(case: _Case, method: str, mode: str, device: torch.device) -> int | None:
    """Highest net bytes allocated during one step (CPU: profiler events; CUDA: peak stats)."""
    case.prepare(method, mode)
    step = case.step(method, mode)
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
        with _stderr_silenced():  # kineto logs every start and stop on the C++ stderr
            prof.start()
        try:
            step()
        finally:
            with _stderr_silenced():
                prof.stop()
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
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
    """Send file descriptor 2 to /dev/null (C++ logging bypasses ``sys.stderr``)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _dtype_supported(dtype: torch.dtype, device: torch.device) -> bool:
    try:
        x = torch.ones(4, 4, device=device, dtype=dtype, requires_grad=True)
        (x @ x).sum().backward()
        return True
    except (RuntimeError, TypeError):
        return False


def _measure(case: _Case, mode: str, repeats: int, warmup: int, device: torch.device) -> dict:
    shape = case.shape
    methods = ("floor",) + METHODS
    times = _time_interleaved(case, methods, mode, repeats, warmup, device)
    median = {method: statistics.median(values) for method, values in times.items()}
    dense = median["dense"]
    s, t = shape.n // shape.p, shape.D // shape.q
    plan = case.module.structure.plan(
        shape.m, case.widths, dtype=case.xs[0].dtype, device=case.xs[0].device,
        requires_grad=mode == "forward+backward",
    )
    memory = {method: _peak_extra_bytes(case, method, mode, device) for method in METHODS}
    activations = case.activation_bytes(mode)
    return {
        "mode": mode,
        "time_ms": {method: 1e3 * value for method, value in median.items()},
        "time_ms_all": {method: [1e3 * v for v in values] for method, values in times.items()},
        "speedup_vs_dense": {method: dense / median[method] for method in METHODS},
        "ideal_speedup": ideal_speedup(shape.p, shape.q, s, t),
        "floor_ms": 1e3 * median["floor"],
        "hmfusion_over_floor": median["hmfusion"] / median["floor"],
        "peak_extra_bytes": memory,
        "activation_bytes": activations,
        "hmfusion_memory_over_activations": (
            None if memory["hmfusion"] is None else memory["hmfusion"] / activations
        ),
        "plan": plan._asdict(),
    }


# targets -----------------------------------------------------------------------------------
def _find(results: list[dict], shape: Shape, dtype: str, mode: str) -> dict | None:
    for row in results:
        if tuple(row["shape"].values()) == tuple(shape) and row["dtype"] == dtype:
            for measured in row["modes"]:
                if measured["mode"] == mode:
                    return measured
    return None


def _check_targets(results: list[dict]) -> list[dict]:
    """The issue's targets (float32, forward+backward) on the grid points that were run."""
    checks = []
    minimum = {"compute_4096": 12.0, "compute_1024": 6.0, "small_batch_4096": 15.0,
               "memory_bound": 1.0}
    for name, shape in TARGET_SHAPES.items():
        row = _find(results, shape, "float32", "forward+backward")
        if row is None:
            continue
        speedup = row["speedup_vs_dense"]["hmfusion"]
        check = {"target": name, "shape": shape._asdict(), "hmfusion_vs_dense": speedup,
                 "required": minimum[name], "met": speedup >= minimum[name]}
        if name == "memory_bound":
            check["hmfusion_over_floor"] = row["hmfusion_over_floor"]
            check["floor_required"] = 3.0
            check["met"] = check["met"] and row["hmfusion_over_floor"] <= 3.0
        checks.append(check)
    worst = None
    for row in results:
        if row["dtype"] != "float32":
            continue
        for measured in row["modes"]:
            if measured["mode"] != "forward+backward":
                continue
            speedup = measured["speedup_vs_dense"]["hmfusion"]
            if worst is None or speedup < worst[0]:
                worst = (speedup, row["shape"])
    if worst is not None:
        checks.append({"target": "never_slower", "worst_hmfusion_vs_dense": worst[0],
                       "worst_shape": worst[1], "required": 0.95, "met": worst[0] >= 0.95})
    for row in results:
        shape = Shape(**row["shape"])
        if row["dtype"] != "float32" or shape.D != 4096 or shape.n != 4096:
            continue
        measured = _find(results, shape, "float32", "forward+backward")
        ratio = measured and measured["hmfusion_memory_over_activations"]
        if ratio is not None:
            checks.append({"target": "memory_D4096", "shape": row["shape"],
                           "hmfusion_memory_over_activations": ratio, "required": 1.10,
                           "met": ratio <= 1.10})
    return checks


# reports -----------------------------------------------------------------------------------
def _mib(value: int | None) -> str:
    return "–" if value is None else f"{value / 2**20:.0f}"


def markdown_table(report: dict) -> str:
    """The results as a Markdown table (one row per shape and dtype) and the target checks."""
    lines = [
        "| m | D | n | p | q | k | dtype | ideal × | fwd dense ms | fwd kron × | fwd tinybig × "
        "| fwd hmfusion × | f+b dense ms | f+b kron × | f+b tinybig × | f+b hmfusion × "
        "| f+b hmfusion / floor | f+b extra MiB dense / hmfusion / activations | plan (f+b) |",
        "|" + "---|" * 19,
    ]
    for row in report["results"]:
        shape = row["shape"]
        by_mode = {measured["mode"]: measured for measured in row["modes"]}
        fwd, train = by_mode.get("forward"), by_mode.get("forward+backward")
        cells = [str(shape[key]) for key in ("m", "D", "n", "p", "q", "k")]
        cells.append(row["dtype"])
        cells.append(f"{(fwd or train)['ideal_speedup']:.1f}")
        for measured in (fwd, train):
            if measured is None:
                cells += ["–"] * 4
                continue
            cells.append(f"{measured['time_ms']['dense']:.1f}")
            cells += [f"{measured['speedup_vs_dense'][m]:.2f}" for m in METHODS[1:]]
        if train is None:
            cells += ["–"] * 3
        else:
            memory = train["peak_extra_bytes"]
            cells.append(f"{train['hmfusion_over_floor']:.2f}")
            cells.append(f"{_mib(memory['dense'])} / {_mib(memory['hmfusion'])} / "
                         f"{_mib(train['activation_bytes'])}")
            plan = train["plan"]
            detail = (f"{plan['method']} {plan['order']} {plan['inputs']} {plan['chunk_rows']}"
                      if plan["method"] == "fused" else f"{plan['method']} {plan['order']}")
            cells.append(detail)
        lines.append("| " + " | ".join(cells) + " |")
    if report["targets"]:
        lines += ["", "| target | shape | measured | required | met |", "|---|---|---|---|---|"]
        for check in report["targets"]:
            if check["target"] == "never_slower":
                shape, measured = check["worst_shape"], f"worst {check['worst_hmfusion_vs_dense']:.2f}×"
                required = "≥ 0.95×"
            elif check["target"] == "memory_D4096":
                shape = check["shape"]
                measured = f"{check['hmfusion_memory_over_activations']:.2f}× activations"
                required = "≤ 1.10×"
            else:
                shape = check["shape"]
                measured = f"{check['hmfusion_vs_dense']:.2f}×"
                required = f"≥ {check['required']:.1f}×"
                if "hmfusion_over_floor" in check:
                    measured += f", {check['hmfusion_over_floor']:.2f}× floor"
                    required += ", ≤ 3× floor"
            label = Shape(**shape).label
            lines.append(f"| {check['target']} | {label} | {measured} | {required} | "
                         f"{'yes' if check['met'] else 'no'} |")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    """Speed-up over dense vs ideal speed-up, per shape (forward and forward+backward)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 6), dpi=110)
    styles = {("forward", "float32"): ("o", "tab:blue"),
              ("forward+backward", "float32"): ("s", "tab:red"),
              ("forward", "bfloat16"): ("^", "tab:cyan"),
              ("forward+backward", "bfloat16"): ("D", "tab:orange")}
    highest, lowest = 1.0, 1.0
    for (mode, dtype), (marker, color) in styles.items():
        xs, ys = [], []
        for row in report["results"]:
            if row["dtype"] != dtype:
                continue
            for measured in row["modes"]:
                if measured["mode"] == mode:
                    xs.append(measured["ideal_speedup"])
                    ys.append(measured["speedup_vs_dense"]["hmfusion"])
        if xs:
            ax.scatter(xs, ys, marker=marker, color=color, label=f"hmfusion {mode}, {dtype}",
                       alpha=0.8)
            highest = max(highest, *xs, *ys)
            lowest = min(lowest, *ys)
    targets = {tuple(shape): name for name, shape in TARGET_SHAPES.items()}
    for row in report["results"]:
        name = targets.get(tuple(row["shape"].values()))
        if name is None or row["dtype"] != "float32":
            continue
        for measured in row["modes"]:
            if measured["mode"] == "forward+backward":
                ax.annotate(name, (measured["ideal_speedup"],
                                   measured["speedup_vs_dense"]["hmfusion"]),
                            textcoords="offset points", xytext=(6, -10), fontsize=7)
    limit = highest * 1.5
    ax.plot([0.5, limit], [0.5, limit], color="grey", linestyle="--", label="ideal (y = x)")
    ax.axhline(1.0, color="black", linewidth=0.8, label="dense (y = 1)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(0.8, limit)
    ax.set_ylim(min(0.3, lowest * 0.8), limit)
    ax.set_xlabel("ideal speed-up  max(p·t/(p+t), q·s/(q+s))")
    ax.set_ylabel("measured speed-up over dense (median time ratio)")
    threads = report["machine"]["torch_threads"]
    ax.set_title(f"hmfusion vs dense F.linear, {threads} threads, {report['machine']['device']}"
                 " (labelled: the targets' shapes, f+b float32)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _machine(device: torch.device) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    # OpenMP waiting policy matters on a shared machine (see benchmarks/RESULTS.md)
    info["environment"] = {
        name: os.environ[name]
        for name in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MKL_NUM_THREADS")
        if name in os.environ
    }
    if hasattr(os, "getloadavg"):
        info["load_average_start"] = os.getloadavg()
    return info


# entry points ------------------------------------------------------------------------------
def run(
    shapes: Sequence[Shape],
    dtypes: Sequence[str] = ("float32",),
    *,
    modes: Sequence[str] = MODES,
    repeats: int = 7,
    warmup: int = 2,
    device: str = "cpu",
    progress: bool = False,
) -> dict:
    """Measure every shape × dtype × mode; returns the report written to ``results.json``."""
    torch_device = torch.device(device)
    report = {"machine": _machine(torch_device),
              "config": {"repeats": repeats, "warmup": warmup, "modes": list(modes),
                         "dtypes": list(dtypes),
                         "date": datetime.datetime.now().isoformat(timespec="seconds")},
              "results": [], "skipped": []}
    jobs = [(shape, dtype) for shape in shapes for dtype in dtypes]
    iterator = jobs
    if progress:
        from tqdm import tqdm

        iterator = tqdm(jobs, desc="hmfusion bench", unit="shape")
    for shape, dtype_name in iterator:
        dtype = getattr(torch, dtype_name)
        if not _dtype_supported(dtype, torch_device):
            report["skipped"].append({"shape": shape._asdict(), "dtype": dtype_name,
                                      "why": "dtype not supported on this device"})
            continue
        case = _Case(shape, dtype, torch_device)
        row = {"shape": shape._asdict(), "dtype": dtype_name, "modes": []}
        for mode in modes:
            row["modes"].append(_measure(case, mode, repeats, warmup, torch_device))
        report["results"].append(row)
        del case
    if hasattr(os, "getloadavg"):
        report["machine"]["load_average_end"] = os.getloadavg()
    report["targets"] = _check_targets(report["results"])
    return report


def _parse_shape(text: str) -> Shape:
    try:
        values = [int(v) for v in text.split(",")]
        shape = Shape(*values)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"a shape is six comma-separated ints m,D,n,p,q,k; got {text!r}"
        ) from None
    if min(shape) < 1 or shape.n % shape.p or shape.D % shape.q or shape.k > shape.D:
        raise argparse.ArgumentTypeError(
            f"shape {text!r}: need positive values, p | n, q | D and k ≤ D"
        )
    return shape


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="small grid for CI, float32 only, fewer repeats (under a minute)")
    parser.add_argument("--shape", type=_parse_shape, action="append", metavar="m,D,n,p,q,k",
                        help="run this shape instead of the grid (repeatable)")
    parser.add_argument("--dtypes", default=None,
                        help="comma-separated dtypes (default: float32,bfloat16; "
                             "float32 with --quick); unsupported ones are skipped")
    parser.add_argument("--modes", default=",".join(MODES),
                        help=f"comma-separated modes (default: {','.join(MODES)})")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed rounds per mode (default 7; 3 with --quick)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed rounds first (default 2; 1 with --quick)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--out", type=Path, default=Path("bench-out"),
                        help="output folder for results.json, results.md, speedup.png")
    parser.add_argument("--no-plot", action="store_true", help="skip speedup.png")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bar and no table on stdout")


def main(args: argparse.Namespace) -> int:
    if args.threads < 1:
        raise SystemExit("--threads must be at least 1")
    shapes = args.shape or (QUICK_GRID if args.quick else FULL_GRID)
    dtypes = (args.dtypes or ("float32" if args.quick else "float32,bfloat16")).split(",")
    for name in dtypes:
        if not isinstance(getattr(torch, name, None), torch.dtype):
            raise SystemExit(f"--dtypes: unknown dtype {name!r}")
    modes = args.modes.split(",")
    for mode in modes:
        if mode not in MODES:
            raise SystemExit(f"--modes: unknown mode {mode!r} (choose from {', '.join(MODES)})")
    repeats = args.repeats or (3 if args.quick else 7)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        report = run(shapes, dtypes, modes=modes, repeats=repeats, warmup=warmup,
                     device=args.device, progress=not args.quiet)
    finally:
        torch.set_num_threads(threads)
    args.out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(report)
    (args.out / "results.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "results.md").write_text(table)
    if not args.no_plot:
        plot(report, args.out / "speedup.png")
    if not args.quiet:
        print(table)
    return 0
