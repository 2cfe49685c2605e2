"""Train and compare concatenation-fusion models on multi-view data.

By default on the packaged UCI mfeat digits (2,000 rows, six views, 10 classes). Each model is
per-view standardization -> per-view encoder (Linear + GELU + dropout to --hidden features) ->
fusion of the k encodings (--fusion: hm, dense, lowrank, lphm, dual_lphm, random, or mean, the
parameter-free average) -> GELU -> dropout -> linear classifier. For every fusion and seed: a
stratified train/validation/test split picked by the seed (the same for every fusion), AdamW, early
stopping on validation loss, and test accuracy at the best epoch.

Writes to --out: results.json (per fusion: test accuracy mean and sample std over seeds as
fractions, fusion-layer and whole-model parameter counts, training seconds), a Markdown table (also
printed), accuracy_vs_params.png, training_curves.png, and per fusion a checkpoint
(`checkpoints/<fusion>.pt`, tensors only, plus `checkpoints/<fusion>.json`) for `hmfusion predict`.
The directory appears whole when the run completes (it is written beside --out and renamed), and a
non-empty --out is replaced only with --overwrite.

Your own data: --views a.csv b.npy ... (or one .npz with the views and a 'labels' array) with
--labels y.csv or --label-column NAME|INDEX. Bad data stops with a one-line error and writes
nothing. Under torchrun (`torchrun --nproc_per_node=2 -m hmfusion train ...`) it trains with
DistributedDataParallel (gloo on CPU, nccl on CUDA); --batch-size is the global batch, the
processes check that they read the same data, and rank 0 writes the outputs.
"""

from __future__ import annotations

import argparse
import time
import uuid

import torch

from hmfusion.apps.common import (
    UsageError,
    add_data_arguments,
    block_size,
    describe_failure,
    error,
    fraction,
    load_data,
    nonnegative_float,
    nonnegative_int,
    positive_int,
    probability,
    resolve_device,
)
from hmfusion.apps.outputs import OutputDirectory
from hmfusion.apps.train.distributed import Processes, environment, fingerprint, processes
from hmfusion.apps.train.loop import DEFAULT_FUSIONS, TrainConfig, model_config, train_all
from hmfusion.apps.train.model import FUSIONS, MultiViewClassifier
from hmfusion.apps.train.results import results, write_outputs
from hmfusion.data import DataError, MultiViewData, check_classes, stratified_subsample
from hmfusion.ops import native

__all__ = ["add_arguments", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the flags of `hmfusion train` to `parser`."""
    data = add_data_arguments(
        parser, labels_help="labels, one per row (integers or class names): .csv/.tsv, .npy or .npz"
    )
    data.add_argument(
        "--max-rows",
        type=positive_int,
        metavar="N",
        help="train on a stratified subsample of about N rows (quick trials)",
    )

    model = parser.add_argument_group("model")
    model.add_argument(
        "--fusion",
        default=",".join(DEFAULT_FUSIONS),
        metavar="LIST",
        help=f"comma-separated fusions to compare, from {', '.join(FUSIONS)} "
        f"(default: {','.join(DEFAULT_FUSIONS)})",
    )
    model.add_argument(
        "--hidden",
        type=nonnegative_int,
        default=64,
        metavar="H",
        help="width of every view's encoder; 0 fuses the standardized views directly (default: 64)",
    )
    model.add_argument(
        "--fused-width",
        type=positive_int,
        metavar="N",
        help="output width n of the fusion layer (default: --hidden, or 64)",
    )
    model.add_argument(
        "--rank",
        type=positive_int,
        default=2,
        metavar="R",
        help="rank r of lowrank, lphm, dual_lphm and random (default: 2)",
    )
    model.add_argument(
        "--p",
        type=block_size,
        default="auto",
        metavar="P",
        help="rows of the Kronecker factor A for hm/lphm/dual_lphm "
        "(default: auto, the fewest parameters)",
    )
    model.add_argument(
        "--q",
        type=block_size,
        default=None,
        metavar="Q",
        help="columns of A (default: p; 'auto' picks it independently)",
    )
    model.add_argument(
        "--terms", type=positive_int, default=1, help="Kronecker products summed by hm (default: 1)"
    )
    model.add_argument(
        "--pad",
        action="store_true",
        help="zero-pad hm/lphm/dual_lphm so any p, q fit (on automatically when "
        "--p or --q do not divide the sizes)",
    )
    model.add_argument(
        "--dropout",
        type=probability,
        default=0.0,
        help="dropout after the encoders and the fusion (default: 0; with "
        "dropout, distributed runs match single-process runs only "
        "statistically)",
    )

    training = parser.add_argument_group("training")
    training.add_argument(
        "--seeds",
        type=positive_int,
        default=3,
        metavar="N",
        help="repeat every fusion with seeds 0..N-1; the seed picks the split "
        "and the initialization (default: 3)",
    )
    training.add_argument(
        "--epochs",
        type=positive_int,
        default=100,
        metavar="N",
        help="maximum epochs (default: 100)",
    )
    training.add_argument(
        "--patience",
        type=positive_int,
        default=25,
        metavar="N",
        help="stop after N epochs without a lower validation loss (default: 25)",
    )
    training.add_argument(
        "--batch-size",
        type=positive_int,
        default=64,
        metavar="B",
        help="global batch size, split over the processes (default: 64)",
    )
    training.add_argument(
        "--lr", type=nonnegative_float, default=3e-3, help="AdamW learning rate (default: 3e-3)"
    )
    training.add_argument(
        "--weight-decay",
        type=nonnegative_float,
        default=1e-3,
        help="AdamW weight decay (default: 1e-3)",
    )
    training.add_argument(
        "--label-smoothing",
        type=probability,
        default=0.1,
        help="label smoothing of the training loss (default: 0.1)",
    )
    training.add_argument(
        "--validation-fraction",
        type=fraction,
        default=0.1,
        metavar="F",
        help="share of every class held out for early stopping (default: 0.1)",
    )
    training.add_argument(
        "--test-fraction",
        type=fraction,
        default=0.2,
        metavar="F",
        help="share of every class held out for testing (default: 0.2)",
    )
    training.add_argument(
        "--device",
        default="cpu",
        help="cpu or cuda (under torchrun: each process's local GPU) (default: cpu)",
    )
    training.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        metavar="N",
        help="torch CPU threads per process; the layers are small, so more "
        "threads mostly wait on each other (default: 1)",
    )

    output = parser.add_argument_group("output")
    output.add_argument(
        "--out",
        default="hmfusion-results",
        metavar="DIR",
        help="output directory, written whole when the run completes (default: hmfusion-results)",
    )
    output.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a non-empty --out (whole, once the new run is complete)",
    )
    output.add_argument("--quiet", action="store_true", help="no progress bars or messages")


def _train_config(args: argparse.Namespace) -> TrainConfig:
    fusions = tuple(dict.fromkeys(name.strip() for name in args.fusion.split(",") if name.strip()))
    try:
        return TrainConfig(
            fusions=fusions,
            hidden=args.hidden,
            fused_width=args.fused_width,
            rank=args.rank,
            p=args.p,
            q=args.q,
            terms=args.terms,
            pad=args.pad,
            dropout=args.dropout,
            seeds=args.seeds,
            epochs=args.epochs,
            patience=args.patience,
            batch_size=args.batch_size,
            lr=args.lr,
            weight_decay=args.weight_decay,
            label_smoothing=args.label_smoothing,
            validation_fraction=args.validation_fraction,
            test_fraction=args.test_fraction,
            max_rows=args.max_rows,
            threads=args.threads,
            quiet=args.quiet,
        )
    except ValueError as failure:
        raise UsageError(str(failure)) from None


def _prepare_data(args: argparse.Namespace, config: TrainConfig) -> MultiViewData:
    """The training data, checked, subsampled, and proven to fit every model."""
    data = load_data(args)
    if data.labels is None or data.classes is None:  # load_data requires labels
        raise DataError(f"{data.name}: no labels")
    check_classes(data.labels, data.classes)
    if config.max_rows is not None:
        data = data.subset(stratified_subsample(data.labels, config.max_rows))
    for fusion in config.fusions:
        try:
            MultiViewClassifier(model_config(data, fusion, config, seed=0), device="meta")
        except (TypeError, ValueError) as failure:
            raise UsageError(f"--fusion {fusion}: {failure}") from None
    return data


def _describe(data: MultiViewData, config: TrainConfig, procs: Processes) -> str:
    where = f"{procs.world_size} processes" if procs.distributed else "1 process"
    headers = "".join(
        f"; {name}: {'first row read as a header' if has else 'no header row'}"
        for name, has in data.csv_headers
    )
    return (
        f"\n{data.name}: {data.num_rows} rows, {len(data.widths)} views "
        f"({sum(data.widths)} features), {len(data.classes or ())} classes{headers}; test "
        f"accuracy over seeds 0..{config.seeds - 1} (mean ± std), {where} on "
        f"{procs.device}\n"
    )


def main(args: argparse.Namespace) -> int:
    """Run `hmfusion train`; returns the exit status (2 for bad data, arguments or --out).

    Every check (arguments, --out, data, every model) runs before training; under torchrun the
    ranks then agree, so one rank's problem stops all with its message, printed by rank 0.
    """
    started = time.perf_counter()
    rank, world, local = environment()
    try:
        config = _train_config(args)
        device = resolve_device(args.device, local_rank=local, distributed=world > 1)
        if config.batch_size % world:
            raise UsageError(
                f"--batch-size {config.batch_size} must be divisible by the number "
                f"of processes ({world})"
            )
    except UsageError as failure:
        return error(str(failure), show=rank == 0)

    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    # Small factors (dual-LPHM above all) drive gradients and Adam's moments into subnormal
    # floats, which x86 CPUs handle ~10x slower; flushing them to zero changes nothing visible.
    torch.set_flush_denormal(True)
    output: OutputDirectory | None = None
    try:
        with processes(device, rank, world, local) as procs:
            problem, data = None, None
            try:
                if procs.is_main:
                    output = OutputDirectory(
                        args.out,
                        overwrite=args.overwrite,
                        inputs=[*(args.views or ()), *([args.labels] if args.labels else [])],
                    )
                data = _prepare_data(args, config)
                if output is not None:
                    output.open()
            except (UsageError, DataError, OSError) as failure:
                problem = describe_failure(failure)
            except Exception as failure:  # a bug: still reach the collective, or others hang
                if not procs.distributed:
                    raise
                problem = f"unexpected {type(failure).__name__}: {describe_failure(failure)}"
            shared = fingerprint(data) if procs.distributed and data is not None else None
            problem = procs.agree(problem, shared)
            if problem is not None or data is None:
                return error(str(problem), show=procs.is_main)

            # The first use on a machine builds the compiled operator (one line on stderr says
            # so): here, outside every model's training time and the total reported.
            building = time.perf_counter()
            native.available()
            started += time.perf_counter() - building
            try:  # the losses are all-reduced, so every rank fails alike
                runs = train_all(data, config, procs)
            except ValueError as failure:
                return error(str(failure), show=procs.is_main)
            problem = table = None
            if output is not None and output.staging is not None:
                summary = results(
                    data,
                    config,
                    runs,
                    procs,
                    seconds=time.perf_counter() - started,
                    run_id=uuid.uuid4().hex,
                    csv_headers=dict(data.csv_headers),
                )
                try:
                    table = write_outputs(output.staging, summary, runs)
                    output.commit()
                except (OSError, UsageError) as failure:
                    problem = describe_failure(failure)
            problem = procs.agree(problem, None)
            if problem is not None:
                return error(problem, show=procs.is_main)
            if procs.is_main:
                print(_describe(data, config, procs))
                print(table)
                if not config.quiet:
                    print(f"\ntotal {time.perf_counter() - started:.1f} s; results in {args.out}/")
    finally:
        if output is not None:
            output.discard()
        torch.set_flush_denormal(False)
        torch.set_num_threads(threads)
    return 0
