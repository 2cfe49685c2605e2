"""Stratified splits: every class keeps its share in train, validation and test.

The splits are a pure function of the labels and a seed (`numpy.random.default_rng`), so every
process of a distributed run, and every fusion compared under one seed, sees the same rows.
"""

from __future__ import annotations

import numpy as np

from hmfusion.data.dataset import ClassName, DataError

__all__ = ["MIN_ROWS_PER_CLASS", "check_classes", "stratified_split", "stratified_subsample"]

#: One row each for train, validation and test.
MIN_ROWS_PER_CLASS = 3


def _round_half_up(value: float) -> int:
    return int(np.floor(value + 0.5))


def check_classes(labels: np.ndarray, classes: tuple[ClassName, ...]) -> None:
    """Raise [`DataError`][hmfusion.data.DataError] unless the labels can be split for
    classification.

    At least two classes are needed, and every class needs
    [`MIN_ROWS_PER_CLASS`][hmfusion.data.MIN_ROWS_PER_CLASS] rows (one per part of the
    train/validation/test split).
    """
    present, counts = np.unique(labels, return_counts=True)
    if present.size < 2:
        only = classes[int(present[0])] if present.size else "none"
        raise DataError(
            f"the labels hold a single class ({only!r}); classification needs at least two"
        )
    short = [(classes[int(c)], int(n)) for c, n in zip(present, counts) if n < MIN_ROWS_PER_CLASS]
    if short:
        listing = ", ".join(f"{name!r} ({count})" for name, count in short[:5])
        more = f" and {len(short) - 5} more" if len(short) > 5 else ""
        raise DataError(
            f"too few rows for a stratified train/validation/test split: every class needs at "
            f"least {MIN_ROWS_PER_CLASS} rows; classes with fewer: {listing}{more}"
        )


def stratified_split(
    labels: np.ndarray, *, validation_fraction: float, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices (sorted int64 arrays) of the train, validation and test parts.

    Each class of m rows gives `max(1, round(m·test_fraction))` rows to test,
    `max(1, round(m·validation_fraction))` to validation and the rest (at least one) to train;
    `validation_fraction=0` leaves validation empty (a train/test split).

    Raises:
        ValueError: fractions outside (0, 1) or summing to 1 or more.
        DataError: see [`check_classes`][hmfusion.data.check_classes] (which the caller should
            run first for a message that names the classes).
    """
    if not (
        0 <= validation_fraction < 1
        and 0 < test_fraction < 1
        and validation_fraction + test_fraction < 1
    ):
        raise ValueError(
            "validation fraction must be in [0, 1) and test fraction in (0, 1), and they "
            "must sum to less than 1, "
            f"got {validation_fraction} and {test_fraction}"
        )
    rng = np.random.default_rng(seed)
    parts: tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]] = ([], [], [])
    for code in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == code))
        m = rows.size
        if m < MIN_ROWS_PER_CLASS:
            raise DataError(
                f"class {int(code)} has {m} rows; a stratified split needs {MIN_ROWS_PER_CLASS}"
            )
        n_test = max(1, _round_half_up(m * test_fraction))
        n_val = max(1, _round_half_up(m * validation_fraction)) if validation_fraction else 0
        while m - n_test - n_val < 1:  # small classes: give train its row back
            if n_test >= n_val:
                n_test -= 1
            else:
                n_val -= 1
        parts[0].append(rows[n_test + n_val :])
        parts[1].append(rows[n_test : n_test + n_val])
        parts[2].append(rows[:n_test])
    train, validation, test = (np.sort(np.concatenate(p)).astype(np.int64) for p in parts)
    return train, validation, test


def stratified_subsample(labels: np.ndarray, max_rows: int, seed: int = 0) -> np.ndarray:
    """About `max_rows` row indices (sorted), each class in proportion to its size.

    Every class keeps at least `min(size, MIN_ROWS_PER_CLASS)` rows so the result can still be
    split; returns all rows when `max_rows` is at least their number.
    """
    if max_rows >= labels.size:
        return np.arange(labels.size, dtype=np.int64)
    rng = np.random.default_rng(seed)
    keep = []
    for code in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == code))
        count = max(
            min(rows.size, MIN_ROWS_PER_CLASS), _round_half_up(rows.size * max_rows / labels.size)
        )
        keep.append(rows[:count])
    return np.sort(np.concatenate(keep)).astype(np.int64)
