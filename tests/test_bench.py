"""``hmfusion bench`` on a tiny grid: the files, the JSON's figures, the target checks, the
argument errors (one line, exit 2, before measuring) and the competing load.

No timing assertions: performance claims come from the benchmark's output, not from tests.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from hmfusion.apps.bench import command as bench, cases as benchmark_cases, report as benchmark_report, engine as benchmarking
from hmfusion.ops import costmodel
from hmfusion.ops import planner as planner_module
from hmfusion.apps.bench.engine import Shape
from hmfusion.apps.common import run_command
from hmfusion.apps.outputs import MANIFEST

FAST_METHODS = "dense,kron,tinybig,einsum,two_matmul,hmfusion"  # compiled: see the slow test


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="hmfusion bench")
    bench.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "out"
    options = "--shape 64,32,32,4,4,2 --shape 24,30,12,3,5,3 --dtypes float32,bfloat16"
    options += " --repeats 2 --warmup 0 --threads 1 --quiet --load 1"
    args = _parse([*options.split(), "--methods", FAST_METHODS, "--out", str(out)])
    assert bench.main(args) == 0
    return out, json.loads((out / "results.json").read_text())


def test_writes_json_markdown_and_png(tiny_run):
    out, _ = tiny_run
    text = (out / "results.md").read_text()
    assert text.startswith("# Benchmarks")
    assert "Quiet:" in text and "Under load (1 busy process):" in text
    assert "| m | D | n | p | q | k | dtype | mode |" in text
    assert "regret (fastest plan)" in text and "| regret |" in text
    assert (out / "speedup.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.iterdir()) == [
        MANIFEST,
        "results.json",
        "results.md",
        "speedup.png",
    ]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no staging left


def test_json_carries_every_figure(tiny_run):
    _, report = tiny_run
    assert report["machine"]["torch_threads"] == 1
    assert {"cpu", "torch", "cpu_count", "device", "native_kernel"} <= set(report["machine"])
    methods = FAST_METHODS.split(",")
    assert report["config"]["methods"] == methods and report["config"]["load"] == 1
    assert len(report["results"]) + len(report["skipped"]) == 4  # 2 shapes × 2 dtypes
    assert len(report["loaded"]) == len(report["results"])
    for rows, quiet in ((report["results"], True), (report["loaded"], False)):
        for row in rows:
            assert set(row["shape"]) == {"m", "D", "n", "p", "q", "k"}
            assert [measured["mode"] for measured in row["modes"]] == list(bench.MODES)
            for measured in row["modes"]:
                assert set(measured["time_ms"]) == {"floor", *methods}
                assert measured["speedup_vs_dense"]["dense"] == pytest.approx(1.0)
                assert all(value > 0 for value in measured["speedup_vs_dense"].values())
                assert measured["best_simple"] in ("einsum", "two_matmul")
                simple = measured["time_ms"][measured["best_simple"]]
                assert measured["hmfusion_vs_best_simple"] == pytest.approx(
                    simple / measured["time_ms"]["hmfusion"]
                )
                assert measured["ideal_speedup"] >= 1.0
                assert measured["floor_ms"] > 0 and measured["hmfusion_over_floor"] > 0
                assert measured["plan"]["method"] in ("materialize", "fused", "composite")
                assert len(measured["time_ms_all"]["hmfusion"]) == 2
                if quiet:  # the forced plans, and the pick against the fastest of them
                    plans = measured["plan_time_ms"]
                    assert len(plans) >= 2 and measured["fastest_plan"] in plans
                    # the plan hmfusion ran is among them, timed forced like the others
                    chosen = measured["chosen_plan"]
                    plan = planner_module.Plan(**measured["plan"])
                    assert chosen == benchmark_cases.plan_label(plan) and chosen in plans
                    assert measured["regret"] == pytest.approx(plans[chosen] / min(plans.values()))
                else:
                    assert measured["regret"] is None and not measured["plan_time_ms"]
                if quiet:
                    assert set(measured["peak_extra_bytes"]) == set(methods)
                    assert measured["hmfusion_memory_over_activations"] is not None
                else:
                    assert measured["peak_extra_bytes"] is None
    targets = {check["target"] for check in report["targets"]}
    assert {"never_slower", "never_slower_loaded", "regret"} <= targets
    regrets = [c for c in report["targets"] if c["target"] == "regret"]
    assert len(regrets) == len(report["results"])  # every quiet forward+backward row


def test_cases_over_the_call_budget_are_left_out_with_the_reason(tmp_path, monkeypatch):
    # found on an AVX2 EPYC: bfloat16 matmuls at 0.47 GMAC/s made the quick grid's dense
    # bfloat16 baseline take minutes a call, and the CI's benchmark hours
    rates = {"float32": 5e10, "bfloat16": 5e8}
    monkeypatch.setattr(benchmarking, "gemm_rate", lambda dtype, device: rates[str(dtype)[6:]])
    monkeypatch.setattr(costmodel, "HALF_GEMMS_FAST", {torch.bfloat16: False, torch.float16: False})
    out = tmp_path / "out"
    options = "--shape 64,32,32,4,4,2 --shape 4096,1024,1024,32,32,4 --dtypes float32,bfloat16"
    options += f" --repeats 1 --warmup 0 --threads 1 --quiet --load 0 --methods {FAST_METHODS}"
    argv = [*options.split(), "--max-call-seconds", "20", "--out", str(out)]
    assert bench.main(_parse(argv)) == 0
    report = json.loads((out / "results.json").read_text())
    # dense bfloat16 at 4096 × 1024 → 1024: 3 · 4096 · 1024² / 5e8 ≈ 26 s; float32 0.26 s
    measured = {(row["shape"]["m"], row["dtype"]) for row in report["results"]}
    assert measured == {(64, "float32"), (64, "bfloat16"), (4096, "float32")}
    (skipped,) = report["skipped"]
    assert (skipped["shape"]["m"], skipped["dtype"]) == (4096, "bfloat16")
    assert "dense would take ≈ 26 s a call" in skipped["why"]
    assert "over --max-call-seconds 20" in skipped["why"]
    assert report["machine"]["gemm_gmacs"] == {"float32": 50.0, "bfloat16": 0.5}
    document = (out / "results.md").read_text()
    assert "## Left out" in document and skipped["why"] in document
    assert report["config"]["max_call_seconds"] == 20.0


def test_no_call_budget_measures_every_case(monkeypatch):
    # only 16-bit cases on a CPU without fast 16-bit GEMMs are ever left out
    monkeypatch.setattr(benchmarking, "gemm_rate", lambda dtype, device: 1.0)
    monkeypatch.setattr(costmodel, "HALF_GEMMS_FAST", {torch.bfloat16: False, torch.float16: False})
    reports = {
        budget: benchmarking.run(
            [Shape(8, 8, 8, 2, 2, 2)],
            ("float32", "bfloat16"),
            methods=("dense",),
            repeats=1,
            warmup=0,
            max_call_seconds=budget,
        )
        for budget in (None, 10.0)
    }
    assert len(reports[None]["results"]) == 2 and not reports[None]["skipped"]
    assert [row["dtype"] for row in reports[10.0]["results"]] == ["float32"]
    (skipped,) = reports[10.0]["skipped"]
    assert skipped["dtype"] == "bfloat16" and "dense would take" in skipped["why"]


def test_gemm_rate_is_a_rate():
    rate = benchmarking.gemm_rate(torch.float32)
    assert 1e7 < rate < 1e14


class _MatmulCalls(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += func is torch.ops.aten.mm.default
        return func(*args, **(kwargs or {}))


def test_gemm_rate_times_warm_calls(monkeypatch):
    # found in review: with 16-bit GEMMs at 0.5 GMAC/s one 256³ call takes ≈ 35 ms, so the
    # 50 ms loop timed one or two calls, the first of them cold; now one untimed call, then ≥ 3
    clock = iter(range(0, 10_000, 1))  # each perf_counter() call one second later
    monkeypatch.setattr(benchmarking.time, "perf_counter", lambda: float(next(clock)))
    calls = _MatmulCalls()
    with calls:
        benchmarking.gemm_rate(torch.float32)
    assert calls.calls == 4


def test_plan_column_says_when_16_bit_is_computed_in_float32():
    # found in review: a bfloat16 row computed in float32 (Plan.upcast) read like a bfloat16 plan
    plan = {"method": "fused", "kernel": "native", "order": "left_first", "chunk_rows": 256}
    assert benchmark_report._plan(plan) == "fused/native left_first 256"
    assert benchmark_report._plan({**plan, "upcast": True}).endswith("256 in float32")
    composite = {"method": "composite", "order": "right_first", "upcast": True}
    assert benchmark_report._plan(composite) == "composite right_first in float32"


def test_memory_is_measured(tiny_run):
    _, report = tiny_run
    row = next(r for r in report["results"] if r["dtype"] == "float32")
    train = row["modes"][1]
    shape = row["shape"]
    # the dense step allocates at least dW (n×D) and the input gradients
    assert train["peak_extra_bytes"]["dense"] >= 4 * shape["n"] * shape["D"]
    assert train["activation_bytes"] == 4 * shape["m"] * (shape["n"] + shape["D"])


def test_render_rewrites_the_document_from_a_stored_run(tiny_run, tmp_path):
    out, report = tiny_run
    assert (
        bench.main(
            _parse(
                [
                    "--render",
                    str(out / "results.json"),
                    "--out",
                    str(tmp_path),
                    "--quiet",
                    "--no-plot",
                ]
            )
        )
        == 0
    )
    assert (tmp_path / "results.md").read_text() == benchmark_report.document(report)
    assert json.loads((tmp_path / "results.json").read_text()) == report


def _measured(
    speedup: float, simple: float = 1.0, memory: float = 1.0, regret: float = 1.0
) -> dict:
    return {
        "mode": "forward+backward",
        "regret": regret,
        "fastest_plan": "fused/native/left_first",
        "speedup_vs_dense": {"hmfusion": speedup},
        "best_simple": "two_matmul",
        "hmfusion_vs_best_simple": simple,
        "hmfusion_memory_over_activations": memory,
    }


def _row(
    shape: Shape, speedup: float, simple: float = 1.0, memory: float = 1.0, regret: float = 1.0
) -> dict:
    return {
        "shape": shape._asdict(),
        "dtype": "float32",
        "modes": [_measured(speedup, simple, memory, regret)],
    }


def test_target_checks():
    shapes = benchmarking.TARGET_SHAPES
    results = [
        _row(shapes["compute_4096"], 15.0, memory=1.05),
        _row(shapes["compute_1024"], 5.0, regret=1.16),
        _row(shapes["small_batch_4096"], 19.0),
        _row(shapes["memory_bound"], 2.1),
        _row(Shape(256, 256, 256, 4, 4, 4), 1.2, simple=0.9),
    ]
    loaded = [_row(shapes["compute_4096"], 9.0), _row(shapes["memory_bound"], 0.9)]
    checks = benchmark_report.check_targets(results, loaded)
    by_name = {}
    for check in checks:
        by_name.setdefault(check["target"], []).append(check)
    assert by_name["compute_4096"][0]["met"] and not by_name["compute_1024"][0]["met"]
    assert by_name["small_batch_4096"][0]["met"] and by_name["memory_bound"][0]["met"]
    assert by_name["compute_4096_loaded"][0]["met"]  # 9 of 15: 60 %
    assert not by_name["memory_bound_loaded"][0]["met"]  # 0.9 of 2.1: 43 %
    assert by_name["memory_4096"][0]["met"]
    regret = {(c["shape"]["m"], c["shape"]["D"]): c["met"] for c in by_name["regret"]}
    assert regret[4096, 1024] is False and regret[4096, 4096] is True and len(regret) == 5
    slower = {Shape(**c["shape"]).m: c["met"] for c in by_name["never_slower"]}
    assert slower[256] is False and slower[65536] is True
    table = benchmark_report.markdown_table({"config": {}, "results": [], "targets": checks})
    assert "| compute_1024 |" in table and "| **no** |" in table
    assert "1.16× (fused/native/left_first fastest)" in table


def test_quick_grid_holds_the_targets_and_small_layers():
    quick, full = set(benchmarking.QUICK_GRID), set(benchmarking.FULL_GRID)
    targets = set(benchmarking.TARGET_SHAPES.values())
    assert targets == {
        Shape(4096, 1024, 1024, 32, 32, 4),
        Shape(256, 4096, 4096, 64, 64, 4),
        Shape(4096, 4096, 4096, 64, 64, 4),
        Shape(65536, 256, 256, 16, 16, 4),
    }
    assert targets <= quick and targets <= full
    small = {Shape(256, 256, 256, 4, 4, 4), benchmarking.MAIN_JOB_SHAPE}
    assert small <= quick and small <= full
    assert benchmarking.MAIN_JOB_SHAPE == Shape(128, 384, 64, 8, 8, 6)
    assert len(benchmarking.QUICK_GRID) < len(benchmarking.FULL_GRID)


# argument errors: one line on stderr, exit 2, nothing measured or written -----------------------
@pytest.mark.parametrize(
    "argv, message",
    [
        (["--shape", "64,32,32"], "six comma-separated ints"),
        (["--shape", "64,32,30,4,4,2"], "p | n"),
        (["--dtypes", "int32"], "unknown dtype 'int32'"),
        (["--dtypes", "float33"], "unknown dtype 'float33'"),
        (["--modes", "sideways"], "unknown mode 'sideways'"),
        (["--methods", "magic"], "unknown method 'magic'"),
        (["--repeats", "0"], "must be a positive integer, got 0"),
        (["--repeats", "-3"], "must be a positive integer, got -3"),
        (["--repeats", "two"], "must be an integer, got 'two'"),
        (["--warmup", "-1"], "must be 0 or more, got -1"),
        (["--threads", "0"], "must be a positive integer, got 0"),
        (["--load", "-1"], "must be 0 or more, got -1"),
        (["--load", "100000"], "must be at most"),
        (["--max-call-seconds", "-1"], "must be a finite number >= 0, got -1"),
        # issue 21: an allocator traceback, and no upper bound
        (["--shape", "10000000,4096,4096,64,64,4"], "GiB (inputs, outputs, the dense weight"),
        (["--repeats", str(10**12)], "must be at most 1000, got 1000000000000"),
        (["--warmup", str(10**12)], "must be at most 100, got 1000000000000"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _parse(argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in error and error.startswith("hmfusion bench: error:")


def _never_measure(*args, **kwargs):
    raise AssertionError("measured before checking the arguments and the output folder")


def _run_failing(argv: list[str], capsys) -> str:
    """Run `bench.main` through the command line's error path: status 2 and one line."""
    assert run_command(bench.main, _parse(argv)) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hmfusion: error:"), captured.err
    assert captured.out == ""
    return lines[0]


@pytest.mark.parametrize(
    "device, message",
    [
        ("meta", "--device 'meta': only cpu and cuda are supported"),
        ("banana", "--device 'banana' is not a device"),
    ],
)
def test_bad_device_exits_2_before_measuring(device, message, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(benchmarking, "run", _never_measure)
    out = tmp_path / "out"
    error = _run_failing(["--device", device, "--out", str(out), "--quiet", "--quick"], capsys)
    assert message in error
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only build's message")
def test_cuda_on_a_cpu_build(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(benchmarking, "run", _never_measure)
    argv = ["--device", "cuda", "--out", str(tmp_path / "out"), "--quiet", "--quick"]
    assert "CUDA is not available" in _run_failing(argv, capsys)
    assert list(tmp_path.iterdir()) == []


def test_out_at_an_existing_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(benchmarking, "run", _never_measure)
    target = tmp_path / "results"
    target.write_text("keep me")
    error = _run_failing(["--out", str(target), "--quiet", "--quick"], capsys)
    assert "exists and is not a directory" in error
    assert target.read_text() == "keep me"


@pytest.mark.skipif(
    os.geteuid() == 0 if hasattr(os, "geteuid") else True, reason="root writes anywhere"
)
def test_out_in_an_unwritable_place(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(benchmarking, "run", _never_measure)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        error = _run_failing(["--out", str(locked / "out"), "--quiet", "--quick"], capsys)
    finally:
        locked.chmod(0o700)
    assert "is not writable" in error
    assert list(locked.iterdir()) == []


def test_out_under_a_file_is_unwritable(tmp_path, monkeypatch, capsys):
    # (works as root too: a file cannot hold a folder)
    monkeypatch.setattr(benchmarking, "run", _never_measure)
    blocker = tmp_path / "file"
    blocker.write_text("")
    error = _run_failing(["--out", str(blocker / "out"), "--quiet", "--quick"], capsys)
    assert "is a file, not a directory" in error


def test_out_with_files_needs_overwrite(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(benchmarking, "run", _never_measure)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    error = _run_failing(["--out", str(out), "--quiet", "--quick"], capsys)
    assert "already holds files" in error and "--overwrite" in error
    # --overwrite replaces only an earlier run's folder (every entry in its manifest); issue 21,
    # case 1: a hand-written results.json made any folder replaceable
    (out / "results.json").write_text("{}")
    error = _run_failing(["--out", str(out), "--overwrite", "--quiet", "--quick"], capsys)
    assert "holds no .hmfusion-manifest.json" in error
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "results.json"]


def test_overwrite_replaces_an_earlier_run_whole(tiny_run, tmp_path):
    stored, report = tiny_run
    out = tmp_path / "out"
    argv = ["--render", str(stored / "results.json"), "--out", str(out), "--quiet"]
    assert bench.main(_parse(argv)) == 0
    assert (out / "speedup.png").is_file()
    assert bench.main(_parse([*argv, "--overwrite", "--no-plot"])) == 0
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "results.json", "results.md"]
    assert json.loads((out / "results.json").read_text()) == report
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging left


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "No such file or directory"),
        ("{not json", "not a results.json (Expecting"),
        ('{"results": []}', "not a results.json (it needs results, machine, config)"),
        ("[1, 2]", "not a results.json (it needs"),
    ],
)
def test_render_of_a_bad_file(content, message, tmp_path, capsys):
    stored = tmp_path / "results.json"
    if content is not None:
        stored.write_text(content)
    out = tmp_path / "out"
    error = _run_failing(["--render", str(stored), "--out", str(out), "--quiet"], capsys)
    assert message in error and "--render" in error
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_failed_run_leaves_no_output(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(benchmarking, "run", interrupted)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        bench.main(_parse(["--out", str(out), "--quiet", "--quick"]))
    assert list(tmp_path.iterdir()) == []


def test_cli_error_is_one_line_and_status_2(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hmfusion",
            "bench",
            "--dtypes",
            "int32",
            "--out",
            str(tmp_path / "x"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]  # (after argparse's usage line)
    assert last.startswith("hmfusion bench: error:") and "unknown dtype 'int32'" in last
    assert not (tmp_path / "x").exists()


# the competing load ----------------------------------------------------------------------------
def test_busy_processes_are_killed_on_exit_and_on_error():
    with benchmarking.busy_processes(2) as children:
        assert len(children) == 2 and all(child.poll() is None for child in children)
    assert all(child.poll() is not None for child in children)
    with pytest.raises(RuntimeError):
        with benchmarking.busy_processes(1) as children:
            raise RuntimeError("boom")
    assert children[0].poll() is not None
    with pytest.raises(ValueError, match="count"):
        with benchmarking.busy_processes(-1):
            pass


@pytest.mark.slow
def test_compiled_baseline(tmp_path):
    options = "--shape 64,32,32,4,4,2 --dtypes float32 --repeats 2 --warmup 0 --threads 1"
    options += " --quiet --load 0 --modes forward+backward"
    args = _parse([*options.split(), "--out", str(tmp_path)])
    assert bench.main(args) == 0
    report = json.loads((tmp_path / "results.json").read_text())
    measured = report["results"][0]["modes"][0]
    assert measured["speedup_vs_dense"]["compiled"] > 0
    assert measured["compile_seconds"] > 0


def test_compiled_baseline_never_hits_the_recompile_limit(monkeypatch):
    """Every (case, mode) gets a fresh dynamo cache: with one shared code object the compiled
    baseline hit `recompile_limit` after a few dtype/grad variants and silently ran eagerly
    (the H200 run: every later "compiled" figure was eager two-matmul code)."""
    monkeypatch.setattr(benchmark_cases, "COMPILE_BACKEND", "eager")  # dynamo's caching, no C++
    device = torch.device("cpu")
    with torch._dynamo.config.patch(recompile_limit=2, fail_on_recompile_limit_hit=True):
        for dtype in (torch.float32, torch.float64):  # 2 dtypes × 2 modes: 4 variants > 2
            case = benchmarking._Case(Shape(24, 30, 12, 3, 5, 3), dtype, device)
            for mode in benchmarking.MODES:
                case.compile(mode)
                for _ in range(2):
                    case.prepare("compiled", mode)
                    case.step("compiled", mode)()
                assert case.compile_seconds[mode] > 0


def test_render_of_deeply_nested_json_is_one_line(tmp_path, monkeypatch, capsys):
    # Issue 21: `bench --render` of deeply nested JSON was a RecursionError traceback.
    monkeypatch.setattr(benchmarking, "run", _never_measure)
    deep = tmp_path / "results.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    error = _run_failing(["--render", str(deep), "--out", str(tmp_path / "out")], capsys)
    assert "nested too deeply to be a results.json" in error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_the_cli_refuses_a_shape_larger_than_memory_in_one_line(capsys):
    from hmfusion.apps.cli import main as cli

    with pytest.raises(SystemExit) as exit_info:
        cli(["bench", "--shape", "10000000,4096,4096,64,64,4"])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "more than this machine's" in lines[0]
