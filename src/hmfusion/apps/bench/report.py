"""The benchmark's reports: Markdown tables, the `RESULTS.md` document and the figure.

Everything here reads a report of [`run`][hmfusion.apps.bench.engine.run] (the `results.json`
`hmfusion bench` writes), so `benchmarks/RESULTS.md` is regenerated from a stored run with
`hmfusion bench --render results.json --out DIR` without measuring again.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hmfusion.apps import reporting
from hmfusion.apps.bench.engine import METHODS, TARGET_SHAPES, Shape

__all__ = ["check_targets", "document", "markdown_table", "plot"]

#: The speed-up over dense each target shape must reach, quiet (float32, forward+backward).
TARGET_SPEEDUPS = {
    "compute_1024": 8.0,
    "small_batch_4096": 18.0,
    "compute_4096": 14.0,
    "memory_bound": 2.0,
}
#: Loaded, each target shape keeps at least this fraction of its quiet ratio.
LOADED_FRACTION = 0.5
#: Peak extra memory of forward+backward at D = n = 4096, relative to the activations.
MEMORY_RATIO = 1.10
#: The planner's pick against the fastest forced plan of the same run, at most (every row).
REGRET = 1.10


# targets -----------------------------------------------------------------------------------
def _find(results: list[dict], shape: Shape, dtype: str, mode: str) -> dict | None:
    for row in results:
        if tuple(row["shape"].values()) == tuple(shape) and row["dtype"] == dtype:
            for measured in row["modes"]:
                if measured["mode"] == mode:
                    return measured
    return None


def check_targets(results: list[dict], loaded: list[dict] | None = None) -> list[dict]:
    """The issue's targets on the grid points that were run (forward+backward): the speed-ups
    of the target shapes (quiet and loaded), never slower than dense or the simple code, the
    memory at 4096, and at every row the planner's regret (its pick over the fastest forced
    plan, ≤ `REGRET`).

    Args:
        results: the quiet rows of a report.
        loaded: the rows measured under competing load, if any.

    Returns:
        One dict per check: `target`, the figures, `required` and `met`.
    """
    checks: list[dict] = []
    fb = "forward+backward"
    for name, shape in TARGET_SHAPES.items():
        row = _find(results, shape, "float32", fb)
        if row is None:
            continue
        speedup = row["speedup_vs_dense"]["hmfusion"]
        required = TARGET_SPEEDUPS[name]
        checks.append(
            {
                "target": name,
                "shape": shape._asdict(),
                "hmfusion_vs_dense": speedup,
                "required": required,
                "met": speedup >= required,
            }
        )
        loaded_row = _find(loaded or [], shape, "float32", fb)
        if loaded_row is not None:
            fraction = loaded_row["speedup_vs_dense"]["hmfusion"] / speedup
            checks.append(
                {
                    "target": f"{name}_loaded",
                    "shape": shape._asdict(),
                    "hmfusion_vs_dense": loaded_row["speedup_vs_dense"]["hmfusion"],
                    "fraction_of_quiet": fraction,
                    "required": LOADED_FRACTION,
                    "met": fraction >= LOADED_FRACTION,
                }
            )
    for rows, label in ((results, "never_slower"), (loaded or [], "never_slower_loaded")):
        for row in rows:
            for measured in row["modes"]:
                if measured["mode"] != fb:
                    continue
                vs_dense = measured["speedup_vs_dense"]["hmfusion"]
                vs_simple = measured["hmfusion_vs_best_simple"]
                # quiet: ≥ dense and ≥ the best simple code; loaded: ≥ the best simple code
                met = (vs_simple is None or vs_simple >= 1.0) and (
                    label.endswith("loaded") or vs_dense >= 1.0
                )
                checks.append(
                    {
                        "target": label,
                        "shape": row["shape"],
                        "dtype": row["dtype"],
                        "hmfusion_vs_dense": vs_dense,
                        "best_simple": measured["best_simple"],
                        "hmfusion_vs_best_simple": vs_simple,
                        "required": 1.0,
                        "met": met,
                    }
                )
    for row in results:
        for measured in row["modes"]:
            if measured["mode"] == fb and measured.get("regret") is not None:
                checks.append(
                    {
                        "target": "regret",
                        "shape": row["shape"],
                        "dtype": row["dtype"],
                        "regret": measured["regret"],
                        "fastest_plan": measured["fastest_plan"],
                        "required": REGRET,
                        "met": measured["regret"] <= REGRET,
                    }
                )
    for row in results:
        shape = Shape(**row["shape"])
        if row["dtype"] != "float32" or (shape.m, shape.D, shape.n) != (4096, 4096, 4096):
            continue
        measured = _find(results, shape, "float32", fb)
        ratio = None if measured is None else measured["hmfusion_memory_over_activations"]
        if ratio is not None:
            checks.append(
                {
                    "target": "memory_4096",
                    "shape": row["shape"],
                    "hmfusion_memory_over_activations": ratio,
                    "required": MEMORY_RATIO,
                    "met": ratio <= MEMORY_RATIO,
                }
            )
    return checks


_LABELS = {
    "dense": "dense ms",
    "kron": "kron ×",
    "tinybig": "tinybig ×",
    "einsum": "einsum ×",
    "two_matmul": "two-matmul ×",
    "compiled": "compiled ×",
    "hmfusion": "hmfusion ×",
}


def _mib(value: int | None) -> str:
    return "–" if value is None else f"{value / 2**20:.0f}"


def _load(values: Sequence[float] | None) -> str:
    return "–" if not values else " / ".join(f"{value:.1f}" for value in values)


def _plan(plan: dict[str, Any]) -> str:
    """The plan column: method (fused: with its kernel and rows per chunk) and order, and
    "in float32" for a 16-bit case computed in float32 (`Plan.upcast`)."""
    if plan["method"] == "fused":
        text = f"fused/{plan.get('kernel', 'pytorch')} {plan['order']} {plan['chunk_rows']}"
    else:
        text = f"{plan['method']} {plan['order']}"
    return f"{text} in float32" if plan.get("upcast") else text


def _rows_table(rows: list[dict], methods: Sequence[str], memory: bool) -> list[str]:
    header = ["m", "D", "n", "p", "q", "k", "dtype", "mode", "ideal ×"]
    header += [_LABELS[m] for m in methods]
    header += ["hmfusion / best simple", "hmfusion / floor", "regret (fastest plan)"]
    if memory:
        header.append("extra MiB dense / hmfusion / activations")
    header.append("plan")
    table = []
    for row in rows:
        shape = row["shape"]
        for measured in row["modes"]:
            cells = [str(shape[key]) for key in ("m", "D", "n", "p", "q", "k")]
            cells += [
                row["dtype"],
                "f+b" if measured["mode"] != "forward" else "fwd",
                f"{measured['ideal_speedup']:.1f}",
            ]
            for method in methods:
                if method == "dense":
                    cells.append(f"{measured['time_ms']['dense']:.2f}")
                else:
                    cells.append(f"{measured['speedup_vs_dense'][method]:.2f}")
            best = measured.get("hmfusion_vs_best_simple")
            cells.append("–" if best is None else f"{best:.2f} ({measured['best_simple']})")
            cells.append(f"{measured['hmfusion_over_floor']:.2f}")
            regret = measured.get("regret")
            cells.append("–" if regret is None else f"{regret:.2f} ({measured['fastest_plan']})")
            if memory:
                peak = measured["peak_extra_bytes"] or {}
                cells.append(
                    f"{_mib(peak.get('dense'))} / {_mib(peak.get('hmfusion'))} / "
                    f"{_mib(measured['activation_bytes'])}"
                )
            cells.append(_plan(measured["plan"]))
            table.append(cells)
    return reporting.markdown_table(header, table, align=["left"] * len(header)).splitlines()


def _target_lines(checks: list[dict]) -> list[str]:
    header = ["target", "shape", "dtype", "measured", "required", "met"]
    table = []
    for check in checks:
        label = Shape(**check["shape"]).label
        target = check["target"]
        if target.startswith("never_slower"):
            measured = (
                f"{check['hmfusion_vs_dense']:.2f}× dense, "
                f"{(check['hmfusion_vs_best_simple'] or 0):.2f}× {check['best_simple']}"
            )
            required = (
                "≥ 1.0× the best simple code"
                if target.endswith("loaded")
                else "≥ 1.0× dense and the best simple code"
            )
        elif target == "regret":
            measured = f"{check['regret']:.2f}× ({check['fastest_plan']} fastest)"
            required = f"≤ {check['required']:.2f}× the fastest forced plan"
        elif target == "memory_4096":
            measured = f"{check['hmfusion_memory_over_activations']:.2f}× activations"
            required = f"≤ {check['required']:.2f}×"
        elif target.endswith("_loaded"):
            measured = (
                f"{check['hmfusion_vs_dense']:.2f}× "
                f"({100 * check['fraction_of_quiet']:.0f} % of quiet)"
            )
            required = f"≥ {100 * check['required']:.0f} % of quiet"
        else:
            measured = f"{check['hmfusion_vs_dense']:.2f}×"
            required = f"≥ {check['required']:.1f}×"
        met = "yes" if check["met"] else "**no**"
        table.append([target, label, check.get("dtype", "float32"), measured, required, met])
    return reporting.markdown_table(header, table, align=["left"] * len(header)).splitlines()


def markdown_table(report: dict[str, Any]) -> str:
    """The quiet table, the loaded table (if measured) and the target checks, as Markdown.

    Args:
        report: a report of [`run`][hmfusion.apps.bench.engine.run].

    Returns:
        Markdown text ending in a newline.
    """
    methods = [m for m in METHODS if m in report["config"].get("methods", METHODS)]
    lines = ["Quiet:", ""] + _rows_table(report["results"], methods, memory=True)
    if report.get("loaded"):
        load = report["config"].get("load", 0)
        lines += ["", f"Under load ({load} busy process{'es' if load != 1 else ''}):", ""]
        lines += _rows_table(report["loaded"], methods, memory=False)
    if report.get("targets"):
        lines += ["", "Targets:", ""] + _target_lines(report["targets"])
    return "\n".join(lines) + "\n"


def document(report: dict[str, Any]) -> str:
    """`benchmarks/RESULTS.md`: how the run was made, the targets, every table.

    Args:
        report: a report of [`run`][hmfusion.apps.bench.engine.run].

    Returns:
        The Markdown document.
    """
    machine, config = report["machine"], report["config"]
    checks = report.get("targets", [])
    met = sum(check["met"] for check in checks)
    environment = ", ".join(f"{k}={v}" for k, v in machine.get("environment", {}).items())
    lines = [
        "# Benchmarks: hmfusion against the alternatives",
        "",
        "Generated by `hmfusion bench` (refresh from a stored run with "
        "`hmfusion bench --render results.json --out DIR`). Methods: dense (cat + `F.linear`), "
        "kron (`torch.kron` then `F.linear`), tinybig (tinybig 0.2.1's einsum-built W), einsum "
        "and two-matmul (the five-line code users write, autograd's backward), compiled "
        "(`torch.compile(dynamic=True)` of the two-matmul code, compile time excluded) and "
        "hmfusion (`HMConcatFusion`; plan in the last column). Ratios are speed-ups over dense "
        '(medians of interleaved rounds in one run); "best simple" is the fastest of einsum, '
        "two-matmul and compiled.",
        "",
        f"**Machine.** {machine['cpu']}, {machine['cpu_count']} CPUs, device "
        f"{machine['device']}; torch {machine['torch']}, Python {machine['python']}; "
        f"{machine['torch_threads']} threads; native kernel: {machine.get('native_kernel')}; "
        f"environment: {environment or 'default'}. Run {config['date']}, {config['repeats']} "
        f"rounds after {config['warmup']} warm-up, load average "
        f"{_load(machine.get('load_average_start'))} at the start, "
        f"{_load(machine.get('load_average_end'))} at the end; loaded table: "
        f"{config.get('load', 0)} busy processes.{_capability(machine)}",
        "",
        f"## Targets: {met} of {len(checks)} checks met",
        "",
        *_target_lines(checks),
        "",
        "## Every figure",
        "",
        markdown_table({**report, "targets": []}).rstrip("\n"),
        "",
        "![speed-up vs ideal](speedup.png)",
        *_skipped_lines(report.get("skipped", [])),
    ]
    return "\n".join(lines) + "\n"


def _capability(machine: dict[str, Any]) -> str:
    """The CPU's vector instructions and GEMM rates, where the run recorded them."""
    if "gemm_gmacs" not in machine:
        return ""
    rates = ", ".join(f"{name} {rate:.3g}" for name, rate in machine["gemm_gmacs"].items())
    slow = [name for name, fast in machine.get("fast_half_gemms", {}).items() if not fast]
    text = f" CPU capability {machine.get('cpu_capability')}; a 256³ matmul runs (GMAC/s) {rates}"
    if slow and machine.get("device") == "cpu":
        text += f"; no instructions for {' and '.join(slow)} GEMMs (torch's portable loops)"
    return text + "."


def _skipped_lines(skipped: list[dict[str, Any]]) -> list[str]:
    """The section listing the cases left out, and why."""
    if not skipped:
        return []
    lines = ["", "## Left out", "", "| shape | dtype | why |", "|---|---|---|"]
    for entry in skipped:
        label = Shape(**entry["shape"]).label
        lines.append(f"| {label} | {entry['dtype']} | {entry['why']} |")
    return lines


def plot(report: dict[str, Any], path: Path) -> None:
    """Speed-up over dense vs ideal speed-up per shape: hmfusion (quiet and loaded, float32
    and bfloat16, forward+backward) and the best simple code, written to `path` (PNG).

    Args:
        report: a report of [`run`][hmfusion.apps.bench.engine.run].
        path: the PNG file to write.
    """
    plt = reporting.pyplot()
    fig, ax = plt.subplots(figsize=(8, 6), dpi=110)
    series = [
        ("results", "float32", "hmfusion", "s", "tab:red", "hmfusion f+b float32"),
        ("results", "bfloat16", "hmfusion", "D", "tab:orange", "hmfusion f+b bfloat16"),
        ("loaded", "float32", "hmfusion", "x", "tab:purple", "hmfusion f+b float32, loaded"),
        ("results", "float32", "best_simple", "o", "tab:grey", "best simple code f+b float32"),
    ]
    highest, lowest = 1.0, 1.0
    for key, dtype, method, marker, color, label in series:
        xs, ys = [], []
        for row in report.get(key) or []:
            if row["dtype"] != dtype:
                continue
            for measured in row["modes"]:
                if measured["mode"] != "forward+backward":
                    continue
                name = measured["best_simple"] if method == "best_simple" else method
                if name is None:
                    continue
                xs.append(measured["ideal_speedup"])
                ys.append(measured["speedup_vs_dense"][name])
        if xs:
            ax.scatter(xs, ys, marker=marker, color=color, label=label, alpha=0.8)
            highest = max(highest, *xs, *ys)
            lowest = min(lowest, *ys)
    targets = {tuple(shape): name for name, shape in TARGET_SHAPES.items()}
    for row in report["results"]:
        name = targets.get(tuple(row["shape"].values()))
        if name is None or row["dtype"] != "float32":
            continue
        for measured in row["modes"]:
            if measured["mode"] == "forward+backward":
                ax.annotate(
                    name,
                    (measured["ideal_speedup"], measured["speedup_vs_dense"]["hmfusion"]),
                    textcoords="offset points",
                    xytext=(6, -10),
                    fontsize=7,
                )
    limit = highest * 1.5
    ax.plot([0.5, limit], [0.5, limit], color="grey", linestyle="--", label="ideal (y = x)")
    ax.axhline(1.0, color="black", linewidth=0.8, label="dense (y = 1)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(0.8, limit)
    ax.set_ylim(min(0.3, lowest * 0.8), limit)
    ax.set_xlabel("ideal speed-up  max(p·t/(p+t), q·s/(q+s))")
    ax.set_ylabel("measured speed-up over dense (median time ratio)")
    machine = report["machine"]
    ax.set_title(
        f"forward+backward vs dense F.linear, {machine['torch_threads']} threads, "
        f"{machine['device']} (labelled: the target shapes)",
        fontsize=10,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    reporting.save_figure(fig, path)
