"""What README, site and `--help` state about the code agrees with the code.

Each claim is checked where it is made: the plan the docs say a layer runs (with the compiled
operator and without it, on either CPU the project is measured on), the duration of
`bench --quick` (one constant, quoted by the help and the README), where `bench` writes, and
the times the docs state against the tables they come with.
"""

from __future__ import annotations

import argparse
import pathlib
import re

import pytest

from hmfusion import HMConcatFusion
from hmfusion.apps.bench import command as bench
from hmfusion.apps.cli import build_parser
from hmfusion.ops import costmodel, planner

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# The pages that say when W is formed, and the layer they name as small.
PLAN_CLAIMS = [README, ROOT / "docs" / "index.md", ROOT / "docs" / "getting-started.md"]
SMALL = "HMConcatFusion([8, 8], n=8, p=2)"


def _paragraphs(path: pathlib.Path) -> list[str]:
    return [" ".join(p.split()) for p in path.read_text(encoding="utf-8").split("\n\n")]


@pytest.fixture(params=[True, False], ids=["avx512", "avx2"])
def cpu(request, monkeypatch):
    """Plans as on either CPU (512-bit vectors or not); the plan cache cleared around it."""
    monkeypatch.setattr(costmodel, "WIDE_VECTORS", request.param)
    monkeypatch.setattr(planner, "_CACHE", {})
    return request.param


@pytest.mark.parametrize("native", [True, False], ids=["compiled", "fallback"])
def test_w_is_formed_where_the_docs_say(cpu, native, monkeypatch):
    monkeypatch.setattr(planner, "_native_runs", lambda dtype, device_type: native)
    small = HMConcatFusion([8, 8], n=8, p=2)
    large = HMConcatFusion([1024] * 4, n=4096, p=64)  # getting-started's other layer
    # with the compiled operator only p = q = 1 over a large batch forms W
    assert small.plan(4).method == ("fused" if native else "materialize")
    assert large.plan(4096).method == "fused"
    assert HMConcatFusion([64, 64], 64, p=1).plan(4096).method == "materialize"


@pytest.mark.parametrize("path", PLAN_CLAIMS, ids=lambda p: p.name)
def test_the_docs_say_when_w_is_formed(path):
    text = " ".join(_paragraphs(path))
    assert "only where factoring saves nothing" in text
    assert re.search(r"p = q = 1\$? over a large batch", text)
    for paragraph in _paragraphs(path):  # "small layers" only beside the fallback that has them
        if "small layer" in paragraph and "form" in paragraph:
            assert "HMFUSION_NATIVE=0" in paragraph, paragraph
    if path != PLAN_CLAIMS[-1]:  # getting-started shows the layer in its example instead
        assert SMALL in text


def _help(command: str) -> str:
    """What `hmfusion <command> --help` prints, whitespace normalised."""
    parser = build_parser(command)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return " ".join(sub.choices[command].format_help().split())


def test_bench_quick_duration_is_stated_once():
    assert " ".join(bench.QUICK_DURATION.split()) in _help("bench")
    lines = [line for line in README.read_text().splitlines() if "bench --quick" in line]
    assert lines and all(bench.QUICK_DURATION in line for line in lines if "#" in line)
    # the bound holds the measured quick run (RESULTS.md's notes: `--quick --repeats 7 --load 1`,
    # more rounds than --quick's default 3)
    notes = " ".join((ROOT / "benchmarks" / "RESULTS.md").read_text().split())
    measured = re.search(r"--quick --repeats \d+ --load 1` \([^)]*≈ ([\d.]+) minutes\)", notes)
    bound = re.search(r"under (\d+) minutes", bench.QUICK_DURATION)
    assert measured and bound and float(measured.group(1)) < float(bound.group(1))


def test_bench_says_where_it_writes():
    out = f"{bench.DEFAULT_OUT}/"
    assert build_parser("bench").parse_args(["bench"]).out == bench.DEFAULT_OUT  # the default
    assert out in _help("bench")
    assert f"`{out}`" in README.read_text()


def _train_seconds(table: str) -> float:
    """The sum of the last column (train time, s) of a results table."""
    rows = [line for line in table.splitlines() if re.match(r"\| [a-z_]+ \| [\d.]+ ±", line)]
    assert rows
    return sum(float(row.strip("| ").split("|")[-1]) for row in rows)


def test_the_demo_time_adds_up():
    # README: the run took T s, B of them the first-use build; the table's train times fit in it
    text = " ".join(README.read_text().split())
    found = re.search(r"it took (\d+) s, (\d+) s of which built the compiled operator", text)
    assert found
    total, build = map(int, found.groups())
    table = README.read_text().split("<!-- train-table -->", 1)[1].split("```", 2)[1]
    assert build < total and _train_seconds(table) + build <= total


def test_the_training_page_time_adds_up():
    page = " ".join((ROOT / "docs" / "training" / "index.md").read_text().split())
    stated = float(re.search(r"took about (\d+) seconds", page).group(1))
    train = _train_seconds((ROOT / "docs" / "training" / "results.md").read_text())
    assert train <= stated <= 1.25 * train


def _curves(fusions: int) -> list[dict]:
    epochs = [1.0 / (1 + e) for e in range(12)]
    return [
        {
            "fusion": f"f{f}",
            "seed": seed,
            "best_epoch": 6,
            "train_loss": epochs,
            "validation_loss": [v + 0.1 for v in epochs],
            "validation_accuracy": [1 - v / 2 for v in epochs],
        }
        for f in range(fusions)
        for seed in (0, 1)
    ]


def test_the_training_curves_read_at_page_width(tmp_path):
    # three fusions a row, drawn for a page ~700 px wide (not one column per fusion: 12 panels
    # 1980 px wide squeezed to 680 px); the committed figure is the one this code draws
    from matplotlib.image import imread

    from hmfusion.apps.reporting import plot_training_curves

    shapes = {}
    for fusions in (3, 6):
        plot_training_curves(_curves(fusions), tmp_path / f"{fusions}.png")
        shapes[fusions] = imread(tmp_path / f"{fusions}.png").shape
    assert shapes[3][1] == shapes[6][1] <= 1200  # the width does not grow with the fusions
    assert shapes[6][0] > 1.8 * shapes[3][0] - 200  # a second row instead
    committed = imread(ROOT / "docs" / "training" / "training_curves.png").shape
    assert committed[:2] == shapes[6][:2]  # six fusions: hm, dense, lowrank, lphm, dual_lphm, mean
