"""Time hmfusion's CUDA plans against each other and dense, eagerly and under CUDA graphs.

    python tools/gpu_plans.py --out DIR [--quick] [--dtypes float32,bfloat16] [--repeats 7]

For each grid shape (`hmfusion.apps.bench.cases`: `--quick` the quick grid, else the full one)
and dtype, forward+backward of `HMConcatFusion` is timed with each plan forced (the Triton
kernels, the composite two-matmul code, forming W) and with the planner's own pick, next to
dense (`F.linear` on the concatenation); then dense and the planner's pick again with the whole
step captured in one CUDA graph and replayed (the launch cost gone). Times are CUDA-event
medians over `--repeats` rounds of `--inner` calls after warm-up. Writes `plans.json` and
`plans.md` to DIR (created). `tools/gpu_check.sh` runs it; it needs a CUDA device.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from hmfusion import HMConcatFusion
from hmfusion.apps.bench.cases import FULL_GRID, QUICK_GRID, Shape
from hmfusion.ops import planner

#: The forced plans timed (name: `force_plan` arguments).
FORCED: dict[str, dict[str, str]] = {
    "triton": {"method": "fused", "kernel": "triton"},
    "composite": {"method": "composite"},
    "materialize": {"method": "materialize"},
}


def _median_ms(step: Callable[[], None], repeats: int, inner: int) -> float:
    """Median over rounds of the CUDA-event time of `inner` calls, per call, in ms."""
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            step()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / inner)
    return statistics.median(times)


def _graphed(step: Callable[[], None]) -> Callable[[], None]:
    """`step` captured in a CUDA graph (after warm-up on a side stream); returns its replay."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def _case(shape: Shape, dtype: torch.dtype, repeats: int, inner: int) -> dict[str, Any]:
    device = torch.device("cuda")
    dims = [shape.D // shape.k] * shape.k
    dims[-1] += shape.D - sum(dims)
    module = HMConcatFusion(dims, n=shape.n, p=shape.p, q=shape.q).to(device, dtype)
    weight = torch.randn(shape.n, shape.D, device=device, dtype=dtype, requires_grad=True)
    xs = [torch.randn(shape.m, d, device=device, dtype=dtype, requires_grad=True) for d in dims]
    gy = torch.randn(shape.m, shape.n, device=device, dtype=dtype)

    def dense() -> None:
        F.linear(torch.cat(xs, dim=1), weight).backward(gy)

    def fused(forced: dict[str, str] | None) -> Callable[[], None]:
        def step() -> None:
            if forced is None:
                module(xs).backward(gy)
            else:
                with planner.force_plan(**forced):  # type: ignore[arg-type]
                    module(xs).backward(gy)

        return step

    times = {"dense": _median_ms(dense, repeats, inner)}
    for name, forced in FORCED.items():
        times[name] = _median_ms(fused(forced), repeats, inner)
    times["planner"] = _median_ms(fused(None), repeats, inner)
    graphs = {
        "dense": _median_ms(_graphed(dense), repeats, inner),
        "planner": _median_ms(_graphed(fused(None)), repeats, inner),
    }
    plan = module.plan(shape.m, requires_grad=True)
    return {
        "shape": shape._asdict(),
        "label": shape.label,
        "dtype": str(dtype).removeprefix("torch."),
        "plan": f"{plan.method}/{plan.kernel} {plan.order}",
        "time_ms": times,
        "graph_time_ms": graphs,
        "speedup_vs_dense": {name: times["dense"] / value for name, value in times.items()},
        "graph_speedup_vs_dense": graphs["dense"] / graphs["planner"],
    }


def _markdown(rows: list[dict[str, Any]], device: str) -> str:
    names = ["triton", "composite", "materialize", "planner"]
    lines = [
        f"# hmfusion's CUDA plans on {device}",
        "",
        "Forward+backward, speed-up over dense (`F.linear` on the concatenation); dense time in"
        " ms; the last two columns with each step captured in one CUDA graph"
        " (`tools/gpu_plans.py`).",
        "",
        "| shape | dtype | dense ms | " + " | ".join(names) + " | plan | graph dense ms |"
        " graph planner |",
        "|---|---|---|" + "---|" * len(names) + "---|---|---|",
    ]
    for row in rows:
        ratios = " | ".join(f"{row['speedup_vs_dense'][name]:.2f}×" for name in names)
        lines.append(
            f"| {row['label']} | {row['dtype']} | {row['time_ms']['dense']:.3f} | {ratios} | "
            f"{row['plan']} | {row['graph_time_ms']['dense']:.3f} | "
            f"{row['graph_speedup_vs_dense']:.2f}× |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--quick", action="store_true", help="the quick grid")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds")
    parser.add_argument("--inner", type=int, default=10, help="calls per round")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("needs a CUDA device")
    dtypes = [getattr(torch, name.strip()) for name in args.dtypes.split(",") if name.strip()]
    device = torch.cuda.get_device_name()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for shape in QUICK_GRID if args.quick else FULL_GRID:
        for dtype in dtypes:
            rows.append(_case(shape, dtype, args.repeats, args.inner))
            print(_markdown(rows[-1:], device).splitlines()[-1], flush=True)
            # written after every case: a run cut short by its time limit keeps what it has
            report = {"device": device, "torch": torch.__version__, "rows": rows}
            (args.out / "plans.json").write_text(json.dumps(report, indent=1) + "\n")
            (args.out / "plans.md").write_text(_markdown(rows, device))


if __name__ == "__main__":
    main()
