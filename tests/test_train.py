"""`hmfusion train` and `hmfusion predict`: outputs, checkpoints, your own data, bad data,
determinism, and DistributedDataParallel against a single process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from deadline import run_with_deadline

from hmfusion.apps.train.checkpoint import load_checkpoint
from hmfusion.apps.cli import main as cli
from hmfusion.data import load_mfeat

TINY = ["--seeds", "1", "--epochs", "2", "--max-rows", "300", "--quiet"]


def train(out, *flags):
    return cli(["train", "--out", str(out), *flags])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Three fusions, two seeds, three epochs on 300 mfeat rows."""
    out = tmp_path_factory.mktemp("tiny") / "out"
    code = train(
        out,
        "--fusion",
        "hm,dense,mean",
        "--seeds",
        "2",
        "--epochs",
        "3",
        "--max-rows",
        "300",
        "--quiet",
    )
    assert code == 0
    return out


def mfeat_rows_npz(path, rows, *, labels=True):
    data = load_mfeat()
    arrays = {name: view[rows] for name, view in zip(data.view_names, data.views)}
    if labels:
        arrays["labels"] = data.labels[rows]
    np.savez(path, **arrays)
    return path


# outputs --------------------------------------------------------------------------------------
def test_results_json_holds_the_documented_fields(tiny_run):
    results = json.loads((tiny_run / "results.json").read_text())
    assert results["dataset"] == "mfeat"
    assert list(results["fusions"]) == ["hm", "dense", "mean"]
    for r in results["fusions"].values():
        assert 0.0 <= r["test_accuracy_mean"] <= 1.0 and r["test_accuracy_std"] >= 0.0
        assert len(r["test_accuracies"]) == 2 and r["seeds"] == [0, 1]
        assert isinstance(r["fusion_parameters"], int) and isinstance(r["model_parameters"], int)
        assert r["model_parameters"] > r["fusion_parameters"] >= 0
        assert r["train_seconds"] > 0
    fusions = results["fusions"]
    # encoders 64 wide: D = 6·64 = 384, n = 64; dense W + bias, hm A ⊗ B + bias, mean nothing
    assert fusions["dense"]["fusion_parameters"] == 64 * 384 + 64
    assert fusions["hm"]["fusion_parameters"] <= 0.1 * fusions["dense"]["fusion_parameters"]
    assert fusions["mean"]["fusion_parameters"] == 0
    assert results["data"]["rows"] == 300 and results["config"]["world_size"] == 1


def test_plots_table_and_checkpoints_are_written(tiny_run):
    for name in ("accuracy_vs_params.png", "training_curves.png"):
        assert (tiny_run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tiny_run / "results.md").read_text().startswith("| fusion | test accuracy (%)")
    for fusion in ("hm", "dense", "mean"):
        assert (tiny_run / "checkpoints" / f"{fusion}.pt").is_file()
        meta = json.loads((tiny_run / "checkpoints" / f"{fusion}.json").read_text())
        assert meta["model"]["fusion"] == fusion and meta["seed"] in (0, 1)


def test_checkpoint_is_plain_tensors_and_reloads(tiny_run):
    state = torch.load(tiny_run / "checkpoints" / "hm.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    model, meta = load_checkpoint(tiny_run / "checkpoints" / "hm.json")
    config = meta["model"]
    assert isinstance(config["fusion_options"]["p"], int)  # "auto" resolved for the record
    assert model.fusion.p == config["fusion_options"]["p"]
    data = load_mfeat()
    logits = model([torch.as_tensor(v[:5], dtype=torch.float32) for v in data.views])
    assert logits.shape == (5, 10)


def test_the_table_is_printed(tmp_path, capsys):
    assert train(tmp_path / "out", "--fusion", "hm", *TINY) == 0
    printed = capsys.readouterr().out
    assert "| fusion | test accuracy (%) | fusion params |" in printed
    assert "| hm | " in printed and "mfeat: 300 rows, 6 views (649 features)" in printed


def test_same_seed_same_result(tmp_path):
    for run in ("a", "b"):
        assert train(tmp_path / run, "--fusion", "lphm", *TINY) == 0
    results = [json.loads((tmp_path / run / "results.json").read_text()) for run in "ab"]
    assert (
        results[0]["fusions"]["lphm"]["test_accuracies"]
        == results[1]["fusions"]["lphm"]["test_accuracies"]
    )
    states = [
        torch.load(tmp_path / run / "checkpoints" / "lphm.pt", weights_only=True) for run in "ab"
    ]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_help_documents_the_interface(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli(["train", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in (
        "--fusion",
        "--seeds",
        "--epochs",
        "--out",
        "--quiet",
        "--views",
        "--labels",
        "--label-column",
        "--device",
    ):
        assert flag in text


# prediction -----------------------------------------------------------------------------------
def test_predict_prints_one_line_per_row_and_the_accuracy(tiny_run, tmp_path, capsys):
    rows = np.arange(0, 2000, 97)
    views = mfeat_rows_npz(tmp_path / "new.npz", rows)
    assert (
        cli(
            [
                "predict",
                "--checkpoint",
                str(tiny_run / "checkpoints" / "hm.pt"),
                "--views",
                str(views),
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0] == "row,prediction,probability" and len(lines) == 1 + rows.size
    row, prediction, probability = lines[1].split(",")
    assert row == "1" and int(prediction) in range(10) and 0.1 <= float(probability) <= 1
    assert captured.err.startswith("accuracy ")

    out = tmp_path / "predictions.csv"
    unlabelled = mfeat_rows_npz(tmp_path / "u.npz", rows, labels=False)
    assert (
        cli(
            [
                "predict",
                "--checkpoint",
                str(tiny_run / "checkpoints" / "hm.pt"),
                "--views",
                str(unlabelled),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert out.read_text().splitlines() == lines
    assert capsys.readouterr().err == ""


def test_predict_refuses_views_of_other_widths(tiny_run, tmp_path, capsys):
    np.save(tmp_path / "v.npy", np.zeros((4, 3)))
    code = cli(
        [
            "predict",
            "--checkpoint",
            str(tiny_run / "checkpoints" / "hm.pt"),
            "--views",
            str(tmp_path / "v.npy"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "checkpoint expects 6 views of widths [76, 216, 64, 240, 47, 6]" in err


def test_predict_refuses_a_file_that_is_not_a_checkpoint(tmp_path, capsys):
    (tmp_path / "x.pt").write_bytes(b"")
    (tmp_path / "x.json").write_text('{"model": {"format": "other"}}')
    assert cli(["predict", "--checkpoint", str(tmp_path / "x.pt")]) == 2
    assert "is not an hmfusion train checkpoint config" in capsys.readouterr().err


# your own data --------------------------------------------------------------------------------
def byo_files(tmp_path, rows=60):
    """Three CSV views of widths 5, 7, 3 (sum 15, odd), string classes that the views separate,
    a header on one view only, labels in a CSV with a header."""
    rng = np.random.default_rng(1)
    names = np.array(["ash", "birch", "cedar"])
    codes = np.arange(rows) % 3
    paths = []
    for i, width in enumerate((5, 7, 3)):
        values = rng.normal(size=(rows, width)) + codes[:, None] * (1.5 + i)
        lines = [",".join(f"c{j}" for j in range(width))] if i == 0 else []
        lines += [",".join(f"{v:.6f}" for v in row) for row in values]
        paths.append(tmp_path / f"view{i}.csv")
        paths[-1].write_text("\n".join(lines) + "\n")
    labels = tmp_path / "labels.csv"
    labels.write_text("tree\n" + "\n".join(names[codes]) + "\n")
    return paths, labels


@pytest.mark.parametrize(
    "model_flags",
    [
        ["--fusion", "hm,mean", "--hidden", "8"],
        # no encoders: hm on D = 15 with n = 10 and p = 4, which divides neither: zero padding
        ["--fusion", "hm,dense", "--hidden", "0", "--fused-width", "10", "--p", "4"],
    ],
)
def test_your_own_csv_views_with_odd_widths_and_class_names(tmp_path, model_flags, capsys):
    views, labels = byo_files(tmp_path)
    out = tmp_path / "out"
    code = train(
        out,
        "--views",
        *map(str, views),
        "--labels",
        str(labels),
        "--seeds",
        "1",
        "--epochs",
        "40",
        "--batch-size",
        "8",
        "--quiet",
        *model_flags,
    )
    assert code == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert results["dataset"] == "view0.csv, view1.csv, view2.csv"
    assert results["data"]["view_widths"] == [5, 7, 3]
    assert results["data"]["classes"] == ["ash", "birch", "cedar"]
    assert results["fusions"]["hm"]["test_accuracy_mean"] >= 0.8
    meta = json.loads((out / "checkpoints" / "hm.json").read_text())
    if "--p" in model_flags:
        assert meta["model"]["fusion_options"]["pad"] is True
    capsys.readouterr()
    assert (
        cli(
            [
                "predict",
                "--checkpoint",
                str(out / "checkpoints" / "hm.pt"),
                "--views",
                *map(str, views),
            ]
        )
        == 0
    )
    predictions = {line.split(",")[1] for line in capsys.readouterr().out.splitlines()[1:]}
    assert predictions <= {"ash", "birch", "cedar"}


def test_your_own_data_with_the_label_column_in_a_view(tmp_path):
    views, labels = byo_files(tmp_path, rows=30)
    names = labels.read_text().splitlines()[1:]
    lines = views[0].read_text().splitlines()
    views[0].write_text(
        "\n".join([lines[0] + ",tree"] + [f"{row},{name}" for row, name in zip(lines[1:], names)])
    )
    code = train(
        tmp_path / "out",
        "--views",
        *map(str, views),
        "--label-column",
        "tree",
        "--fusion",
        "hm",
        "--hidden",
        "8",
        *TINY[:4],
        "--quiet",
    )
    assert code == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["data"]["view_widths"] == [5, 7, 3]


# bad data: one line on stderr, exit status 2, nothing written ---------------------------------
def bad_data(tmp_path, case):
    good = np.random.default_rng(0).normal(size=(12, 3))
    np.save(tmp_path / "a.npy", good)
    np.save(tmp_path / "y.npy", np.arange(12) % 3)
    a, y = str(tmp_path / "a.npy"), str(tmp_path / "y.npy")
    if case == "missing file":
        return ["--views", a, str(tmp_path / "absent.csv"), "--labels", y]
    if case == "rows differ":
        np.save(tmp_path / "b.npy", good[:11])
        return ["--views", a, str(tmp_path / "b.npy"), "--labels", y]
    if case == "non-numeric cell":
        (tmp_path / "b.csv").write_text("1,2\n" * 5 + "3,x\n" + "1,2\n" * 6)
        return ["--views", a, str(tmp_path / "b.csv"), "--labels", y]
    if case in ("NaN", "inf"):
        bad = good.copy()
        bad[4, 1] = np.nan if case == "NaN" else -np.inf
        np.save(tmp_path / "b.npy", bad)
        return ["--views", str(tmp_path / "b.npy"), "--labels", y]
    if case == "single class":
        np.save(tmp_path / "one.npy", np.zeros(12, dtype=int))
        return ["--views", a, "--labels", str(tmp_path / "one.npy")]
    if case == "fewer rows than folds":
        np.save(tmp_path / "few.npy", np.array([0] * 10 + [1] * 2))
        return ["--views", a, "--labels", str(tmp_path / "few.npy")]
    if case == "no labels":
        return ["--views", a]
    if case == "unknown fusion":
        return ["--views", a, "--labels", y, "--fusion", "hm,fancy"]
    if case == "mean of unequal raw widths":
        np.save(tmp_path / "b.npy", good[:, :2])
        return [
            "--views",
            a,
            str(tmp_path / "b.npy"),
            "--labels",
            y,
            "--fusion",
            "mean",
            "--hidden",
            "0",
        ]
    raise AssertionError(case)


BAD = {
    "missing file": "views file '.*absent.csv' does not exist",
    "rows differ": r"different numbers of rows: a\.npy 12, b\.npy 11",
    "non-numeric cell": r"b\.csv line 6, column 2: 'x' is not a number",
    "NaN": r"b\.npy, row 5, column 2: NaN",
    "inf": r"b\.npy, row 5, column 2: an infinite value",
    "single class": r"single class \(0\)",
    "fewer rows than folds": r"every class needs at least 3 rows; classes with fewer: 1 \(2\)",
    "no labels": "no labels",
    "unknown fusion": "--fusion: unknown 'fancy'",
    "mean of unequal raw widths": "--fusion mean: .* need one width",
}


@pytest.mark.parametrize("case", BAD)
def test_bad_data_stops_with_one_line_and_no_output(tmp_path, case, capsys):
    import re

    flags = bad_data(tmp_path, case)
    out = tmp_path / "out"
    assert train(out, *flags, "--seeds", "1", "--epochs", "1") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hmfusion: error: ") and "\n" not in err
    assert re.search(BAD[case], err), err
    assert not out.exists()


# distributed ----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


WORKER = str(Path(__file__).with_name("ddp_worker.py"))


def torchrun(tmp_path, dump, perturb, *flags):
    """`hmfusion train` in two gloo processes, through tests/ddp_worker.py."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback only
    return run_with_deadline(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=1",
            "--nproc_per_node=2",
            "--master_addr=127.0.0.1",
            f"--master_port={free_port()}",
            WORKER,
            str(dump),
            perturb,
            "--",
            "train",
            *flags,
        ],
        env=env,
        timeout=300,
        what="torchrun with two gloo processes",
    )


def test_torchrun_two_processes_match_one(tmp_path, monkeypatch, capsys):
    """Two gloo processes: identical parameters on both ranks, and the same model as one
    process with the same global batch up to float32 summation order (|Δw| ≤ 1e-4 after three
    epochs), the same test accuracy to within one test row, outputs written once."""
    flags = [
        "--fusion",
        "hm",
        "--seeds",
        "1",
        "--epochs",
        "3",
        "--max-rows",
        "400",
        "--batch-size",
        "32",
        "--quiet",
    ]
    launched = torchrun(tmp_path, tmp_path / "dist", "none", *flags, "--out", str(tmp_path / "two"))
    assert launched.returncode == 0, launched.stderr[-4000:]
    assert launched.stdout.count("| hm | ") == 1  # only rank 0 reports

    from ddp_worker import dumping
    from hmfusion.apps.train import loop as training

    monkeypatch.setattr(training, "fit", dumping(training.fit, tmp_path / "single"))
    assert train(tmp_path / "one", *flags) == 0

    rank0, rank1 = (
        torch.load(tmp_path / "dist" / f"rank{r}-hm-seed0.pt", weights_only=True) for r in (0, 1)
    )
    single = torch.load(tmp_path / "single" / "rank0-hm-seed0.pt", weights_only=True)
    assert rank0.keys() == rank1.keys() == single.keys()
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
        torch.testing.assert_close(rank0[name], single[name], atol=1e-4, rtol=0)
    two, one = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("two", "one"))
    assert two["config"]["world_size"] == 2 and one["config"]["world_size"] == 1
    test_rows = one["data"]["split_rows"]["test"]
    assert (
        abs(two["fusions"]["hm"]["test_accuracy_mean"] - one["fusions"]["hm"]["test_accuracy_mean"])
        <= 1 / test_rows + 1e-9
    )


# the main job ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_default_run_meets_the_targets(tmp_path, monkeypatch):
    """`hmfusion train` as in the README: HM ≥ 98.0% mean test accuracy, within 0.5 points of
    dense with ≤ 10% of its fusion parameters, all six fusions × 3 seeds in under 3 minutes."""
    monkeypatch.chdir(tmp_path)
    started = time.perf_counter()
    assert cli(["train", "--quiet"]) == 0
    seconds = time.perf_counter() - started
    results = json.loads((tmp_path / "hmfusion-results" / "results.json").read_text())
    fusions = results["fusions"]
    assert list(fusions) == ["hm", "dense", "lowrank", "lphm", "dual_lphm", "mean"]
    hm, dense = fusions["hm"], fusions["dense"]
    assert hm["test_accuracy_mean"] >= 0.980
    assert hm["test_accuracy_mean"] >= dense["test_accuracy_mean"] - 0.005
    assert hm["fusion_parameters"] <= 0.10 * dense["fusion_parameters"]
    assert seconds < 180


# outputs appear whole: --out checked first, replaced only with --overwrite --------------------
def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("hmfusion: error: ") and "\n" not in err, err
    return err


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if a model is trained (the problem had to be found before)."""
    from hmfusion.apps.train import loop as training

    def never(*args, **kwargs):
        raise AssertionError("training started before the problem was reported")

    monkeypatch.setattr(training, "fit", never)


def test_a_non_empty_out_is_refused_unless_overwrite(tmp_path, capsys):
    """A rerun with fewer fusions used to leave the first run's checkpoints beside its own."""
    out = tmp_path / "out"
    assert train(out, "--fusion", "hm,dense", *TINY) == 0
    first = json.loads((out / "results.json").read_text())["run_id"]
    capsys.readouterr()
    assert train(out, "--fusion", "lphm", *TINY) == 2
    assert "already holds files (another run?)" in one_line_error(capsys)
    assert json.loads((out / "results.json").read_text())["run_id"] == first

    assert train(out, "--fusion", "lphm", "--overwrite", *TINY) == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["lphm.json", "lphm.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging left


@pytest.mark.parametrize(
    "case, message",
    [
        ("under a file", "is a file, not a directory"),
        ("a file", "exists and is not a directory"),
        ("not writable", "is not writable"),
        ("disk full", "No space left on device"),
    ],
)
def test_an_unusable_out_is_one_line_before_any_training(
    tmp_path, case, message, capsys, monkeypatch, no_training
):
    (tmp_path / "f").write_text("x")
    out = {"under a file": tmp_path / "f" / "out", "a file": tmp_path / "f"}.get(
        case, tmp_path / "d" / "out"
    )
    if case == "not writable":
        (tmp_path / "d").mkdir()
        real = os.access
        monkeypatch.setattr(
            os,
            "access",
            lambda path, mode: False if str(path) == str(tmp_path / "d") else real(path, mode),
        )
    if case == "disk full":
        import errno

        def full(self, data):
            raise OSError(errno.ENOSPC, "No space left on device", str(self))

        monkeypatch.setattr(Path, "write_bytes", full)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert train(out, "--fusion", "hm", *TINY) == 2
    assert message in one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_disk_full_while_writing_leaves_nothing(tmp_path, capsys, monkeypatch):
    import errno

    real = Path.write_bytes

    def full(self, data):
        if self.suffix == ".pt":
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full)
    assert train(tmp_path / "out", "--fusion", "hm", *TINY) == 2
    assert "hm.pt': No space left on device" in one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []


FILE_SIZE_LIMITED = """
import resource, signal, sys
from hmfusion.apps.cli import main
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (16384, 16384))
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE as on Linux")
def test_a_checkpoint_that_does_not_fit_on_disk_is_one_line(tmp_path):
    # Issue 21: `train --out` on a full disk was a traceback from torch.save (its writer raises
    # a RuntimeError); a real write failure, from a file size limit of 16 KiB.
    src = Path(__file__).resolve().parents[1] / "src"
    done = run_with_deadline(
        [sys.executable, "-c", FILE_SIZE_LIMITED, "train", "--out", str(tmp_path / "out"),
         "--fusion", "dense", *TINY],
        env={**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"},
        timeout=300,
        what="train under a file size limit",
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("hmfusion: error: ") and "dense.pt': File too large" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_the_operator_is_built_before_the_clock_starts(tmp_path, monkeypatch):
    # Issue 19, item 4: the first use's build (~19 s) was counted in HM's training time.
    from hmfusion.apps.train import command, loop

    calls = []

    def slow_build():  # (the kernels ask too: only the first call builds)
        if "build" not in calls:
            calls.append("build")
            time.sleep(2.0)
        return False

    real_fit = loop.fit

    def fit(*args, **kwargs):
        calls.append("fit")
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(command.native, "available", slow_build)
    monkeypatch.setattr(loop, "fit", fit)
    started = time.perf_counter()
    assert train(tmp_path / "out", "--fusion", "mean", *TINY) == 0
    wall = time.perf_counter() - started
    assert calls[0] == "build" and "fit" in calls
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["total_seconds"] <= wall - 2.0
    assert results["fusions"]["mean"]["train_seconds"] < results["total_seconds"]


def test_two_runs_started_at_once_into_one_out_cannot_both_succeed(tmp_path):
    # Issue 21, case 3, as found: two runs started at once into the same fresh --out both
    # exited 0, the second silently replacing the first.
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"),
    }
    argv = [sys.executable, "-m", "hmfusion", "train", "--out", str(tmp_path / "out")]
    runs = [
        subprocess.Popen(
            [*argv, "--fusion", fusion, *TINY], env=env, stderr=subprocess.PIPE, text=True
        )
        for fusion in ("mean", "lowrank")
    ]
    errors = [run.communicate(timeout=600)[1] for run in runs]
    codes = sorted(run.returncode for run in runs)
    assert codes == [0, 2], errors
    refused = next(e for e, run in zip(errors, runs) if run.returncode == 2).strip()
    assert "being written by another run" in refused or "already holds files" in refused
    written = json.loads((tmp_path / "out" / "results.json").read_text())
    winner = ("mean", "lowrank")[[run.returncode for run in runs].index(0)]
    assert list(written["fusions"]) == [winner]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_overwrite_never_deletes_a_folder_it_did_not_write(tmp_path, capsys, no_training):
    # Issue 21, case 1: a home-like folder with a hand-written results.json was deleted whole.
    home = tmp_path / "home"
    (home / "code").mkdir(parents=True)
    (home / "thesis.tex").write_text("\\documentclass{article}\n")
    (home / "results.json").write_text("{}")
    assert train(home, "--fusion", "hm", "--overwrite", *TINY) == 2
    assert "--overwrite replaces only a folder hmfusion wrote" in one_line_error(capsys)
    assert sorted(p.name for p in home.iterdir()) == ["code", "results.json", "thesis.tex"]


def test_an_input_inside_out_is_refused(tmp_path, capsys):
    # Issue 21, case 2: `train --views OUT/mydata.npz --out OUT --overwrite` deleted the input.
    out = tmp_path / "out"
    assert train(out, "--fusion", "mean", *TINY) == 0
    views = mfeat_rows_npz(out / "mydata.npz", np.arange(0, 2000, 5))
    capsys.readouterr()
    assert train(out, "--views", str(views), "--fusion", "mean", "--overwrite", *TINY) == 2
    assert "holds the input" in one_line_error(capsys)
    assert views.is_file()


def test_a_first_row_of_numbers_is_never_dropped_as_a_header(tmp_path, capsys, no_training):
    # Issue 21, case 9: a headerless CSV whose first row is 0.1,0.2,0.3,0.4,zzz (the other 30
    # rows labelled a/b/c) lost row 1 as a header.
    rows = ["0.1,0.2,0.3,0.4,zzz"] + [f"{i},{i % 7},{i % 5},{i % 3},{'abc'[i % 3]}" for i in range(30)]
    (tmp_path / "v.csv").write_text("\n".join(rows) + "\n")
    flags = ["--views", str(tmp_path / "v.csv"), "--label-column", "-1", "--fusion", "mean"]
    assert train(tmp_path / "out", *flags, *TINY) == 2
    assert "cannot tell whether line 1 is a header or data" in one_line_error(capsys)
    assert not (tmp_path / "out").exists()


def test_ctrl_c_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    from hmfusion.apps.train import loop as training

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "fit", interrupted)
    assert train(tmp_path / "out", "--fusion", "hm", *TINY) == 130
    assert capsys.readouterr().err == "hmfusion: error: interrupted; no output was written\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "device, message",
    [
        ("tpu", "--device 'tpu' is not a device"),
        ("meta", "--device 'meta': only cpu and cuda are supported"),
        pytest.param(
            "cuda",
            "CUDA is not available",
            marks=pytest.mark.skipif(
                torch.cuda.is_available(), reason="needs a machine without CUDA"
            ),
        ),
    ],
)
def test_a_bad_device_is_one_line(tmp_path, device, message, capsys, no_training):
    assert train(tmp_path / "out", "--device", device, *TINY) == 2
    assert message in one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_results_say_which_csv_header_was_used(tmp_path):
    views, labels = byo_files(tmp_path, rows=30)
    assert (
        train(
            tmp_path / "out",
            "--views",
            *map(str, views),
            "--labels",
            str(labels),
            "--fusion",
            "mean",
            "--hidden",
            "4",
            *TINY[:4],
            "--quiet",
        )
        == 0
    )
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["data"]["csv_header"] == {
        "view0.csv": True,
        "view1.csv": False,
        "view2.csv": False,
        "labels.csv": True,
    }


def kill_train_at(tmp_path, seconds: float, *flags):
    """Start `hmfusion train` in a process and SIGKILL it after ``seconds``."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "hmfusion", "train", *flags],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def assert_consistent_or_absent(out, capsys):
    """Either no directory, or a complete one whose every checkpoint predict accepts and that
    belongs to the run results.json describes."""
    if not out.exists():
        return None
    results = json.loads((out / "results.json").read_text())
    for fusion, entry in results["fusions"].items():
        meta = json.loads((out / "checkpoints" / f"{fusion}.json").read_text())
        assert meta["run_id"] == results["run_id"]
        assert cli(["predict", "--checkpoint", str(out / entry["checkpoint"])]) == 0
        capsys.readouterr()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == sorted(
        f"{fusion}{suffix}" for fusion in results["fusions"] for suffix in (".json", ".pt")
    )
    return results["run_id"]


@pytest.mark.slow
@pytest.mark.parametrize("seconds", [1.0, 3.0, 5.0, 6.5, 8.0, 10.0])
def test_sigkill_never_leaves_a_directory_predict_accepts_wrongly(tmp_path, seconds, capsys):
    """A first run completes; a second, --overwrite with other fusions, is killed at a moment.
    The directory is then the first run whole or the second run whole, never a mix."""
    out = tmp_path / "out"
    flags = ["--seeds", "1", "--epochs", "3", "--max-rows", "300", "--quiet", "--out", str(out)]
    assert train(out, "--fusion", "hm,dense", *flags[:-2]) == 0
    first = json.loads((out / "results.json").read_text())["run_id"]
    kill_train_at(tmp_path, seconds, "--fusion", "lphm,mean,lowrank", "--overwrite", *flags)
    run_id = assert_consistent_or_absent(out, capsys)
    fusions = set(json.loads((out / "results.json").read_text())["fusions"]) if run_id else None
    assert fusions in (None, {"hm", "dense"}, {"lphm", "mean", "lowrank"})
    assert run_id != first or fusions == {"hm", "dense"}


def test_sigkill_during_a_first_run_leaves_no_out(tmp_path, capsys):
    out = tmp_path / "out"
    kill_train_at(
        tmp_path,
        4.0,
        "--fusion",
        "hm,dense,lphm",
        "--seeds",
        "2",
        "--epochs",
        "20",
        "--max-rows",
        "600",
        "--quiet",
        "--out",
        str(out),
    )
    assert assert_consistent_or_absent(out, capsys) is None
    assert not out.exists()


# distributed: the ranks agree on their data before training ----------------------------------
def test_torchrun_a_load_error_on_rank_1_stops_all_with_its_message(tmp_path):
    """It used to surface only as torchrun's ChildFailedError, rank 1's message suppressed."""
    launched = torchrun(
        tmp_path, "-", "error", "--fusion", "hm", *TINY, "--out", str(tmp_path / "out")
    )
    assert launched.returncode != 0
    ours = [line for line in launched.stderr.splitlines() if line.startswith("hmfusion: ")]
    assert ours == ["hmfusion: error: rank 1: views.csv line 7, column 2: 'x' is not a number"]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize("perturb", ["labels", "rows"])
def test_torchrun_ranks_reading_different_data_stop_before_training(tmp_path, perturb):
    """Shuffled labels trained and exited 0; ten times the rows on one rank hung."""
    launched = torchrun(
        tmp_path, "-", perturb, "--fusion", "hm", *TINY, "--out", str(tmp_path / "out")
    )
    assert launched.returncode != 0
    ours = [line for line in launched.stderr.splitlines() if line.startswith("hmfusion: ")]
    assert len(ours) == 1 and "the processes read different data (rank 0: " in ours[0], ours
    assert not (tmp_path / "out").exists()


def test_a_loss_that_is_never_finite_is_one_line(tmp_path, capsys):
    assert train(tmp_path / "out", "--fusion", "dense", "--lr", "1e30", *TINY) == 2
    assert "the validation loss was never finite; lower --lr" in one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []
