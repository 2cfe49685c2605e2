"""`hmfusion sweep`: the budget grid, the Pareto front, resume, render, errors, the quick CI
variant, and the literature protocol (80/20, last epoch)."""

from __future__ import annotations

import json
import shutil
import math
import time

import numpy as np
import pytest

import hmfusion
from hmfusion.apps.cli import main as cli
from hmfusion.apps.train import sweep as sweep_module
from hmfusion.apps.train.budgets import BudgetPoint, budget_grid, pareto_front
from hmfusion.apps.train.distributed import Processes
from hmfusion.apps.train.loop import TrainConfig, fit
from hmfusion.apps.train.sweep_report import sweep_table
from hmfusion.data import load_mfeat, stratified_split

ALL = ["hm", "lphm", "lowrank", "dual_lphm", "random", "dense", "mean"]
TINY = ["--seeds", "2", "--epochs", "1", "--max-rows", "150", "--quiet", "--ranks", "1,2"]
TINY += ["--block-sizes", "8"]


def sweep(out, *flags):
    try:
        return cli(["sweep", "--out", str(out), *flags])
    except SystemExit as stop:  # argparse's own errors
        return stop.code


# the budget grid ------------------------------------------------------------------------------
def plain_count(point: BudgetPoint, n: int, D: int) -> int:
    """The fusion layer's trained values, bias included, written out by hand."""
    p, r, k = point.p, point.rank, point.terms
    if point.fusion == "hm":
        return k * (p * p + math.ceil(n / p) * math.ceil(D / p)) + n
    if point.fusion == "lphm":
        return p * p + r * (math.ceil(n / p) + math.ceil(D / p)) + n
    if point.fusion == "lowrank":
        return r * (n + D) + n
    if point.fusion == "random":
        return n + r + n
    if point.fusion == "dense":
        return n * D + n
    raise AssertionError(point.fusion)


def layer_of(point: BudgetPoint, dims: list[int], n: int, pad: bool):
    options = {"bias": True}
    if point.p is not None:
        options.update(p=point.p, q=point.p, pad=pad)
    if point.terms is not None:
        options["terms"] = point.terms
    if point.rank is not None:
        options["r"] = point.rank
    layer = {
        "hm": hmfusion.HMConcatFusion,
        "lphm": hmfusion.LPHMConcatFusion,
        "lowrank": hmfusion.LowRankConcatFusion,
        "dual_lphm": hmfusion.DualLPHMConcatFusion,
        "random": hmfusion.RandomMatrixConcatFusion,
        "dense": hmfusion.DenseConcatFusion,
    }[point.fusion]
    if point.fusion == "dual_lphm":
        options["pad"] = pad
    return layer(dims, n, **options)


@pytest.mark.parametrize(
    "dims, n, pad",
    [([64] * 6, 64, False), ([76, 216, 64, 240, 47, 6], 64, True), ([120, 21], 64, True),
     ([12, 12], 18, False)],
)  # fmt: skip
def test_grid_enumerates_the_valid_block_sizes_and_ranks(dims, n, pad):
    D = sum(dims)
    grid = budget_grid(n, D, ALL, ranks=[1, 2, 4, 64], terms=[1, 2], lphm_rank=2, pad=pad)
    dense = n * D + n
    valid = [p for p in range(1, n + 1) if n % p == 0 and (pad or D % p == 0)]
    hm = {(pt.p, pt.terms) for pt in grid if pt.fusion == "hm"}
    expected = {
        (p, k)
        for p in valid
        for k in (1, 2)
        if k * (p * p + math.ceil(n / p) * math.ceil(D / p)) + n < dense
    }
    assert hm == expected and hm
    lphm = {pt.p for pt in grid if pt.fusion == "lphm"}
    assert lphm == {p for p in valid if plain_count(BudgetPoint("lphm", p=p, rank=2), n, D) < dense}
    for fusion in ("lowrank", "dual_lphm"):
        assert [pt.rank for pt in grid if pt.fusion == fusion] == [
            r for r in (1, 2, 4, 64) if r < min(n, D)
        ]
    assert [pt.rank for pt in grid if pt.fusion == "random"] == [r for r in (1, 2, 4, 64) if r <= D]
    assert [pt.key for pt in grid if pt.fusion in ("dense", "mean")] == ["dense", "mean"]
    assert len({pt.key for pt in grid}) == len(grid)


@pytest.mark.parametrize("dims, n, pad", [([64] * 6, 64, False), ([120, 21], 64, True)])
def test_grid_parameter_counts_match_the_formulas(dims, n, pad):
    D = sum(dims)
    grid = budget_grid(n, D, ALL[:-1], ranks=[1, 3], terms=[1, 2], lphm_rank=3, pad=pad)
    for point in grid:
        layer = layer_of(point, dims, n, pad)
        counted = sum(p.numel() for p in layer.parameters() if p.requires_grad)
        if point.fusion == "dual_lphm":  # p chosen by the layer: r (p + q + s + t) + n
            s, t = math.ceil(n / layer.p), math.ceil(D / layer.q)
            assert counted == point.rank * (layer.p + layer.q + s + t) + n
        else:
            assert counted == plain_count(point, n, D), point.key


def test_grid_keeps_only_the_block_sizes_asked_for():
    grid = budget_grid(64, 384, ["hm", "lphm"], ranks=[1], terms=[1], lphm_rank=2, pad=False,
                       block_sizes=[16])  # fmt: skip
    assert [pt.key for pt in grid] == ["hm p=16 terms=1", "lphm p=16 r=2"]


def test_grid_rejects_bad_sizes():
    with pytest.raises(ValueError, match="at least 1"):
        budget_grid(8, 8, ["lowrank"], ranks=[0], terms=[1], lphm_rank=1, pad=False)
    with pytest.raises(ValueError, match="n >= 1"):
        budget_grid(0, 8, ["dense"], ranks=[1], terms=[1], lphm_rank=1, pad=False)


# the Pareto front -----------------------------------------------------------------------------
def brute_force_front(points):
    def beats(a, b):
        return a[0] <= b[0] and a[1] >= b[1] and (a[0] < b[0] or a[1] > b[1])

    kept = []
    for i, point in enumerate(points):
        if any(beats(other, point) for other in points):
            continue
        if any(points[j] == point for j in range(i)):  # of equal points the first
            continue
        kept.append(i)
    return sorted(kept, key=lambda i: (points[i][0], i))


@pytest.mark.parametrize("seed", range(30))
def test_pareto_front_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    size = int(rng.integers(1, 25))
    # few distinct values, so that ties in parameters and accuracy are common
    params, accuracies = rng.integers(0, 6, size), rng.integers(0, 5, size)
    points = [(int(a), float(b)) for a, b in zip(params, accuracies)]
    assert pareto_front(points) == brute_force_front(points)


# running a sweep ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "out"
    assert sweep(out, "--fusion", "hm,lowrank,dense,mean", *TINY) == 0
    return out


def test_results_hold_every_point_with_its_seeds(tiny_sweep):
    summary = json.loads((tiny_sweep / "results.json").read_text())
    keys = [p["key"] for p in summary["points"]]
    assert keys == ["hm p=8 terms=1", "lowrank r=1", "lowrank r=2", "dense", "mean"]
    for point in summary["points"]:
        accuracies = point["test_accuracies"]
        assert point["seeds"] == [0, 1] and len(accuracies) == 2
        assert point["test_accuracy_mean"] == pytest.approx(np.mean(accuracies))
        assert point["test_accuracy_std"] == pytest.approx(np.std(accuracies, ddof=1))
        assert point["seconds_per_epoch"] > 0
    expected = pareto_front(
        [(p["fusion_parameters"], p["test_accuracy_mean"]) for p in summary["points"]]
    )
    assert summary["pareto_front"] == [keys[i] for i in expected]
    assert summary["complete"] is True
    assert (tiny_sweep / "sweep.png").stat().st_size > 10_000
    assert (tiny_sweep / "results.md").read_text() == sweep_table(summary) + "\n"


def test_render_redraws_from_results_json(tiny_sweep, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_sweep, copy)
    (copy / "results.md").unlink()  # (what --render redraws; the manifest still lists it)
    (copy / "sweep.png").unlink()
    assert sweep(copy, "--render") == 0
    assert (copy / "results.md").read_text() == (tiny_sweep / "results.md").read_text()
    assert (copy / "sweep.png").stat().st_size > 10_000
    assert "| fusion | setting |" in capsys.readouterr().out
    # found in review: --render rewrote the files in place, so the manifest no longer
    # matched and a later --resume refused the folder; now the redrawn folder can be resumed
    assert sweep(copy, "--render") == 0
    from hmfusion.apps.outputs import OutputDirectory

    OutputDirectory(copy, overwrite=True)  # (refuses a folder whose manifest is not true)


def test_render_refuses_a_folder_hmfusion_did_not_write(tiny_sweep, tmp_path, capsys):
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "results.json").write_text((tiny_sweep / "results.json").read_text())
    (copy / "notes.txt").write_text("mine")
    assert sweep(copy, "--render") == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert (copy / "notes.txt").read_text() == "mine"


def test_resume_trains_only_the_missing_points(tiny_sweep, tmp_path, monkeypatch):
    out = tmp_path / "out"
    shutil.copytree(tiny_sweep, out)  # (with its manifest: --resume replaces what it wrote)
    trained = []
    real_fit = sweep_module.fit

    def counting_fit(data, fusion, seed, config, procs, **kwargs):
        trained.append((fusion, config.rank, seed))
        return real_fit(data, fusion, seed, config, procs, **kwargs)

    monkeypatch.setattr(sweep_module, "fit", counting_fit)
    flags = [f for f in TINY if f != "1,2"]
    flags[flags.index("--ranks") + 1 : flags.index("--ranks") + 1] = ["1,2,4"]
    assert sweep(out, "--fusion", "hm,lowrank,dense,mean", "--resume", *flags) == 0
    assert trained == [("lowrank", 4, 0), ("lowrank", 4, 1)]
    before = {p["key"]: p for p in json.loads((tiny_sweep / "results.json").read_text())["points"]}
    after = {p["key"]: p for p in json.loads((out / "results.json").read_text())["points"]}
    assert set(after) == set(before) | {"lowrank r=4"}
    assert all(after[key] == before[key] for key in before)


def test_resume_refuses_other_settings(tiny_sweep, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(tiny_sweep, out)
    assert sweep(out, "--fusion", "hm", "--resume", *TINY, "--lr", "0.01") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "other data or settings" in err
    assert json.loads((out / "results.json").read_text()) == json.loads(
        (tiny_sweep / "results.json").read_text()
    )


def test_ctrl_c_writes_the_finished_points_for_resume(tmp_path, monkeypatch, capsys):
    real_fit = sweep_module.fit
    calls = []

    def interrupted_fit(*args, **kwargs):
        calls.append(args[1])
        if len(calls) > 2:  # the first point (two seeds) finishes
            raise KeyboardInterrupt
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(sweep_module, "fit", interrupted_fit)
    out = tmp_path / "out"
    assert sweep(out, "--fusion", "hm,dense", *TINY) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--resume" in err
    summary = json.loads((out / "results.json").read_text())
    assert [p["key"] for p in summary["points"]] == ["hm p=8 terms=1"]
    assert summary["complete"] is False
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--p", "4"], "set per point"),
        (["--ranks", "1,x"], "must be an integer"),
        (["--fusion", "hm,nope"], "unknown 'nope'"),
        (["--render"], "no results.json"),
        (["--resume"], "no results.json"),
        (["--resume", "--overwrite"], "--overwrite would drop them"),
    ],
)
def test_bad_arguments_are_one_line_and_write_nothing(tmp_path, flags, message, capsys):
    out = tmp_path / "out"
    assert sweep(out, *TINY, *flags) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not out.exists() or not any(out.iterdir())


def test_a_non_empty_out_is_refused_unless_overwrite(tiny_sweep, capsys):
    assert sweep(tiny_sweep, "--fusion", "dense", *TINY) == 2
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.slow
def test_quick_variant_runs_every_fusion(tmp_path):
    started = time.perf_counter()
    assert sweep(tmp_path / "q", "--quick", "--quiet") == 0
    summary = json.loads((tmp_path / "q" / "results.json").read_text())
    assert {p["fusion"] for p in summary["points"]} == set(ALL)
    assert time.perf_counter() - started < 600


# the literature protocol ----------------------------------------------------------------------
def test_split_without_validation_is_train_and_test():
    labels = np.repeat(np.arange(4), 10)
    train, validation, test = stratified_split(
        labels, validation_fraction=0.0, test_fraction=0.2, seed=1
    )
    assert validation.size == 0 and test.size == 8 and train.size == 32
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(40))


def test_last_epoch_selection_trains_every_epoch_and_needs_no_validation():
    data = load_mfeat()
    data = data.subset(np.arange(0, data.num_rows, 10))
    config = TrainConfig(
        fusions=("dense",), hidden=8, epochs=4, patience=1, seeds=1, validation_fraction=0.0,
        selection="last", lr=10.0,  # a diverging loss would stop early stopping at once
    )  # fmt: skip
    run = fit(data, "dense", 0, config, Processes())
    assert run.epochs == 4 and run.best_epoch == 4
    with pytest.raises(ValueError, match="validation fraction of 0"):
        TrainConfig(selection="last")
    with pytest.raises(ValueError, match="above 0"):
        TrainConfig(validation_fraction=0.0)


def test_sweep_protocol_literature_records_the_split(tmp_path):
    out = tmp_path / "lit"
    assert sweep(out, "--fusion", "dense", "--protocol", "literature", *TINY) == 0
    settings = json.loads((out / "results.json").read_text())["settings"]
    assert settings["protocol"] == "literature"
    assert settings["train_config"]["validation_fraction"] == 0.0
    assert settings["train_config"]["selection"] == "last"
