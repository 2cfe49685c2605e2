"""Train and compare concatenation-fusion models on multi-view data.

By default on the packaged UCI mfeat digits (2,000 rows, six views, 10 classes). Each model is
per-view standardization -> per-view encoder (Linear + GELU to --hidden features) -> fusion of
the k encodings (--fusion: hm, dense, lowrank, lphm, dual_lphm, random, or mean, the
parameter-free average) -> GELU -> linear classifier. For every fusion and seed: a stratified
train/validation/test split picked by the seed (the same for every fusion), AdamW, early
stopping on validation loss, and test accuracy at the best epoch.

Writes to --out: results.json (per fusion: test accuracy mean and sample std over seeds as
fractions, fusion-layer and whole-model parameter counts, training seconds), a Markdown table
(also printed), accuracy_vs_params.png, training_curves.png, and per fusion a checkpoint
(checkpoints/<fusion>.pt, tensors only, plus checkpoints/<fusion>.json) for `hmfusion predict`.

Your own data: --views a.csv b.npy ... (or one .npz with the views and a 'labels' array) with
--labels y.csv or --label-column NAME|INDEX. Bad data stops with a one-line error and writes
nothing. Under torchrun (`torchrun --nproc_per_node=2 -m hmfusion train ...`) it trains with
DistributedDataParallel (gloo on CPU, nccl on CUDA); --batch-size is the global batch, and rank
0 writes the outputs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

import hmfusion
from hmfusion.data import (
    DataError,
    MultiViewData,
    check_classes,
    load_files,
    load_mfeat,
    stratified_split,
    stratified_subsample,
)

__all__ = [
    "FUSIONS",
    "MultiViewClassifier",
    "UsageError",
    "add_arguments",
    "load_checkpoint",
    "main",
]

#: --fusion choices and their layers; "mean" (the average of the view encodings) has none.
FUSIONS: dict[str, type[hmfusion.ConcatFusion] | None] = {
    "hm": hmfusion.HMConcatFusion,
    "dense": hmfusion.DenseConcatFusion,
    "lowrank": hmfusion.LowRankConcatFusion,
    "lphm": hmfusion.LPHMConcatFusion,
    "dual_lphm": hmfusion.DualLPHMConcatFusion,
    "random": hmfusion.RandomMatrixConcatFusion,
    "mean": None,
}
DEFAULT_FUSIONS = "hm,dense,lowrank,lphm,dual_lphm,mean"
_KRONECKER = ("hm", "lphm", "dual_lphm")
_CHECKPOINT_FORMAT = "hmfusion-multiview-classifier"
_CHECKPOINT_VERSION = 1
#: Test hook: when set, every process saves each run's final state_dict there
#: (``rank<r>-<fusion>-seed<s>.pt``), so a test can compare ranks and runs.
_DUMP_STATE_ENV = "HMFUSION_DUMP_STATE_DIR"


class UsageError(ValueError):
    """Command-line arguments or an environment that cannot work (bad data is a DataError)."""


# the model ------------------------------------------------------------------------------------
class Standardize(nn.Module):
    """``(x - mean) / scale`` per feature, with mean and scale fitted on the training rows.

    Shape: ``(*, d) -> (*, d)``. Both are persistent buffers, so a checkpoint standardizes new
    rows exactly as in training.
    """

    def __init__(self, width: int, *, device=None, dtype=None) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(width, device=device, dtype=dtype))
        self.register_buffer("scale", torch.ones(width, device=device, dtype=dtype))

    def fit_(self, values: np.ndarray) -> None:
        """Set mean and scale from rows ``values`` (N, d); constant features get scale 1."""
        mean = values.mean(axis=0)
        std = values.std(axis=0)
        std = np.where(std > 1e-8 * (1.0 + np.abs(mean)), std, 1.0)
        with torch.no_grad():
            self.mean.copy_(torch.from_numpy(mean))
            self.scale.copy_(torch.from_numpy(std))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.scale

    def extra_repr(self) -> str:
        return f"{self.mean.shape[0]}"


class MultiViewClassifier(nn.Module):
    """Standardize -> encode -> fuse -> classify k views of the same rows.

    ``z_i = GELU(Linear_i((x_i - μ_i) / σ_i))`` of width ``hidden`` (or the standardized view
    itself when ``hidden == 0``); ``f = fusion([z_1, …, z_k])`` of width ``fused_width`` (the
    mean of the z_i for ``"mean"``); ``logits = Linear(Dropout(GELU(f)))``.

    Args:
        config: a JSON-compatible dict (see :meth:`make_config`); it is all that is needed to
            rebuild the model, so checkpoints store it next to the ``state_dict``.

    Shape:
        - Input: a list of k tensors, view i of shape ``(*, widths[i])``.
        - Output: ``(*, len(classes))`` logits.

    Raises:
        ValueError: ``"mean"`` fusion with views of different widths (use ``hidden > 0``);
            the fusion layer's own checks (see :mod:`hmfusion.fusion`).
    """

    def __init__(self, config: dict, *, device=None, dtype=None) -> None:
        super().__init__()
        self.config = config
        factory = {"device": device, "dtype": dtype}
        widths, hidden = config["widths"], config["hidden"]
        dropout = config["dropout"]
        self.standardize = nn.ModuleList(Standardize(w, **factory) for w in widths)
        if hidden > 0:
            self.encoders = nn.ModuleList(
                nn.Sequential(nn.Linear(w, hidden, **factory), nn.GELU(), nn.Dropout(dropout))
                for w in widths
            )
            dims = [hidden] * len(widths)
        else:
            self.encoders = nn.ModuleList(nn.Identity() for _ in widths)
            dims = list(widths)
        self.fusion = _build_fusion(config["fusion"], dims, config["fused_width"],
                                    config["fusion_options"], factory)
        fused = dims[0] if self.fusion is None else self.fusion.n
        self.head = nn.Sequential(nn.GELU(), nn.Dropout(dropout),
                                  nn.Linear(fused, len(config["classes"]), **factory))

    @staticmethod
    def make_config(data: MultiViewData, fusion: str, *, hidden: int, fused_width: int | None,
                    fusion_options: dict, dropout: float) -> dict:
        """The model config for ``data``; ``fused_width`` None means ``hidden`` (or 64 without
        encoders). The mean fusion's width is that of the encodings."""
        if fusion == "mean":
            fused_width = hidden if hidden > 0 else data.widths[0]
        elif fused_width is None:
            fused_width = hidden if hidden > 0 else 64
        return {
            "format": _CHECKPOINT_FORMAT,
            "version": _CHECKPOINT_VERSION,
            "view_names": list(data.view_names),
            "widths": list(data.widths),
            "classes": list(data.classes),
            "hidden": hidden,
            "fusion": fusion,
            "fused_width": fused_width,
            "fusion_options": dict(fusion_options),
            "dropout": dropout,
        }

    def resolved_config(self) -> dict:
        """The config with the fusion's automatic choices (p, q, pad) written out, so that a
        checkpoint rebuilds exactly this layer whatever future versions pick for ``"auto"``."""
        config = dict(self.config)
        options = dict(config["fusion_options"])
        if config["fusion"] in _KRONECKER:
            options.update(p=self.fusion.p, q=self.fusion.q, pad=self.fusion.pad)
        config["fusion_options"] = options
        return config

    def forward(self, views: Sequence[Tensor]) -> Tensor:
        encoded = [enc(std(x)) for std, enc, x in zip(self.standardize, self.encoders, views)]
        if self.fusion is None:
            fused = torch.stack(encoded).mean(dim=0)
        else:
            fused = self.fusion(encoded)
        return self.head(fused)

    @property
    def fusion_parameters(self) -> int:
        """Trained values of the fusion layer, its bias included (0 for ``"mean"``)."""
        if self.fusion is None:
            return 0
        return sum(p.numel() for p in self.fusion.parameters() if p.requires_grad)

    @property
    def num_parameters(self) -> int:
        """Trained values of the whole model."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def _build_fusion(name: str, dims: list[int], n: int, options: dict, factory: dict
                  ) -> nn.Module | None:
    if name not in FUSIONS:
        raise ValueError(f"unknown fusion {name!r}; choose from {', '.join(FUSIONS)}")
    layer = FUSIONS[name]
    if layer is None:
        if len(set(dims)) > 1:
            raise ValueError(f"mean fusion averages the view encodings, so they need one width; "
                             f"got widths {dims} (use --hidden > 0)")
        return None
    return layer(dims, n, bias=True, **options, **factory)


def _fusion_options(name: str, args: argparse.Namespace, seed: int) -> dict:
    """Constructor options of a fusion layer from the command line."""
    if name in ("dense", "mean"):
        return {}
    if name == "lowrank":
        return {"r": args.rank}
    if name == "random":
        return {"r": args.rank, "seed": seed}
    options: dict = {"p": args.p, "q": args.q, "pad": args.pad}
    if name == "hm":
        options["terms"] = args.terms
    else:
        options["r"] = args.rank
    return options


def _needs_pad(args: argparse.Namespace, dims: list[int], n: int) -> bool:
    """An explicit p or q that does not divide n or D turns on zero padding."""
    D = sum(dims)
    return ((isinstance(args.p, int) and n % args.p != 0)
            or (isinstance(args.q, int) and D % args.q != 0))


def load_checkpoint(path: str | Path, *, device: torch.device | str = "cpu"
                    ) -> tuple[MultiViewClassifier, dict]:
    """Rebuild a model saved by ``hmfusion train``: ``<name>.pt`` (tensors only, read with
    ``torch.load(weights_only=True)``) and ``<name>.json`` (the config) side by side.

    ``path`` may name either file. Returns the model (in eval mode) and the JSON metadata.

    Raises:
        DataError: a missing file, a JSON file that is not an hmfusion checkpoint config, or
            weights that do not fit the config.
    """
    path = Path(path)
    weights, config_path = path.with_suffix(".pt"), path.with_suffix(".json")
    for file in (weights, config_path):
        if not file.is_file():
            raise DataError(f"checkpoint file {str(file)!r} does not exist (a checkpoint is a "
                            ".pt and a .json file of the same name)")
    try:
        meta = json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{config_path} is not valid JSON: {error}") from None
    config = meta.get("model") if isinstance(meta, dict) else None
    if not isinstance(config, dict) or config.get("format") != _CHECKPOINT_FORMAT:
        raise DataError(f"{config_path} is not an hmfusion train checkpoint config")
    if config.get("version") != _CHECKPOINT_VERSION:
        raise DataError(f"{config_path}: checkpoint version {config.get('version')} is not "
                        f"supported (this hmfusion reads version {_CHECKPOINT_VERSION})")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model = MultiViewClassifier(config)
        model.load_state_dict(state)
    except (RuntimeError, ValueError, TypeError, KeyError, EOFError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise DataError(f"{weights} does not match {config_path.name}: {first_line}") from None
    return model.to(device).eval(), meta


# processes ------------------------------------------------------------------------------------
@dataclass
class _Processes:
    """This process's place in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def sum(self, values: Tensor) -> Tensor:
        """Element-wise sum over all processes (float64 on this process's device)."""
        if self.distributed:
            torch.distributed.all_reduce(values, op=torch.distributed.ReduceOp.SUM)
        return values

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()


def _environment_processes() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) outside it."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as error:
        raise UsageError(f"malformed torchrun environment: {error}") from None
    if world < 1 or not 0 <= rank < world:
        raise UsageError(f"malformed torchrun environment: RANK={rank}, WORLD_SIZE={world}")
    return rank, world, local


def _resolve_device(name: str, local_rank: int, distributed: bool) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r} is not a device (use cpu or cuda)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("--device cuda: CUDA is not available on this machine")
        if distributed or device.index is None:
            device = torch.device("cuda", local_rank if distributed else 0)
    elif device.type != "cpu":
        raise UsageError(f"--device {name!r}: only cpu and cuda are supported")
    return device


# training -------------------------------------------------------------------------------------
@dataclass
class _Run:
    fusion: str
    seed: int
    test_accuracy: float
    validation_accuracy: float
    epochs: int
    best_epoch: int
    seconds: float
    fusion_parameters: int
    model_parameters: int
    fusion_layer: str
    config: dict
    state: dict[str, Tensor]
    curves: dict[str, list[float]]


def _evaluate(model: nn.Module, views: list[Tensor], labels: Tensor, rows: Tensor,
              procs: _Processes) -> tuple[float, float]:
    """Mean cross-entropy and accuracy on ``rows``, each process taking every world_size-th."""
    mine = rows[procs.rank::procs.world_size]
    model.eval()
    with torch.no_grad():
        logits = model([view[mine] for view in views])
        loss = F.cross_entropy(logits, labels[mine], reduction="sum")
        correct = (logits.argmax(dim=-1) == labels[mine]).sum()
    totals = procs.sum(torch.stack([loss.double(), correct.double(),
                                    torch.tensor(float(mine.numel()), dtype=torch.float64,
                                                 device=loss.device)]))
    return (totals[0] / totals[2]).item(), (totals[1] / totals[2]).item()


def _train_run(data: MultiViewData, fusion: str, seed: int, args: argparse.Namespace,
               procs: _Processes, epoch_bar: bool) -> _Run:
    """One model: split by ``seed``, train with early stopping, test at the best epoch."""
    started = time.perf_counter()
    train_rows, val_rows, test_rows = stratified_split(
        data.labels, validation_fraction=args.validation_fraction,
        test_fraction=args.test_fraction, seed=seed,
    )
    torch.manual_seed(seed)
    config = _model_config(data, fusion, args, seed)
    model = MultiViewClassifier(config)
    for standardize, view in zip(model.standardize, data.views):
        standardize.fit_(view[train_rows])
    model.to(procs.device)
    device = procs.device
    views = [torch.as_tensor(view, dtype=torch.float32, device=device) for view in data.views]
    labels = torch.as_tensor(data.labels, device=device)
    train_t, val_t, test_t = (torch.as_tensor(r, device=device)
                              for r in (train_rows, val_rows, test_rows))

    trained: nn.Module = model
    if procs.distributed:
        device_ids = [device.index] if device.type == "cuda" else None
        # the standardization buffers are fitted identically everywhere: nothing to broadcast
        trained = nn.parallel.DistributedDataParallel(model, device_ids=device_ids,
                                                      broadcast_buffers=False)
    # identical initial weights everywhere; dropout masks differ between processes
    torch.manual_seed(seed + 7919 * procs.rank)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    # The sampler splits the seed's permutation of the training rows position by position, so
    # the union of the processes' k-th local batches is the k-th batch of a single-process run.
    sampler = torch.utils.data.DistributedSampler(
        range(len(train_rows)), num_replicas=procs.world_size, rank=procs.rank,
        shuffle=True, seed=seed, drop_last=False,
    )
    local_batch = args.batch_size // procs.world_size

    best_loss, best_epoch, best_state = math.inf, -1, None
    curves: dict[str, list[float]] = {"train_loss": [], "validation_loss": [],
                                      "validation_accuracy": []}
    epochs = tqdm(range(args.epochs), desc=f"{fusion} seed {seed}", unit="epoch",
                  leave=False, disable=not epoch_bar, dynamic_ncols=True)
    for epoch in epochs:
        sampler.set_epoch(epoch)
        order = train_t[torch.as_tensor(list(sampler), dtype=torch.long, device=device)]
        trained.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        for start in range(0, order.numel(), local_batch):
            batch = order[start:start + local_batch]
            loss = F.cross_entropy(trained([view[batch] for view in views]), labels[batch],
                                   label_smoothing=args.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach().double() * batch.numel()
        totals = procs.sum(torch.stack([loss_sum, torch.tensor(float(order.numel()),
                                                               dtype=torch.float64,
                                                               device=device)]))
        val_loss, val_acc = _evaluate(model, views, labels, val_t, procs)
        curves["train_loss"].append((totals[0] / totals[1]).item())
        curves["validation_loss"].append(val_loss)
        curves["validation_accuracy"].append(val_acc)
        epochs.set_postfix(val_acc=f"{val_acc:.3f}", refresh=False)
        if val_loss < best_loss:
            best_loss, best_epoch = val_loss, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        elif epoch - best_epoch >= args.patience:
            break
    epochs.close()
    if best_state is None:
        raise UsageError(f"{fusion}, seed {seed}: the validation loss was never finite; "
                         "lower --lr")
    model.load_state_dict(best_state)
    _, val_acc = _evaluate(model, views, labels, val_t, procs)
    _, test_acc = _evaluate(model, views, labels, test_t, procs)
    return _Run(
        fusion=fusion, seed=seed, test_accuracy=test_acc, validation_accuracy=val_acc,
        epochs=len(curves["train_loss"]), best_epoch=best_epoch + 1,
        seconds=time.perf_counter() - started,
        fusion_parameters=model.fusion_parameters, model_parameters=model.num_parameters,
        fusion_layer=repr(model.fusion) if model.fusion is not None else "mean",
        config=model.resolved_config(),
        state={k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
        curves=curves,
    )


def _model_config(data: MultiViewData, fusion: str, args: argparse.Namespace, seed: int) -> dict:
    options = _fusion_options(fusion, args, seed)
    config = MultiViewClassifier.make_config(
        data, fusion, hidden=args.hidden, fused_width=args.fused_width,
        fusion_options=options, dropout=args.dropout,
    )
    if fusion in _KRONECKER and not options["pad"]:
        dims = [args.hidden] * len(data.widths) if args.hidden > 0 else list(data.widths)
        config["fusion_options"]["pad"] = _needs_pad(args, dims, config["fused_width"])
    return config


# outputs --------------------------------------------------------------------------------------
def _summarize(runs: list[_Run]) -> dict:
    by_fusion: dict[str, list[_Run]] = {}
    for run in runs:
        by_fusion.setdefault(run.fusion, []).append(run)
    summary = {}
    for fusion, group in by_fusion.items():
        accuracies = np.array([run.test_accuracy for run in group])
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
        }
    return summary


def markdown_table(fusions: dict) -> str:
    """The results as a Markdown table (accuracy in percent, mean ± sample std over seeds)."""
    dense = fusions.get("dense", {}).get("fusion_parameters")
    head = ["fusion", "test accuracy (%)", "fusion params"]
    if dense:
        head.append("% of dense")
    head += ["model params", "epochs", "train time (s)"]
    rule = ["---"] + ["---:"] * (len(head) - 1)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(rule) + "|"]
    for name, r in fusions.items():
        cells = [name, f"{100 * r['test_accuracy_mean']:.2f} ± {100 * r['test_accuracy_std']:.2f}",
                 f"{r['fusion_parameters']:,}"]
        if dense:
            cells.append(f"{100 * r['fusion_parameters'] / dense:.1f}")
        cells += [f"{r['model_parameters']:,}", f"{np.mean(r['epochs']):.0f}",
                  f"{r['train_seconds']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plot_accuracy_vs_params(fusions: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, r) in enumerate(fusions.items()):
        mean, std = 100 * r["test_accuracy_mean"], 100 * r["test_accuracy_std"]
        color = colors[i % len(colors)]
        if r["fusion_parameters"] == 0:
            ax.axhline(mean, color=color, linestyle="--", linewidth=1.2,
                       label=f"{name} (no fusion parameters)")
            ax.axhspan(mean - std, mean + std, color=color, alpha=0.12)
            continue
        ax.errorbar(r["fusion_parameters"], mean, yerr=std, fmt="o", color=color, capsize=4,
                    markersize=7, label=name)
        ax.annotate(name, (r["fusion_parameters"], mean), textcoords="offset points",
                    xytext=(7, 5), fontsize=9)
    ax.set_xscale("log")
    ax.margins(x=0.12)  # room for the labels of the outermost points
    ax.set_xlabel("fusion-layer parameters (log scale)")
    ax.set_ylabel("test accuracy (%), mean ± std over seeds")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_curves(runs: list[_Run], path: Path) -> None:
    """Small multiples, one column per fusion: losses (top) and validation accuracy (bottom)
    against the epoch, one line per seed; the dot marks the best epoch, whose weights are kept."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(run.fusion for run in runs))
    fig, axes = plt.subplots(2, len(names), figsize=(2.9 * len(names) + 0.6, 5.6), dpi=110,
                             sharex="col", sharey="row", squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    seeds = sorted({run.seed for run in runs})
    for column, name in enumerate(names):
        loss_ax, acc_ax = axes[0, column], axes[1, column]
        for run in (r for r in runs if r.fusion == name):
            color = colors[seeds.index(run.seed) % len(colors)]
            epochs = np.arange(1, run.epochs + 1)
            best = run.best_epoch - 1
            loss_ax.plot(epochs, run.curves["train_loss"], color=color, linewidth=1,
                         label=f"seed {run.seed} train")
            loss_ax.plot(epochs, run.curves["validation_loss"], color=color, linewidth=1,
                         linestyle="--", label=f"seed {run.seed} validation")
            loss_ax.plot(run.best_epoch, run.curves["validation_loss"][best], "o", color=color,
                         markersize=4)
            accuracy = 100 * np.asarray(run.curves["validation_accuracy"])
            acc_ax.plot(epochs, accuracy, color=color, linewidth=1)
            acc_ax.plot(run.best_epoch, accuracy[best], "o", color=color, markersize=4)
        loss_ax.set_title(name)
        loss_ax.set_yscale("log")
        acc_ax.set_xlabel("epoch")
        for ax in (loss_ax, acc_ax):
            ax.grid(True, which="both", alpha=0.3)
    axes[0, 0].set_ylabel("cross-entropy\n(solid: train, smoothed; dashed: validation)")
    axes[1, 0].set_ylabel("validation accuracy (%)")
    low = min(np.percentile(run.curves["validation_accuracy"], 10) for run in runs)
    axes[1, 0].set_ylim(max(0.0, 100 * low - 2), 100.5)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=min(6, len(labels)), fontsize=8,
               frameon=False)
    fig.suptitle("dot: best validation loss, the epoch whose weights are kept", y=0.03,
                 fontsize=9)
    fig.tight_layout(rect=(0, 0.04, 1, 0.93))
    fig.savefig(path)
    plt.close(fig)


def _write_outputs(out: Path, results: dict, runs: list[_Run], table: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    checkpoints = out / "checkpoints"
    checkpoints.mkdir(exist_ok=True)
    for fusion, summary in results["fusions"].items():
        group = [run for run in runs if run.fusion == fusion]
        best = max(group, key=lambda run: (run.validation_accuracy, -run.seed))
        torch.save(best.state, checkpoints / f"{fusion}.pt")
        meta = {
            "model": best.config,
            "seed": best.seed,
            "test_accuracy": best.test_accuracy,
            "validation_accuracy": best.validation_accuracy,
            "dataset": results["dataset"],
            "hmfusion_version": hmfusion.__version__,
            "torch_version": torch.__version__,
        }
        (checkpoints / f"{fusion}.json").write_text(json.dumps(meta, indent=2) + "\n",
                                                    encoding="utf-8")
        summary["checkpoint_seed"] = best.seed
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (out / "results.md").write_text(table + "\n", encoding="utf-8")
    title = (f"{results['dataset']}: {results['data']['rows']} rows, "
             f"{len(results['data']['view_widths'])} views, "
             f"{len(results['config']['seeds'])} seeds")
    _plot_accuracy_vs_params(results["fusions"], out / "accuracy_vs_params.png", title)
    _plot_curves(runs, out / "training_curves.png")


# command line ---------------------------------------------------------------------------------
def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _nonnegative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _block_size(text: str) -> int | str:
    return text if text == "auto" else _positive_int(text)


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def _nonnegative_float(text: str) -> float:
    value = float(text)
    if not value >= 0.0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def label_column(text: str) -> int | str:
    """``--label-column``: an int (a column index; negative counts from the end) or a name."""
    try:
        return int(text)
    except ValueError:
        return text


def add_data_arguments(parser: argparse.ArgumentParser, *, labels_help: str
                       ) -> argparse._ArgumentGroup:
    """The data flags shared by ``train`` and ``predict``; returns their group."""
    group = parser.add_argument_group("data (default: the packaged UCI mfeat digits)")
    group.add_argument("--views", nargs="+", metavar="FILE",
                       help="views files, rows aligned: .csv/.tsv (header optional), .npy, or one "
                            ".npz holding every view (and a 'labels' array)")
    group.add_argument("--labels", metavar="FILE", help=labels_help)
    group.add_argument("--label-column", type=label_column, metavar="NAME|INDEX",
                       help="the column holding the labels: of --labels if given, else of the "
                            "views files (a name: each file whose header has it; an index, "
                            "negative from the end: every views file)")
    group.add_argument("--csv-header", choices=("auto", "yes", "no"), default="auto",
                       help="whether CSV files start with a header row (default: auto-detect)")
    return group


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``hmfusion train``."""
    data = add_data_arguments(parser, labels_help="labels, one per row (integers or class "
                                                  "names): .csv/.tsv, .npy or .npz")
    data.add_argument(
        "--max-rows", type=_positive_int, metavar="N",
        help="train on a stratified subsample of about N rows (quick trials)")

    model = parser.add_argument_group("model")
    model.add_argument("--fusion", default=DEFAULT_FUSIONS, metavar="LIST",
                       help=f"comma-separated fusions to compare, from {', '.join(FUSIONS)} "
                            f"(default: {DEFAULT_FUSIONS})")
    model.add_argument("--hidden", type=_nonnegative_int, default=64, metavar="H",
                       help="width of every view's encoder; 0 fuses the standardized views "
                            "directly (default: 64)")
    model.add_argument("--fused-width", type=_positive_int, metavar="N",
                       help="output width n of the fusion layer (default: --hidden, or 64)")
    model.add_argument("--rank", type=_positive_int, default=2, metavar="R",
                       help="rank r of lowrank, lphm, dual_lphm and random (default: 2)")
    model.add_argument("--p", type=_block_size, default="auto", metavar="P",
                       help="rows of the Kronecker factor A for hm/lphm/dual_lphm "
                            "(default: auto, the fewest parameters)")
    model.add_argument("--q", type=_block_size, default=None, metavar="Q",
                       help="columns of A (default: p; 'auto' picks it independently)")
    model.add_argument("--terms", type=_positive_int, default=1,
                       help="Kronecker products summed by hm (default: 1)")
    model.add_argument("--pad", action="store_true",
                       help="zero-pad hm/lphm/dual_lphm so any p, q fit (on automatically when "
                            "--p or --q do not divide the sizes)")
    model.add_argument("--dropout", type=_probability, default=0.0,
                       help="dropout after the encoders and the fusion (default: 0; with "
                            "dropout, distributed runs match single-process runs only "
                            "statistically)")

    training = parser.add_argument_group("training")
    training.add_argument("--seeds", type=_positive_int, default=3, metavar="N",
                          help="repeat every fusion with seeds 0..N-1; the seed picks the split "
                               "and the initialization (default: 3)")
    training.add_argument("--epochs", type=_positive_int, default=100, metavar="N",
                          help="maximum epochs (default: 100)")
    training.add_argument("--patience", type=_positive_int, default=25, metavar="N",
                          help="stop after N epochs without a lower validation loss (default: 25)")
    training.add_argument("--batch-size", type=_positive_int, default=64, metavar="B",
                          help="global batch size, split over the processes (default: 64)")
    training.add_argument("--lr", type=_nonnegative_float, default=3e-3,
                          help="AdamW learning rate (default: 3e-3)")
    training.add_argument("--weight-decay", type=_nonnegative_float, default=1e-3,
                          help="AdamW weight decay (default: 1e-3)")
    training.add_argument("--label-smoothing", type=_probability, default=0.1,
                          help="label smoothing of the training loss (default: 0.1)")
    training.add_argument("--validation-fraction", type=_fraction, default=0.1, metavar="F",
                          help="share of every class held out for early stopping (default: 0.1)")
    training.add_argument("--test-fraction", type=_fraction, default=0.2, metavar="F",
                          help="share of every class held out for testing (default: 0.2)")
    training.add_argument("--device", default="cpu",
                          help="cpu or cuda (under torchrun: each process's local GPU) "
                               "(default: cpu)")
    training.add_argument("--threads", type=_positive_int, default=1, metavar="N",
                          help="torch CPU threads per process; the layers are small, so more "
                               "threads mostly wait on each other (default: 1)")

    output = parser.add_argument_group("output")
    output.add_argument("--out", default="hmfusion-results", metavar="DIR",
                        help="output directory (default: hmfusion-results)")
    output.add_argument("--quiet", action="store_true", help="no progress bars or messages")


def _error(message: str, show: bool = True) -> int:
    if show:
        print(f"hmfusion: error: {message}", file=sys.stderr)
    return 2


def _load_data(args: argparse.Namespace) -> MultiViewData:
    if args.views:
        return load_files(args.views, args.labels, args.label_column, header=args.csv_header)
    if args.labels is not None or args.label_column is not None:
        raise UsageError("--labels and --label-column need --views (the packaged data set has "
                         "its labels)")
    return load_mfeat()


def _parse_fusions(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise UsageError("--fusion is empty")
    unknown = [name for name in names if name not in FUSIONS]
    if unknown:
        raise UsageError(f"--fusion: unknown {', '.join(map(repr, unknown))}; choose from "
                         f"{', '.join(FUSIONS)}")
    return list(dict.fromkeys(names))


def _prepare(args: argparse.Namespace, world: int, local_rank: int
             ) -> tuple[list[str], torch.device, Path, MultiViewData]:
    """Every check on the arguments and the data, before anything is trained or written."""
    fusions = _parse_fusions(args.fusion)
    if args.validation_fraction + args.test_fraction >= 1:
        raise UsageError("--validation-fraction plus --test-fraction must be below 1")
    if args.batch_size % world:
        raise UsageError(f"--batch-size {args.batch_size} must be divisible by the number of "
                         f"processes ({world})")
    device = _resolve_device(args.device, local_rank, world > 1)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {str(out)!r} exists and is not a directory")
    data = _load_data(args)
    check_classes(data.labels, data.classes)
    if args.max_rows is not None:
        data = data.subset(stratified_subsample(data.labels, args.max_rows))
    for fusion in fusions:  # every model can be built
        try:
            MultiViewClassifier(_model_config(data, fusion, args, seed=0))
        except (TypeError, ValueError) as error:
            raise UsageError(f"--fusion {fusion}: {error}") from None
    return fusions, device, out, data


def main(args: argparse.Namespace) -> int:
    """Run ``hmfusion train``; returns the exit status (2 for bad data or arguments)."""
    wall = time.perf_counter()
    try:
        rank, world, local_rank = _environment_processes()
    except UsageError as error:
        return _error(str(error))
    show = rank == 0
    try:
        fusions, device, out, data = _prepare(args, world, local_rank)
    except (DataError, UsageError) as error:
        return _error(str(error), show)

    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    procs = _Processes(rank, world, device)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL's collectives use the current device
    if procs.distributed:
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                             rank=rank, world_size=world)
    # Small factors (dual-LPHM above all) drive gradients and Adam's moments into subnormal
    # floats, which x86 CPUs handle ~10x slower; flushing them to zero changes nothing visible.
    torch.set_flush_denormal(True)
    try:
        try:
            runs = _train_all(data, fusions, args, procs)
        except UsageError as error:
            return _error(str(error), show)
        if procs.is_main:
            results = _results(data, fusions, args, runs, procs, time.perf_counter() - wall)
            table = markdown_table(results["fusions"])
            _write_outputs(out, results, runs, table)
            print(_describe(data, args, procs))
            print(table)
            if not args.quiet:
                print(f"\ntotal {time.perf_counter() - wall:.1f} s; results in {out}/")
        procs.barrier()
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(threads)
        if procs.distributed:
            torch.distributed.destroy_process_group()
    return 0


def _train_all(data: MultiViewData, fusions: list[str], args: argparse.Namespace,
               procs: _Processes) -> list[_Run]:
    dump = os.environ.get(_DUMP_STATE_ENV)
    show = procs.is_main and not args.quiet
    runs = []
    with tqdm(total=len(fusions) * args.seeds, desc="train", unit="run", disable=not show,
              dynamic_ncols=True) as bar:
        for fusion in fusions:
            for seed in range(args.seeds):
                run = _train_run(data, fusion, seed, args, procs, epoch_bar=show)
                runs.append(run)
                if dump:
                    Path(dump).mkdir(parents=True, exist_ok=True)
                    torch.save(run.state, Path(dump) / f"rank{procs.rank}-{fusion}-seed{seed}.pt")
                bar.set_postfix_str(f"{fusion} seed {seed}: test acc {run.test_accuracy:.3f}",
                                    refresh=False)
                bar.update()
    return runs


def _results(data: MultiViewData, fusions: list[str], args: argparse.Namespace,
             runs: list[_Run], procs: _Processes, seconds: float) -> dict:
    split = stratified_split(data.labels, validation_fraction=args.validation_fraction,
                             test_fraction=args.test_fraction, seed=0)
    return {
        "dataset": data.name,
        "data": {
            "rows": data.num_rows,
            "view_names": list(data.view_names),
            "view_widths": list(data.widths),
            "classes": list(data.classes),
            "split_rows": {"train": len(split[0]), "validation": len(split[1]),
                           "test": len(split[2])},
        },
        "config": {
            "seeds": list(range(args.seeds)),
            "max_epochs": args.epochs,
            "patience": args.patience,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "weight_decay": args.weight_decay,
            "label_smoothing": args.label_smoothing,
            "dropout": args.dropout,
            "hidden": args.hidden,
            "fused_width": runs[0].config["fused_width"],
            "rank": args.rank,
            "validation_fraction": args.validation_fraction,
            "test_fraction": args.test_fraction,
            "device": str(procs.device),
            "world_size": procs.world_size,
            "threads_per_process": torch.get_num_threads(),
            "hmfusion_version": hmfusion.__version__,
            "torch_version": torch.__version__,
        },
        "fusions": _summarize(runs),
        "total_seconds": seconds,
    }


def _describe(data: MultiViewData, args: argparse.Namespace, procs: _Processes) -> str:
    where = f"{procs.world_size} processes" if procs.distributed else "1 process"
    return (f"\n{data.name}: {data.num_rows} rows, {len(data.widths)} views "
            f"({sum(data.widths)} features), {len(data.classes)} classes; test accuracy over "
            f"seeds 0..{args.seeds - 1} (mean ± std), {where} on {procs.device}\n")
