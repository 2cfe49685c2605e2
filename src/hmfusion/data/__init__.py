"""Multi-view data for hmfusion: the packaged UCI mfeat data set and loaders for your own files.

- [`load_mfeat`][hmfusion.data.load_mfeat]: six views of 2,000 handwritten digits
  (10 classes), shipped inside the package (`mfeat.npz`; source, licence and how it was made
  in `MFEAT_README.md`).
- [`load_files`][hmfusion.data.load_files]: CSV/TSV, .npy and .npz files, with labels from a
  file or a column (see `hmfusion.data.files`; the readers are `hmfusion.data.tables` for
  CSV/TSV and `hmfusion.data.arrays` for NumPy files).
- [`stratified_split`][hmfusion.data.stratified_split],
  [`stratified_subsample`][hmfusion.data.stratified_subsample],
  [`check_classes`][hmfusion.data.check_classes]: the splits the training job uses (see
  `hmfusion.data.split`).

Every source ends in a checked [`MultiViewData`][hmfusion.data.MultiViewData]; problems raise
[`DataError`][hmfusion.data.DataError] (a `ValueError`) naming the file and what is wrong.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hmfusion.data.dataset import DataError, MultiViewData, check_finite, encode_labels
from hmfusion.data.files import DEFAULT_LABEL_KEYS, load_files
from hmfusion.data.split import (
    MIN_ROWS_PER_CLASS,
    check_classes,
    stratified_split,
    stratified_subsample,
)

__all__ = [
    "DEFAULT_LABEL_KEYS",
    "MFEAT_PATH",
    "MIN_ROWS_PER_CLASS",
    "DataError",
    "MultiViewData",
    "check_classes",
    "check_finite",
    "encode_labels",
    "load_files",
    "load_mfeat",
    "stratified_split",
    "stratified_subsample",
]

#: The packaged data set: arrays `fou, fac, kar, pix, zer, mor` (float64) and `labels` (int64).
MFEAT_PATH = Path(__file__).with_name("mfeat.npz")
_MFEAT_VIEWS = ("fou", "fac", "kar", "pix", "zer", "mor")


def load_mfeat() -> MultiViewData:
    """The UCI Multiple Features data set: 2,000 digits, six views (widths 76, 216, 64, 240, 47,
    6; 649 in all), classes 0-9 with 200 rows each. Rows are sorted by class."""
    with np.load(MFEAT_PATH, allow_pickle=False) as archive:
        views = tuple(archive[name] for name in _MFEAT_VIEWS)
        labels = archive["labels"]
    classes = tuple(int(c) for c in np.unique(labels))
    return MultiViewData("mfeat", views, _MFEAT_VIEWS, labels.astype(np.int64), classes)
