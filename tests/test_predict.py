"""`hmfusion predict` and the checkpoint format: a checkpoint is refused, in one line with exit
status 2, unless its weights are the ones its JSON was saved with, finite and non-degenerate."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil

import pytest
import torch

from hmfusion.apps.train.checkpoint import load_checkpoint
from hmfusion.apps.cli import main as cli
from hmfusion.data import DataError


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("predict") / "run"
    assert (
        cli(
            [
                "train",
                "--out",
                str(out),
                "--fusion",
                "hm,dense",
                "--seeds",
                "1",
                "--epochs",
                "2",
                "--max-rows",
                "300",
                "--quiet",
            ]
        )
        == 0
    )
    return out


@pytest.fixture
def checkpoint(run, tmp_path):
    """A private copy of the hm checkpoint: (pt path, json path)."""
    for suffix in (".pt", ".json"):
        shutil.copy(run / "checkpoints" / f"hm{suffix}", tmp_path / f"hm{suffix}")
    return tmp_path / "hm.pt", tmp_path / "hm.json"


def rebind(pt, js):
    """Record the current .pt bytes in the JSON, as a forger (or a careful user) would."""
    meta = json.loads(js.read_text())
    meta["weights_sha256"] = hashlib.sha256(pt.read_bytes()).hexdigest()
    js.write_text(json.dumps(meta))


def predict_error(capsys, *args):
    code = cli(["predict", *map(str, args)])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("hmfusion: error: ") and "\n" not in err, err
    return err


def test_a_checkpoint_binds_its_weights_and_run(run):
    results = json.loads((run / "results.json").read_text())
    for fusion in ("hm", "dense"):
        meta = json.loads((run / "checkpoints" / f"{fusion}.json").read_text())
        assert meta["run_id"] == results["run_id"]
        pt = (run / "checkpoints" / f"{fusion}.pt").read_bytes()
        assert meta["weights_sha256"] == hashlib.sha256(pt).hexdigest()


def test_weights_of_another_run_are_refused(run, checkpoint, capsys):
    """Killed between hm.pt and hm.json, the old in-place writer left new weights beside the
    old JSON, and predict labelled rows with the old run's classes."""
    pt, _ = checkpoint
    shutil.copy(run / "checkpoints" / "dense.pt", pt)
    err = predict_error(capsys, "--checkpoint", pt)
    assert "does not belong to hm.json" in err


def test_garbage_pt_is_one_line(checkpoint, capsys):
    pt, js = checkpoint
    pt.write_bytes(b"\x80\x02garbage that is no pickle")
    rebind(pt, js)
    err = predict_error(capsys, "--checkpoint", pt)
    assert "is not a readable tensor checkpoint (UnpicklingError" in err


def test_malicious_pt_is_refused_and_never_runs(checkpoint, tmp_path, capsys):
    pt, js = checkpoint
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    pt.write_bytes(pickle.dumps({"x": Payload()}, protocol=2))
    rebind(pt, js)
    err = predict_error(capsys, "--checkpoint", pt)
    assert "is not a readable tensor checkpoint" in err and not marker.exists()


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("fusion.A", float("nan"), "fusion.A holds NaN or infinite values"),
        ("head.2.weight", float("inf"), "head.2.weight holds NaN or infinite values"),
        (
            "standardize.0.scale",
            0.0,
            "standardize.0.scale (a standardization scale) is not positive",
        ),
    ],
)
def test_non_finite_or_degenerate_weights_are_refused(checkpoint, key, value, message, capsys):
    """They made predict print probability nan for every row and exit 0."""
    pt, js = checkpoint
    state = torch.load(pt, weights_only=True)
    state[key].view(-1)[0] = value
    torch.save(state, pt)
    rebind(pt, js)
    assert message in predict_error(capsys, "--checkpoint", pt)


@pytest.mark.parametrize(
    "text, message",
    [
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"model": ' * 50_000 + "1" + "}" * 50_000, "nested too deeply"),
        ("{not json", "is not valid JSON"),
        (
            '{"model": {"format": "hmfusion-multiview-classifier", "version": 1}}',
            "checkpoint version 1 is not supported",
        ),
    ],
)
def test_hostile_json_is_one_line(checkpoint, text, message, capsys):
    pt, js = checkpoint
    js.write_text(text)
    assert message in predict_error(capsys, "--checkpoint", pt)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("widths", [10**12] * 6, "tensors differ at"),
        ("widths", "wide", "'widths' must be a non-empty list"),
        ("classes", [1, 1], "'classes' holds a class twice"),
        ("fusion", "evil", "'fusion' must be one of"),
        ("fusion_options", {"__class__": 1}, "'fusion_options' must be a dict with keys among"),
    ],
)
def test_config_that_does_not_fit_the_weights_is_refused(checkpoint, field, value, message, capsys):
    from hmfusion.apps.train.checkpoint import _config_sha256

    pt, js = checkpoint
    meta = json.loads(js.read_text())
    meta["model"][field] = value
    meta["model_sha256"] = _config_sha256(meta["model"])  # as a forger would: checked anyway
    js.write_text(json.dumps(meta))
    assert message in predict_error(capsys, "--checkpoint", pt)


def test_load_checkpoint_raises_data_error(checkpoint):
    pt, js = checkpoint
    js.write_text("[]")
    with pytest.raises(DataError, match="not an hmfusion train checkpoint config"):
        load_checkpoint(pt)


@pytest.mark.parametrize(
    "device, message",
    [
        ("tpu", "--device 'tpu' is not a device"),
        ("meta", "only cpu and cuda are supported"),
    ],
)
def test_predict_bad_device_is_one_line(run, device, message, capsys):
    err = predict_error(capsys, "--checkpoint", run / "checkpoints" / "hm.pt", "--device", device)
    assert message in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_predict_cuda_without_cuda_is_one_line(run, capsys):
    err = predict_error(capsys, "--checkpoint", run / "checkpoints" / "hm.pt", "--device", "cuda")
    assert "CUDA is not available" in err


def test_predict_out_is_checked_before_any_work(run, tmp_path, capsys, monkeypatch):
    import hmfusion.apps.predict

    def never(*args, **kwargs):
        raise AssertionError("the checkpoint was read before --out was checked")

    monkeypatch.setattr(hmfusion.apps.predict, "load_checkpoint", never)
    (tmp_path / "f").write_text("x")
    for out, message in [
        (tmp_path / "f" / "p.csv", "is a file, not a directory"),
        (tmp_path, "is a directory; give a file name"),
        (tmp_path / "f", "already exists; pass --overwrite"),
    ]:
        err = predict_error(capsys, "--checkpoint", run / "checkpoints" / "hm.pt", "--out", out)
        assert message in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_predict_out_in_a_directory_that_is_not_writable(run, tmp_path, capsys, monkeypatch):
    """Found in the reliability review: an unwritable --out surfaced only after predicting."""
    import hmfusion.apps.predict

    def never(*args, **kwargs):
        raise AssertionError("the checkpoint was read before --out was checked")

    monkeypatch.setattr(hmfusion.apps.predict, "load_checkpoint", never)
    (tmp_path / "ro").mkdir()
    real = os.access
    monkeypatch.setattr(
        os,
        "access",
        lambda path, mode: False if str(path) == str(tmp_path / "ro") else real(path, mode),
    )
    err = predict_error(
        capsys, "--checkpoint", run / "checkpoints" / "hm.pt", "--out", tmp_path / "ro" / "p.csv"
    )
    assert "is not writable" in err
    assert list((tmp_path / "ro").iterdir()) == []


def test_predict_out_is_written_whole_or_not_at_all(run, tmp_path, capsys, monkeypatch):
    import errno

    def full(source, destination):
        raise OSError(errno.ENOSPC, "No space left on device", str(destination))

    monkeypatch.setattr(os, "replace", full)
    err = predict_error(
        capsys, "--checkpoint", run / "checkpoints" / "hm.pt", "--out", tmp_path / "p.csv"
    )
    assert "No space left on device" in err and list(tmp_path.iterdir()) == []


def test_predict_ctrl_c_is_one_line_and_writes_nothing(run, tmp_path, capsys, monkeypatch):
    import hmfusion.apps.predict

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(hmfusion.apps.predict, "predict", interrupted)
    code = cli(
        [
            "predict",
            "--checkpoint",
            str(run / "checkpoints" / "hm.pt"),
            "--out",
            str(tmp_path / "p.csv"),
        ]
    )
    assert code == 130
    assert capsys.readouterr().err == "hmfusion: error: interrupted; no output was written\n"
    assert list(tmp_path.iterdir()) == []


def test_predict_says_which_csv_header_was_used(run, tmp_path, capsys):
    from hmfusion.data import load_mfeat

    data = load_mfeat()
    files = []
    for name, view in zip(data.view_names, data.views):
        files.append(tmp_path / f"{name}.csv")
        header = [",".join(f"{name}{j}" for j in range(view.shape[1]))] if name == "fou" else []
        rows = [",".join(str(float(v)) for v in row) for row in view[:5]]
        files[-1].write_text("\n".join(header + rows) + "\n")
    assert (
        cli(
            [
                "predict",
                "--checkpoint",
                str(run / "checkpoints" / "hm.pt"),
                "--views",
                *map(str, files),
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 6
    assert "fou.csv: first row read as a header" in captured.err
    assert "fac.csv: no header row" in captured.err


# issue 21 ---------------------------------------------------------------------------------------
def test_reordered_classes_in_the_json_are_refused(checkpoint, capsys):
    # Issue 21, case 10: reordering `classes` in a checkpoint's .json relabelled every
    # prediction; the SHA-256 covered only the .pt.
    pt, js = checkpoint
    meta = json.loads(js.read_text())
    meta["model"]["classes"] = meta["model"]["classes"][::-1]
    js.write_text(json.dumps(meta))
    err = predict_error(capsys, "--checkpoint", pt)
    assert 'its "model" fields were changed after training' in err


def test_a_checkpoint_from_before_config_hashes_still_loads_and_says_so(checkpoint, capsys):
    pt, js = checkpoint
    meta = json.loads(js.read_text())
    del meta["model_sha256"]
    js.write_text(json.dumps(meta))
    load_checkpoint(pt)
    assert cli(["predict", "--checkpoint", str(pt)]) == 0
    assert "predates config hashes" in capsys.readouterr().err


def test_a_fusion_that_is_a_list_is_one_line(checkpoint, capsys):
    # Issue 21, tracebacks: a checkpoint .json whose "fusion" is a list raised a TypeError at
    # checkpoint.py:171.
    pt, js = checkpoint
    meta = json.loads(js.read_text())
    meta["model"]["fusion"] = ["hm"]
    js.write_text(json.dumps(meta))
    err = predict_error(capsys, "--checkpoint", pt)
    assert "'fusion' must be one of" in err


def test_predict_keeps_first_rows_that_look_like_column_numbers(tmp_path, capsys):
    # Issue 21, case 9, as found: count views whose first rows are 0,1,2,9 and 0,1,7 lost those
    # rows as "headers": 29 predictions for 30 rows, exit 0, flagged only on stderr.
    import numpy as np

    rng = np.random.default_rng(0)
    first = [[0, 1, 2, 9], *rng.integers(0, 20, (29, 4)).tolist()]
    second = [[0, 1, 7], *rng.integers(0, 20, (29, 3)).tolist()]
    views = []
    for name, rows in (("a.csv", first), ("b.csv", second)):
        (tmp_path / name).write_text("".join(",".join(map(str, r)) + "\n" for r in rows))
        views.append(str(tmp_path / name))
    (tmp_path / "y.csv").write_text("".join(f"{'abc'[i % 3]}\n" for i in range(30)))
    common = ["--views", *views, "--csv-header", "no"]
    out = tmp_path / "run"
    flags = ["--fusion", "mean", "--seeds", "1", "--epochs", "1", "--quiet"]
    assert cli(["train", *common, "--labels", str(tmp_path / "y.csv"), "--out", str(out), *flags]) == 0
    capsys.readouterr()
    checkpoint = out / "checkpoints" / "mean.pt"
    err = predict_error(capsys, "--checkpoint", checkpoint, "--views", *views)
    assert "a.csv: cannot tell whether line 1 is a header or data" in err
    assert cli(["predict", "--checkpoint", str(checkpoint), *common]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "row,prediction,probability" and len(lines) == 31
