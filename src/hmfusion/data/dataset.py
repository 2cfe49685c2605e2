"""The in-memory form of a multi-view data set, and the checks every source goes through.

A data set is k views of the same N rows — view i a float64 array of shape (N, d_i) with finite
values — and, for training, one class label per row. Labels are kept as int64 codes into
`classes`, the sorted distinct labels as the user wrote them (ints, or strings for class
names), so predictions can be reported in the user's own terms.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["DataError", "MultiViewData", "check_finite", "encode_labels"]

ClassName = int | str


class DataError(ValueError):
    """User data that cannot be used; the message names the file (or source) and the problem."""


@dataclass(frozen=True)
class MultiViewData:
    """k views of the same N rows, with optional class labels.

    Attributes:
        name: where the data came from (`"mfeat"` or the file names), for reports.
        views: k float64 arrays, view i of shape (N, d_i), finite values.
        view_names: a unique name per view.
        labels: int64 codes of shape (N,), indices into `classes`; None when unlabelled.
        classes: the sorted distinct class labels (ints, or strings); None when unlabelled.
        csv_headers: per CSV/TSV file read, its name and whether its first row was read as a
            header (what `header="auto"` decided, so that reports can say it).
    """

    name: str
    views: tuple[np.ndarray, ...]
    view_names: tuple[str, ...]
    labels: np.ndarray | None = None
    classes: tuple[ClassName, ...] | None = None
    csv_headers: tuple[tuple[str, bool], ...] = ()

    def __post_init__(self) -> None:
        if not self.views:
            raise DataError(f"{self.name}: no views")
        if len(self.view_names) != len(self.views):
            raise DataError(
                f"{self.name}: {len(self.views)} views but {len(self.view_names)} names"
            )
        if len(set(self.view_names)) != len(self.view_names):
            raise DataError(f"{self.name}: view names are not unique: {list(self.view_names)}")
        rows = {name: view.shape[0] for name, view in zip(self.view_names, self.views)}
        if len(set(rows.values())) > 1:
            listing = ", ".join(f"{name} {count}" for name, count in rows.items())
            raise DataError(f"the views have different numbers of rows: {listing}")
        for name, view in zip(self.view_names, self.views):
            if view.ndim != 2 or view.dtype != np.float64:
                raise DataError(
                    f"view {name}: expected a 2-D float64 array, got {view.ndim}-D {view.dtype}"
                )
            if view.shape[1] == 0:
                raise DataError(f"view {name} has no feature columns")
        if self.num_rows == 0:
            raise DataError(f"{self.name}: the views have no rows")
        if (self.labels is None) != (self.classes is None):
            raise DataError(f"{self.name}: labels and classes must be given together")
        if self.labels is not None and self.labels.shape != (self.num_rows,):
            raise DataError(f"{self.name}: {self.labels.shape[0]} labels for {self.num_rows} rows")

    @property
    def num_rows(self) -> int:
        """N, the rows every view has."""
        return self.views[0].shape[0]

    @property
    def widths(self) -> tuple[int, ...]:
        """d_1 … d_k."""
        return tuple(view.shape[1] for view in self.views)

    def subset(self, rows: np.ndarray) -> MultiViewData:
        """The same data set restricted to `rows` (an index array)."""
        return MultiViewData(
            self.name,
            tuple(view[rows] for view in self.views),
            self.view_names,
            None if self.labels is None else self.labels[rows],
            self.classes,
            self.csv_headers,
        )


def check_finite(values: np.ndarray, where: str, row_names: Sequence[str] | None = None) -> None:
    """Raise [`DataError`][hmfusion.data.DataError] at the first NaN or infinite value of a
    2-D array.

    `row_names` (one per row, e.g. `"line 7"`) replaces the 1-based row number in the message.
    """
    bad = ~np.isfinite(values)
    if not bad.any():
        return
    row, col = (int(i) for i in np.argwhere(bad)[0])
    row_name = row_names[row] if row_names is not None else f"row {row + 1}"
    kind = "NaN" if math.isnan(values[row, col]) else "an infinite value"
    raise DataError(
        f"{where}, {row_name}, column {col + 1}: {kind} "
        f"({int(bad.sum())} non-finite values in all); remove or impute them"
    )


def _number(value: object) -> int | float | None:
    """The value as an exact int (integers, integer text) or a float (other numbers and numeric
    text), or None when it is not a number. Integer text never goes through float, so labels
    above 2**53 keep their exact values."""
    if isinstance(value, (bool, np.bool_, int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    text = str(value)
    if "_" in text:  # int() and float() accept "1_000"; a label written so is a name
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return None


def encode_labels(
    values: Sequence[object] | np.ndarray, where: str
) -> tuple[np.ndarray, tuple[ClassName, ...]]:
    """Codes (int64, shape (N,)) and sorted classes for raw labels.

    Labels that all read as integers ("3", 3.0, 3) become int classes. If any label is not a
    number, every label is a class name (a string), so `["1", "cat"]` gives `("1", "cat")`.
    Integer labels keep their exact values at any size (`"9007199254740993"` is not
    `…992`).

    Raises:
        DataError: an empty label; among all-numeric labels, NaN, inf or a fractional number;
            a label array that is not one column; distinct byte labels that read alike once
            decoded (bytes that are not UTF-8 keep their identity as backslash escapes). The
            message names `where` and the row.
    """
    array = np.asarray(values)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise DataError(f"{where}: labels must be one column, got shape {array.shape}")
    if array.dtype.kind not in "biufUSO":
        raise DataError(f"{where}: labels of dtype {array.dtype} are neither numbers nor names")
    # bytes that are not UTF-8 keep their identity (b"\xff" -> "\\xff"), never U+FFFD for all
    raw = [
        value.decode("utf-8", errors="backslashreplace") if isinstance(value, bytes) else value
        for value in array.tolist()
    ]
    if array.dtype.kind == "S" and len(set(array.tolist())) != len(set(raw)):
        raise DataError(
            f"{where}: distinct labels (bytes) that print alike once decoded (e.g. b'\\xff' "
            "and the text '\\xff'); rename them"
        )
    raw = [value.strip() if isinstance(value, str) else value for value in raw]
    for row, value in enumerate(raw):
        if value == "":
            raise DataError(f"{where}, row {row + 1}: empty label")
    numbers = [_number(value) for value in raw]
    names: list[ClassName]
    if all(number is not None for number in numbers):
        for row, number in enumerate(numbers):
            if isinstance(number, float) and not (math.isfinite(number) and number.is_integer()):
                raise DataError(
                    f"{where}, row {row + 1}: label {raw[row]!r} is not an "
                    "integer; labels must be integers or class names"
                )
        names = [int(number) for number in numbers]  # type: ignore[arg-type]
    else:
        names = [str(value) for value in raw]
    classes = tuple(sorted(set(names)))
    index = {name: code for code, name in enumerate(classes)}
    codes = np.fromiter((index[name] for name in names), dtype=np.int64, count=len(names))
    return codes, classes
