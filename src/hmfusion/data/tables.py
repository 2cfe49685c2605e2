"""Reading CSV/TSV files: cells checked one by one, and whether the first row is a header.

With `header="auto"` the whole file decides (see [`load_files`][hmfusion.data.load_files]); a file
it cannot decide is refused with a request for `--csv-header yes|no` rather than guessed, so a row
that is valid data is never dropped silently.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hmfusion.data.dataset import DataError, check_finite
from hmfusion.data.split import MIN_ROWS_PER_CLASS

__all__ = ["LabelColumn", "Table", "read_csv", "resolve_index"]

LabelColumn = int | str | None


def resolve_index(index: int, width: int, where: str) -> int:
    """`index` into `width` columns (negative counts from the end); DataError naming
    `where` when out of range."""
    resolved = index + width if index < 0 else index
    if not 0 <= resolved < width:
        raise DataError(f"{where}: label column index {index} is out of range ({width} columns)")
    return resolved


@dataclass
class Table:
    """A CSV file read: its features, the label column's cells, and whether it had a header."""

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


def _header_decision(rows: list[list[str]], label_index: int | None, features: bool) -> bool | None:
    """Whether the first row is a header, judged from the whole file; None when undecidable.

    A row whose every feature cell is a number is data the model can use, so it is never taken
    for a header: it is data unless it reads 0, 1, 2, … (pandas' column numbers) or its label
    never occurs again, and then undecidable."""
    first = rows[0]
    label = first[label_index] if label_index is not None else ""
    below = [row[label_index] for row in rows[1:]] if label_index is not None else []
    if features:
        cells = [cell for j, cell in enumerate(first) if j != label_index]
        if any(cell != "" and not _is_number(cell) for cell in cells):
            return True  # text where the model reads numbers
        if all(_is_number(cell) for cell in cells):
            if _is_column_index_row(first):
                return None
            if label and not _is_number(label) and label not in below:
                return None  # a label name, or a class of one row
            return False
    if label_index is None or not label or _is_number(label):
        return False
    if all(_is_number(cell) for cell in below):
        return True  # a name above a column of numbers
    counts: dict[str, int] = {}
    for cell in below:
        counts[cell] = counts.get(cell, 0) + 1
    if label in counts:
        return False  # a class that occurs again
    if all(count >= MIN_ROWS_PER_CLASS for count in counts.values()):
        return True  # a name above classes that each occur often enough to be split
    return None


def _csv_rows(path: Path) -> tuple[list[list[str]], list[int]]:
    """The non-blank rows of a CSV/TSV file (cells stripped) and their line numbers."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as failure:
        raise DataError(
            f"{path} is not UTF-8 text ({failure.reason} at byte {failure.start})"
        ) from None
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
                raise DataError(
                    f"{path} line {reader.line_num}: every cell is empty (a row of "
                    "missing values); remove or impute the row"
                )
            else:
                blank.append(reader.line_num)
    except csv.Error as failure:
        raise DataError(f"{path} line {reader.line_num}: {failure}") from None
    if rows and len(rows[0]) == 1:  # one column: a blank line inside is a missing value
        inside = [line for line in blank if lines[0] < line < lines[-1]]
        if inside:
            raise DataError(
                f"{path} line {inside[0]} is empty (a missing value); remove or impute the row"
            )
    return rows, lines


def read_csv(
    path: Path, header: str, label_column: LabelColumn, labels_only: bool = False
) -> Table:
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
        label_index = resolve_index(label_column, width, str(path))
    elif isinstance(label_column, str):
        if header != "no" and label_column in rows[0]:
            columns = [j + 1 for j, cell in enumerate(rows[0]) if cell == label_column]
            if len(columns) > 1:
                raise DataError(
                    f"{path}: the header names {label_column!r} {len(columns)} "
                    f"times (columns {', '.join(map(str, columns))}); rename the "
                    "duplicates so the label column is unambiguous"
                )
            label_index, named = rows[0].index(label_column), True
        elif labels_only:
            raise DataError(f"{path} has no column named {label_column!r} in its header")
    if labels_only and label_index is None:
        if width != 1:
            raise DataError(
                f"{path} has {width} columns; choose the label column with "
                "--label-column NAME|INDEX"
            )
        label_index = 0

    if header == "auto":
        decided = True if named else _header_decision(rows, label_index, not labels_only)
        if decided is None:
            if label_index is not None and not _is_column_index_row(rows[0]):
                why = f"its label {rows[0][label_index]!r} occurs once"
            else:
                why = "it reads 0, 1, 2, ... like column numbers"
            raise DataError(
                f"{path}: cannot tell whether line {lines[0]} is a header or data ({why}); "
                "pass --csv-header yes or --csv-header no"
            )
        has_header = bool(decided)
    else:
        has_header = header == "yes"
    names = rows[0] if has_header else None
    if has_header:
        rows, lines = rows[1:], lines[1:]
    if not rows:
        raise DataError(f"{path} has a header row but no data rows")

    labels = None if label_index is None else [row[label_index] for row in rows]
    if labels_only:
        return Table(np.empty((len(rows), 0)), labels, has_header)
    columns = [j for j in range(width) if j != label_index]
    if not columns:
        raise DataError(f"{path} has no feature columns besides the label")
    features = rows if label_index is None else [[row[j] for j in columns] for row in rows]
    try:
        values = np.array(features, dtype=np.float64)
    except ValueError:
        for row, line in zip(rows, lines):
            for j in columns:
                if not _is_number(row[j]):
                    column = f"column {j + 1}" + (f" ({names[j]!r})" if names else "")
                    problem = "empty cell" if row[j] == "" else f"{row[j]!r} is not a number"
                    raise DataError(f"{path} line {line}, {column}: {problem}") from None
        raise  # pragma: no cover - numpy and float() disagree on a cell
    check_finite(values, str(path), [f"line {line}" for line in lines])
    return Table(values, labels, has_header)
