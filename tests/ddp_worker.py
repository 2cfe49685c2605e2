"""Test helper, run by torchrun: `hmfusion train` with two hooks the product does not have.

    python ddp_worker.py DUMP_DIR PERTURB -- <train arguments>

DUMP_DIR: every process saves each run's final state_dict there as
``rank<r>-<fusion>-seed<s>.pt`` (so a test can compare ranks and runs), unless it is "-".
PERTURB: what rank 1 does to the data it loads, to test that the ranks agree before training:
"none", "labels" (shuffled), "rows" (ten times the rows), or "error" (a load error).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

import hmfusion.apps.train.command
from hmfusion.apps.train import loop as training
from hmfusion.apps.cli import main
from hmfusion.data import DataError


def dumping(fit, directory: Path):
    def fit_and_save(data, fusion, seed, config, procs, **options):
        run = fit(data, fusion, seed, config, procs, **options)
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(run.state, directory / f"rank{procs.rank}-{fusion}-seed{seed}.pt")
        return run

    return fit_and_save


def perturbing(load, mode: str, rank: int):
    def load_and_perturb(args, **options):
        data = load(args, **options)
        if rank != 1 or mode == "none":
            return data
        if mode == "error":
            raise DataError("views.csv line 7, column 2: 'x' is not a number")
        if mode == "labels":
            labels = np.random.default_rng(0).permutation(data.labels)
            return type(data)(data.name, data.views, data.view_names, labels, data.classes)
        if mode == "rows":
            return data.subset(np.tile(np.arange(data.num_rows), 10))
        raise ValueError(mode)

    return load_and_perturb


if __name__ == "__main__":
    dump, mode, separator, *argv = sys.argv[1:]
    assert separator == "--"
    import os

    if dump != "-":
        training.fit = dumping(training.fit, Path(dump))
    hmfusion.apps.train.command.load_data = perturbing(
        hmfusion.apps.train.command.load_data, mode, int(os.environ.get("RANK", "0"))
    )
    sys.exit(main(argv))
