"""Sweep every fusion over its parameter budgets: accuracy against fusion parameters.

`hmfusion sweep` takes the data, model, training and output flags of `hmfusion train` and
trains, for every fusion of --fusion, each point of its budget grid (see
[`hmfusion.apps.train.budgets`][hmfusion.apps.train.budgets]: HM and LPHM over the block size
p = q, HM also over --hm-terms; low-rank, dual-LPHM and random over --ranks; dense and mean once)
with the same seeds and splits. Writes to --out: results.json (per point: test accuracy per seed,
mean and sample std, fusion and model parameters, epochs, seconds per epoch; the Pareto fronts;
the total seconds of all its runs), results.md (the table, also printed) and sweep.png
(accuracy against fusion parameters, log axis, one line per fusion, the Pareto front marked,
dense and mean as reference lines).

--protocol literature trains on 80/20 train/test splits and tests the last epoch's model (no
validation set, no early stopping), as published mfeat figures do. --resume keeps the points
already in --out/results.json (same data and training settings) and trains the rest;
interrupted with Ctrl-C, a sweep writes the points it finished, so --resume goes on from there.
--render redraws results.md and sweep.png (and the fronts in results.json) from the points in
--out/results.json, without training. --quick is
the CI check: two points per fusion, 2 seeds, 4 epochs, about 300 rows.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from hmfusion.apps.common import (
    EXIT_INTERRUPTED,
    UsageError,
    error,
    positive_int,
    resolve_device,
)
from hmfusion.apps.outputs import OutputDirectory, OutputFile
from hmfusion.apps.train import command as train_command
from hmfusion.apps.train.budgets import BudgetPoint, budget_grid
from hmfusion.apps.train.distributed import environment, processes
from hmfusion.apps.train.loop import TrainConfig, fit, model_config
from hmfusion.apps.train.model import MultiViewClassifier
from hmfusion.apps.train.sweep_report import fronts, plot_sweep, sweep_table
from hmfusion.data import MultiViewData, stratified_split
from hmfusion.ops import native

__all__ = ["add_arguments", "main"]

SWEEP_FUSIONS = "hm,lphm,lowrank,dual_lphm,random,dense,mean"
FORMAT = "hmfusion-sweep"


def _int_list(text: str) -> list[int]:
    values = [positive_int(part.strip()) for part in text.split(",") if part.strip()]
    if not values:
        raise argparse.ArgumentTypeError(
            f"must be a comma-separated list of integers, got {text!r}"
        )
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the flags of `hmfusion sweep` to `parser`: `hmfusion train`'s, then the grid's."""
    train_command.add_arguments(parser)
    for action in parser._actions:  # the same flags, with what they mean in a sweep
        if action.dest == "fusion":
            action.default = SWEEP_FUSIONS
            action.help = f"comma-separated fusions to sweep (default: {SWEEP_FUSIONS})"
        elif action.dest == "rank":
            action.help = "LPHM's rank r while p is swept (default: 2)"
        elif action.dest in ("p", "q", "terms"):
            action.help = "set per point by the sweep (see --hm-terms); not accepted here"
        elif action.dest == "out":
            action.default = "hmfusion-sweep"
            action.help = "output directory (default: hmfusion-sweep)"
    grid = parser.add_argument_group("sweep")
    grid.add_argument(
        "--ranks",
        type=_int_list,
        default=[1, 2, 4, 8, 16],
        metavar="LIST",
        help="ranks r of lowrank, dual_lphm and random (default: 1,2,4,8,16)",
    )
    grid.add_argument(
        "--block-sizes",
        type=_int_list,
        metavar="LIST",
        help="the p (= q) of hm and lphm to train (default: every p dividing n, and D "
        "unless --pad)",
    )
    grid.add_argument(
        "--hm-terms",
        type=_int_list,
        default=[1],
        metavar="LIST",
        help="Kronecker products summed by hm, each swept over p (default: 1)",
    )
    grid.add_argument(
        "--protocol",
        choices=("holdout", "literature"),
        default="holdout",
        help="holdout: train's splits and early stopping; literature: 80/20 train/test "
        "(--test-fraction), the last epoch's model (default: holdout)",
    )
    grid.add_argument(
        "--quick",
        action="store_true",
        help="a small sweep for CI (seconds on a quiet machine, about a minute on 2 busy cores)",
    )
    grid.add_argument(
        "--resume", action="store_true", help="keep the points in --out and train the rest"
    )
    grid.add_argument(
        "--render", action="store_true", help="redraw the table and figure of --out; no training"
    )


def _config(args: argparse.Namespace) -> TrainConfig:
    if args.p != "auto" or args.q is not None or args.terms != 1:
        raise UsageError("--p, --q and --terms are set per point by the sweep (see --hm-terms)")
    config = train_command._train_config(args)
    if args.quick:
        config = dataclasses.replace(config, seeds=2, epochs=4, max_rows=config.max_rows or 300)
    if args.protocol == "literature":
        config = dataclasses.replace(config, validation_fraction=0.0, selection="last")
    return config


def _grid(data: MultiViewData, config: TrainConfig, args: argparse.Namespace) -> list[BudgetPoint]:
    probe = model_config(data, "dense", config, seed=0)
    D = sum(probe["widths"]) if config.hidden == 0 else config.hidden * len(data.widths)
    points = budget_grid(
        probe["fused_width"],
        D,
        config.fusions,
        ranks=args.ranks,
        terms=args.hm_terms,
        lphm_rank=config.rank,
        pad=config.pad,
        block_sizes=args.block_sizes,
    )
    if args.quick:  # the cheapest and dearest point of every fusion
        by_fusion: dict[str, list[BudgetPoint]] = {}
        for point in points:
            by_fusion.setdefault(point.fusion, []).append(point)
        points = [p for group in by_fusion.values() for p in dict.fromkeys([group[0], group[-1]])]
    usable = []
    for point in points:  # e.g. mean needs equal widths: say so and go on
        try:
            _classifier(data, point, config)
        except (TypeError, ValueError) as failure:
            if not config.quiet:
                print(f"hmfusion sweep: skipping {point.key}: {failure}")
            continue
        usable.append(point)
    if not usable:
        raise UsageError("no point of the sweep can be built for this data")
    return usable


def _classifier(data: MultiViewData, point: BudgetPoint, config: TrainConfig) -> Any:
    settings = dataclasses.replace(config, fusions=(point.fusion,), **point.options())
    return MultiViewClassifier(model_config(data, point.fusion, settings, 0), device="meta")


def _warm_up(
    data: MultiViewData, point: BudgetPoint, config: TrainConfig, device: torch.device
) -> None:
    """Untimed steps of the point's model at every batch size its training meets (full and last
    batch, validation and test rows), so that one-time costs (loading the native kernels, the
    planner's choice per shape) do not count as its training time."""
    native.available()  # compiles the CPU kernels on first use (a minute or more)
    settings = dataclasses.replace(config, fusions=(point.fusion,), **point.options())
    model = MultiViewClassifier(model_config(data, point.fusion, settings, 0)).to(device)
    views = [torch.as_tensor(view, dtype=torch.float32, device=device) for view in data.views]
    parts = stratified_split(  # the sizes are the same for every seed
        data.labels if data.labels is not None else np.zeros(data.num_rows, dtype=np.int64),
        validation_fraction=config.validation_fraction,
        test_fraction=config.test_fraction,
        seed=0,
    )
    train = len(parts[0])
    for rows in {min(config.batch_size, train), train % config.batch_size}:
        if rows:
            model([view[:rows] for view in views]).sum().backward()
    with torch.no_grad():
        for rows in {len(parts[1]), len(parts[2])} - {0}:
            model([view[:rows] for view in views])


def _settings(data: MultiViewData, config: TrainConfig, protocol: str) -> dict[str, Any]:
    """What must match for --resume to reuse points: the data and every training setting."""
    train = dataclasses.asdict(config)
    for name in ("fusions", "rank", "p", "q", "terms", "threads", "quiet"):
        train.pop(name)
    return {
        "dataset": data.name,
        "rows": data.num_rows,
        "view_names": list(data.view_names),
        "view_widths": list(data.widths),
        "classes": [str(c) for c in data.classes or ()],
        "protocol": protocol,
        "train_config": train,
    }


def _point_entry(point: BudgetPoint, runs: list[Any]) -> dict[str, Any]:
    accuracies = np.array([run.test_accuracy for run in runs])
    epochs = [run.epochs for run in runs]
    return {
        "key": point.key,
        "fusion": point.fusion,
        "options": point.options(),
        "fusion_layer": runs[0].fusion_layer,
        "fusion_parameters": runs[0].fusion_parameters,
        "model_parameters": runs[0].model_parameters,
        "seeds": [run.seed for run in runs],
        "test_accuracies": [float(a) for a in accuracies],
        "test_accuracy_mean": float(accuracies.mean()),
        "test_accuracy_std": float(accuracies.std(ddof=1)) if len(runs) > 1 else 0.0,
        "epochs": epochs,
        "seconds": [run.seconds for run in runs],
        "seconds_per_epoch": float(sum(run.seconds for run in runs) / sum(epochs)),
    }


def _summary(settings: dict[str, Any], points: list[dict[str, Any]], **extra: Any) -> dict:
    front, learned = fronts(points)
    return {
        "format": FORMAT,
        "version": 1,
        "settings": settings,
        "points": points,
        "pareto_front": front,
        "pareto_front_learned": learned,
        "torch_version": torch.__version__,
        **extra,
    }


def _render(directory: Path, summary: dict[str, Any]) -> str:
    table = sweep_table(summary)
    OutputFile(directory / "results.md", overwrite=True).write(table + "\n")
    settings = summary["settings"]
    title = (
        f"{settings['dataset']}: {settings['rows']} rows, {len(settings['view_widths'])} views, "
        f"{settings['protocol']} protocol, {len(summary['points'][0]['seeds'])} seeds"
    )
    plot_sweep(summary, directory / "sweep.png", title)
    return table


def _read(path: Path) -> dict[str, Any]:
    try:
        summary = json.loads((path / "results.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"--out {str(path)!r} holds no results.json of a sweep") from None
    except json.JSONDecodeError as failure:
        raise UsageError(f"{str(path / 'results.json')!r} is not JSON: {failure}") from None
    if not isinstance(summary, dict) or summary.get("format") != FORMAT:
        raise UsageError(f"{str(path / 'results.json')!r} is not the results of hmfusion sweep")
    return summary


def main(args: argparse.Namespace) -> int:
    """Run `hmfusion sweep`; returns the exit status (2 for bad data, arguments or --out; 130
    after Ctrl-C, with the finished points written)."""
    started = time.perf_counter()
    if args.render:  # the fronts, the table and the figure follow from the points
        summary = _read(Path(args.out))
        front, learned = fronts(summary["points"])
        summary.update(pareto_front=front, pareto_front_learned=learned)
        # (staged and committed like a run: the folder's manifest stays true)
        output = OutputDirectory(args.out, overwrite=True)
        try:
            staging = output.open()
            (staging / "results.json").write_text(json.dumps(summary, indent=2) + "\n", "utf-8")
            table = _render(staging, summary)
            output.commit()
        finally:
            output.discard()
        print(table)
        return 0
    config = _config(args)
    if environment()[1] > 1:
        raise UsageError("hmfusion sweep runs in one process; start it without torchrun")
    device = resolve_device(args.device)
    if args.resume and args.overwrite:
        raise UsageError("--resume keeps the points in --out; --overwrite would drop them")
    previous = _read(Path(args.out)) if args.resume else None
    output = OutputDirectory(
        args.out,
        overwrite=args.overwrite or args.resume,
        inputs=[*(args.views or ()), *([args.labels] if args.labels else [])],
    )
    data = train_command._prepare_data(args, config)
    settings = _settings(data, config, args.protocol)
    kept: dict[str, dict[str, Any]] = {}
    if previous is not None:
        if previous["settings"] != settings:
            raise UsageError(
                f"--resume: {args.out}/results.json was swept with other data or settings; "
                "choose a new --out"
            )
        kept = {point["key"]: point for point in previous["points"]}
    grid = _grid(data, config, args)
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    torch.set_flush_denormal(True)  # as in train: subnormal Adam moments are ~10x slower
    entries: list[dict[str, Any]] = []
    status = 0
    try:
        staging = output.open()
        show = not config.quiet
        with (
            processes(device, 0, 1, 0) as procs,
            tqdm(grid, desc="sweep", unit="point", disable=not show, dynamic_ncols=True) as bar,
        ):
            try:
                for point in bar:
                    if point.key in kept:
                        entries.append(kept[point.key])
                        continue
                    _warm_up(data, point, config, device)
                    settings_of_point = dataclasses.replace(
                        config, fusions=(point.fusion,), **point.options()
                    )
                    runs = [
                        fit(data, point.fusion, seed, settings_of_point, procs, progress=show)
                        for seed in range(config.seeds)
                    ]
                    entries.append(_point_entry(point, runs))
                    bar.set_postfix_str(
                        f"{point.key}: {100 * entries[-1]['test_accuracy_mean']:.2f} %",
                        refresh=False,
                    )
            except KeyboardInterrupt:
                status = EXIT_INTERRUPTED
            except ValueError as failure:  # fit's never-finite loss
                return error(str(failure))
        if not entries:
            return error("interrupted; no output was written", status=EXIT_INTERRUPTED)
        summary = _summary(
            settings,
            entries,
            complete=status == 0,
            # a resumed sweep's time is that of all its runs
            total_seconds=time.perf_counter() - started + (previous or {}).get("total_seconds", 0),
            runs=(previous or {}).get("runs", 1) + 1 if previous else 1,
        )
        (staging / "results.json").write_text(json.dumps(summary, indent=2) + "\n", "utf-8")
        table = _render(staging, summary)
        output.commit()
    finally:
        output.discard()
        torch.set_flush_denormal(False)
        torch.set_num_threads(threads)
    if status:
        return error(
            f"interrupted after {len(entries)} of {len(grid)} points; they are in {args.out}/ "
            "(rerun with --resume to finish)",
            status=status,
        )
    print(f"\n{data.name}: {len(grid)} points x {config.seeds} seeds ({args.protocol})\n")
    print(table)
    if not config.quiet:
        print(f"\ntotal {time.perf_counter() - started:.1f} s; results in {args.out}/")
    return 0
