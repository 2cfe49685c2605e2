"""Benchmark hmfusion against what users write instead, on a grid of shapes, quiet and loaded.

For each shape and dtype, dense (cat + `F.linear`), `torch.kron` and tinybig's materialized
W, the five-line einsum and two-matmul codes, `torch.compile` of the two-matmul code and
`HMConcatFusion` are timed interleaved, forward and forward+backward; then again while
`--load` busy processes compete for the CPUs (the loaded table). In the quiet rounds the
planner's candidate plans also run, each forced: the regret column is hmfusion's time over
the fastest of them (target ≤ 1.10×). Writes `results.json`
(every figure), `results.md` (the `benchmarks/RESULTS.md` document) and `speedup.png`
to `--out`, all at once: the folder is written beside `--out` and renamed into place, and a
non-empty `--out` is replaced (whole) only with `--overwrite`. `--quick` is the CI grid:
the four target shapes, the (256, 256, 256, 4) layer and the main job's layer, float32 and
bfloat16, forward+backward, a few minutes on 2 cores; cases whose dense call would take longer
than `--max-call-seconds` (10) are left out, with the reason, into `skipped` and the
document's "Left out" section. `--render results.json` rewrites the
document and figure from a stored run. Every argument, `--device` and `--out` are checked
before measuring; a problem is one line on stderr and exit status 2, with nothing written.
See `hmfusion.apps.bench.engine` for how it measures.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from hmfusion.apps.bench import engine
from hmfusion.apps.bench import report as bench_report
from hmfusion.apps.bench.engine import MAX_LOAD_PER_CPU, METHODS, MODES, QUICK_METHODS, Shape
from hmfusion.apps.common import (
    UsageError,
    describe_failure,
    nonnegative_float,
    nonnegative_int,
    positive_int,
    resolve_device,
)
from hmfusion.apps.outputs import OutputDirectory

__all__ = ["add_arguments", "main"]

_DTYPES = ("float32", "float64", "bfloat16", "float16")
#: How long `--quick --load 1` (the CI grid, quiet and loaded) takes on 2 CPU cores: the help
#: text says it and the README quotes it; benchmarks/RESULTS.md's notes hold the measured run
#: (tests/test_docs_claims.py checks all three).
QUICK_DURATION = "under 4 minutes on 2 CPU cores"
#: Where the outputs go unless `--out` says otherwise (the help text and the README say it).
DEFAULT_OUT = Path("bench-out")
#: The file every output folder of `hmfusion bench` holds (`--overwrite` replaces only those).
_MARKER = "results.json"


def _shape(text: str) -> Shape:
    """`--shape m,D,n,p,q,k` (argparse `type=`)."""
    try:
        shape = Shape(*(int(v) for v in text.split(",")))
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"a shape is six comma-separated ints m,D,n,p,q,k; got {text!r}"
        ) from None
    if min(shape) < 1 or shape.n % shape.p or shape.D % shape.q or shape.k > shape.D:
        raise argparse.ArgumentTypeError(
            f"shape {text!r}: need positive values, p | n, q | D and k ≤ D"
        )
    needed, memory = _shape_bytes(shape), _memory_bytes()
    if memory is not None and needed > memory:
        raise argparse.ArgumentTypeError(
            f"shape {text!r} needs about {needed / 2**30:,.0f} GiB (inputs, outputs, the dense "
            f"weight and their gradients in float32), more than this machine's "
            f"{memory / 2**30:,.0f} GiB"
        )
    return shape


def _shape_bytes(shape: Shape) -> int:
    """What measuring `shape` holds at once, roughly: X, Y and the dense W in float32, each
    with its gradient and a copy (forward+backward, the methods in turn)."""
    m, D, n = shape.m, shape.D, shape.n
    return 4 * 3 * (m * D + m * n + n * D)


def _memory_bytes() -> int | None:
    """This machine's physical memory, where the system says."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


#: Upper bounds of --repeats and --warmup (a typo such as 10**12 would never finish).
MAX_REPEATS, MAX_WARMUP = 1000, 100


def _bounded(flag_max: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = nonnegative_int(text) if flag_max == MAX_WARMUP else positive_int(text)
        if value > flag_max:
            raise argparse.ArgumentTypeError(f"must be at most {flag_max}, got {value}")
        return value

    return parse


def _choices(kind: str, allowed: tuple[str, ...]) -> Callable[[str], tuple[str, ...]]:
    """An argparse `type=` for a comma-separated list of values from `allowed`."""

    def parse(text: str) -> tuple[str, ...]:
        values = tuple(v.strip() for v in text.split(",") if v.strip())
        for value in values:
            if value not in allowed:
                raise argparse.ArgumentTypeError(
                    f"unknown {kind} {value!r} (choose from {', '.join(allowed)})"
                )
        if not values:
            raise argparse.ArgumentTypeError(f"no {kind} given")
        return values

    return parse


def _load_limit() -> int:
    return MAX_LOAD_PER_CPU * (os.cpu_count() or 1)


def _load(text: str) -> int:
    """`--load`: 0 up to `MAX_LOAD_PER_CPU` busy processes per CPU (argparse `type=`)."""
    value = nonnegative_int(text)
    if value > _load_limit():
        raise argparse.ArgumentTypeError(
            f"must be at most {_load_limit()} ({MAX_LOAD_PER_CPU} per CPU), got {value}"
        )
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the flags of `hmfusion bench` to `parser` (each value is checked when parsed)."""
    parser.add_argument(
        "--quick",
        action="store_true",
        help="CI grid: the target shapes and two small layers, "
        f"forward+backward, float32 and bfloat16; with --load 1 {QUICK_DURATION}",
    )
    parser.add_argument(
        "--shape",
        type=_shape,
        action="append",
        metavar="m,D,n,p,q,k",
        help="run this shape instead of the grid (repeatable)",
    )
    parser.add_argument(
        "--dtypes",
        type=_choices("dtype", _DTYPES),
        default=None,
        help="comma-separated floating dtypes (default: float32,bfloat16)",
    )
    parser.add_argument(
        "--modes",
        type=_choices("mode", MODES),
        default=None,
        help="comma-separated modes (default: both; forward+backward with --quick)",
    )
    parser.add_argument(
        "--methods",
        type=_choices("method", METHODS),
        default=None,
        help="comma-separated methods (dense and hmfusion always run; "
        "default: all, without kron and tinybig with --quick)",
    )
    parser.add_argument(
        "--repeats",
        type=_bounded(MAX_REPEATS),
        default=None,
        help=f"timed rounds per mode (default 7; 3 with --quick; at most {MAX_REPEATS})",
    )
    parser.add_argument(
        "--warmup",
        type=_bounded(MAX_WARMUP),
        default=None,
        help=f"untimed rounds first (default 2; 1 with --quick; at most {MAX_WARMUP})",
    )
    parser.add_argument(
        "--threads", type=positive_int, default=2, help="torch.set_num_threads (default 2)"
    )
    parser.add_argument(
        "--load",
        type=_load,
        default=1,
        metavar="N",
        help="busy processes competing during the loaded measurement "
        f"(default 1; 0 skips it; at most {_load_limit()})",
    )
    parser.add_argument(
        "--max-call-seconds",
        type=nonnegative_float,
        default=engine.MAX_CALL_SECONDS,
        metavar="S",
        help="leave out cases whose dense call is predicted to take longer than S seconds "
        "(16-bit on CPUs without 16-bit GEMM instructions; "
        f"default {engine.MAX_CALL_SECONDS:g}, 0: no limit)",
    )
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="output folder for results.json, results.md, speedup.png "
        f"(default: {DEFAULT_OUT}/ in the current directory)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a non-empty --out that holds an earlier run's results.json",
    )
    parser.add_argument(
        "--render",
        type=Path,
        default=None,
        metavar="RESULTS_JSON",
        help="do not measure: rewrite results.md and speedup.png from a stored results.json",
    )
    parser.add_argument("--no-plot", action="store_true", help="skip speedup.png")
    parser.add_argument(
        "--quiet", action="store_true", help="no progress bar and no table on stdout"
    )


def main(args: argparse.Namespace) -> int:
    """Run `hmfusion bench` with parsed arguments; returns the exit status (0).

    `--device`, `--out` and a `--render` file are checked before measuring; the outputs
    appear in `--out` together when everything is written.

    Raises:
        UsageError: `--device` is not cpu or an available cuda device; `--out` cannot be
            written or holds files (without `--overwrite`, or not an earlier run's); the
            `--render` file is not a readable `results.json`. The command line reports it as
            one line with exit status 2
            ([`run_command`][hmfusion.apps.common.run_command]).
    """
    device = resolve_device(args.device)
    inputs = () if args.render is None else (args.render,)
    output = OutputDirectory(args.out, overwrite=args.overwrite, inputs=inputs)
    stored = None if args.render is None else _read_report(args.render)
    with output as staging:
        report = stored if stored is not None else _measure(args, device)
        (staging / _MARKER).write_text(json.dumps(report, indent=1) + "\n")
        (staging / "results.md").write_text(bench_report.document(report))
        if not args.no_plot:
            bench_report.plot(report, staging / "speedup.png")
        output.commit()
    if not args.quiet:
        print(bench_report.markdown_table(report))
    return 0


def _read_report(path: Path) -> dict[str, Any]:
    """A stored `results.json`, with the keys the document and figure read."""
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except OSError as failure:
        raise UsageError(f"--render {describe_failure(failure)}") from None
    except ValueError as failure:
        raise UsageError(f"--render {str(path)!r}: not a results.json ({failure})") from None
    except RecursionError:
        raise UsageError(
            f"--render {str(path)!r}: nested too deeply to be a results.json"
        ) from None
    keys = ("results", "machine", "config")
    if not isinstance(report, dict) or any(key not in report for key in keys):
        raise UsageError(f"--render {str(path)!r}: not a results.json (it needs {', '.join(keys)})")
    return report


def _measure(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    shapes = args.shape or (engine.QUICK_GRID if args.quick else engine.FULL_GRID)
    dtypes = args.dtypes or ("float32", "bfloat16")
    modes = args.modes or (("forward+backward",) if args.quick else MODES)
    methods = args.methods or (QUICK_METHODS if args.quick else METHODS)
    repeats = args.repeats or (3 if args.quick else 7)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        report = engine.run(
            shapes,
            dtypes,
            methods=methods,
            modes=modes,
            repeats=repeats,
            warmup=warmup,
            device=str(device),
            load=args.load,
            progress=not args.quiet,
            max_call_seconds=args.max_call_seconds or None,
        )
    finally:
        torch.set_num_threads(threads)
    report["targets"] = bench_report.check_targets(report["results"], report["loaded"])
    return report
