"""Reading your own multi-view data: CSV/TSV, .npy and .npz files, with the labels.

Each views file gives one view (`.csv`, `.tsv`, `.npy`) or one view per array (`.npz`).
Labels come from one of:

- `labels=` a file of its own (one column; with several, `label_column` picks one);
- `label_column=` without a labels file: a column the views files carry. A *name* takes that
  column from every CSV whose header has it (and the array of that name from an .npz); an
  *index* (negative counts from the end) takes that column from every views file, as in files
  that each end with the label;
- neither: an .npz array named `labels`, `label`, `y` or `target`.

CSV headers are optional. With `header="auto"` the whole file decides, and a first row whose
every feature cell is a number (data the model can use) is never taken for a header: it is data,
unless it reads 0, 1, 2, … (column indices, as pandas writes them; one cell may differ) or its
label cell is text that never occurs again, and then the file is undecidable. Otherwise the first
row is a header when one of its feature cells is text; in a labels file, when its label is text
above a column of numbers, or text that never occurs again while every other label occurs at
least three times (as every class of a data set that can be split does). An undecidable file is
refused and `"yes"`/`"no"` (`--csv-header`) decide it outright. What was used is recorded in
the `csv_headers` of [`MultiViewData`][hmfusion.data.MultiViewData].

Everything is checked before anything is used, and every problem raises
[`DataError`][hmfusion.data.DataError] naming the file, line or row, and column: a missing or
unreadable file, an unsupported type, ragged rows, non-numeric or empty cells (a row of empty cells
too, as pandas writes an all-NaN row), NaN or infinite values, a duplicated header name, views with
different numbers of rows, labels that disagree between files. `.npy`/`.npz` files are read with
`allow_pickle=False` (nothing is ever unpickled), and only after their headers were checked against
the bytes present: a truncated file, a header claiming more data than the file holds, a member that
is not an `.npy` array or one that inflates like a zip bomb is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hmfusion.data.arrays import load_npy, load_npz
from hmfusion.data.dataset import DataError, MultiViewData, check_finite, encode_labels
from hmfusion.data.tables import LabelColumn, read_csv, resolve_index

__all__ = ["DEFAULT_LABEL_KEYS", "load_files"]

#: .npz arrays with these names hold the labels unless labels are given another way.
DEFAULT_LABEL_KEYS = ("labels", "label", "y", "target")
_SUFFIXES = (".csv", ".tsv", ".npy", ".npz")
_HEADER_MODES = ("auto", "yes", "no")


@dataclass
class _FileViews:
    """What one views file holds: its views and, if it carries them, the raw labels."""

    views: list[tuple[str, np.ndarray]]
    labels: np.ndarray | list[str] | None
    header: bool | None = None  # CSV: whether the first row was a header


def load_files(
    view_paths: Sequence[str | Path],
    labels: str | Path | None = None,
    label_column: LabelColumn = None,
    *,
    header: str = "auto",
    require_labels: bool = True,
) -> MultiViewData:
    """Read views (and labels) from files into a checked
    [`MultiViewData`][hmfusion.data.MultiViewData].

    Args:
        view_paths: one or more `.csv`/`.tsv`/`.npy`/`.npz` files, rows aligned.
        labels: a file holding the labels (`.csv`/`.tsv`/`.npy`/`.npz`), or None.
        label_column: with `labels`, the column of that file; without, the column the views
            files carry (a name, or an int index; see the module docstring).
        header: CSV header detection, `"auto"`, `"yes"` or `"no"`.
        require_labels: raise when no labels are found (training); prediction passes False.

    Raises:
        DataError: any problem with the files (see the module docstring).
        TypeError: arguments of the wrong type.
    """
    if isinstance(view_paths, (str, Path)) or not isinstance(view_paths, Sequence):
        raise TypeError("view_paths must be a list of file paths")
    if not view_paths:
        raise DataError("no views files given")
    if header not in _HEADER_MODES:
        raise ValueError(f"header must be one of {_HEADER_MODES}, got {header!r}")
    if label_column is not None and (
        isinstance(label_column, bool) or not isinstance(label_column, (int, str))
    ):
        raise TypeError(f"label_column must be a column name or index, got {label_column!r}")
    paths = [_checked_path(path, "views file") for path in view_paths]
    labels_path = None if labels is None else _checked_path(labels, "labels file")

    view_column = label_column if labels_path is None else None
    file_views = [_read_views_file(path, view_column, header) for path in paths]
    headers = [
        (path.name, fv.header) for path, fv in zip(paths, file_views) if fv.header is not None
    ]

    rows = {
        name: values.shape[0]
        for path, fv in zip(paths, file_views)
        for name, values in _described(path, fv)
    }
    if len(set(rows.values())) > 1:
        listing = ", ".join(f"{name} {count}" for name, count in rows.items())
        raise DataError(f"the views have different numbers of rows: {listing}")
    num_rows = next(iter(rows.values()))

    carriers: list[tuple[Path, np.ndarray | list[str]]] = [
        (path, fv.labels) for path, fv in zip(paths, file_views) if fv.labels is not None
    ]
    if labels_path is not None:
        if carriers:
            raise DataError(
                f"{carriers[0][0]} holds labels (an array named one of "
                f"{DEFAULT_LABEL_KEYS}) and a labels file was also given "
                f"({labels_path}); keep one source"
            )
        labels_file = _read_labels_file(labels_path, label_column, header)
        raw = labels_file.labels
        carriers = [(labels_path, raw if raw is not None else [])]
        if labels_file.header is not None:
            headers.append((labels_path.name, labels_file.header))
    elif isinstance(label_column, str) and not carriers:
        raise DataError(f"no views file has a column (or .npz array) named {label_column!r}")

    codes = classes = None
    if carriers:
        first_path, first_raw = carriers[0]
        codes, classes = encode_labels(first_raw, str(first_path))
        if codes.shape[0] != num_rows:
            after = " after its header row" if dict(headers).get(first_path.name) else ""
            raise DataError(
                f"the labels ({first_path}) have {codes.shape[0]} rows{after} but "
                f"the views have {num_rows}"
            )
        for path, raw in carriers[1:]:
            other_codes, other_classes = encode_labels(raw, str(path))
            decoded = [classes[c] for c in codes]
            other = [other_classes[c] for c in other_codes]
            if decoded != other:
                row = next(i for i, (a, b) in enumerate(zip(decoded, other)) if a != b)
                raise DataError(
                    f"the label columns of {first_path} and {path} differ (first at row "
                    f"{row + 1}: {decoded[row]!r} vs {other[row]!r}); with an index every views "
                    "file must carry the label there: name the column or pass --labels instead"
                )
    elif require_labels:
        raise DataError(
            "no labels: pass a labels file (--labels FILE), name the column that "
            "holds them (--label-column NAME|INDEX), or give an .npz of views an "
            "array named 'labels'"
        )

    views = [view for fv in file_views for view in fv.views]
    return MultiViewData(
        name=", ".join(path.name for path in paths),
        views=tuple(values for _, values in views),
        view_names=_unique_names([name for name, _ in views]),
        labels=codes,
        classes=classes,
        csv_headers=tuple((name, bool(has)) for name, has in headers),
    )


# files ---------------------------------------------------------------------------------------
def _checked_path(path: str | Path, role: str) -> Path:
    if not isinstance(path, (str, Path)):
        raise TypeError(f"{role} must be a path, got {type(path).__name__}")
    path = Path(path)
    if not path.exists():
        raise DataError(f"{role} {str(path)!r} does not exist")
    if not path.is_file():
        raise DataError(f"{role} {str(path)!r} is not a file")
    if path.suffix.lower() not in _SUFFIXES:
        raise DataError(
            f"{role} {str(path)!r}: unsupported type {path.suffix or '(none)'!r}; "
            f"use one of {', '.join(_SUFFIXES)}"
        )
    return path


def _unreadable(path: Path, failure: OSError) -> DataError:
    return DataError(f"{path} cannot be read: {failure.strerror or failure}")


def _described(path: Path, file_views: _FileViews) -> list[tuple[str, np.ndarray]]:
    """The views of one file named for messages: `a.csv`, or `b.npz['fou']` for archives."""
    if path.suffix.lower() != ".npz":
        return [(path.name, values) for _, values in file_views.views]
    return [(f"{path.name}[{name!r}]", values) for name, values in file_views.views]


def _read_views_file(path: Path, label_column: LabelColumn, header: str) -> _FileViews:
    try:
        return _read_views(path, label_column, header)
    except OSError as failure:
        raise _unreadable(path, failure) from None
    except MemoryError:
        raise DataError(f"{path} holds more data than fits in memory") from None


def _read_views(path: Path, label_column: LabelColumn, header: str) -> _FileViews:
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        table = read_csv(path, header, label_column)
        return _FileViews([(path.stem, table.values)], table.labels, table.header)
    if suffix == ".npy":
        array = load_npy(path)
        labels = None
        if isinstance(label_column, int):
            array = _numeric_2d(array, str(path))
            index = resolve_index(label_column, array.shape[1], str(path))
            labels = array[:, index]
            array = np.delete(array, index, axis=1)
        return _FileViews([(path.stem, _view_values(array, str(path)))], labels)
    arrays = load_npz(path)
    key = _npz_label_key(arrays, label_column, path)
    labels = None if key is None else arrays.pop(key)
    if not arrays:
        raise DataError(f"{path} holds no views besides the labels")
    views = [(name, _view_values(array, f"{path}[{name!r}]")) for name, array in arrays.items()]
    return _FileViews(views, labels)


def _read_labels_file(path: Path, label_column: LabelColumn, header: str) -> _FileViews:
    """The raw labels of a labels file (and, for a CSV, whether it had a header)."""
    try:
        suffix = path.suffix.lower()
        if suffix in (".csv", ".tsv"):
            table = read_csv(path, header, label_column, labels_only=True)
            return _FileViews([], table.labels or [], table.header)
        return _FileViews([], _read_labels_array(path, label_column))
    except OSError as failure:
        raise _unreadable(path, failure) from None
    except MemoryError:
        raise DataError(f"{path} holds more data than fits in memory") from None


def _read_labels_array(path: Path, label_column: LabelColumn) -> np.ndarray:
    if path.suffix.lower() == ".npy":
        array = load_npy(path)
        if array.ndim == 2 and array.shape[1] > 1:
            if not isinstance(label_column, int):
                raise DataError(
                    f"{path} has {array.shape[1]} columns; choose the label column "
                    "with --label-column INDEX"
                )
            array = array[:, resolve_index(label_column, array.shape[1], str(path))]
        return array
    arrays = load_npz(path)
    key = _npz_label_key(arrays, label_column, path)
    if key is None:
        if len(arrays) != 1:
            raise DataError(
                f"{path} holds {len(arrays)} arrays ({', '.join(arrays)}); name the "
                "labels with --label-column NAME"
            )
        key = next(iter(arrays))
    return arrays[key]


def _npz_label_key(
    arrays: dict[str, np.ndarray], label_column: LabelColumn, path: Path
) -> str | None:
    names = list(arrays)
    if isinstance(label_column, str):
        return label_column if label_column in arrays else None
    if isinstance(label_column, int):
        return names[resolve_index(label_column, len(names), f"{path} (arrays)")]
    return next((key for key in DEFAULT_LABEL_KEYS if key in arrays), None)


def _numeric_2d(array: np.ndarray, where: str) -> np.ndarray:
    if array.ndim == 1:
        array = array.reshape(-1, 1)
    if array.ndim != 2:
        raise DataError(f"{where}: a view must be a 1-D or 2-D array, got shape {array.shape}")
    if array.dtype.kind not in "biuf":
        raise DataError(f"{where}: dtype {array.dtype} is not numeric; views must hold numbers")
    return array


def _view_values(array: np.ndarray, where: str) -> np.ndarray:
    values = _numeric_2d(array, where).astype(np.float64)
    if values.shape[0] == 0:
        raise DataError(f"{where} has no rows")
    if values.shape[1] == 0:
        raise DataError(f"{where} has no feature columns")
    check_finite(values, where)
    return values


def _unique_names(names: list[str]) -> tuple[str, ...]:
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return tuple(unique)
