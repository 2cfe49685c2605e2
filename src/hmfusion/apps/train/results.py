"""What a training run leaves behind: the summary of `results.json` and the run's files.

[`results`][hmfusion.apps.train.results.results] gathers the runs of
[`train_all`][hmfusion.apps.train.loop.train_all] into the contents of `results.json` (per fusion:
mean and spread of the test accuracy over the seeds, sizes, times, the seed whose checkpoint is
kept); [`write_outputs`][hmfusion.apps.train.results.write_outputs] writes `results.json`,
`results.md`,
the two figures and per fusion the checkpoint of its best seed into a staging directory.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

import hmfusion
from hmfusion.apps.reporting import plot_accuracy_vs_params, plot_training_curves, results_table
from hmfusion.apps.train.checkpoint import save_checkpoint
from hmfusion.apps.train.distributed import Processes
from hmfusion.apps.train.loop import Run, TrainConfig
from hmfusion.data import MultiViewData, stratified_split

__all__ = ["results", "write_outputs"]


def _summarize(runs: list[Run]) -> dict[str, dict[str, Any]]:
    by_fusion: dict[str, list[Run]] = {}
    for run in runs:
        by_fusion.setdefault(run.fusion, []).append(run)
    summary = {}
    for fusion, group in by_fusion.items():
        accuracies = np.array([run.test_accuracy for run in group])
        best = max(group, key=lambda run: (run.validation_accuracy, -run.seed))
        summary[fusion] = {
            "test_accuracy_mean": float(accuracies.mean()),
            "test_accuracy_std": float(accuracies.std(ddof=1)) if len(group) > 1 else 0.0,
            "fusion_parameters": group[0].fusion_parameters,
            "model_parameters": group[0].model_parameters,
            "train_seconds": float(sum(run.seconds for run in group)),
            "test_accuracies": [float(a) for a in accuracies],
            "validation_accuracies": [run.validation_accuracy for run in group],
            "seeds": [run.seed for run in group],
            "epochs": [run.epochs for run in group],
            "best_epochs": [run.best_epoch for run in group],
            "fusion_layer": group[0].fusion_layer,
            "checkpoint": f"checkpoints/{fusion}.pt",
            "checkpoint_seed": best.seed,
        }
    return summary


def results(
    data: MultiViewData,
    config: TrainConfig,
    runs: list[Run],
    procs: Processes,
    *,
    seconds: float,
    run_id: str,
    csv_headers: dict[str, bool],
) -> dict[str, Any]:
    """The contents of `results.json`."""
    if data.labels is None:
        raise ValueError(f"{data.name}: training needs labelled data")
    split = stratified_split(
        data.labels,
        validation_fraction=config.validation_fraction,
        test_fraction=config.test_fraction,
        seed=0,
    )
    return {
        "run_id": run_id,
        "dataset": data.name,
        "data": {
            "rows": data.num_rows,
            "view_names": list(data.view_names),
            "view_widths": list(data.widths),
            "classes": list(data.classes or ()),
            "split_rows": {
                "train": len(split[0]),
                "validation": len(split[1]),
                "test": len(split[2]),
            },
            "csv_header": csv_headers,
        },
        "config": {
            "seeds": list(range(config.seeds)),
            "max_epochs": config.epochs,
            "patience": config.patience,
            "batch_size": config.batch_size,
            "lr": config.lr,
            "weight_decay": config.weight_decay,
            "label_smoothing": config.label_smoothing,
            "dropout": config.dropout,
            "hidden": config.hidden,
            "fused_width": runs[0].config["fused_width"],
            "rank": config.rank,
            "validation_fraction": config.validation_fraction,
            "test_fraction": config.test_fraction,
            "device": str(procs.device),
            "world_size": procs.world_size,
            "threads_per_process": torch.get_num_threads(),
            "hmfusion_version": hmfusion.__version__,
            "torch_version": torch.__version__,
            "train_config": asdict(config),
        },
        "fusions": _summarize(runs),
        "total_seconds": seconds,
    }


def write_outputs(directory: Path, summary: dict[str, Any], runs: list[Run]) -> str:
    """Write a run's files into `directory` (a staging directory): `results.json`,
    `results.md`, the two figures, and per fusion the checkpoint of its best seed, bound to
    this run by `summary["run_id"]`. Returns the Markdown table."""
    checkpoints = directory / "checkpoints"
    checkpoints.mkdir()
    for fusion, entry in summary["fusions"].items():
        best = next(
            run for run in runs if run.fusion == fusion and run.seed == entry["checkpoint_seed"]
        )
        save_checkpoint(
            checkpoints,
            fusion,
            best.state,
            {
                "model": best.config,
                "run_id": summary["run_id"],
                "seed": best.seed,
                "test_accuracy": best.test_accuracy,
                "validation_accuracy": best.validation_accuracy,
                "dataset": summary["dataset"],
                "hmfusion_version": hmfusion.__version__,
                "torch_version": torch.__version__,
            },
        )
    table = results_table(summary["fusions"])
    (directory / "results.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (directory / "results.md").write_text(table + "\n", encoding="utf-8")
    title = (
        f"{summary['dataset']}: {summary['data']['rows']} rows, "
        f"{len(summary['data']['view_widths'])} views, "
        f"{len(summary['config']['seeds'])} seeds"
    )
    plot_accuracy_vs_params(summary["fusions"], directory / "accuracy_vs_params.png", title)
    plot_training_curves(
        [
            {"fusion": run.fusion, "seed": run.seed, "best_epoch": run.best_epoch, **run.curves}
            for run in runs
        ],
        directory / "training_curves.png",
    )
    return table
