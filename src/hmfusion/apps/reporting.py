"""Markdown tables and figures for the command reports (`train`'s results; `bench` too).

The generic helpers — [`markdown_table`][hmfusion.apps.reporting.markdown_table],
[`pyplot`][hmfusion.apps.reporting.pyplot], [`save_figure`][hmfusion.apps.reporting.save_figure] —
know
nothing of training; [`results_table`][hmfusion.apps.reporting.results_table],
[`plot_accuracy_vs_params`][hmfusion.apps.reporting.plot_accuracy_vs_params] and
[`plot_training_curves`][hmfusion.apps.reporting.plot_training_curves] draw `hmfusion train`'s
results from plain dicts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from hmfusion.ops import files

__all__ = [
    "markdown_table",
    "plot_accuracy_vs_params",
    "plot_training_curves",
    "pyplot",
    "results_table",
    "save_figure",
]

Align = Literal["left", "right"]


def markdown_table(
    header: Sequence[str], rows: Sequence[Sequence[object]], align: Sequence[Align] | None = None
) -> str:
    """A GitHub Markdown table: `| a | b |` lines, cells formatted with `str`.

    Args:
        header: the column titles.
        rows: one sequence of cells per row, as many cells as titles.
        align: per column; default left for the first column and right for the others.

    Raises:
        ValueError: a row or `align` whose length differs from `header`'s.

    Example:
        >>> print(markdown_table(["name", "n"], [["hm", 3]]))
        | name | n |
        |---|---:|
        | hm | 3 |
    """
    aligns: Sequence[str] = ["left"] + ["right"] * (len(header) - 1) if align is None else align
    if len(aligns) != len(header):
        raise ValueError(f"align has {len(aligns)} entries for {len(header)} columns")
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---:" if a == "right" else "---" for a in aligns) + "|",
    ]
    for number, row in enumerate(rows, start=1):
        if len(row) != len(header):
            raise ValueError(f"row {number} has {len(row)} cells for {len(header)} columns")
        lines.append("| " + " | ".join(str(cell) for cell in row) + " |")
    return "\n".join(lines)


def pyplot() -> Any:
    """`matplotlib.pyplot` on the non-interactive Agg backend (imported on first use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path) -> None:
    """Save a matplotlib figure to `path` whole or not at all (write beside, then rename), and
    close it. The format follows `path`'s suffix."""
    path = Path(path)
    try:
        with files.atomic_write(path, prefix=f".{path.stem}.tmp-", suffix=path.suffix) as staging:
            fig.savefig(staging)
    finally:
        pyplot().close(fig)


# Fusions per row of the training-curves figure: three read at the width of a page (~700 px).
_CURVE_COLUMNS = 3


# hmfusion train -------------------------------------------------------------------------------
def results_table(fusions: Mapping[str, Mapping[str, Any]]) -> str:
    """`hmfusion train`'s table: accuracy in percent (mean ± sample std over seeds), fusion
    parameters (and their share of dense's, when dense ran), model parameters, mean epochs and
    training seconds, one row per fusion of `results.json`'s `"fusions"`."""
    dense = fusions.get("dense", {}).get("fusion_parameters")
    header = ["fusion", "test accuracy (%)", "fusion params"]
    if dense:
        header.append("% of dense")
    header += ["model params", "epochs", "train time (s)"]
    rows = []
    for name, r in fusions.items():
        cells = [
            name,
            f"{100 * r['test_accuracy_mean']:.2f} ± {100 * r['test_accuracy_std']:.2f}",
            f"{r['fusion_parameters']:,}",
        ]
        if dense:
            cells.append(f"{100 * r['fusion_parameters'] / dense:.1f}")
        cells += [
            f"{r['model_parameters']:,}",
            f"{np.mean(r['epochs']):.0f}",
            f"{r['train_seconds']:.1f}",
        ]
        rows.append(cells)
    return markdown_table(header, rows)


def plot_accuracy_vs_params(
    fusions: Mapping[str, Mapping[str, Any]], path: str | Path, title: str
) -> None:
    """Test accuracy (mean ± std) against fusion parameters (log scale), one point per fusion;
    a parameter-free fusion is a dashed line with its band."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, r) in enumerate(fusions.items()):
        mean, std = 100 * r["test_accuracy_mean"], 100 * r["test_accuracy_std"]
        color = colors[i % len(colors)]
        if r["fusion_parameters"] == 0:
            ax.axhline(
                mean,
                color=color,
                linestyle="--",
                linewidth=1.2,
                label=f"{name} (no fusion parameters)",
            )
            ax.axhspan(mean - std, mean + std, color=color, alpha=0.12)
            continue
        ax.errorbar(
            r["fusion_parameters"],
            mean,
            yerr=std,
            fmt="o",
            color=color,
            capsize=4,
            markersize=7,
            label=name,
        )
        ax.annotate(
            name,
            (r["fusion_parameters"], mean),
            textcoords="offset points",
            xytext=(7, 5),
            fontsize=9,
        )
    ax.set_xscale("log")
    ax.margins(x=0.12)  # room for the labels of the outermost points
    ax.set_xlabel("fusion-layer parameters (log scale)")
    ax.set_ylabel("test accuracy (%), mean ± std over seeds")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    save_figure(fig, path)


def plot_training_curves(runs: Sequence[Mapping[str, Any]], path: str | Path) -> None:
    """Small multiples, three fusions to a row so that the figure reads at page width: per
    fusion, the losses (top panel, log scale) and the validation accuracy (below) against the
    epoch, one colour per seed; the dot marks the best epoch, whose weights are kept.

    Each run is a dict with `fusion`, `seed`, `best_epoch` (1-based) and the per-epoch
    lists `train_loss`, `validation_loss`, `validation_accuracy`.
    """
    plt = pyplot()
    from matplotlib import ticker
    from matplotlib.lines import Line2D

    names = list(dict.fromkeys(run["fusion"] for run in runs))
    columns = min(_CURVE_COLUMNS, len(names))
    rows = -(-len(names) // columns)
    height = 0.8 + 3.0 * rows  # inches: the legend, then per row of fusions two panels
    fig = plt.figure(figsize=(7.2, height), dpi=150)
    # a row of fusions is a pair of panels (loss over accuracy) close together, apart from the next
    outer = fig.add_gridspec(rows, 1, hspace=0.32, left=0.11, right=0.985, bottom=0.55 / height)
    outer.update(top=1 - 0.75 / height)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    seeds = sorted({run["seed"] for run in runs})
    loss_axes, acc_axes = [], []
    for row in range(rows):
        inner = outer[row].subgridspec(
            2, columns, hspace=0.08, wspace=0.08, height_ratios=[1.15, 1]
        )
        for column in range(columns):
            loss_axes.append(fig.add_subplot(inner[0, column]))
            acc_axes.append(fig.add_subplot(inner[1, column]))
    for index, name in enumerate(names):
        loss_ax, acc_ax = loss_axes[index], acc_axes[index]
        if index:  # one scale for every fusion, so that the panels compare
            loss_ax.sharey(loss_axes[0])
            acc_ax.sharey(acc_axes[0])
        acc_ax.sharex(loss_ax)
        for run in (r for r in runs if r["fusion"] == name):
            color = colors[seeds.index(run["seed"]) % len(colors)]
            epochs = np.arange(1, len(run["train_loss"]) + 1)
            best = run["best_epoch"] - 1
            loss_ax.plot(epochs, run["train_loss"], color=color, linewidth=1)
            loss_ax.plot(epochs, run["validation_loss"], color=color, linewidth=1, linestyle="--")
            loss_ax.plot(
                run["best_epoch"], run["validation_loss"][best], "o", color=color, markersize=4
            )
            accuracy = 100 * np.asarray(run["validation_accuracy"])
            acc_ax.plot(epochs, accuracy, color=color, linewidth=1)
            acc_ax.plot(run["best_epoch"], accuracy[best], "o", color=color, markersize=4)
        loss_ax.set_title(name, fontsize=10, fontweight="bold")
        loss_ax.set_yscale("log")
        # plain numbers (0.2, 0.5, 1) at 1-2-5 steps; no labels on the minor ticks, which crowd
        loss_ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        loss_ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
        loss_ax.yaxis.set_minor_formatter(ticker.NullFormatter())
        loss_ax.tick_params(labelbottom=False)
        acc_ax.set_xlabel("epoch", fontsize=9)
        for ax in (loss_ax, acc_ax):
            ax.grid(True, which="both", alpha=0.3)
            ax.tick_params(labelsize=8)
        if index % columns == 0:
            loss_ax.set_ylabel("cross-entropy", fontsize=9)
            acc_ax.set_ylabel("val. accuracy (%)", fontsize=9)
        else:
            loss_ax.tick_params(labelleft=False)
            acc_ax.tick_params(labelleft=False)
    for ax in [*loss_axes[len(names) :], *acc_axes[len(names) :]]:
        ax.set_visible(False)
    low = min(np.percentile(run["validation_accuracy"], 10) for run in runs)
    acc_axes[0].set_ylim(max(0.0, 100 * low - 2), 100.5)
    handles = [Line2D([], [], color=colors[i % len(colors)]) for i in range(len(seeds))]
    labels = [f"seed {seed}" for seed in seeds]
    handles += [Line2D([], [], color="gray"), Line2D([], [], color="gray", linestyle="--")]
    labels += ["train (label-smoothed)", "validation"]
    handles.append(Line2D([], [], color="gray", marker="o", linestyle=""))
    labels.append("best epoch (kept)")
    fig.legend(handles, labels, loc="upper center", ncol=3, fontsize=8.5, frameon=False)
    save_figure(fig, path)
