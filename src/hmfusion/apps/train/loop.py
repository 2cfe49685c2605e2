"""The training loop of `hmfusion train`, driven by a frozen
[`TrainConfig`][hmfusion.apps.train.loop.TrainConfig].

For every fusion and seed: a stratified train/validation/test split picked by the seed (the same
for every fusion), AdamW, early stopping on the validation loss, and the test accuracy at the
best epoch. Under torchrun the model is wrapped in DistributedDataParallel and the global batch
is split over the processes (see
[`hmfusion.apps.train.distributed`][hmfusion.apps.train.distributed]). What a run
writes is [`hmfusion.apps.train.results`][hmfusion.apps.train.results]'s job.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from hmfusion.apps.train.distributed import Processes
from hmfusion.apps.train.model import FUSIONS, KRONECKER_FUSIONS, MultiViewClassifier
from hmfusion.data import MultiViewData, stratified_split

__all__ = ["DEFAULT_FUSIONS", "Run", "TrainConfig", "fit", "model_config", "train_all"]

#: What `hmfusion train` compares without --fusion: every fusion but `"random"`.
DEFAULT_FUSIONS = ("hm", "dense", "lowrank", "lphm", "dual_lphm", "mean")
BlockSize = int | Literal["auto"]


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run is asked to do, fixed before it starts.

    Attributes:
        fusions: the fusions to compare, names of [`FUSIONS`][hmfusion.apps.train.model.FUSIONS].
        hidden: width of every view's encoder; 0 fuses the standardized views directly.
        fused_width: output width n of the fusion layer; None means `hidden` (or 64).
        rank: rank r of lowrank, lphm, dual_lphm and random.
        p: the Kronecker factor A's rows (`"auto"`: the fusion layer chooses).
        q: the Kronecker factor A's columns (`"auto"`; None means p).
        terms: Kronecker products summed by hm.
        pad: zero-pad the Kronecker fusions (also on when an explicit p does not divide n or an
            explicit q does not divide D).
        dropout: after the encoders and the fusion.
        seeds: runs per fusion, seeds 0..seeds-1 (the seed picks split and initialization).
        epochs: the most epochs a run trains.
        patience: stop after this many epochs without a better validation loss.
        batch_size: the global batch, split over the processes.
        lr: AdamW's learning rate.
        weight_decay: AdamW's weight decay.
        label_smoothing: of the training loss.
        validation_fraction: each class's share held out for validation.
        test_fraction: each class's share held out for testing.
        selection: which epoch's model is tested: `"best"`, the lowest validation loss (early
            stopping after `patience`), or `"last"`, the final epoch's, with no validation set
            (`validation_fraction` must then be 0: the train/test protocol of the literature).
        max_rows: train on a stratified subsample of about this many rows (None: all).
        threads: torch CPU threads per process.
        quiet: no progress bars or messages.

    Raises:
        ValueError: an unknown or empty fusion list, fractions summing to 1 or more, or a
            validation fraction that does not fit `selection` (0 exactly for `"last"`).
    """

    fusions: tuple[str, ...] = DEFAULT_FUSIONS
    hidden: int = 64
    fused_width: int | None = None
    rank: int = 2
    p: BlockSize = "auto"
    q: BlockSize | None = None
    terms: int = 1
    pad: bool = False
    dropout: float = 0.0
    seeds: int = 3
    epochs: int = 100
    patience: int = 25
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-3
    label_smoothing: float = 0.1
    validation_fraction: float = 0.1
    test_fraction: float = 0.2
    selection: Literal["best", "last"] = "best"
    max_rows: int | None = None
    threads: int = 1
    quiet: bool = False

    def __post_init__(self) -> None:
        if not self.fusions:
            raise ValueError("--fusion is empty")
        unknown = [name for name in self.fusions if name not in FUSIONS]
        if unknown:
            raise ValueError(
                f"--fusion: unknown {', '.join(map(repr, unknown))}; choose from "
                f"{', '.join(FUSIONS)}"
            )
        if self.validation_fraction + self.test_fraction >= 1:
            raise ValueError("--validation-fraction plus --test-fraction must be below 1")
        if (self.selection == "last") != (self.validation_fraction == 0):
            raise ValueError(
                f"selection {self.selection!r} needs a validation fraction "
                f"{'of 0' if self.selection == 'last' else 'above 0'}, "
                f"got {self.validation_fraction}"
            )


@dataclass
class Run:
    """One trained model: its scores, size, config, final weights and curves."""

    fusion: str
    seed: int
    test_accuracy: float
    validation_accuracy: float
    best_epoch: int
    seconds: float
    fusion_parameters: int
    model_parameters: int
    fusion_layer: str
    config: dict[str, Any]
    state: dict[str, Tensor]
    curves: dict[str, list[float]] = field(default_factory=dict)

    @property
    def epochs(self) -> int:
        """Epochs trained (early stopping may end the run before the maximum)."""
        return len(self.curves["train_loss"])


def _fusion_options(name: str, config: TrainConfig, seed: int) -> dict[str, Any]:
    """Constructor options of a fusion layer."""
    if name in ("dense", "mean"):
        return {}
    if name == "lowrank":
        return {"r": config.rank}
    if name == "random":
        return {"r": config.rank, "seed": seed}
    options: dict[str, Any] = {"p": config.p, "q": config.q, "pad": config.pad}
    if name == "hm":
        options["terms"] = config.terms
    else:
        options["r"] = config.rank
    return options


def model_config(
    data: MultiViewData, fusion: str, config: TrainConfig, seed: int
) -> dict[str, Any]:
    """The [`MultiViewClassifier`][hmfusion.apps.train.model.MultiViewClassifier] config of one
    run; an
    explicit p or q that does not divide n or D turns on zero padding."""
    options = _fusion_options(fusion, config, seed)
    model = MultiViewClassifier.make_config(
        data,
        fusion,
        hidden=config.hidden,
        fused_width=config.fused_width,
        fusion_options=options,
        dropout=config.dropout,
    )
    if fusion in KRONECKER_FUSIONS and not options["pad"]:
        dims = [config.hidden] * len(data.widths) if config.hidden > 0 else list(data.widths)
        n, D = model["fused_width"], sum(dims)
        model["fusion_options"]["pad"] = (isinstance(config.p, int) and n % config.p != 0) or (
            isinstance(config.q, int) and D % config.q != 0
        )
    return model


def _evaluate(
    model: nn.Module, views: list[Tensor], labels: Tensor, rows: Tensor, procs: Processes
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy on `rows`, each process taking every world_size-th."""
    mine = rows[procs.rank :: procs.world_size]
    model.eval()
    with torch.no_grad():
        logits = model([view[mine] for view in views])
        loss = F.cross_entropy(logits, labels[mine], reduction="sum")
        correct = (logits.argmax(dim=-1) == labels[mine]).sum()
    count = torch.tensor(float(mine.numel()), dtype=torch.float64, device=loss.device)
    totals = procs.sum(torch.stack([loss.double(), correct.double(), count]))
    return (totals[0] / totals[2]).item(), (totals[1] / totals[2]).item()


def fit(
    data: MultiViewData,
    fusion: str,
    seed: int,
    config: TrainConfig,
    procs: Processes,
    *,
    progress: bool = False,
) -> Run:
    """Train one model: split by `seed`, train with early stopping, test at the best epoch
    (or, with `config.selection == "last"`, train every epoch and test the last).

    Raises:
        ValueError: the validation loss was never finite (the learning rate is too high).
    """
    started = time.perf_counter()
    if data.labels is None:
        raise ValueError(f"{data.name}: training needs labelled data")
    train_rows, val_rows, test_rows = stratified_split(
        data.labels,
        validation_fraction=config.validation_fraction,
        test_fraction=config.test_fraction,
        seed=seed,
    )
    torch.manual_seed(seed)
    model = MultiViewClassifier(model_config(data, fusion, config, seed))
    for standardize, view in zip(model.standardize, data.views):
        standardize.fit_(view[train_rows])  # type: ignore[operator]  # a Standardize
    device = procs.device
    model.to(device)
    views = [torch.as_tensor(view, dtype=torch.float32, device=device) for view in data.views]
    labels = torch.as_tensor(data.labels, device=device)
    train_t, val_t, test_t = (
        torch.as_tensor(r, device=device) for r in (train_rows, val_rows, test_rows)
    )

    trained: nn.Module = model
    if procs.distributed:
        device_ids = [device.index] if device.type == "cuda" else None
        # the standardization buffers are fitted identically everywhere: nothing to broadcast
        trained = nn.parallel.DistributedDataParallel(
            model, device_ids=device_ids, broadcast_buffers=False
        )
    # identical initial weights everywhere; dropout masks differ between processes
    torch.manual_seed(seed + 7919 * procs.rank)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    # The sampler splits the seed's permutation of the training rows position by position, so
    # the union of the processes' k-th local batches is the k-th batch of a single-process run.
    sampler: torch.utils.data.DistributedSampler[int] = torch.utils.data.DistributedSampler(
        range(len(train_rows)),  # type: ignore[arg-type]  # any sized sequence will do
        num_replicas=procs.world_size,
        rank=procs.rank,
        shuffle=True,
        seed=seed,
        drop_last=False,
    )
    local_batch = config.batch_size // procs.world_size

    best_loss, best_epoch, best_state = math.inf, -1, None
    curves: dict[str, list[float]] = {
        "train_loss": [],
        "validation_loss": [],
        "validation_accuracy": [],
    }
    epochs = tqdm(
        range(config.epochs),
        desc=f"{fusion} seed {seed}",
        unit="epoch",
        leave=False,
        disable=not progress,
        dynamic_ncols=True,
    )
    for epoch in epochs:
        sampler.set_epoch(epoch)
        order = train_t[torch.as_tensor(list(sampler), dtype=torch.long, device=device)]
        trained.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        for start in range(0, order.numel(), local_batch):
            batch = order[start : start + local_batch]
            loss = F.cross_entropy(
                trained([view[batch] for view in views]),
                labels[batch],
                label_smoothing=config.label_smoothing,
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach().double() * batch.numel()
        count = torch.tensor(float(order.numel()), dtype=torch.float64, device=device)
        totals = procs.sum(torch.stack([loss_sum, count]))
        if config.selection == "last":  # no validation rows: the last epoch is the one tested
            val_loss, val_acc = math.nan, math.nan
            best_epoch, best_state = epoch, None
        else:
            val_loss, val_acc = _evaluate(model, views, labels, val_t, procs)
        curves["train_loss"].append((totals[0] / totals[1]).item())
        curves["validation_loss"].append(val_loss)
        curves["validation_accuracy"].append(val_acc)
        epochs.set_postfix(val_acc=f"{val_acc:.3f}", refresh=False)
        if val_loss < best_loss:
            best_loss, best_epoch = val_loss, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        elif epoch - best_epoch >= config.patience:
            break
    epochs.close()
    if config.selection == "best":
        if best_state is None:
            raise ValueError(
                f"{fusion}, seed {seed}: the validation loss was never finite; lower --lr"
            )
        model.load_state_dict(best_state)
        _, val_acc = _evaluate(model, views, labels, val_t, procs)
    _, test_acc = _evaluate(model, views, labels, test_t, procs)
    return Run(
        fusion=fusion,
        seed=seed,
        test_accuracy=test_acc,
        validation_accuracy=val_acc,
        best_epoch=best_epoch + 1,
        seconds=time.perf_counter() - started,
        fusion_parameters=model.fusion_parameters,
        model_parameters=model.num_parameters,
        fusion_layer=repr(model.fusion) if model.fusion is not None else "mean",
        config=model.resolved_config(),
        state={k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
        curves=curves,
    )


def train_all(
    data: MultiViewData,
    config: TrainConfig,
    procs: Processes,
    on_run: Callable[[Run], None] | None = None,
) -> list[Run]:
    """[`fit`][hmfusion.apps.train.loop.fit] every fusion with every seed, in that order; `on_run`
    (if given) sees each [`Run`][hmfusion.apps.train.loop.Run] as it finishes (on every process)."""
    show = procs.is_main and not config.quiet
    runs = []
    with tqdm(
        total=len(config.fusions) * config.seeds,
        desc="train",
        unit="run",
        disable=not show,
        dynamic_ncols=True,
    ) as bar:
        for fusion in config.fusions:
            for seed in range(config.seeds):
                run = fit(data, fusion, seed, config, procs, progress=show)
                runs.append(run)
                if on_run is not None:
                    on_run(run)
                bar.set_postfix_str(
                    f"{fusion} seed {seed}: test acc {run.test_accuracy:.3f}", refresh=False
                )
                bar.update()
    return runs
