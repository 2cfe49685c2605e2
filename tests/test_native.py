"""The operator ``hmfusion::fused_kron_concat``: compiled kernel and pure-PyTorch fallback.

References are written plainly in float64: ``cat(xs, zero padding) @ Σ_τ torch.kron(A_τ, B_τ).T``
and autograd through it. Every test runs on both kernels in one process (``kernel`` fixture);
CI also runs the whole suite with ``HMFUSION_NATIVE=0``.
"""

from __future__ import annotations

import doctest
import json
import os
import re
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from hmfusion.apps.bench import command as bench, report as benchmark_report
from hmfusion.ops import costmodel, build as extension, files, fused, kernels, native

F64 = torch.float64


@pytest.fixture(params=["native", "tiled", "pytorch"])
def kernel(request, monkeypatch, device):
    """Runs the test on the compiled kernel's BLAS and register-tiled code (skipped where it
    cannot build) and on the fallback."""
    if request.param in ("native", "tiled"):
        if device.type != "cpu":
            pytest.skip("the compiled kernel is CPU-only")
        if not native.available():
            pytest.skip(f"compiled kernel unavailable (status {native.status()})")
    if request.param == "tiled":
        original = native.fused_kron_concat

        def tiled(xs, a, b, order, chunk_rows, inputs="gather", tiled=True, fallback=False):
            return original(xs, a, b, order, chunk_rows, inputs, tiled=inputs == "gather")

        monkeypatch.setattr(native, "fused_kron_concat", tiled)
    elif request.param == "pytorch":
        monkeypatch.setattr(native, "_use_native", lambda xs, split: False)
    return request.param


def _reference(xs, a, b):
    q, t = a.shape[2], b.shape[2]
    x = torch.cat(list(xs), -1)
    x = torch.nn.functional.pad(x, (0, q * t - x.shape[1]))
    w = sum(torch.kron(a_term, b_term) for a_term, b_term in zip(a, b))
    return x @ w.T


def _data(m, dims, p, q, s, t, terms, device, seed=0):
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, dtype=F64, generator=generator).to(device).requires_grad_()

    return [rand(m, d) for d in dims], rand(terms, p, q), rand(terms, s, t)


CASES = {
    "one_input": (37, (24,), 3, 4, 5, 6, 1),
    "two_inputs": (37, (10, 14), 3, 4, 5, 6, 1),
    "padded": (37, (8, 8, 4), 3, 4, 5, 6, 1),
    "terms": (37, (10, 14), 3, 4, 5, 6, 3),
    "wide_a": (29, (16, 16), 8, 8, 2, 4, 1),  # dA by one GEMM over transposed rows
    "padded_one_input": (16, (22,), 3, 4, 5, 6, 2),
    # vector tails of the tiled loops: 9 and 33 columns (8- and 16-wide vectors), 40 and 32
    "odd_lanes": (23, (50, 49), 3, 3, 9, 33, 2),
    "wide_blocks": (19, (128, 128), 2, 8, 40, 32, 1),
    # a B under 16 × 16 both ways runs A's product transposed right first (the BLAS kernel);
    # s = 1 writes Y and reads dY in place
    "one_row_b": (21, (12, 8), 6, 4, 1, 5, 2),
    "one_row_b_padded": (21, (7, 9), 6, 4, 1, 5, 2),
    "scalar_b": (13, (12,), 6, 12, 1, 1, 1),
    # either side of the transposed path's bound (s, t < 16)
    "transposed_edge": (11, (30, 30), 2, 4, 15, 15, 1),
    "untransposed_edge": (11, (64,), 2, 4, 15, 16, 1),
}


def test_transposed_bound_matches_the_cost_model():
    # the planner prices the BLAS kernel's transposed path where the C++ takes it
    source = (Path(native.__file__).parent / "csrc" / "kron_concat.cpp").read_text()
    match = re.search(r"constexpr int64_t kTransposedMaxS = (\d+);", source)
    assert match and int(match.group(1)) == costmodel.TRANSPOSED_MAX_S
    assert "s < kTransposedMaxS && t < kTransposedMaxS" in source


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("order", ["right_first", "left_first"])
@pytest.mark.parametrize("chunk_rows", [1, 5, 64])
def test_matches_the_float64_reference(kernel, device, case, order, chunk_rows):
    m, dims, p, q, s, t, terms = CASES[case]
    xs, a, b = _data(m, dims, p, q, s, t, terms, device)
    y = native.fused_kron_concat(xs, a, b, order, chunk_rows)
    expected = _reference(xs, a, b)
    dy = torch.randn_like(expected)
    grads = torch.autograd.grad(y, [*xs, a, b], dy)
    expected_grads = torch.autograd.grad(expected, [*xs, a, b], dy)
    torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-10)
    for grad, reference in zip(grads, expected_grads):
        torch.testing.assert_close(grad, reference, rtol=1e-10, atol=1e-10)


def test_many_chunks_over_every_thread(kernel, device):
    # dynamic scheduling: chunks of 3 rows taken by every worker, per-worker dA/dB reduced
    threads = torch.get_num_threads()
    torch.set_num_threads(max(2, threads))
    try:
        xs, a, b = _data(301, (12, 12), 4, 4, 5, 6, 2, device, seed=1)
        y = native.fused_kron_concat(xs, a, b, "right_first", 3)
        y.square().sum().backward()
    finally:
        torch.set_num_threads(threads)
    reference_inputs = [v.detach().clone().requires_grad_() for v in (*xs, a, b)]
    expected = _reference(reference_inputs[:2], *reference_inputs[2:])
    expected.square().sum().backward()
    torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-10)
    for value, reference in zip((*xs, a, b), reference_inputs):
        torch.testing.assert_close(value.grad, reference.grad, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("order", ["right_first", "left_first"])
@pytest.mark.parametrize(
    "geometry",
    [((10, 14), 3, 4, 5, 6), ((40, 40), 3, 4, 5, 20)],  # the transposed path, and not (t ≥ 16)
    ids=["small_b", "wide_b"],
)
def test_gradients_only_where_needed(kernel, device, order, geometry):
    dims, p, q, s, t = geometry
    xs, a, b = _data(9, dims, p, q, s, t, 1, device)
    for wanted, frozen in (
        ([b], (xs, a.detach(), b)),
        ([a], (xs, a, b.detach())),
        (xs, (xs, a.detach(), b.detach())),
    ):
        got = torch.autograd.grad(native.fused_kron_concat(*frozen, order, 4).sum(), wanted)
        expected = torch.autograd.grad(_reference(*frozen).sum(), wanted)
        for value, reference in zip(got, expected):
            torch.testing.assert_close(value, reference, rtol=1e-10, atol=1e-10)


def test_zero_rows(kernel, device):
    xs, a, b = _data(0, (10, 14), 3, 4, 5, 6, 1, device)
    y = native.fused_kron_concat(xs, a, b, "right_first", 4)
    y.sum().backward()
    assert y.shape == (0, 15)
    assert not a.grad.any() and not b.grad.any() and xs[0].grad.shape == (0, 10)


def test_gradcheck_and_gradgradcheck(kernel, device):
    xs, a, b = _data(5, (4, 4), 2, 2, 3, 4, 2, device)

    def fn(x0, x1, a, b):
        return native.fused_kron_concat([x0, x1], a, b, "right_first", 2)

    assert torch.autograd.gradcheck(fn, (*xs, a, b))
    assert torch.autograd.gradgradcheck(fn, (*xs, a, b))


def test_gradgradcheck_padded_left_first_and_matrix_factors(kernel, device):
    # the double backward of the compiled operator's C++ node: zero padding of D (3 + 4 < q·t),
    # left first, and one term given as (p, q) and (s, t) matrices
    xs, a, b = _data(4, (3, 4), 2, 2, 3, 4, 2, device)
    a2, b2 = a.detach()[0].requires_grad_(), b.detach()[0].requires_grad_()

    def fn(x0, x1, a, b):
        return native.fused_kron_concat([x0, x1], a, b, "left_first", 3)

    assert torch.autograd.gradgradcheck(fn, (*xs, a, b))
    assert torch.autograd.gradgradcheck(fn, (*xs, a2, b2))


def test_matrix_factors_get_gradients_of_their_own_shape(kernel, device):
    # one term may be passed as (p, q) and (s, t) matrices: no stack for autograd to record
    xs, a, b = _data(9, (10, 14), 3, 4, 5, 6, 1, device)
    a2, b2 = a.detach()[0].requires_grad_(), b.detach()[0].requires_grad_()
    for order in ("right_first", "left_first"):
        y = native.fused_kron_concat(xs, a2, b2, order, 4)
        dy = torch.randn_like(y)
        grads = torch.autograd.grad(y, [*xs, a2, b2], dy)
        expected = _reference(xs, a, b)
        expected_grads = torch.autograd.grad(expected, [*xs, a, b], dy)
        torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-10)
        assert grads[-2].shape == a2.shape and grads[-1].shape == b2.shape
        for grad, reference in zip(grads, expected_grads):
            torch.testing.assert_close(grad, reference.view_as(grad), rtol=1e-10, atol=1e-10)


def test_inference_mode(kernel, device):
    # under inference mode the autograd layer is skipped: the operator's own CPU kernel runs
    xs, a, b = _data(9, (10, 14), 3, 4, 5, 6, 2, device)
    with torch.inference_mode():
        y = native.fused_kron_concat(xs, a, b, "left_first", 4)
    torch.testing.assert_close(y, _reference(xs, a, b).detach(), rtol=1e-10, atol=1e-10)


def _python_frames(fn):
    """The hmfusion and torch.autograd.function frames that fn enters (profile hook)."""
    frames = []

    def hook(frame, event, arg):
        name = frame.f_code.co_filename
        if event == "call" and ("hmfusion" in name or name.endswith("autograd/function.py")):
            frames.append(frame.f_code.co_name)

    sys.setprofile(hook)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return frames


def test_eager_backward_runs_no_python(kernel, device):
    # the compiled operator's autograd node is C++: backward enters no Python frame of ours
    # (nor a Python autograd.Function); the fallback's node is a Python Function
    xs, a, b = _data(9, (10, 14), 3, 4, 5, 6, 1, device)
    y = native.fused_kron_concat(xs, a, b, "right_first", 4)
    frames = _python_frames(lambda: y.sum().backward())
    if kernel in ("native", "tiled"):
        assert "CppNode" in y.grad_fn.name() and "KronConcatFunction" in y.grad_fn.name()
        assert frames == []
    else:
        assert "backward" in frames
    torch.testing.assert_close(
        a.grad, torch.autograd.grad(_reference(xs, a, b).sum(), a)[0], rtol=1e-10, atol=1e-10
    )


@pytest.mark.parametrize("p, s", [(4, 8), (8, 1)])  # s = 1: Y written in place
def test_float32_and_16_bit(kernel, device, p, s):
    xs, a, b = _data(50, (16, 16), p, 4, s, 8, 1, device)
    expected = _reference(xs, a, b)
    dy = torch.randn_like(expected)
    expected_grads = torch.autograd.grad(expected, [*xs, a, b], dy)
    for dtype, tolerance in ((torch.float32, 1e-5), (torch.bfloat16, 5e-2), (torch.float16, 1e-2)):
        cast = [v.detach().to(dtype).requires_grad_() for v in (*xs, a, b)]
        y = native.fused_kron_concat(cast[:2], cast[2], cast[3], "right_first", 16)
        grads = torch.autograd.grad(y, cast, dy.to(dtype))
        assert y.dtype == dtype and all(grad.dtype == dtype for grad in grads)
        for got, reference in zip((y, *grads), (expected, *expected_grads)):
            error = (got.double() - reference).norm() / reference.norm()
            assert error < tolerance, (dtype, error.item())


def test_split_inputs_need_aligned_boundaries(device):
    xs, a, b = _data(4, (5, 19), 3, 4, 5, 6, 1, device)
    with pytest.raises(ValueError, match="multiple of t"):
        native.fused_kron_concat(xs, a, b, "right_first", 4, "split")
    with pytest.raises(ValueError, match="order"):
        native.fused_kron_concat(xs, a, b, "middle_first", 4)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="chunk_rows"):
        native.fused_kron_concat(xs, a, b, "right_first", 0)


# PyTorch conventions ---------------------------------------------------------------------------
def test_torch_compile_fullgraph(kernel, device):
    torch._dynamo.reset()
    xs, a, b = _data(11, (10, 14), 3, 4, 5, 6, 2, device)

    def fn(x0, x1, a, b):
        return native.fused_kron_concat([x0, x1], a, b, "right_first", 4).square().sum()

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    grads = torch.autograd.grad(compiled(*xs, a, b), [*xs, a, b])
    expected = torch.autograd.grad(_reference(xs, a, b).square().sum(), [*xs, a, b])
    for grad, reference in zip(grads, expected):
        torch.testing.assert_close(grad, reference, rtol=1e-10, atol=1e-10)


def test_torch_func_grad(kernel, device):
    xs, a, b = _data(7, (10, 14), 3, 4, 5, 6, 1, device)
    da, db = torch.func.grad(
        lambda a, b: native.fused_kron_concat(xs, a, b, "left_first", 3).square().sum(),
        argnums=(0, 1),
    )(a.detach(), b.detach())
    expected = torch.autograd.grad(_reference(xs, a, b).square().sum(), [a, b])
    torch.testing.assert_close(da, expected[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(db, expected[1], rtol=1e-10, atol=1e-10)


def test_torch_func_vmap(kernel, device):
    xs, a, b = _data(6, (10, 14), 3, 4, 5, 6, 1, device)
    batch = [torch.randn(4, *x.shape, dtype=F64, device=device) for x in xs]
    a_batch = torch.randn(4, *a.shape, dtype=F64, device=device)
    with torch.no_grad():
        # inputs batched, factors shared: one call with the batch folded into the rows
        y = torch.func.vmap(
            lambda x0, x1: native.fused_kron_concat([x0, x1], a, b, "right_first", 4)
        )(*batch)
        expected = torch.stack([_reference([u, v], a, b) for u, v in zip(*batch)])
        torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-10)
        # factors batched too
        y = torch.func.vmap(
            lambda x0, x1, a: native.fused_kron_concat([x0, x1], a, b, "right_first", 4)
        )(*batch, a_batch)
        expected = torch.stack([_reference([u, v], a_i, b) for u, v, a_i in zip(*batch, a_batch)])
        torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-10)


# build, load, fall back -------------------------------------------------------------------------
def test_failed_build_warns_once_and_falls_back(monkeypatch):
    def no_compiler():
        raise RuntimeError("Error building extension 'hmfusion_native': c++: not found\nmore")

    monkeypatch.delenv("HMFUSION_NATIVE", raising=False)
    monkeypatch.setattr(extension, "_STATE", "unloaded")
    monkeypatch.setattr(extension, "_build", no_compiler)
    monkeypatch.setattr(native, "_use_native", native._use_native)  # (the fixture's)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert native.available() is False
        assert native.available() is False
        xs, a, b = _data(5, (10, 14), 3, 4, 5, 6, 1, torch.device("cpu"))
        y = native.fused_kron_concat(xs, a, b, "right_first", 2)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "\n" not in messages[0]
    assert "c++: not found" in messages[0] and "pure-PyTorch" in messages[0]
    assert native.status() == "failed"
    torch.testing.assert_close(y, _reference(xs, a, b), rtol=1e-10, atol=1e-10)


def test_each_source_text_builds_in_its_own_cache_folder(tmp_path):
    # Checkouts with different sources shared one folder: each rebuilt over the other, and an
    # interrupted build's lock made every later process wait forever.
    first, second, copy = tmp_path / "a.cpp", tmp_path / "b.cpp", tmp_path / "c.cpp"
    first.write_text("// one\n")
    second.write_text("// two\n")
    copy.write_text("// one\n")
    names = [extension._extension_name(path) for path in (first, second, copy)]
    assert names[0] != names[1] and names[0] == names[2]
    assert all(name.startswith("hmfusion_native_") and name.isidentifier() for name in names)


def _cache(monkeypatch, tmp_path):
    """An empty extensions cache; returns (build folder, library path)."""
    from torch.utils import cpp_extension

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.delenv("HMFUSION_NATIVE", raising=False)
    monkeypatch.setattr(extension, "_STATE", "unloaded")
    name = extension._extension_name(*extension._SOURCES)
    folder = Path(cpp_extension._get_build_directory(name, verbose=False))
    return folder, folder / f"{name}.so"


def _foreign_library():
    """A real shared library that registers no hmfusion operator."""
    return Path(torch.__file__).parent / "lib" / "libtorch_global_deps.so"


def _recorded(library, source):
    """`source` copied to `library` with the record a build writes."""
    library.write_bytes(source.read_bytes())
    extension._record(library).write_text(json.dumps(extension._fingerprint(library)))


def _no_compiler(name, folder, library):
    raise RuntimeError("c++: not found")


def _fallback_warnings(call):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = call()
    return result, [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]


def test_a_truncated_library_is_never_loaded(monkeypatch, tmp_path):
    # Issue 21, case 4: a truncated cached .so killed every process with SIGBUS (train exit 135).
    folder, library = _cache(monkeypatch, tmp_path)
    _recorded(library, _foreign_library())
    library.write_bytes(library.read_bytes()[: library.stat().st_size // 2])  # truncated
    loaded = []
    monkeypatch.setattr(torch.ops, "load_library", loaded.append)
    monkeypatch.setattr(extension, "_registered", lambda: False)
    monkeypatch.setattr(extension, "_compile", _no_compiler)  # the rebuild it goes to instead
    result, messages = _fallback_warnings(native.available)
    assert result is False and loaded == []
    assert len(messages) == 1 and "c++: not found" in messages[0] and "\n" not in messages[0]
    assert native.status() == "failed"


TRUNCATED_IN_A_PROCESS = """
from hmfusion.ops import build
def no_compiler(name, folder, library):
    raise RuntimeError("c++: not found")
build._compile = no_compiler
build._registered = lambda: False
print(build.available(), build.status())
"""


def test_a_truncated_library_does_not_kill_the_process(monkeypatch, tmp_path):
    # Issue 21, case 4, as found: the process itself must survive (no SIGBUS, exit 0).
    import subprocess
    import sys

    folder, library = _cache(monkeypatch, tmp_path)
    _recorded(library, _foreign_library())
    with open(library, "r+b") as stream:
        stream.truncate(library.stat().st_size // 3)
    process = subprocess.run(
        [sys.executable, "-c", TRUNCATED_IN_A_PROCESS],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert process.returncode == 0, process.stderr
    assert process.stdout.split() == ["False", "failed"]
    assert "native kernel unavailable (c++: not found)" in process.stderr


def test_a_library_that_registers_no_operator_falls_back(monkeypatch, tmp_path):
    # Issue 21, case 5: a cached .so that loads but registers no operator: status said
    # "loaded" and every forward raised an AttributeError traceback.
    folder, library = _cache(monkeypatch, tmp_path)
    _recorded(library, _foreign_library())
    monkeypatch.setattr(extension, "_registered", lambda: False)
    result, messages = _fallback_warnings(native.available)
    assert result is False and native.status() == "failed"
    assert len(messages) == 1 and "registers no operator" in messages[0]
    monkeypatch.setattr(native, "_use_native", native._use_native)
    xs, a, b = _data(5, (10, 14), 3, 4, 5, 6, 1, torch.device("cpu"))
    y = native.fused_kron_concat(xs, a, b, "right_first", 2)
    torch.testing.assert_close(y, _reference(xs, a, b), rtol=1e-10, atol=1e-10)


def _dead_pid():
    import subprocess
    import sys

    process = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(process.stdout)


def test_a_stale_lock_beside_a_built_library_costs_nothing(monkeypatch, tmp_path):
    # Issue 21, case 6: a stale lock beside an already-built .so made each process wait 300 s
    # (316 s measured), and was never removed; an ordinary load must take no lock at all.
    import socket

    folder, library = _cache(monkeypatch, tmp_path)
    _recorded(library, _foreign_library())
    (folder / "lock").write_text("")  # torch's, left by a SIGKILL during a load
    owner = {"pid": _dead_pid(), "host": socket.gethostname(), "started": "1"}
    (folder / "hmfusion.lock").write_text(json.dumps(owner))
    before = sorted(p.name for p in folder.iterdir())
    state = {"registered": False}
    monkeypatch.setattr(extension, "_registered", lambda: state["registered"])
    monkeypatch.setattr(torch.ops, "load_library", lambda path: state.update(registered=True))

    def no_lock(lock, timeout):
        raise AssertionError("an ordinary load took the build lock")

    monkeypatch.setattr(extension, "_build_lock", no_lock)
    started = time.monotonic()
    assert native.available() is True and native.status() == "loaded"
    assert time.monotonic() - started < 10
    assert sorted(p.name for p in folder.iterdir()) == before  # nothing written


def test_a_build_lock_whose_owner_is_gone_is_broken(tmp_path):
    # Issue 21, case 6: the lock records its owner and is broken when the owner is gone.
    import socket

    lock = tmp_path / "hmfusion.lock"
    lock.write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "started": "1"}))
    started = time.monotonic()
    with extension._build_lock(lock, timeout=30):
        owner = json.loads(lock.read_text())
    assert time.monotonic() - started < 5
    assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
    assert owner["started"] == files._start_time(os.getpid())
    assert not lock.exists()


def test_a_dead_owner_is_recognised_even_when_its_pid_is_reused():
    import socket

    me = {"pid": os.getpid(), "host": socket.gethostname()}
    assert not files._owner_gone({**me, "started": files._start_time(os.getpid())})
    if files._start_time(os.getpid()) != "unknown":
        assert files._owner_gone({**me, "started": "0"})  # another process, same pid
    assert files._owner_gone({**me, "pid": _dead_pid(), "started": "0"})
    assert not files._owner_gone({**me, "host": "elsewhere", "started": "0"})


@pytest.mark.skipif(files.fcntl is None, reason="no advisory file locks here")
def test_a_live_build_is_waited_for_then_falls_back_with_its_owner_named(tmp_path, capsys):
    import fcntl

    lock = tmp_path / "hmfusion.lock"
    holder = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_EX)
    os.write(holder, json.dumps({"pid": 12345, "host": "builder"}).encode())
    try:
        with pytest.raises(RuntimeError, match="held by pid 12345 on builder for over 0 s"):
            with extension._build_lock(lock, timeout=0.2):
                pass
        assert "waiting for pid 12345 on builder" in capsys.readouterr().err
        threading.Timer(0.3, lambda: fcntl.flock(holder, fcntl.LOCK_UN)).start()
        with extension._build_lock(lock, timeout=30):  # goes on once the other build is done
            assert json.loads(lock.read_text())["pid"] == os.getpid()
    finally:
        os.close(holder)


def test_the_first_build_says_so_in_one_line_and_records_it(monkeypatch, tmp_path, capsys):
    # Issue 19, item 4: the first use was a silent ~19 s wait.
    from torch.utils import cpp_extension

    folder, library = _cache(monkeypatch, tmp_path)
    (folder / "lock").write_text("")  # torch's own, left by a killed build: ours is held
    library.write_bytes(b"truncated")
    state = {"registered": False}

    def fake_build(name, sources, build_directory, **kwargs):
        assert not (folder / "lock").exists() and not library.exists()
        library.write_bytes(_foreign_library().read_bytes())
        state["registered"] = True

    monkeypatch.setattr(cpp_extension, "load", fake_build)
    monkeypatch.setattr(extension, "_registered", lambda: state["registered"])
    assert native.available() is True
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "building the compiled operator once" in lines[0]
    assert "20-60 s" in lines[0] and str(folder) in lines[0]
    assert extension._verified(library)
    assert not (folder / "hmfusion.lock").exists()


@pytest.mark.parametrize("value", ["0", "false", "False", "no", "OFF", " off "])
def test_environment_switch_disables_the_build(monkeypatch, value):
    # Issue 21, case 7: HMFUSION_NATIVE=false or off still built; only 0 disabled it.
    def must_not_build():
        raise AssertionError(f"HMFUSION_NATIVE={value!r} must not build")

    monkeypatch.setattr(extension, "_STATE", "unloaded")
    monkeypatch.setattr(extension, "_build", must_not_build)
    monkeypatch.setenv("HMFUSION_NATIVE", value)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert native.available() is False
    assert native.status() == "disabled"


@pytest.mark.parametrize("value", ["", "1", "true", "YES", "on"])
def test_environment_switch_on(monkeypatch, value):
    built = []
    monkeypatch.setattr(extension, "_STATE", "unloaded")
    monkeypatch.setattr(extension, "_build", lambda: built.append(value))
    monkeypatch.setattr(extension, "_registered", lambda: True)
    monkeypatch.setenv("HMFUSION_NATIVE", value)
    assert native.available() is True and built == [value]


def test_an_unknown_environment_switch_warns_and_stays_off(monkeypatch):
    monkeypatch.setattr(extension, "_STATE", "unloaded")
    monkeypatch.setattr(extension, "_build", lambda: pytest.fail("built"))
    monkeypatch.setenv("HMFUSION_NATIVE", "disable")
    result, messages = _fallback_warnings(native.available)
    assert result is False and native.status() == "disabled"
    assert len(messages) == 1 and "HMFUSION_NATIVE='disable' is not one of" in messages[0]


class _Outputs(TorchDispatchMode):
    """Records every operator and the largest tensor any of them produces."""

    def __init__(self):
        super().__init__()
        self.largest, self.ops = 0, set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops.add(str(func))
        for value in torch.utils._pytree.tree_leaves(out):
            if isinstance(value, torch.Tensor):
                self.largest = max(self.largest, value.numel())
        return out


def test_the_weight_is_never_formed(kernel, device):
    # n·D = 64·256 = 16384 elements; the activations are 8·256
    xs, a, b = _data(8, (128, 128), 8, 16, 8, 16, 1, device)
    with _Outputs() as mode:
        native.fused_kron_concat(xs, a, b, "right_first", 3).square().sum().backward()
    assert mode.largest < 64 * 256 // 4, mode.largest
    if kernel in ("native", "tiled"):
        assert any(
            f"hmfusion_native.{'tiled_' * (kernel == 'tiled')}forward" in op for op in mode.ops
        )


def test_loading_leaves_the_environment_alone(monkeypatch):
    before = dict(os.environ)
    monkeypatch.setattr(extension, "_STATE", "unloaded")
    native.available()
    assert dict(os.environ) == before


# the modules themselves ----------------------------------------------------------------------
PERF_MODULES = [kernels, fused, native, bench, benchmark_report]


@pytest.mark.parametrize("module", [kernels, fused], ids=lambda m: m.__name__)
def test_docstring_examples_run(module):
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tests = [t for t in finder.find(module, globs=vars(module).copy()) if t.examples]
    assert tests, "no examples found"
    for test in tests:
        runner.run(test)
    assert runner.failures == 0


@pytest.mark.parametrize("module", PERF_MODULES, ids=lambda m: m.__name__)
def test_module_is_well_under_500_lines(module):
    assert len(Path(module.__file__).read_text(encoding="utf-8").splitlines()) < 450


REAL_LOAD = """
from hmfusion.ops import build
print(build.available(), build.status())
"""


@pytest.mark.slow
def test_a_truncated_build_is_rebuilt_and_works(monkeypatch, tmp_path):
    # Issue 21, case 4, end to end: the real build, truncated, is rebuilt instead of mapped.
    from deadline import run_with_deadline

    if not native.available():
        pytest.skip(f"compiled kernel unavailable (status {native.status()})")
    folder, library = _cache(monkeypatch, tmp_path)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    argv = [__import__("sys").executable, "-c", REAL_LOAD]
    first = run_with_deadline(argv, timeout=900, what="the first build", env=env)
    assert first.stdout.split() == ["True", "loaded"], first.stderr
    assert "building the compiled operator once" in first.stderr
    with open(library, "r+b") as stream:
        stream.truncate(library.stat().st_size // 2)
    second = run_with_deadline(argv, timeout=900, what="the rebuild", env=env)
    assert second.returncode == 0 and second.stdout.split() == ["True", "loaded"], second.stderr
    assert extension._verified(library)
    third = run_with_deadline(argv, timeout=300, what="an ordinary load", env=env)
    assert third.stdout.split() == ["True", "loaded"] and third.stderr == ""
