"""The lean call path of a fusion module (issue 19 item 2, issue 22 item 3).

What `forward` remembers between calls (the input signatures that passed validation) must never
go stale: every change a user can make between two calls is made here, and each result is
compared with a plain float64 reference (`cat(xs) @ torch.kron(A, B)[:n, :D].T`). The length
of the path is checked by counting Python frames (deterministic), not by timing.
"""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from hmfusion import HMConcatFusion, LowRankConcatFusion, planner
from hmfusion.ops import native

F64 = torch.float64


def _reference(module: HMConcatFusion, xs: list[torch.Tensor]) -> torch.Tensor:
    """cat(xs) Wᵀ (+ bias) with W = Σ kron(A_j, B_j) cropped to n×D, in float64."""
    a, b = module.A.detach().double(), module.B.detach().double()
    a, b = (a, b) if a.dim() == 3 else (a[None], b[None])
    w = sum(torch.kron(a[j], b[j]) for j in range(a.shape[0]))[: module.n, : module.in_features]
    x = torch.cat([x.detach().double() for x in xs], -1)
    y = x @ w.T
    return y if module.bias is None else y + module.bias.detach().double()


def _inputs(m, dims, dtype=F64, lead=(), requires_grad=False, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randn(*lead, m, d, generator=generator, dtype=F64)
        .to(dtype)
        .requires_grad_(requires_grad)
        for d in dims
    ]


def _close(module, xs, y, tolerance=1e-10):
    expected = _reference(module, [x.reshape(-1, x.shape[-1]) for x in xs])
    got = y.detach().double().reshape(-1, module.n)
    torch.testing.assert_close(got, expected, rtol=tolerance, atol=tolerance)


def test_every_change_between_calls_is_seen():
    torch.manual_seed(0)
    module = HMConcatFusion([6, 10], n=8, p=2, q=4, bias=True, dtype=F64)
    dims = module.dims
    xs = _inputs(5, dims)
    _close(module, xs, module(xs))
    _close(module, xs, module(tuple(xs)))  # a tuple of the same tensors
    # another number of rows, leading dimensions, requires_grad on inputs and parameters
    for m, lead in ((7, ()), (1, ()), (3, (2,)), (0, ())):
        xs = _inputs(m, dims, lead=lead, seed=m)
        _close(module, xs, module(xs))
    xs = _inputs(9, dims, requires_grad=True)
    y = module(xs)
    _close(module, xs, y)
    y.sum().backward()
    assert all(x.grad is not None for x in xs)
    module.requires_grad_(False)
    _close(module, xs, module(xs))
    module.requires_grad_(True)
    # grad mode off and on
    with torch.no_grad():
        _close(module, xs, module(xs))
    # a forced plan inside its block, the planner's own outside it
    for method in ("materialize", "composite", "fused"):
        with planner.force_plan(method=method):
            _close(module, xs, module(xs))
    _close(module, xs, module(xs))
    # a parameter replaced, then values changed in place
    module.A = nn.Parameter(torch.randn(2, 4, dtype=F64))
    _close(module, xs, module(xs))
    with torch.no_grad():
        module.B.mul_(-2.0)
    _close(module, xs, module(xs))
    # train / eval
    module.eval()
    _close(module, xs, module(xs))
    module.train()
    _close(module, xs, module(xs))


def test_a_dtype_change_is_seen_both_ways():
    module = HMConcatFusion([6, 10], n=8, p=2, q=4, dtype=F64)
    xs = _inputs(5, module.dims)
    _close(module, xs, module(xs))
    module.to(torch.float32)
    with pytest.raises(TypeError, match="input 0 has dtype torch.float64"):
        module(xs)  # the float64 signature passed before, against float64 parameters
    xs32 = [x.float() for x in xs]
    y = module(xs32)
    assert y.dtype == torch.float32
    _close(module, xs32, y, tolerance=1e-4)
    module.to(F64)
    with pytest.raises(TypeError, match="input 0 has dtype torch.float32"):
        module(xs32)
    _close(module, xs, module(xs))


def test_autocast_is_part_of_the_signature():
    module = HMConcatFusion([8, 8], n=8, p=2)
    xs = _inputs(4, module.dims, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="use torch.autocast"):
        module(xs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = module(xs)  # bfloat16 inputs are allowed under autocast
    assert y.dtype == torch.bfloat16
    _close(module, xs, y, tolerance=5e-2)
    with pytest.raises(TypeError, match="use torch.autocast"):
        module(xs)  # and refused again outside it


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_a_passed_signature_excuses_nothing_new():
    module = HMConcatFusion([4, 6], n=4, p=2, q=2)
    xs = [torch.randn(3, 4), torch.randn(3, 6)]
    module(xs)
    with pytest.raises(ValueError, match="expected dims\\[1\\] = 6"):
        module([torch.randn(3, 4), torch.randn(3, 5)])
    with pytest.raises(ValueError, match="share their leading shape"):
        module([torch.randn(3, 4), torch.randn(2, 6)])
    with pytest.raises(ValueError, match="expected 2 inputs"):
        module(xs[:1])
    with pytest.raises(TypeError, match="dense \\(strided\\) tensor"):
        module([xs[0].to_sparse(), xs[1]])
    with pytest.raises(ValueError, match="is on device meta"):
        module([xs[0].to("meta"), xs[1]])
    with pytest.raises(TypeError, match="input 1 must be a torch.Tensor"):
        module([xs[0], xs[1].numpy()])
    # a tensor whose rows have the signature of a valid input list is still not a list
    module_square = HMConcatFusion([6, 6], n=6, p=2)
    module_square([torch.randn(3, 6), torch.randn(3, 6)])
    with pytest.raises(TypeError, match="expected a list or tuple"):
        module_square(torch.randn(2, 3, 6))


def test_signatures_are_remembered_per_module_and_bounded():
    module = HMConcatFusion([4, 4], n=4, p=2)
    for m in range(200):
        module([torch.randn(m, 4), torch.randn(m, 4)])
    assert 0 < len(module._checked) <= 64
    other = HMConcatFusion([4, 4], n=4, p=2)
    assert other._checked == {}


def test_other_members_use_the_same_path():
    module = LowRankConcatFusion([6, 10], n=8, r=2, dtype=F64)
    xs = _inputs(5, module.dims)
    expected = torch.cat(xs, -1) @ (module.U @ module.V.T).T
    for _ in range(2):
        torch.testing.assert_close(module(xs), expected)


# the path's length, in Python frames ----------------------------------------------------------
def _frames(fn):
    """The Python functions of hmfusion that fn enters, in order (profile hook)."""
    entered = []

    def hook(frame, event, arg):
        if event == "call" and "hmfusion" in frame.f_code.co_filename:
            entered.append(frame.f_code.co_name)

    sys.setprofile(hook)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return entered


def test_a_training_call_enters_few_python_frames():
    if not native.available():
        pytest.skip(f"compiled kernel unavailable (status {native.status()})")
    module = HMConcatFusion([64] * 6, n=64, p=8)
    xs = _inputs(128, module.dims, dtype=torch.float32, requires_grad=True)
    module(xs).sum().backward()  # the plan and the signature are known from here on
    y = None

    def forward():
        nonlocal y
        y = module(xs)

    forward_frames = _frames(forward)
    backward_frames = _frames(lambda: y.sum().backward())
    # forward: module → validation (remembered) → structure → planner → operator: 18 frames of
    # hmfusion's; 33 before the C++ autograd node, the remembered validation and the cuts in the
    # planner's path (and 6 more in the backward)
    assert len(forward_frames) <= 18, forward_frames
    assert "check_inputs" not in forward_frames  # the signature passed before
    assert "choose_plan" in forward_frames and "_choose" not in forward_frames  # read, not made
    assert backward_frames == []  # the autograd node is C++
