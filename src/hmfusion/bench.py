"""Benchmark hmfusion against what users write instead, on a grid of shapes, quiet and loaded.

For each shape and dtype, dense (cat + ``F.linear``), ``torch.kron`` and tinybig's materialized
W, the five-line einsum and two-matmul codes, ``torch.compile`` of the two-matmul code and
``HMConcatFusion`` are timed interleaved, forward and forward+backward; then again while
``--load`` busy processes compete for the CPUs (the loaded table). Writes ``results.json``
(every figure), ``results.md`` (the ``benchmarks/RESULTS.md`` document) and ``speedup.png``
to ``--out``, all at once (a half-written folder never appears). ``--quick`` is the CI grid:
the four target shapes, the (256, 256, 256, 4) layer and the main job's layer, float32 and
bfloat16, forward+backward, about 2 minutes on 2 cores. ``--render results.json`` rewrites the
document and figure from a stored run. See :mod:`hmfusion.benchmarking` for how it measures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import NoReturn

import torch

from hmfusion import benchmark_report, benchmarking
from hmfusion.benchmarking import MAX_LOAD_PER_CPU, METHODS, MODES, QUICK_METHODS, Shape

__all__ = ["add_arguments", "main"]

_DTYPES = ("float32", "float64", "bfloat16", "float16")


def _error(message: str) -> NoReturn:
    """The one error path after parsing: one line on stderr, exit status 2 (as argparse)."""
    print(f"hmfusion bench: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _shape(text: str) -> Shape:
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
    return shape


def _choices(kind: str, allowed: tuple[str, ...]):
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


def _count(minimum: int, maximum: int | None = None):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an int, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f"≥ {minimum}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value

    return parse


def _device(text: str) -> torch.device:
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"not a torch device: {text!r}") from None
    if device.type == "meta":
        raise argparse.ArgumentTypeError("meta tensors hold no data to time; use cpu or cuda")
    if device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"unsupported device {text!r} (use cpu or cuda)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(
            f"{text!r}: CUDA is not available in this PyTorch build or on this machine"
        )
    return device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``hmfusion bench`` options (every value is checked here, before measuring)."""
    load_limit = MAX_LOAD_PER_CPU * (os.cpu_count() or 1)
    parser.add_argument("--quick", action="store_true",
                        help="CI grid: the target shapes and two small layers, "
                             "forward+backward, float32 and bfloat16, ~2 minutes")
    parser.add_argument("--shape", type=_shape, action="append", metavar="m,D,n,p,q,k",
                        help="run this shape instead of the grid (repeatable)")
    parser.add_argument("--dtypes", type=_choices("dtype", _DTYPES), default=None,
                        help="comma-separated floating dtypes (default: float32,bfloat16)")
    parser.add_argument("--modes", type=_choices("mode", MODES), default=None,
                        help="comma-separated modes (default: both; forward+backward with "
                             "--quick)")
    parser.add_argument("--methods", type=_choices("method", METHODS), default=None,
                        help="comma-separated methods (dense and hmfusion always run; "
                             "default: all, without kron and tinybig with --quick)")
    parser.add_argument("--repeats", type=_count(1), default=None,
                        help="timed rounds per mode (default 7; 3 with --quick)")
    parser.add_argument("--warmup", type=_count(0), default=None,
                        help="untimed rounds first (default 2; 1 with --quick)")
    parser.add_argument("--threads", type=_count(1), default=2,
                        help="torch.set_num_threads (default 2)")
    parser.add_argument("--load", type=_count(0, load_limit), default=1, metavar="N",
                        help="busy processes competing during the loaded measurement "
                             f"(default 1; 0 skips it; at most {load_limit})")
    parser.add_argument("--device", type=_device, default=torch.device("cpu"),
                        help="cpu (default) or cuda")
    parser.add_argument("--out", type=Path, default=Path("bench-out"),
                        help="output folder for results.json, results.md, speedup.png")
    parser.add_argument("--render", type=Path, default=None, metavar="RESULTS_JSON",
                        help="do not measure: rewrite results.md and speedup.png from a "
                             "stored results.json")
    parser.add_argument("--no-plot", action="store_true", help="skip speedup.png")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bar and no table on stdout")


def _staging_folder(out: Path) -> Path:
    """An empty folder next to ``out`` for the outputs (renamed into place at the end)."""
    if out.exists() and not out.is_dir():
        _error(f"--out {str(out)!r} exists and is not a folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as error:
        _error(f"--out {str(out)!r} cannot be written: {error.strerror or error}")


def _publish(staging: Path, out: Path) -> None:
    """Move the finished files into ``out``: one rename of the folder, or one per file."""
    if not out.exists():
        os.replace(staging, out)
        return
    for path in staging.iterdir():
        os.replace(path, out / path.name)
    staging.rmdir()


def main(args: argparse.Namespace) -> int:
    """Run ``hmfusion bench`` with parsed arguments; returns the exit status (0).

    Raises:
        SystemExit: status 2 with a one-line message when the output folder cannot be
            written (checked before measuring) or a stored run cannot be read.
    """
    staging = _staging_folder(args.out)
    try:
        if args.render is not None:
            try:
                report = json.loads(args.render.read_text())
                report["results"], report["machine"], report["config"]  # noqa: B018
            except (OSError, ValueError, KeyError, TypeError) as error:
                _error(f"--render {str(args.render)!r}: not a results.json ({error})")
        else:
            report = _measure(args)
        (staging / "results.json").write_text(json.dumps(report, indent=1) + "\n")
        (staging / "results.md").write_text(benchmark_report.document(report))
        if not args.no_plot:
            benchmark_report.plot(report, staging / "speedup.png")
        _publish(staging, args.out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if not args.quiet:
        print(benchmark_report.markdown_table(report))
    return 0


def _measure(args: argparse.Namespace) -> dict:
    shapes = args.shape or (benchmarking.QUICK_GRID if args.quick else benchmarking.FULL_GRID)
    dtypes = args.dtypes or ("float32", "bfloat16")
    modes = args.modes or (("forward+backward",) if args.quick else MODES)
    methods = args.methods or (QUICK_METHODS if args.quick else METHODS)
    repeats = args.repeats or (3 if args.quick else 7)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        report = benchmarking.run(
            shapes, dtypes, methods=methods, modes=modes, repeats=repeats, warmup=warmup,
            device=str(args.device), load=args.load, progress=not args.quiet,
        )
    finally:
        torch.set_num_threads(threads)
    report["targets"] = benchmark_report.check_targets(report["results"], report["loaded"])
    return report
