"""The table and figure of `hmfusion sweep`, drawn from its `results.json` alone (so that
`hmfusion sweep --render` redraws them without training).

Both take the summary dict that [`hmfusion.apps.train.sweep`][hmfusion.apps.train.sweep] writes
and read only its `"points"` (per point `key`, `fusion`, `fusion_parameters`,
`test_accuracy_mean`, `test_accuracy_std`, `epochs`, `seconds_per_epoch`); the Pareto fronts are
recomputed from them by [`fronts`][hmfusion.apps.train.sweep_report.fronts].
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hmfusion.apps.reporting import markdown_table, pyplot, save_figure
from hmfusion.apps.train.budgets import pareto_front

__all__ = ["fronts", "plot_sweep", "sweep_table"]


def fronts(points: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[str]]:
    """The keys on the Pareto front of (fusion parameters, mean test accuracy): of all points,
    and of the points with parameters (the learned fusions, without mean). Each in order of
    parameters.

    Example:
        >>> points = [{"key": "mean", "fusion_parameters": 0, "test_accuracy_mean": 0.9},
        ...     {"key": "hm p=8", "fusion_parameters": 500, "test_accuracy_mean": 0.8}]
        >>> fronts(points)
        (['mean'], ['hm p=8'])
    """
    learned = [p for p in points if p["fusion_parameters"] > 0]
    return tuple(  # type: ignore[return-value]  # a pair
        [group[i]["key"] for i in pareto_front(
            [(p["fusion_parameters"], p["test_accuracy_mean"]) for p in group]
        )]
        for group in (points, learned)
    )  # fmt: skip


def _setting(point: Mapping[str, Any]) -> str:
    return point["key"][len(point["fusion"]) :].strip() or "-"


def sweep_table(summary: Mapping[str, Any]) -> str:
    """One row per point, grouped by fusion and ordered by parameters: the setting, fusion
    parameters (and their share of dense's, when dense ran), test accuracy in percent (mean ±
    sample std over seeds), mean epochs, training seconds per epoch, and the Pareto column:
    `yes` on the front of all points, `learned` on the front of the fusions with parameters
    only (see [`fronts`][hmfusion.apps.train.sweep_report.fronts]).

    Example:
        >>> point = {"key": "hm p=8 terms=1", "fusion": "hm", "fusion_parameters": 512,
        ...     "test_accuracy_mean": 0.975, "test_accuracy_std": 0.005, "epochs": [40, 50],
        ...     "seconds_per_epoch": 0.12}
        >>> print(sweep_table({"points": [point]}))
        | fusion | setting | fusion params | test accuracy (%) | epochs | s / epoch | Pareto |
        |---|---|---:|---:|---:|---:|---|
        | hm | p=8 terms=1 | 512 | 97.50 ± 0.50 | 45 | 0.120 | yes |
    """
    points = summary["points"]
    front, learned = (set(keys) for keys in fronts(points))
    dense = next((p["fusion_parameters"] for p in points if p["fusion"] == "dense"), None)
    order = list(dict.fromkeys(p["fusion"] for p in points))
    header = ["fusion", "setting", "fusion params"]
    header += ["% of dense"] if dense else []
    header += ["test accuracy (%)", "epochs", "s / epoch", "Pareto"]
    rows = []
    for point in sorted(points, key=lambda p: (order.index(p["fusion"]), p["fusion_parameters"])):
        cells = [point["fusion"], _setting(point), f"{point['fusion_parameters']:,}"]
        if dense:
            cells.append(f"{100 * point['fusion_parameters'] / dense:.1f}")
        cells += [
            f"{100 * point['test_accuracy_mean']:.2f} ± {100 * point['test_accuracy_std']:.2f}",
            f"{sum(point['epochs']) / len(point['epochs']):.0f}",
            f"{point['seconds_per_epoch']:.3f}",
            "yes" if point["key"] in front else "learned" if point["key"] in learned else "",
        ]
        rows.append(cells)
    align: list[Any] = ["left", "left"] + ["right"] * (len(header) - 3) + ["left"]
    return markdown_table(header, rows, align)


def _line(point: Mapping[str, Any]) -> str:
    """The line a point belongs to: its fusion, and HM's number of terms when above 1."""
    terms = point.get("options", {}).get("terms", 1)
    return point["fusion"] if terms == 1 else f"{point['fusion']}, {terms} terms"


def _draw(ax: Any, points: Sequence[Mapping[str, Any]], colors: Sequence[str]) -> None:
    """Every line (or reference line) and the ringed front on one axes."""
    order = list(dict.fromkeys(_line(p) for p in points))
    for i, fusion in enumerate(order):
        group = sorted(
            (p for p in points if _line(p) == fusion), key=lambda p: p["fusion_parameters"]
        )
        color = colors[i % len(colors)]
        means = [100 * p["test_accuracy_mean"] for p in group]
        stds = [100 * p["test_accuracy_std"] for p in group]
        if group[0]["fusion_parameters"] == 0 or fusion == "dense":
            style = "--" if group[0]["fusion_parameters"] == 0 else ":"
            ax.axhline(means[0], color=color, linestyle=style, linewidth=1.2)
            ax.axhspan(means[0] - stds[0], means[0] + stds[0], color=color, alpha=0.1)
            label = f"{fusion} ({group[0]['fusion_parameters']:,} params)"
            ax.plot([], [], color=color, linestyle=style, label=label)
            if fusion == "dense":
                ax.errorbar(
                    group[0]["fusion_parameters"], means[0], yerr=stds[0], fmt="s",
                    color=color, capsize=3, markersize=5,
                )  # fmt: skip
            continue
        params = [p["fusion_parameters"] for p in group]
        ax.errorbar(
            params, means, yerr=stds, fmt="o-", color=color, capsize=3, markersize=4,
            linewidth=1.2, label=fusion,
        )  # fmt: skip
    learned = set(fronts(points)[1])
    front = sorted((p for p in points if p["key"] in learned), key=lambda p: p["fusion_parameters"])
    if front:
        ax.plot(
            [p["fusion_parameters"] for p in front],
            [100 * p["test_accuracy_mean"] for p in front],
            "o", markersize=11, markerfacecolor="none", markeredgecolor="black",
            markeredgewidth=1.3, label="Pareto front (with params)",
        )  # fmt: skip
    ax.set_xscale("log")
    ax.grid(True, which="both", alpha=0.3)


def plot_sweep(summary: Mapping[str, Any], path: str | Path, title: str) -> None:
    """Test accuracy (mean ± std over seeds) against fusion parameters on a log axis: one line
    per fusion (per number of terms for HM), the Pareto front of the fusions with parameters
    ringed, dense and parameter-free fusions (mean) as horizontal reference lines. Below it the
    same plot zoomed on the 5 percentage points under the best mean, where the fusions that
    matter differ. 7 × 7.5 inches at 100 dpi, readable at 700 px."""
    plt = pyplot()
    fig, (full, zoom) = plt.subplots(
        2, 1, figsize=(7, 7.5), dpi=100, sharex=True, height_ratios=[1, 1]
    )
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    points = summary["points"]
    for ax in (full, zoom):
        _draw(ax, points, colors)
    best = max(100 * p["test_accuracy_mean"] for p in points)
    top = max(100 * (p["test_accuracy_mean"] + p["test_accuracy_std"]) for p in points)
    zoom.set_ylim(best - 5, min(100.0, max(best, top) + 0.5))
    full.set_title(title, fontsize=10)
    full.set_ylabel("test accuracy (%), mean ± std")
    zoom.set_ylabel("zoom: best mean - 5 to best (%)")
    zoom.set_xlabel("fusion-layer parameters (log scale)")
    full.legend(fontsize=8, loc="lower right", ncol=2)
    fig.tight_layout()
    save_figure(fig, path)
