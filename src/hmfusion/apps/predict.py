"""Predict class labels for new rows with a checkpoint written by `hmfusion train`.

Reads the views like `hmfusion train` does (--views in the same order and widths as in
training; without --views, the packaged mfeat digits), standardizes them with the statistics
stored in the checkpoint, and writes one CSV line per row: `row,prediction,probability`
(1-based row, predicted class, its softmax probability), to stdout or to --out (written whole,
beside and then renamed; an existing file is replaced only with --overwrite). When the rows
come with labels (--labels, --label-column, or a 'labels' array in an .npz) the accuracy is
reported on stderr. Checkpoints are read with torch.load(weights_only=True), tensors only,
after checking that the .pt is the one its .json was saved with; NaN weights are refused.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys

import numpy as np
import torch

from hmfusion.apps.common import add_data_arguments, load_data, resolve_device
from hmfusion.apps.outputs import OutputFile
from hmfusion.apps.train.checkpoint import load_checkpoint
from hmfusion.data import DataError, MultiViewData

__all__ = ["add_arguments", "main", "predict"]


def predict(
    model: torch.nn.Module, data: MultiViewData, *, batch_size: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """Class indices (into the model's classes) and their softmax probabilities for every row.

    Args:
        model: a [`MultiViewClassifier`][hmfusion.apps.train.model.MultiViewClassifier]
            (any device).
        data: views of the widths the model was trained on.
        batch_size: rows per forward pass.

    Returns:
        int64 indices and float32 probabilities, each of shape `(data.num_rows,)`.
    """
    device = next(model.parameters()).device
    indices, probabilities = [], []
    model.eval()
    with torch.no_grad():
        for start in range(0, data.num_rows, batch_size):
            views = [
                torch.as_tensor(
                    view[start : start + batch_size], dtype=torch.float32, device=device
                )
                for view in data.views
            ]
            probs = torch.softmax(model(views), dim=-1)
            best = probs.max(dim=-1)
            indices.append(best.indices.cpu().numpy())
            probabilities.append(best.values.cpu().numpy())
    return np.concatenate(indices), np.concatenate(probabilities)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the flags of `hmfusion predict` to `parser`."""
    parser.add_argument(
        "--checkpoint",
        required=True,
        metavar="FILE",
        help="a checkpoint from hmfusion train: checkpoints/<fusion>.pt (its "
        ".json config must sit next to it)",
    )
    add_data_arguments(parser, labels_help="optional true labels, to report the accuracy")
    parser.add_argument(
        "--out", metavar="FILE", help="write the predictions to this CSV file (default: stdout)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")


def main(args: argparse.Namespace) -> int:
    """Run `hmfusion predict`; returns 0. Bad arguments, data, checkpoints or --out raise
    `UsageError`/`DataError`, reported by the command line as one line with status 2."""
    inputs = [args.checkpoint, *(args.views or ()), *([args.labels] if args.labels else [])]
    output = (
        None if args.out is None else OutputFile(args.out, overwrite=args.overwrite, inputs=inputs)
    )
    device = resolve_device(args.device)
    model, meta = load_checkpoint(args.checkpoint, device=device)
    config = meta["model"]
    if "model_sha256" not in meta:
        print(
            f"note: {args.checkpoint} predates config hashes; its classes and their order "
            "are not verified",
            file=sys.stderr,
        )
    data = load_data(args, require_labels=False)
    if list(data.widths) != list(config["widths"]):
        raise DataError(
            f"the checkpoint expects {len(config['widths'])} views of widths "
            f"{config['widths']} ({', '.join(config['view_names'])}); got "
            f"{len(data.widths)} of widths {list(data.widths)} ({', '.join(data.view_names)})"
        )

    indices, probabilities = predict(model, data)
    classes = config["classes"]
    predictions = [classes[i] for i in indices]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["row", "prediction", "probability"])
    for row, (label, probability) in enumerate(zip(predictions, probabilities), start=1):
        writer.writerow([row, label, f"{probability:.4f}"])
    if output is None:
        sys.stdout.write(text.getvalue())
    else:
        output.write(text.getvalue())

    for name, has in data.csv_headers:
        print(
            f"{name}: {'first row read as a header' if has else 'no header row'}", file=sys.stderr
        )
    if data.labels is not None and data.classes is not None:
        truth = [str(data.classes[code]) for code in data.labels]
        correct = sum(str(p) == t for p, t in zip(predictions, truth))
        print(
            f"accuracy {correct / data.num_rows:.4f} ({correct} of {data.num_rows} rows)",
            file=sys.stderr,
        )
    return 0
