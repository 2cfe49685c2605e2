"""The cases of `hmfusion bench`: the grid of shapes and, per shape and dtype, every method.

The methods (`METHODS`) are the ways a user can compute `cat(xs) Wᵀ` with W = A ⊗ B (n×D);
[`hmfusion.apps.bench.engine`][hmfusion.apps.bench.engine] times them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hmfusion import HMConcatFusion
from hmfusion.ops.planner import Plan, candidate_plans
from hmfusion.planner import force_plan

__all__ = [
    "COMPILE_BACKEND",
    "FULL_GRID",
    "MAIN_JOB_SHAPE",
    "METHODS",
    "MODES",
    "QUICK_GRID",
    "QUICK_METHODS",
    "SIMPLE_METHODS",
    "TARGET_SHAPES",
    "Shape",
]

Method = Literal["dense", "kron", "tinybig", "einsum", "two_matmul", "compiled", "hmfusion"]
Mode = Literal["forward", "forward+backward"]
METHODS: tuple[Method, ...] = (
    "dense",
    "kron",
    "tinybig",
    "einsum",
    "two_matmul",
    "compiled",
    "hmfusion",
)
#: What a user writes instead of hmfusion (the targets compare against the best of these).
SIMPLE_METHODS: tuple[Method, ...] = ("einsum", "two_matmul", "compiled")
#: `--quick` leaves out the two baselines that form W (as slow as dense, and costly at 4096²).
QUICK_METHODS: tuple[Method, ...] = ("dense", "einsum", "two_matmul", "compiled", "hmfusion")
MODES: tuple[Mode, ...] = ("forward", "forward+backward")
#: Forced plans are timed beside the planner's pick where the cost model prices them within
#: this multiple of its cheapest candidate (the regret column: pick / fastest forced plan).
PLAN_SPREAD = 10.0
#: The backend of the `compiled` baseline (tests use `"eager"`: dynamo's caching, no C++).
COMPILE_BACKEND = "inductor"


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
        """The shape as one line of a table, e.g. `m=4096 D=1024 n=1024 p=32 q=32 k=4`."""
        return f"m={self.m} D={self.D} n={self.n} p={self.p} q={self.q} k={self.k}"


def _square(m: int, d: int, p: int, k: int = 4) -> Shape:
    return Shape(m, d, d, p, p, k)


#: The main job's own fusion layer: 128 rows, six inputs of 64 → 64 outputs, p = q = 8.
MAIN_JOB_SHAPE = Shape(128, 384, 64, 8, 8, 6)

#: The shapes of the performance targets (float32, 2 threads, forward+backward; the speed-up
#: each must reach is in `hmfusion.apps.bench.report`).
TARGET_SHAPES = {
    "compute_1024": _square(4096, 1024, 32),
    "small_batch_4096": _square(256, 4096, 64),
    "compute_4096": _square(4096, 4096, 64),
    "memory_bound": _square(65536, 256, 16),
}
FULL_GRID: tuple[Shape, ...] = (
    # D = n = 256
    _square(256, 256, 4),
    _square(256, 256, 16),
    _square(4096, 256, 4),
    _square(4096, 256, 16),
    _square(65536, 256, 4),
    _square(65536, 256, 16),
    # D = n = 1024
    _square(256, 1024, 8),
    _square(256, 1024, 32),
    _square(4096, 1024, 2),
    _square(4096, 1024, 8),
    _square(4096, 1024, 32),
    _square(4096, 1024, 512),
    _square(32768, 1024, 32),
    # D = n = 4096
    _square(256, 4096, 16),
    _square(256, 4096, 64),
    _square(4096, 4096, 16),
    _square(4096, 4096, 64),
    # rectangular, fewer / more inputs, unaligned input widths, the main job's layer
    Shape(4096, 2048, 512, 16, 32, 2),
    Shape(4096, 1536, 1536, 32, 48, 3),
    Shape(4096, 1024, 1024, 32, 32, 1),
    Shape(1024, 1020, 1024, 32, 34, 3),
    Shape(4096, 4096, 1024, 64, 64, 8),
    Shape(2048, 4096, 4096, 128, 128, 2),
    MAIN_JOB_SHAPE,
)

#: The four target shapes, the small (256, 256, 256, 4) layer and the main job's layer.
QUICK_GRID: tuple[Shape, ...] = (
    *TARGET_SHAPES.values(),
    _square(256, 256, 4),
    MAIN_JOB_SHAPE,
)


# the methods -------------------------------------------------------------------------------
def _two_matmul(x: Tensor, a: Tensor, b: Tensor, q: int, t: int) -> Tensor:
    """The five-line code: X viewed (m, q, t), then A (X Bᵀ)."""
    m = x.shape[0]
    return (a @ (x.view(m, q, t) @ b.T)).reshape(m, -1)


def _compile_two_matmul() -> Callable[..., Tensor]:
    """A fresh `torch.compile` of `_two_matmul` on an empty dynamo cache.

    Dynamo caches compiled graphs per code object, not per `torch.compile` wrapper: wrappers
    of one function share one cache, and after `recompile_limit` (8) dtype, shape or grad
    variants it silently runs the function eagerly. So each (case, mode) resets dynamo first
    and owns at most one variant.
    """
    torch._dynamo.reset()
    return torch.compile(_two_matmul, dynamic=True, backend=COMPILE_BACKEND)


def plan_label(plan: Plan) -> str:
    """A plan as `method/kernel/order` (fused) or `method/order`."""
    if plan.method == "fused":
        return f"fused/{plan.kernel}/{plan.order}"
    return f"{plan.method}/{plan.order}"


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
        self.shape, self.widths, self.device = shape, widths, device
        self.xs = [rand(m, w) for w in widths]
        self.dy = rand(m, n)
        self.y_like = torch.empty(m, n, device=device, dtype=dtype)
        bound = 1 / math.sqrt(D)
        self.weight = nn.Parameter(rand(n, D, scale=bound))
        self.a = nn.Parameter(rand(p, q, scale=math.sqrt(bound)))
        self.b = nn.Parameter(rand(s, t, scale=math.sqrt(bound)))
        self.flat = nn.Parameter(rand(p * q + s * t, scale=math.sqrt(bound)))
        self.module = HMConcatFusion(widths, n=n, p=p, q=q, device=device, dtype=dtype)
        factors = [self.a, self.b]
        self.params = {
            "dense": [self.weight],
            "kron": factors,
            "tinybig": [self.flat],
            "einsum": factors,
            "two_matmul": factors,
            "compiled": factors,
            "hmfusion": list(self.module.parameters()),
        }
        self.compile_seconds: dict[str, float] = {}
        self.compiled: Callable[..., Tensor] | None = None
        self.forced: dict[str, dict[str, str]] = {}  # "plan:…" method → force_plan arguments

    def forced_plans(self, mode: Mode) -> list[str]:
        """The planner's candidates for this case and mode as methods `plan:<label>` (its pick and
        those the cost model prices within `PLAN_SPREAD` of its cheapest: every plan the
        measuring planner may choose), each run under `force_plan`."""
        plans = candidate_plans(
            self.module.structure.spec,
            self.shape.m,
            self.widths,
            self.xs[0].dtype,
            self.device.type,
            mode == "forward+backward",
        )
        cheapest = min(cost for _, cost in plans)
        names = []
        for index, (plan, cost) in enumerate(plans):
            if index == 0 or cost <= PLAN_SPREAD * cheapest:  # (the cost model's pick always)
                name = f"plan:{plan_label(plan)}"
                self.forced[name] = {"method": plan.method, "order": plan.order}
                if plan.method == "fused":
                    self.forced[name]["kernel"] = plan.kernel
                names.append(name)
        return names

    def cat(self) -> Tensor:
        return torch.cat(self.xs, dim=-1)

    def forward(self, method: str) -> Tensor:
        m, D, n, p, q, k = self.shape
        t = D // q
        if method == "dense":
            return F.linear(self.cat(), self.weight)
        if method == "kron":
            return F.linear(self.cat(), torch.kron(self.a, self.b))
        if method == "tinybig":
            # tinybig 0.2.1 (hm_reconciliation): split w, einsum the flat pieces, view as n×D.
            a, b = torch.split(self.flat.view(1, -1), [p * q, n * D // (p * q)], dim=1)
            weight = torch.einsum("pq,st->psqt", a, b).view(n, D)
            return F.linear(self.cat(), weight)
        if method == "einsum":
            x = self.cat().view(m, q, t)
            return torch.einsum("pq,mqt,st->mps", self.a, x, self.b).reshape(m, n)
        if method == "two_matmul":
            return _two_matmul(self.cat(), self.a, self.b, q, t)
        if method == "compiled":
            if self.compiled is None:
                self.compiled = _compile_two_matmul()
            return self.compiled(self.cat(), self.a, self.b, q, t)
        if method in self.forced:
            with force_plan(**self.forced[method]):  # type: ignore[arg-type]
                return self.module(self.xs)
        return self.module(self.xs)

    def floor(self) -> None:
        """One copy of X and one of Y: the memory floor of any implementation."""
        self.cat()
        self.y_like.clone()

    def step(self, method: str, mode: Mode) -> Callable[[], None]:
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

    def prepare(self, method: str, mode: Mode) -> None:
        """Reset what a step leaves behind (gradients), outside the timed region."""
        grad = mode == "forward+backward" and method != "floor"
        for x in self.xs:
            x.grad = None
            x.requires_grad_(grad)
        for params in self.params.values():
            for param in params:
                param.grad = None

    def compile(self, mode: Mode) -> None:
        """Compile (or re-specialise) the compiled method outside the timed rounds."""
        self.prepare("compiled", mode)
        self.compiled = _compile_two_matmul()
        begin = time.perf_counter()
        self.step("compiled", mode)()
        _synchronize(self.device)
        self.compile_seconds[mode] = time.perf_counter() - begin

    def activation_bytes(self, mode: Mode) -> int:
        y = self.y_like.numel() * self.y_like.element_size()
        if mode == "forward":
            return y
        return y + sum(x.numel() * x.element_size() for x in self.xs)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
