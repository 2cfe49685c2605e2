"""HMConcatFusion: the core operator W = A ⊗ B, checked against torch.kron in float64."""

from __future__ import annotations

import io
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from hmfusion import HMConcatFusion
from registry import RecordShapes, rel_err

F64 = torch.float64


@st.composite
def hm_cases(draw):
    """Random (dims, n, p, q, lead) with p | n and q | D, q often equal to p."""
    p = draw(st.integers(1, 4))
    q = p if draw(st.booleans()) else draw(st.integers(1, 4))
    s = draw(st.integers(1, 4))
    t = draw(st.integers(1, 4))
    n, D = p * s, q * t
    k = draw(st.integers(1, min(4, D)))
    cuts = (
        sorted(draw(st.lists(st.integers(1, D - 1), min_size=k - 1, max_size=k - 1, unique=True)))
        if k > 1
        else []
    )
    dims = [b - a for a, b in zip([0] + cuts, cuts + [D])]
    lead = tuple(draw(st.lists(st.integers(1, 3), max_size=3)))
    bias = draw(st.booleans())
    seed = draw(st.integers(0, 2**31 - 1))
    return dims, n, p, q, lead, bias, seed


def kron_reference(module: HMConcatFusion, xs):
    """Y = cat(xs) @ kron(A, B).T (+ bias), built plainly."""
    y = torch.cat(xs, dim=-1) @ torch.kron(module.A, module.B).T
    return y if module.bias is None else y + module.bias


@given(hm_cases())
def test_forward_and_gradients_match_kron_reference(case):
    dims, n, p, q, lead, bias, seed = case
    torch.manual_seed(seed)
    module = HMConcatFusion(dims, n=n, p=p, q=q, bias=bias, dtype=F64)
    xs = [torch.randn(*lead, d, dtype=F64, requires_grad=True) for d in dims]

    y = module(xs)
    expected = kron_reference(module, xs)
    assert y.shape == (*lead, n)
    assert rel_err(y, expected) < 1e-10

    g = torch.randn_like(y)
    params = [module.A, module.B] + ([module.bias] if bias else [])
    got = torch.autograd.grad(y, xs + params, g)
    want = torch.autograd.grad(expected, xs + params, g)
    for a, b in zip(got, want):
        assert rel_err(a, b) < 1e-10


def test_weight_is_the_kronecker_product():
    module = HMConcatFusion([6, 10], n=8, p=2, q=4, dtype=F64)
    assert module.weight.shape == (8, 16)
    assert torch.equal(module.weight, torch.kron(module.A, module.B))


def test_large_shape_against_kron():
    """The largest shape checked against torch.kron: n = D = 1024, p = q = 32."""
    torch.manual_seed(0)
    module = HMConcatFusion([256] * 4, n=1024, p=32, dtype=F64, bias=True)
    xs = [torch.randn(64, 256, dtype=F64) for _ in range(4)]
    assert rel_err(module(xs), kron_reference(module, xs)) < 1e-10
    # Unlike tinybig 0.2.1's fabrication (rank 1 at this shape), A ⊗ B has full rank.
    assert torch.linalg.matrix_rank(module.weight) == 1024


def test_gradcheck():
    torch.manual_seed(1)
    module = HMConcatFusion([3, 5], n=4, p=2, q=4, bias=True, dtype=F64)
    xs = [torch.randn(2, 3, d, dtype=F64, requires_grad=True) for d in (3, 5)]

    def fn(x0, x1, a, b, bias):
        return torch.func.functional_call(module, {"A": a, "B": b, "bias": bias}, ([x0, x1],))

    inputs = (
        *xs,
        module.A.detach().clone().requires_grad_(),
        module.B.detach().clone().requires_grad_(),
        module.bias.detach().clone().requires_grad_(),
    )
    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


def test_parameters_and_counts():
    module = HMConcatFusion([32, 32], n=64, p=8, q=4)
    assert module.A.shape == (8, 4) and module.B.shape == (8, 16)
    assert module.num_parameters == 8 * 4 + 64 * 64 // 32 == 160
    assert module.compression == pytest.approx(64 * 64 / 160)
    assert sum(p.numel() for p in module.parameters()) == 160
    assert HMConcatFusion([32, 32], n=64, p=8, q=4, bias=True).bias.shape == (64,)
    assert module.bias is None


def test_q_defaults_to_p_and_n_to_common_width():
    module = HMConcatFusion([16, 16, 16], p=4)
    assert (module.n, module.p, module.q) == (16, 4, 4)
    assert module.A.shape == (4, 4) and module.B.shape == (4, 12)


def test_extra_repr_names_the_structure():
    text = repr(HMConcatFusion([8, 8], p=2, bias=True))
    assert "dims=[8, 8]" in text and "n=8" in text and "p=2" in text and "q=2" in text
    assert "l=" in text and "bias=True" in text


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("p,q", [(16, 16), (8, 32), (32, 8)])
def test_forward_and_backward_never_form_the_weight(p, q, bias):
    # n·D = 2^18 elements, while every activation and factor is far smaller.
    n = D = 512
    m = 8
    module = HMConcatFusion([128] * 4, n=n, p=p, q=q, bias=bias)
    xs = [torch.randn(m, 128, requires_grad=True) for _ in range(4)]
    with RecordShapes() as rec:
        y = module(xs)
        y.square().sum().backward()
    assert rec.ops, "the dispatch mode saw no operator"
    assert rec.largest < n * D // 8, f"an intermediate of {rec.largest} elements appeared"


def test_init_variance_matches_linear_default():
    torch.manual_seed(0)
    D = 2048
    module = HMConcatFusion([1024, 1024], n=2048, p=64)
    w = module.weight.detach()
    target = 1.0 / (3 * D)  # nn.Linear: U(-1/√D, 1/√D)
    assert w.var().item() == pytest.approx(target, rel=0.15)
    assert abs(w.mean().item()) < 0.05 * math.sqrt(target)
    # "split evenly": both factors carry the same variance.
    assert module.A.var().item() == pytest.approx(module.B.var().item(), rel=0.15)
    linear = torch.nn.Linear(D, 2048)
    assert w.var().item() == pytest.approx(linear.weight.var().item(), rel=0.15)


def test_reset_parameters_reinitialises():
    torch.manual_seed(0)
    module = HMConcatFusion([8, 8], p=2, bias=True)
    before = [t.detach().clone() for t in module.parameters()]
    module.reset_parameters()
    assert all(not torch.equal(a, b) for a, b in zip(before, module.parameters()))


# dtypes, autocast, state_dict, device -------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtypes(dtype):
    module = HMConcatFusion([4, 4], n=8, p=2, dtype=dtype, bias=True)
    assert all(t.dtype == dtype for t in module.parameters())
    y = module([torch.randn(3, 4, dtype=dtype), torch.randn(3, 4, dtype=dtype)])
    assert y.dtype == dtype


def test_bfloat16_under_autocast():
    torch.manual_seed(0)
    module = HMConcatFusion([32, 32], n=64, p=8, bias=True)
    xs = [torch.randn(16, 32) for _ in range(2)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = module(xs)
    assert y.dtype == torch.bfloat16
    assert rel_err(y.float(), module(xs)) < 3e-2
    y.float().sum().backward()
    assert module.A.grad is not None and module.A.grad.dtype == torch.float32


def test_bfloat16_module():
    module = HMConcatFusion([8, 8], p=4, dtype=torch.bfloat16)
    y = module([torch.randn(2, 8, dtype=torch.bfloat16)] * 2)
    assert y.dtype == torch.bfloat16


def test_state_dict_round_trip():
    torch.manual_seed(0)
    module = HMConcatFusion([6, 6], n=6, p=3, q=2, bias=True)
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    buffer.seek(0)
    fresh = HMConcatFusion([6, 6], n=6, p=3, q=2, bias=True)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    xs = [torch.randn(5, 6), torch.randn(5, 6)]
    assert torch.equal(fresh(xs), module(xs))
    assert set(module.state_dict()) == {"A", "B", "bias"}


def test_meta_device_factory_and_to():
    module = HMConcatFusion([8, 8], p=2, device="meta")
    assert module.A.device.type == "meta"
    y = module([torch.empty(3, 8, device="meta")] * 2)
    assert y.shape == (3, 8) and y.device.type == "meta"


def test_leading_dimensions_none_and_many():
    module = HMConcatFusion([4, 4], p=2, dtype=F64)
    x0, x1 = torch.randn(4, dtype=F64), torch.randn(4, dtype=F64)
    assert module([x0, x1]).shape == (4,)
    xs = [torch.randn(2, 3, 1, 5, 4, dtype=F64) for _ in range(2)]
    assert module(xs).shape == (2, 3, 1, 5, 4)
    assert rel_err(module(xs), kron_reference(module, xs)) < 1e-10
    empty = [torch.randn(0, 4, dtype=F64) for _ in range(2)]
    assert module(empty).shape == (0, 4)


def test_tuple_input_and_single_input():
    module = HMConcatFusion([12], p=3, q=4, dtype=F64)
    x = torch.randn(5, 12, dtype=F64)
    assert rel_err(module((x,)), x @ torch.kron(module.A, module.B).T) < 1e-10


# torch.compile ------------------------------------------------------------------------------
def _compile_check(backend):
    torch._dynamo.reset()
    torch.manual_seed(0)
    module = HMConcatFusion([16, 16], n=32, p=4, bias=True)
    compiled = torch.compile(module, fullgraph=True, backend=backend)
    xs = [torch.randn(8, 16, requires_grad=True) for _ in range(2)]
    y = compiled(xs)
    torch.testing.assert_close(y, module(xs), rtol=1e-5, atol=1e-5)
    y.sum().backward()
    assert module.A.grad is not None and xs[0].grad is not None


def test_compile_fullgraph_traces_without_graph_breaks():
    # fullgraph=True raises on any graph break; the eager backend checks the tracing quickly.
    _compile_check("eager")
    _compile_check("aot_eager")


@pytest.mark.slow
def test_compile_fullgraph_inductor():
    _compile_check("inductor")


# bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (
            dict(dims=[8, 8], p=3),
            ValueError,
            r"p=3 must divide n=8; valid choices are \[1, 2, 4, 8\]",
        ),
        (
            dict(dims=[8, 8], n=8, p=2, q=5),
            ValueError,
            r"q=5 must divide D=16; valid choices are \[1, 2, 4, 8, 16\]",
        ),
        (dict(dims=[9, 9], p=2, q=3), ValueError, r"p=2 must divide n=9"),
        (dict(dims=[8, 8], p=0), ValueError, r"p must be a positive int, got 0"),
        (dict(dims=[8, 8], p=-2), ValueError, r"p must be a positive int"),
        (dict(dims=[8, 8], p=2.0), TypeError, r"p must be a positive int, got float"),
        (dict(dims=[8, 8], p="2"), ValueError, r"p must be a positive int or 'auto'"),
        (dict(dims=[8, 8], p=True), TypeError, r"p must be a positive int, got bool"),
        (dict(dims=[8, 8], p=2, q=0), ValueError, r"q must be a positive int"),
        (dict(dims=[], p=1), ValueError, r"dims must name at least one input width"),
        (dict(dims=8, p=1), TypeError, r"dims must be a list or tuple"),
        (dict(dims=[8, 0], p=1), ValueError, r"dims\[1\] must be a positive int, got 0"),
        (dict(dims=[8, -1], p=1), ValueError, r"dims\[1\] must be a positive int"),
        (dict(dims=[8, 2.5], p=1), TypeError, r"dims\[1\] must be a positive int"),
        (dict(dims=[8, 4], p=2), ValueError, r"n is required when the input widths differ"),
        (dict(dims=[8, 8], n=0, p=1), ValueError, r"n must be a positive int"),
        (dict(dims=[8, 8], p=2, terms=0), ValueError, r"terms must be a positive int"),
        (dict(dims=[8, 8], p=2, pad="yes"), TypeError, r"pad must be a bool"),
        (dict(dims=[8, 8], p=2, bias=1), TypeError, r"bias must be a bool"),
    ],
)
def test_bad_constructor_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        HMConcatFusion(**kwargs)


def test_divisor_error_suggests_padding():
    with pytest.raises(ValueError, match="pad=True"):
        HMConcatFusion([5, 5], p=2)


@pytest.fixture
def module():
    return HMConcatFusion([4, 6], n=4, p=2, q=2)


@pytest.mark.parametrize(
    "make_xs,error,match",
    [
        (lambda: torch.randn(3, 10), TypeError, r"expected a list or tuple of 2 tensors"),
        (lambda: [torch.randn(3, 4)], ValueError, r"expected 2 inputs \(dims=\[4, 6\]\), got 1"),
        (lambda: [torch.randn(3, 4)] * 3, ValueError, r"expected 2 inputs"),
        (
            lambda: [torch.randn(3, 4), torch.randn(3, 5)],
            ValueError,
            r"input 1 has last dimension 5 \(shape \(3, 5\)\), expected dims\[1\] = 6",
        ),
        (
            lambda: [torch.randn(3, 6), torch.randn(3, 4)],
            ValueError,
            r"input 0 has last dimension 6",
        ),
        (
            lambda: [torch.randn(3, 4), torch.randn(2, 6)],
            ValueError,
            r"inputs must share their leading shape: input 0 has \(3,\), input 1 has \(2,\)",
        ),
        (lambda: [torch.randn(3, 4), torch.randn(1, 6)], ValueError, r"leading shape"),
        (
            lambda: [torch.ones(3, 4, dtype=torch.long), torch.randn(3, 6)],
            TypeError,
            r"input 0 must be a floating-point tensor, got dtype torch.int64",
        ),
        (
            lambda: [torch.randn(3, 4), [1.0] * 6],
            TypeError,
            r"input 1 must be a torch.Tensor, got list",
        ),
        (
            lambda: [torch.randn(3, 4, dtype=F64), torch.randn(3, 6, dtype=F64)],
            TypeError,
            r"input 0 has dtype torch.float64, but the dtype of the parameters is torch.float32",
        ),
        (
            lambda: [torch.randn(3, 4), torch.randn(3, 6, device="meta")],
            ValueError,
            r"input 1 is on device meta, but the device of the parameters is cpu",
        ),
        (lambda: [torch.tensor(1.0), torch.randn(6)], ValueError, r"input 0 has a scalar"),
    ],
)
def test_bad_inputs(module, make_xs, error, match):
    with pytest.raises(error, match=match):
        module(make_xs())


def test_plan_is_visible_on_the_module(simulated_cpu):
    module = HMConcatFusion([1024] * 4, 4096, p=64)
    plan = module.plan(4096)
    assert plan.method == "fused" and plan.order in ("right_first", "left_first")
    assert plan == module.structure.plan(4096, module.dims)
    # p = q = 1: W = a·B, factoring saves nothing, so over a large batch the planner forms W
    # (at 64 rows the tiled loops' lower call overhead wins: 232 µs against 273 µs measured)
    assert HMConcatFusion([64, 64], 64, p=1).plan(4096).method == "materialize"
