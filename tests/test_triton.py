"""The Triton kernels of the operator (`hmfusion.ops.triton_kernels`), on CPU and on CUDA.

References are written plainly in float64: `cat(xs, zero padding) @ Σ_τ torch.kron(A_τ, B_τ).T`
and autograd through it, from the inputs rounded to the dtype under test.

Interpreter tests (every CI run, no GPU needed): Triton reads `TRITON_INTERPRET=1` when
`@triton.jit` decorates a kernel, that is when the kernel module is first imported, and this
process imports it without the interpreter (the compile, planner and CUDA tests below). So the
interpreter cases run in one subprocess started with the variable set
(`tests/triton_interpret_worker.py`): it runs the operator with `triton=True` on CPU tensors,
forward and autograd backward, and sends back Y, the gradients and how often the Triton
launchers ran; the comparison is made here. CUDA tests run the real kernels through the module,
`torch.compile` and a CUDA graph, and are skipped without CUDA. Everything is skipped where
Triton is not installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import hmfusion
from hmfusion import HMConcatFusion
from hmfusion.ops import costmodel, native, planner
from hmfusion.ops import triton_dispatch

triton = pytest.importorskip("triton")

F64 = torch.float64
WORKER = str(Path(__file__).with_name("triton_interpret_worker.py"))
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

#: name: (m, input widths, p, q, s, t, terms, dtype, needs (dX, dA, dB))
CASES = {
    "odd_sizes_two_inputs": (7, (10, 14), 3, 4, 5, 6, 1, torch.float32, (True, True, True)),
    "padded_terms": (6, (7, 9), 6, 4, 3, 5, 2, torch.float32, (True, True, True)),
    "padded_one_input": (5, (22,), 3, 4, 5, 6, 3, torch.float32, (True, True, True)),
    "s_one": (5, (12, 8), 6, 4, 1, 5, 2, torch.float32, (True, True, True)),
    "t_one_padded": (4, (11,), 6, 12, 3, 1, 1, torch.float32, (True, True, True)),
    # p, s > 64: two tiles of Y's rows and columns; q·t = 72 > D = 70
    "several_tiles": (3, (70,), 70, 3, 66, 24, 1, torch.float32, (True, True, True)),
    "bfloat16": (6, (7, 9), 6, 4, 3, 5, 2, torch.bfloat16, (True, True, True)),
    "float16_s_one": (5, (12, 8), 6, 4, 1, 5, 1, torch.float16, (True, True, True)),
    "only_dx": (7, (10, 14), 3, 4, 5, 6, 2, torch.float32, (True, False, False)),
    "only_da": (7, (10, 14), 3, 4, 5, 6, 1, torch.float32, (False, True, False)),
    "only_db": (7, (10, 14), 3, 4, 5, 6, 1, torch.float32, (False, False, True)),
    "no_rows": (0, (12,), 3, 4, 5, 3, 1, torch.float32, (True, True, True)),
    # the registered forward and backward ops under torch.compile (backend aot_eager)
    "compiled": (7, (10, 14), 3, 4, 5, 6, 2, torch.float32, (True, True, True)),
    # the gradients by torch.func.grad: the forward runs twice (Y, then inside the transform);
    # the transform differentiates with create_graph, so the backward takes the operator's
    # differentiable composite path (native._differentiable_grads), not a Triton launch
    "func_grad": (6, (7, 9), 6, 4, 3, 5, 2, torch.float32, (True, True, True)),
}
ORDERS = ("right_first", "left_first")


def _inputs(m, dims, p, q, s, t, terms, dtype, seed=0):
    """xs, a, b, gy in float64, rounded to dtype (so the reference sees what the kernel sees)."""
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, dtype=F64, generator=generator).to(dtype).to(F64)

    return [rand(m, d) for d in dims], rand(terms, p, q), rand(terms, s, t), rand(m, p * s)


def _reference(xs, a, b, gy):
    """Y and (dXs, dA, dB) in float64 through torch.kron and autograd."""
    xs = [x.clone().requires_grad_() for x in xs]
    a, b = a.clone().requires_grad_(), b.clone().requires_grad_()
    q, t = a.shape[2], b.shape[2]
    x = torch.cat(xs, -1)
    x = torch.nn.functional.pad(x, (0, q * t - x.shape[1]))
    w = sum(torch.kron(a_term, b_term) for a_term, b_term in zip(a, b))
    y = x @ w.T
    grads = torch.autograd.grad(y, [*xs, a, b], gy)
    return y.detach(), (list(grads[: len(xs)]), grads[-2], grads[-1])


def _close(actual, expected, dtype):
    """Relative to the largest reference value (inner sums of a few dozen terms)."""
    tolerance = 1e-5 if dtype == torch.float32 else 3e-2
    scale = max(expected.abs().max().item(), 1.0) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=tolerance, atol=tolerance * scale)


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory):
    """Every case in both orders, run once in the interpreter subprocess: {(case, order): out}."""
    cases = []
    for name, (m, dims, p, q, s, t, terms, dtype, needs) in CASES.items():
        xs, a, b, gy = _inputs(m, dims, p, q, s, t, terms, dtype)
        for order in ORDERS:
            cases.append(
                {
                    "name": f"{name}-{order}",
                    **{"xs": xs, "a": a, "b": b, "gy": gy},
                    **{"order": order, "dtype": dtype, "needs": needs},
                    "compiled": name == "compiled",
                    "func": name == "func_grad",
                }
            )
    folder = tmp_path_factory.mktemp("triton")
    torch.save(cases, folder / "cases.pt")
    source = str(Path(hmfusion.__file__).resolve().parents[1])
    env = {
        **os.environ,
        "TRITON_INTERPRET": "1",
        "PYTHONPATH": os.pathsep.join([source, os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, WORKER, str(folder / "cases.pt"), str(folder / "results.pt")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode == 3:  # (the worker's UNSUPPORTED: an old Triton's interpreter)
        pytest.skip(done.stderr.strip().splitlines()[-1])
    assert done.returncode == 0, done.stderr[-4000:]
    return torch.load(folder / "results.pt")


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("case", list(CASES))
def test_interpreted_kernels_match_the_reference(interpreted, case, order):
    """Y, dX (per input), dA and dB from the Triton kernels (in the interpreter, one forward
    and one backward launcher call each) against float64 torch.kron."""
    m, dims, p, q, s, t, terms, dtype, needs = CASES[case]
    xs, a, b, gy = _inputs(m, dims, p, q, s, t, terms, dtype)
    y, (dxs, da, db) = _reference(xs, a, b, gy)
    out = interpreted[f"{case}-{order}"]
    assert out["calls"] == ((2, 0) if case == "func_grad" else (1, 1))
    assert out["y"].shape == (m, p * s)
    _close(out["y"], y, dtype)
    need_x, need_a, need_b = needs
    assert (out["dxs"] is not None, out["da"] is not None, out["db"] is not None) == needs
    if need_x:
        for actual, expected in zip(out["dxs"], dxs):
            _close(actual, expected, dtype)
    if need_a:
        _close(out["da"], da, dtype)
    if need_b:
        _close(out["db"], db, dtype)


# without a GPU, in this process ---------------------------------------------------------------
def _kernels_module():
    from hmfusion.ops import triton_kernels

    if triton_kernels.interpreted():
        pytest.skip("this process runs Triton's interpreter (TRITON_INTERPRET=1)")
    return triton_kernels


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_kernels_compile_for_a_hopper_gpu(dtype):
    """Triton's own compiler takes every kernel to a cubin for sm_90 (no GPU needed): the
    interpreter does not check what only the compiler does (types across branches, constexpr
    use)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernels = _kernels_module()

    def compile_kernel(fn, constants, float32=()):
        signature = {
            name: "constexpr"
            if name in constants
            else ("*fp32" if name in float32 else f"*{dtype}")
            if name.endswith("_ptr")
            else "i32"
            for name in fn.arg_names
        }
        source = ASTSource(fn=fn, signature=signature, constexprs=constants)
        compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32))
        assert "cubin" in compiled.asm

    precision = "tf32" if dtype == "fp32" else "ieee"
    for right_first in (True, False):
        blocks = {"BLOCK_ROWS": 16, "BLOCK_COLS": 32, "BLOCK_LEFT": 64, "BLOCK_RIGHT": 16}
        flags = {"RIGHT_FIRST": right_first, "PRECISION": precision, "UPCAST": False}
        compile_kernel(kernels._rows_kernel, {**blocks, **flags})
        blocks = {"BP": 16, "BQ": 32, "BS": 64, "BT": 16}
        flags = {"RIGHT_FIRST": right_first, "LEFT_FIRST": not right_first, **flags}
        compile_kernel(kernels._partials_kernel, {**blocks, **flags}, float32=("work_ptr",))
    compile_kernel(kernels._sum_kernel, {"BLOCK": 256}, float32=("work_ptr",))


def test_float32_precision_follows_allow_tf32(monkeypatch):
    kernels = _kernels_module()
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    assert kernels.precision(torch.float32) == "ieee"
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)
    assert kernels.precision(torch.float32) == "tf32"
    assert kernels.precision(torch.bfloat16) == "ieee"


def test_triton_variant_falls_back_off_the_gpu(monkeypatch):
    """On CPU tensors without the interpreter (and for float64 anywhere) `triton=True` runs
    the pure-PyTorch kernel: same values, no Triton launch."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    from hmfusion.ops import triton_kernels

    def no_launch(*args, **kwargs):
        raise AssertionError("a Triton launcher ran")

    monkeypatch.setattr(triton_kernels, "forward", no_launch)
    monkeypatch.setattr(triton_kernels, "backward", no_launch)
    for dtype in (torch.float32, torch.float64):
        xs, a, b, gy = _inputs(5, (7, 9), 6, 4, 3, 5, 2, dtype)
        y, (dxs, da, db) = _reference(xs, a, b, gy)
        xs = [x.to(dtype).requires_grad_() for x in xs]
        a, b = a.to(dtype).requires_grad_(), b.to(dtype).requires_grad_()
        out = native.fused_kron_concat(xs, a, b, "right_first", 5, triton=True)
        grads = torch.autograd.grad(out, [*xs, a, b], gy.to(dtype))
        for actual, expected in zip([out, *grads], [y, *dxs, da, db]):
            _close(actual.double(), expected, torch.float32)


def test_cpu_use_does_not_import_triton():
    """Triton is imported by the first CUDA plan or `triton=True` call only: a CPU layer's
    forward, backward and plans leave it unimported (a fresh process)."""
    code = (
        "import sys, torch\n"
        "from hmfusion import HMConcatFusion\n"
        "module = HMConcatFusion([8, 8], n=16, p=4)\n"
        "module([torch.randn(3, 8, requires_grad=True), torch.randn(3, 8)]).sum().backward()\n"
        "module.plan(3)\n"
        "assert 'triton' not in sys.modules, 'Triton imported'\n"
    )
    source = str(Path(hmfusion.__file__).resolve().parents[1])
    path = os.pathsep.join([source, os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path, "HMFUSION_NATIVE": "0"}  # (no C++ build here)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_triton_variant_rejects_other_kernels():
    xs, a, b, _ = _inputs(3, (10,), 2, 2, 2, 5, 1, F64)
    for options in ({"tiled": True}, {"fallback": True}, {"inputs": "split"}):
        with pytest.raises(ValueError, match="triton=True"):
            native.fused_kron_concat(xs, a, b, "right_first", 3, triton=True, **options)


def test_cuda_plans_rank_the_triton_kernels(monkeypatch):
    """With Triton installed, a CUDA plan is triton, composite or materialize, whichever the
    cost model's launch counting ranks first; float64, the CPU, or no Triton never plan it."""
    monkeypatch.setattr(planner, "_CACHE", {})
    monkeypatch.setattr(planner, "_native_runs", lambda dtype, device_type: False)
    spec = planner.KronSpec(4096, 4096, 64, 64, 64, 64)
    dims = (1024,) * 4
    plan = planner.choose_plan(spec, 4096, dims, torch.float32, "cuda")
    assert (plan.method, plan.kernel, plan.inputs, plan.chunk_rows) == (
        "fused",
        "triton",
        "gather",
        4096,
    )
    costs = costmodel.estimate(
        spec, 4096, dims, torch.float32, "cuda", True,
        native=False, fused_chunk_rows=4096, split=False, triton=True,
    )  # fmt: skip
    assert costs["fused"] == min(costs.values())
    # p = 2 pads A's tiles to 16: the two-matmul code ranks first
    spec_narrow = planner.KronSpec(1024, 1024, 2, 2, 512, 512)
    narrow = planner.choose_plan(spec_narrow, 4096, dims, torch.float32, "cuda")
    assert narrow.method == "composite"
    assert planner.choose_plan(spec, 4096, dims, torch.float64, "cuda").kernel != "triton"
    assert planner.choose_plan(spec, 4096, dims, torch.float32, "cpu").kernel != "triton"
    monkeypatch.setattr(triton_dispatch, "_LOADED", {"module": None})  # Triton missing
    monkeypatch.setattr(planner, "_CACHE", {})
    assert planner.choose_plan(spec, 4096, dims, torch.float32, "cuda").kernel != "triton"


def test_triton_plans_dispatch_fewer_operators_than_the_chunked_fallback():
    spec = planner.KronSpec(256, 256, 16, 16, 16, 16)
    for grad in (False, True):
        fused = costmodel.device_ops("fused", 4, 1, 1, grad)
        assert costmodel.triton_ops(4, grad) < min(
            fused, costmodel.device_ops("composite", 4, 1, 1, grad)
        )
    costs = costmodel.estimate(
        spec, 256, (64,) * 4, torch.float32, "cuda", True,
        native=False, fused_chunk_rows=256, split=False, triton=True,
    )  # fmt: skip
    assert min(costs, key=costs.__getitem__) == "fused"


def test_forced_triton_plans(monkeypatch):
    """`force_plan(kernel="triton")` plans Triton on CUDA and, where it cannot run, the
    pure-PyTorch kernel (the plan says so); a forced fused plan on CUDA runs Triton unless its
    inputs are split."""
    monkeypatch.setattr(planner, "_CACHE", {})
    monkeypatch.setattr(planner, "_native_runs", lambda dtype, device_type: False)
    spec = planner.KronSpec(64, 64, 8, 8, 8, 8)
    with planner.force_plan(kernel="triton"):
        assert planner.choose_plan(spec, 32, (64,), torch.float32, "cuda").kernel == "triton"
        assert planner.choose_plan(spec, 32, (64,), torch.float32, "cpu").kernel == "pytorch"
        assert planner.choose_plan(spec, 32, (64,), torch.float64, "cuda").kernel == "pytorch"
    with planner.force_plan(method="fused", order="left_first"):
        plan = planner.choose_plan(spec, 32, (64,), torch.float32, "cuda")
        assert (plan.kernel, plan.order, plan.chunk_rows) == ("triton", "left_first", 32)
    with planner.force_plan(method="fused", inputs="split"):
        assert planner.choose_plan(spec, 32, (64,), torch.float32, "cuda").kernel == "pytorch"


# on a GPU --------------------------------------------------------------------------------------
def _module_case(dtype, seed=0):
    """A padded two-input layer with two terms (D = 30 < q·t = 32, p·s = n) and its inputs."""
    torch.manual_seed(seed)
    module = HMConcatFusion([13, 17], n=36, p=6, q=4, terms=2, pad=True).to("cuda", dtype)
    xs = [torch.randn(37, d, device="cuda", dtype=dtype) for d in (13, 17)]
    gy = torch.randn(37, 36, device="cuda", dtype=dtype)
    return module, xs, gy


def _module_reference(module, xs, gy):
    a = module.A.detach().double().cpu()
    b = module.B.detach().double().cpu()
    y, (dxs, da, db) = _reference([x.double().cpu() for x in xs], a, b, gy.double().cpu())
    return y[:, : module.n], dxs, da, db


@CUDA
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("order", ORDERS)
def test_cuda_module_runs_the_triton_kernels(dtype, order, monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    module, xs, gy = _module_case(dtype)
    assert module.plan(37).kernel == "triton"
    xs = [x.requires_grad_() for x in xs]
    with planner.force_plan(method="fused", order=order):
        y = module(xs)
        y.backward(gy)
    y_ref, dxs, da, db = _module_reference(module, xs, gy)
    _close(y.double().cpu(), y_ref, dtype)
    for x, expected in zip(xs, dxs):
        _close(x.grad.double().cpu(), expected, dtype)
    _close(module.A.grad.double().cpu(), da, dtype)
    _close(module.B.grad.double().cpu(), db, dtype)


@CUDA
def test_cuda_compiled_module_matches_eager():
    module, xs, gy = _module_case(torch.float32)
    compiled = torch.compile(module, fullgraph=True)
    with planner.force_plan(kernel="triton"):
        eager_x = [x.clone().requires_grad_() for x in xs]
        module(eager_x).backward(gy)
        expected = [x.grad for x in eager_x] + [module.A.grad.clone(), module.B.grad.clone()]
        module.zero_grad()
        compiled_x = [x.clone().requires_grad_() for x in xs]
        compiled(compiled_x).backward(gy)
    actual = [x.grad for x in compiled_x] + [module.A.grad, module.B.grad]
    for got, want in zip(actual, expected):
        torch.testing.assert_close(got, want)


@CUDA
def test_cuda_graph_captures_forward_and_backward():
    """Forward+backward captured in a CUDA graph and replayed on new inputs: nothing reads
    device values on the host."""
    module, xs, gy = _module_case(torch.float32)
    static_x = [x.clone().requires_grad_() for x in xs]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), planner.force_plan(kernel="triton"):
        for _ in range(2):  # warm-up: compile the kernels, fill the planner's cache
            module.zero_grad(set_to_none=False)
            module(static_x).backward(gy)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    module.zero_grad(set_to_none=False)
    for x in static_x:
        x.grad = None
    with torch.cuda.graph(graph), planner.force_plan(kernel="triton"):
        static_y = module(static_x)
        static_y.backward(gy)
    fresh = [torch.randn_like(x) for x in xs]
    for x, value in zip(static_x, fresh):
        x.data.copy_(value)
    module.zero_grad(set_to_none=False)
    graph.replay()
    torch.cuda.synchronize()
    y_ref, dxs, da, db = _module_reference(module, fresh, gy)
    _close(static_y.double().cpu(), y_ref, torch.float32)
    _close(module.A.grad.double().cpu(), da, torch.float32)
    _close(module.B.grad.double().cpu(), db, torch.float32)


@CUDA
@pytest.mark.slow
def test_cuda_reduce_overhead_compile():
    """`torch.compile(mode="reduce-overhead")` (CUDA graphs by Inductor) of forward+backward."""
    module, xs, gy = _module_case(torch.float32)
    compiled = torch.compile(module, mode="reduce-overhead")
    for _ in range(3):
        step_x = [x.clone().requires_grad_() for x in xs]
        module.zero_grad()
        compiled(step_x).backward(gy)
    y_ref, dxs, da, db = _module_reference(module, xs, gy)
    _close(module.A.grad.double().cpu(), da, torch.float32)
    for x, expected in zip(step_x, dxs):
        _close(x.grad.double().cpu(), expected, torch.float32)
