"""Reading your own multi-view data: CSV/TSV, .npy and .npz files, with the labels.

Each views file gives one view (``.csv``, ``.tsv``, ``.npy``) or one view per array (``.npz``).
Labels come from one of:

- ``labels=`` a file of its own (one column; with several, ``label_column`` picks one);
- ``label_column=`` without a labels file: a column the views files carry. A *name* takes that
  column from every CSV whose header has it (and the array of that name from an .npz); an
  *index* (negative counts from the end) takes that column from every views file, as in files
  that each end with the label;
- neither: an .npz array named ``labels``, ``label``, ``y`` or ``target``.

CSV headers are optional. With ``header="auto"`` the whole file decides: the first row is a
header when one of its feature cells is text, when it reads 0, 1, 2, … (column indices, as
pandas writes them; one cell may differ), or when its label cell is text above a column of
numbers, or text that never occurs again while every other label occurs at least three times
(as every class of a data set that can be split does). A first label that occurs once among
labels that are not all that frequent is undecidable: the file is refused and ``"yes"``/``"no"``
(``--csv-header``) decide it outright. What was used is recorded in
:attr:`MultiViewData.csv_headers`.

Everything is checked before anything is used, and every problem raises :class:`DataError`
naming the file, line or row, and column: a missing or unreadable file, an unsupported type,
ragged rows, non-numeric or empty cells (a row of empty cells too, as pandas writes an all-NaN
row), NaN or infinite values, a duplicated header name, views with different numbers of rows,
labels that disagree between files. ``.npy``/``.npz`` files are read with
``allow_pickle=False`` (nothing is ever unpickled), and only after their headers were checked
against the bytes present: a truncated file, a header claiming more data than the file holds, a
member that is not an ``.npy`` array or one that inflates like a zip bomb is refused.
"""

from __future__ import annotations

import csv
import io
import math
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from hmfusion.data.dataset import DataError, MultiViewData, check_finite, encode_labels
from hmfusion.data.split import MIN_ROWS_PER_CLASS

__all__ = ["DEFAULT_LABEL_KEYS", "load_files"]

#: .npz arrays with these names hold the labels unless labels are given another way.
DEFAULT_LABEL_KEYS = ("labels", "label", "y", "target")
_SUFFIXES = (".csv", ".tsv", ".npy", ".npz")
_HEADER_MODES = ("auto", "yes", "no")
#: An .npz member that inflates more than this many times (and past 64 MiB) is a zip bomb.
_MAX_INFLATION = 1000

LabelColumn = int | str | None


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
    """Read views (and labels) from files into a checked :class:`MultiViewData`.

    Args:
        view_paths: one or more ``.csv``/``.tsv``/``.npy``/``.npz`` files, rows aligned.
        labels: a file holding the labels (``.csv``/``.tsv``/``.npy``/``.npz``), or None.
        label_column: with ``labels``, the column of that file; without, the column the views
            files carry (a name, or an int index; see the module docstring).
        header: CSV header detection, ``"auto"``, ``"yes"`` or ``"no"``.
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
    if label_column is not None and (isinstance(label_column, bool)
                                     or not isinstance(label_column, (int, str))):
        raise TypeError(f"label_column must be a column name or index, got {label_column!r}")
    paths = [_checked_path(path, "views file") for path in view_paths]
    labels_path = None if labels is None else _checked_path(labels, "labels file")

    view_column = label_column if labels_path is None else None
    file_views = [_read_views_file(path, view_column, header) for path in paths]
    headers = [(path.name, fv.header) for path, fv in zip(paths, file_views)
               if fv.header is not None]

    rows = {name: values.shape[0] for path, fv in zip(paths, file_views)
            for name, values in _described(path, fv)}
    if len(set(rows.values())) > 1:
        listing = ", ".join(f"{name} {count}" for name, count in rows.items())
        raise DataError(f"the views have different numbers of rows: {listing}")
    num_rows = next(iter(rows.values()))

    carriers = [(path, fv.labels) for path, fv in zip(paths, file_views) if fv.labels is not None]
    if labels_path is not None:
        if carriers:
            raise DataError(f"{carriers[0][0]} holds labels (an array named one of "
                            f"{DEFAULT_LABEL_KEYS}) and a labels file was also given "
                            f"({labels_path}); keep one source")
        labels_file = _read_labels_file(labels_path, label_column, header)
        carriers = [(labels_path, labels_file.labels)]
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
            raise DataError(f"the labels ({first_path}) have {codes.shape[0]} rows{after} but "
                            f"the views have {num_rows}")
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
        raise DataError("no labels: pass a labels file (--labels FILE), name the column that "
                        "holds them (--label-column NAME|INDEX), or give an .npz of views an "
                        "array named 'labels'")

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
        raise DataError(f"{role} {str(path)!r}: unsupported type {path.suffix or '(none)'!r}; "
                        f"use one of {', '.join(_SUFFIXES)}")
    return path


def _unreadable(path: Path, failure: OSError) -> DataError:
    return DataError(f"{path} cannot be read: {failure.strerror or failure}")


def _described(path: Path, file_views: _FileViews) -> list[tuple[str, np.ndarray]]:
    """The views of one file named for messages: ``a.csv``, or ``b.npz['fou']`` for archives."""
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
        table = _read_csv(path, header, label_column)
        return _FileViews([(path.stem, table.values)], table.labels, table.header)
    if suffix == ".npy":
        array = _load_npy(path)
        labels = None
        if isinstance(label_column, int):
            array = _numeric_2d(array, str(path))
            index = _resolve_index(label_column, array.shape[1], str(path))
            labels = array[:, index]
            array = np.delete(array, index, axis=1)
        return _FileViews([(path.stem, _view_values(array, str(path)))], labels)
    arrays = _load_npz(path)
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
            table = _read_csv(path, header, label_column, labels_only=True)
            return _FileViews([], table.labels or [], table.header)
        return _FileViews([], _read_labels_array(path, label_column))
    except OSError as failure:
        raise _unreadable(path, failure) from None
    except MemoryError:
        raise DataError(f"{path} holds more data than fits in memory") from None


def _read_labels_array(path: Path, label_column: LabelColumn) -> np.ndarray:
    if path.suffix.lower() == ".npy":
        array = _load_npy(path)
        if array.ndim == 2 and array.shape[1] > 1:
            if not isinstance(label_column, int):
                raise DataError(f"{path} has {array.shape[1]} columns; choose the label column "
                                "with --label-column INDEX")
            array = array[:, _resolve_index(label_column, array.shape[1], str(path))]
        return array
    arrays = _load_npz(path)
    key = _npz_label_key(arrays, label_column, path)
    if key is None:
        if len(arrays) != 1:
            raise DataError(f"{path} holds {len(arrays)} arrays ({', '.join(arrays)}); name the "
                            "labels with --label-column NAME")
        key = next(iter(arrays))
    return arrays[key]


def _npz_label_key(arrays: dict[str, np.ndarray], label_column: LabelColumn, path: Path
                   ) -> str | None:
    names = list(arrays)
    if isinstance(label_column, str):
        return label_column if label_column in arrays else None
    if isinstance(label_column, int):
        return names[_resolve_index(label_column, len(names), f"{path} (arrays)")]
    return next((key for key in DEFAULT_LABEL_KEYS if key in arrays), None)


def _read_npy_header(stream: IO[bytes], where: str) -> tuple[int, np.dtype]:
    """(data bytes, dtype) that an .npy header announces; refuses object arrays."""
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
        else:  # 2.0 and 3.0 share the layout (3.0 only allows UTF-8 field names)
            shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
    except (ValueError, EOFError) as failure:
        raise DataError(f"{where} is not a NumPy .npy array ({failure})") from None
    if dtype.hasobject:
        raise DataError(f"{where} holds Python objects; hmfusion never unpickles data, so save "
                        "plain numbers (or strings, for labels)")
    return math.prod(shape) * dtype.itemsize, dtype


def _load_npy(path: Path) -> np.ndarray:
    with open(path, "rb") as handle:
        try:
            np.lib.format.read_magic(handle)
        except ValueError:
            raise DataError(f"{path} is not a NumPy .npy file") from None
        handle.seek(0)
        claimed, _ = _read_npy_header(handle, str(path))
        present = path.stat().st_size - handle.tell()
        if claimed > present:
            raise DataError(f"{path} is truncated or corrupt: its header announces {claimed:,} "
                            f"bytes of data and the file holds {present:,}")
        handle.seek(0)
        try:
            return np.lib.format.read_array(handle, allow_pickle=False)
        except (ValueError, EOFError) as failure:
            raise DataError(f"{path} is truncated or corrupt: {failure}") from None


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an .npz, each member's header checked before it is read."""
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path} is not a NumPy .npz (zip) file")
    arrays: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.is_dir():
                    continue
                arrays[_npz_key(path, info)] = _read_npz_member(path, archive, info)
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError) as failure:
        if isinstance(failure, DataError):
            raise
        raise DataError(f"{path} is truncated or corrupt: {failure}") from None
    if not arrays:
        raise DataError(f"{path} holds no arrays")
    return arrays


def _npz_key(path: Path, info: zipfile.ZipInfo) -> str:
    if not info.filename.endswith(".npy"):
        raise DataError(f"{path}: member {info.filename!r} is not a .npy array (an .npz holds "
                        "only .npy arrays)")
    return info.filename[:-len(".npy")]


def _read_npz_member(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo
                     ) -> np.ndarray:
    where = f"{path}[{info.filename[:-4]!r}]"
    if info.file_size > (64 << 20) and info.file_size > _MAX_INFLATION * max(info.compress_size,
                                                                                1):
        raise DataError(f"{where} inflates from {info.compress_size:,} to {info.file_size:,} "
                        "bytes; refusing what looks like a zip bomb")
    with archive.open(info) as member:
        claimed, _ = _read_npy_header(member, where)
        present = info.file_size - member.tell()
    if claimed > present:
        raise DataError(f"{where} is truncated or corrupt: its header announces {claimed:,} "
                        f"bytes of data and the member holds {present:,}")
    with archive.open(info) as member:
        try:
            return np.lib.format.read_array(member, allow_pickle=False)
        except (ValueError, EOFError, zipfile.BadZipFile, zlib.error) as failure:
            raise DataError(f"{where} is truncated or corrupt: {failure}") from None


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


def _resolve_index(index: int, width: int, where: str) -> int:
    resolved = index + width if index < 0 else index
    if not 0 <= resolved < width:
        raise DataError(f"{where}: label column index {index} is out of range "
                        f"({width} columns)")
    return resolved


def _unique_names(names: list[str]) -> tuple[str, ...]:
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return tuple(unique)


# CSV -----------------------------------------------------------------------------------------
@dataclass
class _Table:
    values: np.ndarray  # (rows, features) float64; (rows, 0) with labels_only
    labels: list[str] | None
    header: bool


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _is_column_index_row(cells: list[str]) -> bool:
    """0, 1, 2, … as pandas writes integer column names (one cell may differ, e.g. a label)."""
    if len(cells) < 3 or not all(cell.isdigit() for cell in cells):
        return False
    return sum(int(cell) == j for j, cell in enumerate(cells)) >= len(cells) - 1


def _header_decision(rows: list[list[str]], label_index: int | None, features: bool
                     ) -> bool | None:
    """Whether the first row is a header, judged from the whole file; None when undecidable."""
    first = rows[0]
    feature_cells = [cell for j, cell in enumerate(first) if j != label_index] if features else []
    if any(cell != "" and not _is_number(cell) for cell in feature_cells):
        return True
    if features and _is_column_index_row(first):
        return True
    if label_index is None or not first[label_index] or _is_number(first[label_index]):
        return False
    below = [row[label_index] for row in rows[1:]]
    if all(_is_number(cell) for cell in below):
        return True  # a name above a column of numbers
    counts: dict[str, int] = {}
    for cell in below:
        counts[cell] = counts.get(cell, 0) + 1
    if first[label_index] in counts:
        return False  # a class that occurs again
    if all(count >= MIN_ROWS_PER_CLASS for count in counts.values()):
        return True  # a name above classes that each occur often enough to be split
    return None


def _csv_rows(path: Path) -> tuple[list[list[str]], list[int]]:
    """The non-blank rows of a CSV/TSV file (cells stripped) and their line numbers."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as failure:
        raise DataError(f"{path} is not UTF-8 text ({failure.reason} at byte "
                        f"{failure.start})") from None
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    rows: list[list[str]] = []
    lines: list[int] = []
    blank: list[int] = []
    try:
        for row in reader:
            cells = [cell.strip() for cell in row]
            if any(cells):
                rows.append(cells)
                lines.append(reader.line_num)
            elif len(cells) > 1:  # ",,," is a row of missing values, not a blank line
                raise DataError(f"{path} line {reader.line_num}: every cell is empty (a row of "
                                "missing values); remove or impute the row")
            else:
                blank.append(reader.line_num)
    except csv.Error as failure:
        raise DataError(f"{path} line {reader.line_num}: {failure}") from None
    if rows and len(rows[0]) == 1:  # one column: a blank line inside is a missing value
        inside = [line for line in blank if lines[0] < line < lines[-1]]
        if inside:
            raise DataError(f"{path} line {inside[0]} is empty (a missing value); remove or "
                            "impute the row")
    return rows, lines


def _read_csv(path: Path, header: str, label_column: LabelColumn, labels_only: bool = False
              ) -> _Table:
    """Read a CSV/TSV file: features as float64, and the label column's cells if selected."""
    rows, lines = _csv_rows(path)
    if not rows:
        raise DataError(f"{path} is empty")
    width = len(rows[0])
    for cells, line in zip(rows, lines):
        if len(cells) != width:
            raise DataError(f"{path} line {line} has {len(cells)} cells; the first row has {width}")

    label_index: int | None = None
    named = False
    if isinstance(label_column, int):
        label_index = _resolve_index(label_column, width, str(path))
    elif isinstance(label_column, str):
        if header != "no" and label_column in rows[0]:
            columns = [j + 1 for j, cell in enumerate(rows[0]) if cell == label_column]
            if len(columns) > 1:
                raise DataError(f"{path}: the header names {label_column!r} {len(columns)} "
                                f"times (columns {', '.join(map(str, columns))}); rename the "
                                "duplicates so the label column is unambiguous")
            label_index, named = rows[0].index(label_column), True
        elif labels_only:
            raise DataError(f"{path} has no column named {label_column!r} in its header")
    if labels_only and label_index is None:
        if width != 1:
            raise DataError(f"{path} has {width} columns; choose the label column with "
                            "--label-column NAME|INDEX")
        label_index = 0

    if header == "auto":
        decided = True if named else _header_decision(rows, label_index, not labels_only)
        if decided is None:
            raise DataError(
                f"{path}: cannot tell whether line {lines[0]} is a header or data (its label "
                f"{rows[0][label_index]!r} occurs once, and other labels are rare too); pass "
                "--csv-header yes or --csv-header no")
        has_header = decided
    else:
        has_header = header == "yes"
    names = rows[0] if has_header else None
    if has_header:
        rows, lines = rows[1:], lines[1:]
    if not rows:
        raise DataError(f"{path} has a header row but no data rows")

    labels = None if label_index is None else [row[label_index] for row in rows]
    if labels_only:
        return _Table(np.empty((len(rows), 0)), labels, has_header)
    columns = [j for j in range(width) if j != label_index]
    if not columns:
        raise DataError(f"{path} has no feature columns besides the label")
    cells = rows if label_index is None else [[row[j] for j in columns] for row in rows]
    try:
        values = np.array(cells, dtype=np.float64)
    except ValueError:
        for row, line in zip(rows, lines):
            for j in columns:
                if not _is_number(row[j]):
                    column = f"column {j + 1}" + (f" ({names[j]!r})" if names else "")
                    problem = "empty cell" if row[j] == "" else f"{row[j]!r} is not a number"
                    raise DataError(f"{path} line {line}, {column}: {problem}") from None
        raise  # pragma: no cover - numpy and float() disagree on a cell
    check_finite(values, str(path), [f"line {line}" for line in lines])
    return _Table(values, labels, has_header)
