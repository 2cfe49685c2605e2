"""``hmfusion bench`` on a tiny grid: the files, the JSON's figures, the target checks.

No timing assertions: performance claims come from the benchmark's output, not from tests.
"""

from __future__ import annotations

import argparse
import json

import pytest

from hmfusion import bench


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="hmfusion bench")
    bench.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    args = _parse([
        "--shape", "64,32,32,4,4,2", "--shape", "24,30,12,3,5,3",
        "--dtypes", "float32,bfloat16", "--repeats", "2", "--warmup", "0",
        "--threads", "1", "--out", str(out), "--quiet",
    ])
    assert bench.main(args) == 0
    return out, json.loads((out / "results.json").read_text())


def test_writes_json_markdown_and_png(tiny_run):
    out, _ = tiny_run
    assert (out / "results.md").read_text().startswith("| m | D | n | p | q | k |")
    assert (out / "speedup.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_json_carries_every_figure(tiny_run):
    _, report = tiny_run
    assert report["machine"]["torch_threads"] == 1
    assert {"cpu", "torch", "cpu_count", "device"} <= set(report["machine"])
    assert len(report["results"]) + len(report["skipped"]) == 4  # 2 shapes × 2 dtypes
    for row in report["results"]:
        assert set(row["shape"]) == {"m", "D", "n", "p", "q", "k"}
        assert [measured["mode"] for measured in row["modes"]] == list(bench.MODES)
        for measured in row["modes"]:
            assert set(measured["time_ms"]) == {"floor", *bench.METHODS}
            assert measured["speedup_vs_dense"]["dense"] == pytest.approx(1.0)
            assert all(value > 0 for value in measured["speedup_vs_dense"].values())
            assert measured["ideal_speedup"] >= 1.0
            assert measured["floor_ms"] > 0 and measured["hmfusion_over_floor"] > 0
            assert set(measured["peak_extra_bytes"]) == set(bench.METHODS)
            assert measured["activation_bytes"] > 0
            assert measured["hmfusion_memory_over_activations"] is not None
            assert measured["plan"]["method"] in ("materialize", "fused", "composite")
            assert len(measured["time_ms_all"]["hmfusion"]) == 2


def test_memory_is_measured(tiny_run):
    _, report = tiny_run
    row = next(r for r in report["results"] if r["dtype"] == "float32")
    train = row["modes"][1]
    shape = row["shape"]
    # the dense step allocates at least dW (n×D) and the input gradients
    assert train["peak_extra_bytes"]["dense"] >= 4 * shape["n"] * shape["D"]
    assert train["activation_bytes"] == 4 * shape["m"] * (shape["n"] + shape["D"])


def _row(shape: bench.Shape, speedup: float, floor: float = 1.0, memory: float = 1.0) -> dict:
    measured = {
        "mode": "forward+backward",
        "speedup_vs_dense": {"hmfusion": speedup},
        "hmfusion_over_floor": floor,
        "hmfusion_memory_over_activations": memory,
    }
    return {"shape": shape._asdict(), "dtype": "float32", "modes": [measured]}


def test_target_checks():
    shapes = bench.TARGET_SHAPES
    results = [
        _row(shapes["compute_4096"], 13.0, memory=1.05),
        _row(shapes["compute_1024"], 5.0),
        _row(shapes["small_batch_4096"], 16.0, memory=1.5),
        _row(shapes["memory_bound"], 1.2, floor=2.5),
        _row(bench.Shape(512, 512, 512, 2, 2, 4), 0.9),
    ]
    checks = {(c["target"], c.get("shape", {}).get("m")): c for c in bench._check_targets(results)}
    assert checks[("compute_4096", 4096)]["met"]
    assert not checks[("compute_1024", 4096)]["met"]
    assert checks[("small_batch_4096", 256)]["met"]
    assert checks[("memory_bound", 65536)]["met"]
    assert checks[("memory_D4096", 4096)]["met"] and not checks[("memory_D4096", 256)]["met"]
    never_slower = checks[("never_slower", None)]
    assert not never_slower["met"] and never_slower["worst_hmfusion_vs_dense"] == 0.9
    table = bench.markdown_table({"results": [], "targets": list(checks.values())})
    assert "| compute_1024 |" in table and "| no |" in table


def test_quick_grid_and_full_grid_hold_the_targets():
    full = set(bench.FULL_GRID)
    assert set(bench.TARGET_SHAPES.values()) <= full
    assert len(bench.QUICK_GRID) < len(bench.FULL_GRID)


def test_bad_arguments():
    with pytest.raises(SystemExit):
        _parse(["--shape", "64,32,32"])
    with pytest.raises(SystemExit):
        _parse(["--shape", "64,32,30,4,4,2"])  # p does not divide n
    with pytest.raises(SystemExit):
        bench.main(_parse(["--dtypes", "float33", "--quiet"]))
    with pytest.raises(SystemExit):
        bench.main(_parse(["--modes", "sideways", "--quiet"]))
