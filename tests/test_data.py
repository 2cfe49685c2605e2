"""hmfusion.data: the packaged mfeat set, reading your own files, and the splits."""

from __future__ import annotations

import numpy as np
import pytest

from hmfusion.data import (
    MFEAT_PATH,
    DataError,
    MultiViewData,
    check_classes,
    encode_labels,
    load_files,
    load_mfeat,
    stratified_split,
    stratified_subsample,
)


def write_csv(path, rows, header=None, sep=","):
    lines = [] if header is None else [sep.join(header)]
    lines += [sep.join(str(cell) for cell in row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def two_views(tmp_path):
    """Two views of 12 rows (widths 3 and 2) and string labels of three classes."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(12, 3)), rng.normal(size=(12, 2))
    labels = np.array(["cat", "dog", "eel"] * 4)
    return a, b, labels


# the packaged data set --------------------------------------------------------------------------
def test_mfeat_is_packaged_with_its_attribution():
    data = load_mfeat()
    assert data.name == "mfeat"
    assert data.view_names == ("fou", "fac", "kar", "pix", "zer", "mor")
    assert data.widths == (76, 216, 64, 240, 47, 6) and sum(data.widths) == 649
    assert data.num_rows == 2000 and data.classes == tuple(range(10))
    assert np.bincount(data.labels).tolist() == [200] * 10
    assert all(np.isfinite(view).all() and view.dtype == np.float64 for view in data.views)
    readme = MFEAT_PATH.with_name("MFEAT_README.md").read_text(encoding="utf-8")
    assert "CC BY 4.0" in readme and "Duin" in readme and "Kybernetika" in readme


def test_mfeat_matches_a_value_of_the_source_csv():
    # first row of mfeat-mor.csv: 1,0,0,133.15,1.3117,1620.2 (label 0)
    data = load_mfeat()
    np.testing.assert_array_equal(data.views[5][0], [1, 0, 0, 133.15, 1.3117, 1620.2])
    assert data.labels[0] == 0 and data.labels[-1] == 9


# reading files ----------------------------------------------------------------------------------
def test_csv_with_header_and_named_label_column(tmp_path, two_views):
    a, b, labels = two_views
    va = write_csv(
        tmp_path / "a.csv",
        [[*row, y] for row, y in zip(a, labels)],
        header=["f1", "f2", "f3", "species"],
    )
    vb = write_csv(tmp_path / "b.csv", b.tolist())  # no header
    data = load_files([va, vb], label_column="species")
    assert data.view_names == ("a", "b") and data.widths == (3, 2)
    np.testing.assert_allclose(data.views[0], a)
    np.testing.assert_allclose(data.views[1], b)
    assert data.classes == ("cat", "dog", "eel")
    assert [data.classes[c] for c in data.labels] == labels.tolist()


def test_csv_without_header_and_a_labels_file(tmp_path, two_views):
    a, b, labels = two_views
    va = write_csv(tmp_path / "a.csv", a.tolist())
    vb = write_csv(tmp_path / "b.tsv", b.tolist(), sep="\t")
    y = write_csv(tmp_path / "y.csv", [[v] for v in labels])  # string labels, no header
    data = load_files([va, vb], labels=y)
    assert data.num_rows == 12 and data.classes == ("cat", "dog", "eel")
    y_header = write_csv(tmp_path / "y2.csv", [[v] for v in labels], header=["species"])
    assert load_files([va, vb], labels=y_header).labels.tolist() == data.labels.tolist()


def test_labels_file_with_several_columns_needs_a_column(tmp_path, two_views):
    a, _, labels = two_views
    va = write_csv(tmp_path / "a.csv", a.tolist())
    y = write_csv(tmp_path / "y.csv", [[i, v] for i, v in enumerate(labels)], header=["id", "y"])
    with pytest.raises(DataError, match="choose the label column"):
        load_files([va], labels=y)
    assert load_files([va], labels=y, label_column="y").classes == ("cat", "dog", "eel")
    assert load_files([va], labels=y, label_column=1).classes == ("cat", "dog", "eel")


def test_label_index_in_every_file_as_in_the_mfeat_csvs(tmp_path):
    # mfeat's CSVs: a header of column indices ("0,1,...,k-1,0") and the label last
    rows = [[0.5, 1.5, 2.5, 7], [1.0, 2.0, 3.0, 7], [4.0, 5.0, 6.0, 8]] * 2
    header = ["0", "1", "2", "0"]
    va = write_csv(tmp_path / "fou.csv", rows, header=header)
    vb = write_csv(
        tmp_path / "mor.csv", [[r[0] * 2, 1, r[3]] for r in rows], header=["0", "1", "0"]
    )
    # a row of numbers is data the model can use: never taken for a header without asking
    with pytest.raises(DataError, match=r"fou\.csv: cannot tell .* like column numbers"):
        load_files([va, vb], label_column=-1)
    data = load_files([va, vb], label_column=-1, header="yes")
    assert data.widths == (3, 2) and data.num_rows == 6 and data.classes == (7, 8)


def test_npy_views_and_npy_labels(tmp_path, two_views):
    a, b, _ = two_views
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b[:, 0])  # a 1-D array is one feature
    np.save(tmp_path / "y.npy", np.arange(12) % 3)
    data = load_files([tmp_path / "a.npy", tmp_path / "b.npy"], labels=tmp_path / "y.npy")
    assert data.widths == (3, 1) and data.classes == (0, 1, 2)


def test_one_npz_with_views_and_labels(tmp_path, two_views):
    a, b, labels = two_views
    np.savez(tmp_path / "d.npz", left=a, right=b, labels=labels)
    data = load_files([tmp_path / "d.npz"])
    assert data.view_names == ("left", "right") and data.classes == ("cat", "dog", "eel")
    np.savez(tmp_path / "e.npz", left=a, right=b, target_name=labels)
    assert load_files([tmp_path / "e.npz"], label_column="target_name").widths == (3, 2)


def test_packaged_npz_reads_as_your_own_file():
    data = load_files([MFEAT_PATH])
    mfeat = load_mfeat()
    assert data.widths == mfeat.widths and data.labels.tolist() == mfeat.labels.tolist()


def test_unlabelled_files_for_prediction(tmp_path, two_views):
    a, _, _ = two_views
    np.save(tmp_path / "a.npy", a)
    data = load_files([tmp_path / "a.npy"], require_labels=False)
    assert data.labels is None and data.classes is None


@pytest.mark.parametrize(
    "values, expected, decoded",
    [
        ([3, 1, 3, 2], (1, 2, 3), [3, 1, 3, 2]),
        (["3", "1.0", " 3 ", "2"], (1, 2, 3), [3, 1, 3, 2]),
        (np.array([1.0, 0.0, 1.0]), (0, 1), [1, 0, 1]),
        (["1", "cat", "1"], ("1", "cat"), ["1", "cat", "1"]),
        (np.array([True, False]), (0, 1), [1, 0]),
        # above 2**53 through float these two merged into one class
        (
            ["9007199254740993", "9007199254740992", "9007199254740993"],
            (9007199254740992, 9007199254740993),
            [9007199254740993, 9007199254740992, 9007199254740993],
        ),
        (
            np.array([2**62 + 1, 2**62, 2**62 + 1], dtype=np.int64),
            (2**62, 2**62 + 1),
            [2**62 + 1, 2**62, 2**62 + 1],
        ),
        (["1_0", "10", "1_0"], ("10", "1_0"), ["1_0", "10", "1_0"]),
    ],
)
def test_encode_labels(values, expected, decoded):
    codes, classes = encode_labels(values, "y")
    assert classes == expected
    assert [classes[c] for c in codes] == decoded  # the old check compared codes with themselves


@pytest.mark.parametrize(
    "values, message",
    [
        (np.array([1.0, 2.5]), "row 2: label 2.5 is not an integer"),
        (np.array([1.0, np.nan]), "row 2: label nan is not an integer"),
        (["a", ""], "row 2: empty label"),
        (np.zeros((3, 2)), "one column"),
    ],
)
def test_encode_labels_errors(values, message):
    with pytest.raises(DataError, match=message):
        encode_labels(values, "y.npy")


# bad files: one message naming the file and the problem -----------------------------------------
def bad_case(tmp_path, case):
    """(views, kwargs) for load_files, each with exactly one problem."""
    good = [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]]
    labels = write_csv(tmp_path / "y.csv", [[0], [1], [0], [1]])
    ok = write_csv(tmp_path / "ok.csv", good)
    with_labels = {"labels": labels}
    if case == "missing file":
        return [ok, tmp_path / "nope.csv"], {"labels": labels}
    if case == "missing labels file":
        return [ok], {"labels": tmp_path / "nope.csv"}
    if case == "unsupported type":
        (tmp_path / "v.xlsx").write_text("x")
        return [tmp_path / "v.xlsx"], {"labels": labels}
    if case == "rows differ":
        return [ok, write_csv(tmp_path / "short.csv", good[:3])], {"labels": labels}
    if case == "labels rows differ":
        return [ok], {"labels": write_csv(tmp_path / "y3.csv", [[0], [1], [0]])}
    if case == "non-numeric cell":
        return [write_csv(tmp_path / "v.csv", [[1, 2], [3, "abc"], [5, 6], [7, 8]])], with_labels
    if case == "empty cell":
        return [write_csv(tmp_path / "v.csv", [[1, 2], [3, ""], [5, 6], [7, 8]])], with_labels
    if case == "ragged row":
        return [write_csv(tmp_path / "v.csv", [[1, 2], [3], [5, 6], [7, 8]])], {"labels": labels}
    if case == "NaN":
        return [write_csv(tmp_path / "v.csv", [[1, 2], [3, 4], [5, "nan"], [7, 8]])], with_labels
    if case == "inf in npy":
        np.save(tmp_path / "v.npy", np.array([[1.0, 2.0], [3.0, np.inf], [5, 6], [7, 8]]))
        return [tmp_path / "v.npy"], {"labels": labels}
    if case == "pickled npy":
        np.save(tmp_path / "v.npy", np.array([{"a": 1}] * 4, dtype=object), allow_pickle=True)
        return [tmp_path / "v.npy"], {"labels": labels}
    if case == "not an npy":
        (tmp_path / "v.npy").write_text("1,2\n3,4\n")
        return [tmp_path / "v.npy"], {"labels": labels}
    if case == "string view":
        np.save(tmp_path / "v.npy", np.array([["a", "b"]] * 4))
        return [tmp_path / "v.npy"], {"labels": labels}
    if case == "empty file":
        (tmp_path / "v.csv").write_text("\n\n")
        return [tmp_path / "v.csv"], {"labels": labels}
    if case == "no labels":
        return [ok], {}
    if case == "label column not found":
        return [write_csv(tmp_path / "v.csv", good, header=["a", "b"])], {"label_column": "y"}
    if case == "label index out of range":
        return [ok], {"label_column": 5}
    if case == "labels disagree":
        other = write_csv(tmp_path / "w.csv", [[1, 1], [2, 0], [3, 1], [4, 0]])
        return [write_csv(tmp_path / "v.csv", [[1, 0], [2, 1], [3, 0], [4, 1]]), other], {
            "label_column": -1
        }
    if case == "only the label":
        return [write_csv(tmp_path / "v.csv", [[0], [1], [0], [1]], header=["y"])], {
            "label_column": "y"
        }
    raise AssertionError(case)


BAD_CASES = {
    "missing file": r"views file '.*nope\.csv' does not exist",
    "missing labels file": r"labels file '.*nope\.csv' does not exist",
    "unsupported type": r"unsupported type '\.xlsx'",
    "rows differ": r"different numbers of rows: ok\.csv 4, short\.csv 3",
    "labels rows differ": r"labels \(.*y3\.csv\) have 3 rows but the views have 4",
    "non-numeric cell": r"v\.csv line 2, column 2: 'abc' is not a number",
    "empty cell": r"v\.csv line 2, column 2: empty cell",
    "ragged row": r"v\.csv line 2 has 1 cells; the first row has 2",
    "NaN": r"v\.csv, line 3, column 2: NaN",
    "inf in npy": r"v\.npy, row 2, column 2: an infinite value",
    "pickled npy": r"v\.npy holds Python objects; hmfusion never unpickles",
    "not an npy": r"v\.npy is not a NumPy \.npy file",
    "string view": r"v\.npy: dtype <U1 is not numeric",
    "empty file": r"v\.csv is empty",
    "no labels": r"no labels: pass a labels file",
    "label column not found": r"no views file has a column .* named 'y'",
    "label index out of range": r"ok\.csv: label column index 5 is out of range \(2 columns\)",
    "labels disagree": r"label columns of .*v\.csv and .*w\.csv differ \(first at row 1",
    "only the label": r"v\.csv has no feature columns besides the label",
}


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_files_raise_a_clear_data_error(tmp_path, case):
    views, kwargs = bad_case(tmp_path, case)
    with pytest.raises(DataError, match=BAD_CASES[case]):
        load_files(views, **kwargs)


def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError)


def test_load_files_argument_types(tmp_path):
    with pytest.raises(TypeError, match="list of file paths"):
        load_files("a.csv")
    with pytest.raises(DataError, match="no views files"):
        load_files([])
    with pytest.raises(TypeError, match="label_column"):
        load_files([MFEAT_PATH], label_column=1.5)


def test_views_must_agree_in_memory():
    with pytest.raises(DataError, match="different numbers of rows: a 3, b 2"):
        MultiViewData("x", (np.zeros((3, 1)), np.zeros((2, 1))), ("a", "b"))


# classes and splits -----------------------------------------------------------------------------
def test_a_single_class_is_refused():
    with pytest.raises(DataError, match=r"single class \('cat'\)"):
        check_classes(np.zeros(10, dtype=np.int64), ("cat",))


def test_fewer_rows_than_split_parts_is_refused():
    labels = np.array([0, 0, 0, 1, 1])
    with pytest.raises(
        DataError,
        match=r"every class needs at least 3 rows; classes with "
        r"fewer: 'b' \(2\)",
    ):
        check_classes(labels, ("a", "b"))


def test_stratified_split_partitions_every_class():
    labels = np.repeat(np.arange(4), [50, 30, 10, 3])
    train, val, test = stratified_split(labels, validation_fraction=0.1, test_fraction=0.2, seed=3)
    assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(labels.size))
    for code, size in enumerate([50, 30, 10, 3]):
        counts = [int((labels[part] == code).sum()) for part in (train, val, test)]
        assert sum(counts) == size and min(counts) >= 1
    assert [int((labels[test] == 0).sum()), int((labels[val] == 0).sum())] == [10, 5]
    again = stratified_split(labels, validation_fraction=0.1, test_fraction=0.2, seed=3)
    other = stratified_split(labels, validation_fraction=0.1, test_fraction=0.2, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip((train, val, test), again))
    assert not np.array_equal(test, other[2])


def test_stratified_split_rejects_bad_fractions():
    with pytest.raises(ValueError, match="sum to less than 1"):
        stratified_split(np.zeros(9), validation_fraction=0.5, test_fraction=0.5, seed=0)


def test_stratified_subsample_keeps_proportions_and_small_classes():
    labels = np.repeat(np.arange(3), [100, 50, 4])
    rows = stratified_subsample(labels, 31)
    assert np.bincount(labels[rows]).tolist() == [20, 10, 3]
    assert stratified_subsample(labels, 1000).size == labels.size


# data read is data meant (issue 10) -------------------------------------------------------------
def test_a_row_of_empty_cells_is_an_error_not_a_blank_line(tmp_path):
    """`,,,` (what pandas writes for an all-NaN row) was skipped, misaligning the views."""
    v = tmp_path / "v.csv"
    v.write_text("1,2,3\n4,5,6\n,,\n7,8,9\n\n")
    np.save(tmp_path / "y.npy", np.arange(3))
    with pytest.raises(DataError, match=r"v\.csv line 3: every cell is empty"):
        load_files([v], labels=tmp_path / "y.npy")


def test_a_blank_line_inside_a_one_column_file_is_a_missing_value(tmp_path):
    ok = write_csv(tmp_path / "ok.csv", [[1.0, 2.0]] * 4)
    y = tmp_path / "y.csv"
    y.write_text("a\nb\n\na\nb\n")
    with pytest.raises(DataError, match=r"y\.csv line 3 is empty \(a missing value\)"):
        load_files([ok], labels=y)
    y.write_text("a\nb\na\nb\n\n\n")  # trailing blank lines are only the end of the file
    assert load_files([ok], labels=y).num_rows == 4


def test_undecidable_header_asks_instead_of_dropping_a_row(tmp_path):
    """8 headerless rows whose first label occurs once: predict used to take it for a header
    and exit 0 with 7 predictions, each shifted by one row."""
    rows = [[i, i + 0.5, name] for i, name in enumerate("abcdefgh")]
    v = write_csv(tmp_path / "v.csv", rows)
    with pytest.raises(
        DataError,
        match=r"v\.csv: cannot tell whether line 1 is a header or "
        r"data .* pass --csv-header yes or --csv-header no",
    ):
        load_files([v], label_column=-1, require_labels=False)
    data = load_files([v], label_column=-1, header="no", require_labels=False)
    assert data.num_rows == 8 and data.csv_headers == (("v.csv", False),)
    assert [data.classes[c] for c in data.labels] == list("abcdefgh")


def test_labels_file_row_count_says_a_header_was_read(tmp_path):
    """With a separate labels file, the error said 7 rows when the file had 8."""
    ok = write_csv(tmp_path / "ok.csv", [[1.0, 2.0]] * 9)
    y = write_csv(tmp_path / "y.csv", [["y"]] + [[v] for v in [0, 1, 2] * 2 + [0, 1]])
    with pytest.raises(
        DataError,
        match=r"have 8 rows after its header row but the views "
        r"have 9",
    ):
        load_files([ok], labels=y)
    undecidable = write_csv(tmp_path / "z.csv", [[v] for v in "abcdefgh"])
    with pytest.raises(DataError, match="cannot tell whether line 1 is a header"):
        load_files([ok], labels=undecidable)


def test_header_decided_by_the_whole_file(tmp_path):
    ok = write_csv(tmp_path / "ok.csv", [[1.0, 2.0]] * 7)
    # a name over classes that each occur at least three times: a header
    y = write_csv(tmp_path / "y.csv", [["species"]] + [[v] for v in "aaabbbb"])
    data = load_files([ok], labels=y)
    assert data.classes == ("a", "b")
    assert data.csv_headers == (("ok.csv", False), ("y.csv", True))
    # the first label occurs again: data
    y2 = write_csv(tmp_path / "y2.csv", [[v] for v in "abababa"])
    assert load_files([ok], labels=y2).csv_headers == (("ok.csv", False), ("y2.csv", False))


def test_a_duplicated_header_name_is_an_error(tmp_path):
    """The first match was taken silently and the real label column became a feature."""
    v = write_csv(
        tmp_path / "v.csv",
        [[1, 0, 2, "a"], [3, 1, 4, "b"], [5, 0, 6, "a"]],
        header=["x", "y", "z", "y"],
    )
    with pytest.raises(DataError, match=r"v\.csv: the header names 'y' 2 times \(columns 2, 4\)"):
        load_files([v], label_column="y")


def npy_bytes(array):
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_npz_member_that_is_not_npy(tmp_path):
    import zipfile

    with zipfile.ZipFile(tmp_path / "d.npz", "w") as archive:
        archive.writestr("view.npy", npy_bytes(np.zeros((3, 2))))
        archive.writestr("notes.txt", "hello")
    with pytest.raises(DataError, match=r"d\.npz: member 'notes\.txt' is not a \.npy array"):
        load_files([tmp_path / "d.npz"], require_labels=False)


def test_truncated_npz_member_is_reported_as_truncated(tmp_path):
    """It was reported as "holds Python objects"."""
    import zipfile

    data = npy_bytes(np.arange(40.0).reshape(10, 4))
    with zipfile.ZipFile(tmp_path / "d.npz", "w") as archive:
        archive.writestr("view.npy", data[:-20])
    with pytest.raises(
        DataError,
        match=r"d\.npz\['view'\] is truncated or corrupt: its header "
        r"announces 320 bytes",
    ):
        load_files([tmp_path / "d.npz"], require_labels=False)


def test_npy_header_claiming_terabytes(tmp_path):
    """A MemoryError traceback before."""
    header = npy_bytes(np.zeros((2, 2)))
    huge = header.replace(b"(2, 2)", b"(10**12, 2)".replace(b"10**12", b"1000000000000"))
    (tmp_path / "v.npy").write_bytes(huge)
    with pytest.raises(
        DataError,
        match=r"v\.npy is truncated or corrupt: its header announces "
        r"16,000,000,000,000 bytes",
    ):
        load_files([tmp_path / "v.npy"], require_labels=False)


def test_npz_header_claiming_terabytes_and_a_zip_bomb(tmp_path):
    import zipfile

    huge = npy_bytes(np.zeros((2, 2))).replace(b"(2, 2)", b"(1000000000000, 2)")
    with zipfile.ZipFile(tmp_path / "d.npz", "w") as archive:
        archive.writestr("view.npy", huge)
    with pytest.raises(DataError, match=r"d\.npz\['view'\] is truncated or corrupt"):
        load_files([tmp_path / "d.npz"], require_labels=False)

    bomb_rows = (80 << 20) // 8
    header = npy_bytes(np.zeros((1,)))[:-8].replace(b"(1,)", f"({bomb_rows},)".encode())
    with (
        zipfile.ZipFile(tmp_path / "b.npz", "w", zipfile.ZIP_DEFLATED) as archive,
        archive.open("view.npy", "w") as member,
    ):
        member.write(header)
        chunk = bytes(1 << 20)
        for _ in range(80):
            member.write(chunk)
    with pytest.raises(
        DataError,
        match=r"b\.npz\['view'\] inflates from .* looks like a zip "
        "bomb",
    ):
        load_files([tmp_path / "b.npz"], require_labels=False)


def test_an_unreadable_file_is_one_data_error(tmp_path, monkeypatch):
    from pathlib import Path

    v = write_csv(tmp_path / "v.csv", [[1, 2]] * 4)

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", denied)
    with pytest.raises(DataError, match=r"v\.csv cannot be read: Permission denied"):
        load_files([v], require_labels=False)


# issue 21 ---------------------------------------------------------------------------------------
def test_byte_labels_are_compared_exactly(tmp_path, two_views):
    # Issue 21, case 8: .npy labels b'\xff' and b'\xfe' were merged into one class.
    a, _, _ = two_views
    np.save(tmp_path / "a.npy", a)
    labels = np.array([b"\xff", b"\xfe", b"ok"] * 4)
    np.save(tmp_path / "y.npy", labels)
    data = load_files([tmp_path / "a.npy"], labels=tmp_path / "y.npy")
    assert len(data.classes) == 3
    decoded = [data.classes[code] for code in data.labels]
    assert len(set(decoded[:2])) == 2 and decoded[2] == "ok"
    assert [decoded.index(name) for name in decoded] == [[0, 1, 2][i % 3] for i in range(12)]


def test_byte_labels_that_would_print_alike_are_refused(tmp_path, two_views):
    a, _, _ = two_views
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "y.npy", np.array([b"\xff", b"\\xff", b"x"] * 4))
    with pytest.raises(DataError, match="distinct labels .* print alike"):
        load_files([tmp_path / "a.npy"], labels=tmp_path / "y.npy")


def test_count_views_whose_first_rows_look_like_column_numbers_keep_them(tmp_path):
    # Issue 21, case 9, in predict: integer count views whose first rows are 0,1,2,9 and 0,1,7
    # lost those rows as "headers" (29 predictions for 30 rows, exit 0).
    rng = np.random.default_rng(0)
    first = [[0, 1, 2, 9]] + rng.integers(0, 20, (29, 4)).tolist()
    second = [[0, 1, 7]] + rng.integers(0, 20, (29, 3)).tolist()
    va = write_csv(tmp_path / "a.csv", first)
    vb = write_csv(tmp_path / "b.csv", second)
    with pytest.raises(DataError, match=r"a\.csv: cannot tell whether line 1 is a header"):
        load_files([va, vb], require_labels=False)
    data = load_files([va, vb], header="no", require_labels=False)
    assert data.num_rows == 30 and data.views[0][0].tolist() == [0, 1, 2, 9]


def test_a_first_row_of_numbers_with_a_rare_label_is_not_a_header(tmp_path):
    # Issue 21, case 9, in train: a headerless CSV whose first row is 0.1,0.2,0.3,0.4,zzz (the
    # other 30 rows labelled a/b/c) lost row 1 as a header.
    rng = np.random.default_rng(1)
    rows = [["0.1", "0.2", "0.3", "0.4", "zzz"]] + [
        [*map(str, rng.normal(size=4).round(3)), "abc"[i % 3]] for i in range(30)
    ]
    v = write_csv(tmp_path / "v.csv", rows)
    with pytest.raises(DataError, match=r"v\.csv: cannot tell .* 'zzz' occurs once"):
        load_files([v], label_column=-1)
    assert load_files([v], label_column=-1, header="no").num_rows == 31
    # a header with text feature names is still found on its own
    named = write_csv(tmp_path / "n.csv", rows[1:], header=["f1", "f2", "f3", "f4", "y"])
    assert load_files([named], label_column=-1).csv_headers == (("n.csv", True),)


@pytest.mark.parametrize("suffix", [".npz", ".npy", ".csv"])
def test_an_unreadable_views_file_says_permission_denied(tmp_path, suffix, monkeypatch):
    # Issue 21: a `chmod 000` views file was reported as "is not a NumPy .npz file".
    import builtins
    import os
    from pathlib import Path

    path = tmp_path / f"v{suffix}"
    if suffix == ".npz":
        np.savez(path, a=np.zeros((4, 2)))
    elif suffix == ".npy":
        np.save(path, np.zeros((4, 2)))
    else:
        path.write_text("1,2\n3,4\n")
    path.chmod(0)
    if os.geteuid() == 0:  # root reads anything: refuse as the kernel would for others
        real_open, real_read_text = builtins.open, Path.read_text

        def denied(file, *args, **kwargs):
            if str(file) == str(path):
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(file, *args, **kwargs)

        def denied_text(self, *args, **kwargs):
            return denied(self) if self == path else real_read_text(self, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", denied)
        monkeypatch.setattr(Path, "read_text", denied_text)
    with pytest.raises(DataError, match=r"v\.(npz|npy|csv) cannot be read: Permission denied"):
        load_files([path], require_labels=False)
