"""Predict class labels for new rows with a checkpoint written by `hmfusion train`.

Reads the views like `hmfusion train` does (--views in the same order and widths as in
training; without --views, the packaged mfeat digits), standardizes them with the statistics
stored in the checkpoint, and writes one CSV line per row: `row,prediction,probability`
(1-based row, predicted class, its softmax probability), to stdout or to --out. When the rows
come with labels (--labels, --label-column, or a 'labels' array in an .npz) the accuracy is
reported on stderr. Checkpoints are read with torch.load(weights_only=True): tensors only,
nothing is unpickled.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

import numpy as np
import torch

from hmfusion.data import DataError, MultiViewData, load_files, load_mfeat
from hmfusion.train import UsageError, add_data_arguments, load_checkpoint

__all__ = ["add_arguments", "main", "predict"]


def predict(model: torch.nn.Module, data: MultiViewData, *, batch_size: int = 4096
            ) -> tuple[np.ndarray, np.ndarray]:
    """Class indices (into the model's classes) and their probabilities for every row."""
    device = next(model.parameters()).device
    indices, probabilities = [], []
    model.eval()
    with torch.no_grad():
        for start in range(0, data.num_rows, batch_size):
            views = [torch.as_tensor(view[start:start + batch_size], dtype=torch.float32,
                                     device=device) for view in data.views]
            probs = torch.softmax(model(views), dim=-1)
            best = probs.max(dim=-1)
            indices.append(best.indices.cpu().numpy())
            probabilities.append(best.values.cpu().numpy())
    return np.concatenate(indices), np.concatenate(probabilities)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``hmfusion predict``."""
    parser.add_argument("--checkpoint", required=True, metavar="FILE",
                        help="a checkpoint from hmfusion train: checkpoints/<fusion>.pt (its "
                             ".json config must sit next to it)")
    add_data_arguments(parser, labels_help="optional true labels, to report the accuracy")
    parser.add_argument("--out", metavar="FILE",
                        help="write the predictions to this CSV file (default: stdout)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")


def _error(message: str) -> int:
    print(f"hmfusion: error: {message}", file=sys.stderr)
    return 2


def main(args: argparse.Namespace) -> int:
    """Run ``hmfusion predict``; returns the exit status (2 for bad data or arguments)."""
    try:
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            raise UsageError("--device cuda: CUDA is not available on this machine")
        if args.out is not None and Path(args.out).is_dir():
            raise UsageError(f"--out {args.out!r} is a directory; give a file name")
        model, meta = load_checkpoint(args.checkpoint, device=args.device)
        config = meta["model"]
        if args.views:
            data = load_files(args.views, args.labels, args.label_column,
                              header=args.csv_header, require_labels=False)
        elif args.labels is not None or args.label_column is not None:
            raise UsageError("--labels and --label-column need --views")
        else:
            data = load_mfeat()
        if list(data.widths) != list(config["widths"]):
            raise DataError(
                f"the checkpoint expects {len(config['widths'])} views of widths "
                f"{config['widths']} ({', '.join(config['view_names'])}); got "
                f"{len(data.widths)} of widths {list(data.widths)} ({', '.join(data.view_names)})"
            )
    except (DataError, UsageError) as error:
        return _error(str(error))

    indices, probabilities = predict(model, data)
    classes = config["classes"]
    predictions = [classes[i] for i in indices]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["row", "prediction", "probability"])
    for row, (label, probability) in enumerate(zip(predictions, probabilities), start=1):
        writer.writerow([row, label, f"{probability:.4f}"])
    if args.out is None:
        sys.stdout.write(text.getvalue())
    else:
        Path(args.out).write_text(text.getvalue(), encoding="utf-8")

    if data.labels is not None:
        truth = [str(data.classes[code]) for code in data.labels]
        correct = sum(str(p) == t for p, t in zip(predictions, truth))
        print(f"accuracy {correct / data.num_rows:.4f} ({correct} of {data.num_rows} rows)",
              file=sys.stderr)
    return 0
