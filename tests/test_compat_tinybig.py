"""hmfusion.compat.tinybig: tinybig 0.2.1's interface over the hmfusion family.

Numerics against vectors recorded by running tinybig 0.2.1 in float64 (tests/data), and float64
references written here with torch.kron and explicit matmuls; then the interface, processing
functions and configs.
"""

from __future__ import annotations

import inspect
import json
import pathlib
import re
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hmfusion
from hmfusion.compat import tinybig
from hmfusion.compat.tinybig import (
    dual_lphm_parameterized_concatenation_fusion,
    from_config,
    hm_parameterized_concatenation_fusion,
    lowrank_parameterized_concatenation_fusion,
    lphm_parameterized_concatenation_fusion,
    parameterized_concatenation_fusion,
    random_matrix_adaption_parameterized_concatenation_fusion,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]
GOLDEN = json.loads((ROOT / "tests" / "data" / "tinybig-0.2.1-fusion.json").read_text())
CASES = GOLDEN["cases"]
TOL = {"atol": 1e-12, "rtol": 0.0}

CLASSES = [
    parameterized_concatenation_fusion,
    lowrank_parameterized_concatenation_fusion,
    hm_parameterized_concatenation_fusion,
    lphm_parameterized_concatenation_fusion,
    dual_lphm_parameterized_concatenation_fusion,
    random_matrix_adaption_parameterized_concatenation_fusion,
]
KRONECKER_CLASSES = {
    "hm_parameterized_concatenation_fusion",
    "lphm_parameterized_concatenation_fusion",
    "dual_lphm_parameterized_concatenation_fusion",
}


def t64(value) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    return torch.tensor(value, dtype=torch.float64)


def case_id(case) -> str:
    kwargs = ",".join(f"{k}={v}" for k, v in case["kwargs"].items())
    return f"{case['class'].replace('_parameterized_concatenation_fusion', '')}[{kwargs}]"


def build(case, layout: str):
    cls = getattr(tinybig, case["class"])
    f = cls(**case["kwargs"], layout=layout, dtype=torch.float64, own_parameters=True)
    if "random_A" in case:
        f.set_random_matrices(t64(case["random_A"]), t64(case["random_B"]))
    return f


def kronecker_reference(case) -> torch.Tensor:
    """The documented W (n×D), cut from the same slices of w as tinybig, built plainly."""
    kind, kwargs, n = case["class"], case["kwargs"], case["n"]
    w = t64(case["w"])[0]
    D = sum(kwargs["dims"])
    p = kwargs.get("p")
    q = kwargs.get("q", p)
    r = kwargs.get("r")
    pieces = iter(())

    def take(*shape):
        return next(pieces).reshape(shape)

    if kind == "parameterized_concatenation_fusion":
        return w.reshape(n, D)
    if kind == "lowrank_parameterized_concatenation_fusion":
        pieces = iter(w.split([n * r, r * D]))
        return take(n, r) @ take(r, D)
    if kind == "random_matrix_adaption_parameterized_concatenation_fusion":
        lambda1, lambda2 = w.split([n, r])
        R1, R2 = t64(case["random_A"]), t64(case["random_B"])
        return torch.diag(lambda1) @ R1 @ torch.diag(lambda2) @ R2.T
    s, t = n // p, D // q
    if kind == "hm_parameterized_concatenation_fusion":
        pieces = iter(w.split([p * q, s * t]))
        return torch.kron(take(p, q), take(s, t))
    if kind == "lphm_parameterized_concatenation_fusion":
        pieces = iter(w.split([p * q, s * r, r * t]))
        return torch.kron(take(p, q), take(s, r) @ take(r, t))
    pieces = iter(w.split([p * r, r * q, s * r, r * t]))  # dual-LPHM
    return torch.kron(take(p, r) @ take(r, q), take(s, r) @ take(r, t))


# golden vectors ---------------------------------------------------------------------------------
def test_golden_file_is_what_the_tests_assume():
    assert GOLDEN["source"] == "tinybig 0.2.1" and GOLDEN["dtype"] == "float64"
    assert {case["class"] for case in CASES} == {cls.__name__ for cls in CLASSES}
    for case in CASES:  # W is recorded n×D, and tinybig's output is cat(x) Wᵀ
        W = t64(case["W"])
        assert W.shape == (case["n"], sum(case["kwargs"]["dims"]))
        y = torch.cat([t64(x) for x in case["x"]], -1) @ W.T
        torch.testing.assert_close(y, t64(case["output"]), **TOL)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_legacy_layout_reproduces_tinybig(case):
    f = build(case, "tinybig-0.2.1")
    assert f.calculate_l() == case["l"] and f.n == case["n"]
    xs = [t64(x) for x in case["x"]]
    torch.testing.assert_close(f(x=xs, w=t64(case["w"])), t64(case["output"]), **TOL)
    f.fusion.load_flat_parameters(t64(case["w"]))
    torch.testing.assert_close(f.fusion.weight, t64(case["W"]), **TOL)
    torch.testing.assert_close(f(xs), t64(case["output"]), **TOL)  # own parameters


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_kronecker_layout_computes_the_documented_operator(case):
    f = build(case, "kronecker")
    W = kronecker_reference(case)
    xs = [t64(x) for x in case["x"]]
    y = f(x=xs, w=t64(case["w"]))
    torch.testing.assert_close(y, torch.cat(xs, -1) @ W.T, **TOL)
    f.fusion.load_flat_parameters(t64(case["w"]))
    torch.testing.assert_close(f.fusion.weight, W, **TOL)
    if case["class"] not in KRONECKER_CLASSES:  # same in both layouts
        torch.testing.assert_close(W, t64(case["W"]), **TOL)
        torch.testing.assert_close(y, t64(case["output"]), **TOL)


def test_tinybig_differs_from_the_kronecker_product_exactly_when_s_and_q_exceed_one():
    for case in CASES:
        if case["class"] not in KRONECKER_CLASSES:
            continue
        p = case["kwargs"]["p"]
        q = case["kwargs"].get("q", p)
        agree = torch.allclose(kronecker_reference(case), t64(case["W"]), atol=1e-12)
        assert agree == (case["n"] // p == 1 or q == 1), case_id(case)


@pytest.mark.parametrize("layout", ["kronecker", "tinybig-0.2.1"])
def test_rank_of_W(layout):
    # The n = D = 1024, p = q = 32 at a size that runs fast: s·t = D, so tinybig's W is
    # a·bᵀ (rank 1) while A ⊗ B has rank rank(A)·rank(B) = 64.
    torch.manual_seed(0)
    f = hm_parameterized_concatenation_fusion(
        8, 8, n=64, dims=[32, 32], layout=layout, dtype=torch.float64, own_parameters=True
    )
    rank = torch.linalg.matrix_rank(f.fusion.weight).item()
    assert rank == (64 if layout == "kronecker" else 1)


@pytest.mark.parametrize("kwargs", [dict(p=3, q=2, n=3), dict(p=2, q=1, n=4)])
def test_layouts_agree_when_s_or_q_is_one(kwargs):
    legacy = hm_parameterized_concatenation_fusion(
        **kwargs, dims=[2, 4], layout="tinybig-0.2.1", dtype=torch.float64, own_parameters=True
    )
    kron = hm_parameterized_concatenation_fusion(
        **kwargs, dims=[2, 4], dtype=torch.float64, own_parameters=True
    )
    w = torch.randn(legacy.calculate_l(), dtype=torch.float64)
    legacy.fusion.load_flat_parameters(w)
    kron.fusion.load_flat_parameters(w)
    torch.testing.assert_close(legacy.fusion.weight, kron.fusion.weight, **TOL)


@pytest.mark.parametrize("layout", ["kronecker", "tinybig-0.2.1"])
def test_gradients_flow_into_external_w(layout):
    case = next(
        c
        for c in CASES
        if c["class"] == "lphm_parameterized_concatenation_fusion" and c["kwargs"]["n"] == 8
    )
    f = build(case, layout)
    xs = [t64(x) for x in case["x"]]
    w = nn.Parameter(t64(case["w"]))
    f(x=xs, w=w).square().sum().backward()
    w_ref = t64(case["w"]).requires_grad_()
    ref_case = dict(case, w=w_ref)
    if layout == "kronecker":
        W = kronecker_reference(ref_case)
    else:  # tinybig: outer product of vec(A) and vec(S Tᵀ), reshaped row-major
        p, q, r, n = 2, 4, 1, 8
        s, t = n // p, 8 // q
        a, S, T = w_ref[0].split([p * q, s * r, r * t])
        W = torch.outer(a, (S.reshape(s, r) @ T.reshape(r, t)).reshape(-1)).reshape(n, 8)
    (torch.cat(xs, -1) @ W.T).square().sum().backward()
    torch.testing.assert_close(w.grad, w_ref.grad, **TOL)
    assert not any(p.grad is not None for p in f.parameters())  # external w: module untouched


# interface ----------------------------------------------------------------------------------------
def test_positional_order_of_tinybigs_signatures():
    leading = {
        parameterized_concatenation_fusion: ["n", "dims", "name", "require_parameters"],
        lowrank_parameterized_concatenation_fusion: ["r", "name", "n", "dims"],
        hm_parameterized_concatenation_fusion: ["p", "q", "name", "n", "dims"],
        lphm_parameterized_concatenation_fusion: ["r", "p", "q", "name", "n", "dims"],
        dual_lphm_parameterized_concatenation_fusion: ["r", "p", "q", "name", "n", "dims"],
        random_matrix_adaption_parameterized_concatenation_fusion: ["r", "name", "n", "dims"],
    }
    common = {
        "require_parameters",
        "preprocess_functions",
        "postprocess_functions",
        "preprocess_function_configs",
        "postprocess_function_configs",
        "device",
    }
    for cls, names in leading.items():
        parameters = inspect.signature(cls).parameters
        positional = [
            name
            for name, p in parameters.items()
            if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        ]
        assert positional == names, cls.__name__
        assert common <= set(parameters), cls.__name__

    by_position = [
        parameterized_concatenation_fusion(4, [4, 4], "dense", True),
        lowrank_parameterized_concatenation_fusion(3, "lr", 4, [4, 4]),
        hm_parameterized_concatenation_fusion(2, 4, "hm", 4, [4, 4]),
        lphm_parameterized_concatenation_fusion(1, 2, 4, "lphm", 4, [4, 4]),
        dual_lphm_parameterized_concatenation_fusion(1, 2, 4, "dual", 4, [4, 4]),
        random_matrix_adaption_parameterized_concatenation_fusion(3, "rm", 4, [4, 4], seed=5),
    ]
    by_keyword = [
        parameterized_concatenation_fusion(n=4, dims=[4, 4], name="dense"),
        lowrank_parameterized_concatenation_fusion(r=3, name="lr", n=4, dims=[4, 4]),
        hm_parameterized_concatenation_fusion(p=2, q=4, name="hm", n=4, dims=[4, 4]),
        lphm_parameterized_concatenation_fusion(r=1, p=2, q=4, name="lphm", n=4, dims=[4, 4]),
        dual_lphm_parameterized_concatenation_fusion(r=1, p=2, q=4, name="dual", n=4, dims=[4, 4]),
        random_matrix_adaption_parameterized_concatenation_fusion(
            r=3, name="rm", n=4, dims=[4, 4], seed=5
        ),
    ]
    for a, b in zip(by_position, by_keyword):
        assert a.to_config() == b.to_config()


def test_constructor_defaults():
    dims = [4, 4]
    assert lowrank_parameterized_concatenation_fusion(dims=dims).r == 2
    assert random_matrix_adaption_parameterized_concatenation_fusion(dims=dims).r == 2
    hm = hm_parameterized_concatenation_fusion(p=2, dims=dims)
    assert (hm.p, hm.q, hm.n) == (2, 2, 4)  # q defaults to p, n to the common width
    for cls in CLASSES:
        f = cls(
            **(
                {"p": 2}
                if cls.__name__.startswith("hm")
                else {"r": 1, "p": 2}
                if "lphm" in cls.__name__
                else {}
            ),
            dims=dims,
        )
        assert f.get_name() == cls.__name__
        assert f.require_parameters is True and f.device == torch.device("cpu")
        assert f.layout == "kronecker"
        assert f.get_dims() == dims and f.get_num() == 2 and f.calculate_n() == 4
    with pytest.raises(TypeError, match="p"):
        hm_parameterized_concatenation_fusion(dims=dims)  # p is required, as in tinybig
    with pytest.raises(TypeError, match="r"):
        lphm_parameterized_concatenation_fusion(p=2, dims=dims)
    with pytest.raises(TypeError, match="r"):
        dual_lphm_parameterized_concatenation_fusion(p=2, dims=dims)
    with pytest.raises(TypeError, match="unexpected keyword"):
        parameterized_concatenation_fusion(dims=dims, bogus=1)  # tinybig swallows these


def test_hmfusion_modules_hold_the_parameters():
    f = hm_parameterized_concatenation_fusion(p=2, n=4, dims=[4, 4], own_parameters=True)
    assert isinstance(f.fusion, hmfusion.HMConcatFusion)
    assert set(f.state_dict()) == {"fusion.A", "fusion.B"}
    f = lphm_parameterized_concatenation_fusion(
        2, 2, n=4, dims=[4, 4], layout="tinybig-0.2.1", own_parameters=True
    )
    assert set(f.state_dict()) == {"fusion.A", "fusion.S", "fusion.T"}


def test_missing_n_or_dims_raise_value_error():
    with pytest.raises(ValueError, match="dims is required"):
        parameterized_concatenation_fusion(n=4)
    with pytest.raises(ValueError, match="n is required"):
        parameterized_concatenation_fusion(dims=[4, 2])
    assert parameterized_concatenation_fusion(n=3, dims=[4, 2]).calculate_l() == 18


def test_tinybigs_asserts_are_precise_errors():
    with pytest.raises(ValueError, match=r"p=3 must divide n=4; valid choices are \[1, 2, 4\]"):
        hm_parameterized_concatenation_fusion(p=3, n=4, dims=[4, 4])
    with pytest.raises(ValueError, match="q=3 must divide D=8"):
        lphm_parameterized_concatenation_fusion(1, 2, 3, n=4, dims=[4, 4])
    with pytest.raises(ValueError, match=r"q \(defaulting to p\)=4 must divide D=6"):
        dual_lphm_parameterized_concatenation_fusion(1, 4, n=4, dims=[3, 3])
    with pytest.raises(ValueError, match="must divide"):
        hm_parameterized_concatenation_fusion(p=3, n=4, dims=[4, 4], layout="tinybig-0.2.1")
    with pytest.raises(TypeError, match="name must be a str"):
        parameterized_concatenation_fusion(dims=[4], name=3)
    with pytest.raises(TypeError, match="require_parameters must be a bool"):
        parameterized_concatenation_fusion(dims=[4], require_parameters="yes")
    with pytest.raises(ValueError, match="layout must be one of"):
        parameterized_concatenation_fusion(dims=[4], layout="tinybig")
    with pytest.raises(TypeError, match="layout must be a str"):
        parameterized_concatenation_fusion(dims=[4], layout=None)
    with pytest.raises(TypeError, match="device must be"):
        parameterized_concatenation_fusion(dims=[4], device=0)
    with pytest.raises(TypeError, match="r must be a positive int"):
        lowrank_parameterized_concatenation_fusion(r=1.5, dims=[4])
    with pytest.raises(ValueError, match="pad=True needs layout='kronecker'"):
        hm_parameterized_concatenation_fusion(3, n=4, dims=[4], pad=True, layout="tinybig-0.2.1")
    with pytest.raises(TypeError, match="pad must be a bool"):
        hm_parameterized_concatenation_fusion(2, n=4, dims=[4], pad=1, layout="tinybig-0.2.1")
    assert hm_parameterized_concatenation_fusion(3, n=4, dims=[4], pad=True).calculate_l() > 0


def test_get_dim_bounds():
    f = parameterized_concatenation_fusion(n=2, dims=[3, 5, 7])
    assert [f.get_dim(i) for i in range(3)] == [3, 5, 7]
    for index in (3, -1):  # tinybig lets index == len(dims) through to an IndexError
        with pytest.raises(ValueError, match="out of bounds"):
            f.get_dim(index)
    with pytest.raises(TypeError, match="index must be an int"):
        f.get_dim("0")


def test_calculate_l_ignores_its_arguments():
    f = hm_parameterized_concatenation_fusion(p=4, n=16, dims=[8, 8])
    length = 4 * 4 + 4 * 4
    assert f.calculate_l() == f.calculate_l(n=1, D=2) == f.calculate_l(7, 9) == length
    assert f.calculate_n([1, 2]) == 16


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_w_none_uses_the_modules_own_parameters_and_w_shapes(cls):
    kwargs = (
        {"p": 2}
        if cls.__name__.startswith("hm")
        else ({"r": 2, "p": 2} if "lphm" in cls.__name__ else {})
    )
    f = cls(**kwargs, n=4, dims=[2, 6], dtype=torch.float64, own_parameters=True)
    xs = [torch.randn(3, 5, 2, dtype=torch.float64), torch.randn(3, 5, 6, dtype=torch.float64)]
    w = f.fusion.flat_parameters().detach()
    y = f(xs)
    assert y.shape == (3, 5, 4)
    torch.testing.assert_close(f(x=xs, w=w), y, **TOL)  # (l,)
    torch.testing.assert_close(f(x=xs, w=w[None]), y, **TOL)  # (1, l), tinybig's
    torch.testing.assert_close(f(xs, w[None], "cpu"), y, **TOL)  # positional, with device
    with pytest.raises(ValueError, match=rf"w must have shape \({w.numel()},\)"):
        f(xs, w=w[:-1])
    with pytest.raises(TypeError, match="w must be a floating-point tensor"):
        f(xs, w=torch.ones(w.numel(), dtype=torch.long))


def test_input_errors():
    f = parameterized_concatenation_fusion(n=4, dims=[2, 4], own_parameters=True)
    for empty in ([], (), None):
        with pytest.raises(ValueError, match="the input x cannot be empty"):
            f(empty)
    with pytest.raises(ValueError, match="leading shape"):
        f([torch.randn(3, 2), torch.randn(4, 4)])
    with pytest.raises(ValueError, match=r"input 0 has last dimension 4 .* dims\[0\] = 2"):
        f([torch.randn(3, 4), torch.randn(3, 2)])  # same total D: tinybig accepts it silently
    with pytest.raises(ValueError, match="expected 2 inputs"):
        f([torch.randn(3, 2)])
    with pytest.raises(TypeError, match="expected a list or tuple"):
        f(torch.randn(3, 6))
    with pytest.raises(TypeError, match="dtype"):
        f([torch.randn(3, 2), torch.randn(3, 4)], w=torch.randn(24, dtype=torch.float64))


# random-matrix adaptation -----------------------------------------------------------------------
def test_random_matrices_are_seeded_persistent_buffers():
    make = random_matrix_adaption_parameterized_concatenation_fusion
    a = make(r=3, n=4, dims=[2, 2], seed=0, own_parameters=True)
    b = make(r=3, n=4, dims=[2, 2], seed=0, own_parameters=True)
    assert {"fusion.R1", "fusion.R2"} <= set(a.state_dict())
    assert all(not p.dtype.is_complex and p.shape in [(4,), (3,)] for p in a.parameters())
    torch.testing.assert_close(a.fusion.R1, b.fusion.R1)
    c = make(r=3, n=4, dims=[2, 2], seed=1, own_parameters=True)
    assert not torch.equal(a.fusion.R1, c.fusion.R1)

    R1, R2 = torch.randn(4, 3), torch.randn(4, 3)
    a.set_random_matrices(R1, R2)
    c.load_state_dict(a.state_dict())
    xs = [torch.randn(5, 2), torch.randn(5, 2)]
    torch.testing.assert_close(c(xs), a(xs))
    expected = (
        torch.cat(xs, -1)
        @ (torch.diag(a.fusion.lambda1) @ R1 @ torch.diag(a.fusion.lambda2) @ R2.T).T
    )
    torch.testing.assert_close(a(xs), expected)


def test_set_random_matrices_checks_them():
    f = random_matrix_adaption_parameterized_concatenation_fusion(r=2, n=3, dims=[2, 2])
    with pytest.raises(ValueError, match=r"R1 must have shape \(3, 2\)"):
        f.set_random_matrices(torch.randn(2, 3), torch.randn(4, 2))
    with pytest.raises(ValueError, match=r"R2 must have shape \(4, 2\)"):
        f.set_random_matrices(torch.randn(3, 2), torch.randn(2, 4))
    with pytest.raises(TypeError, match="R1 must be a floating-point"):
        f.set_random_matrices([[0.0] * 2] * 3, torch.randn(4, 2))


# pre/post-processing ----------------------------------------------------------------------------
def test_named_processing_functions_are_registered_modules_on_request():
    f = parameterized_concatenation_fusion(
        n=4,
        dims=[4, 4],
        preprocess_functions=["layer_norm", F.relu],
        postprocess_function_configs=[
            {
                "function_class": "torch.nn.LayerNorm",
                "function_parameters": {"normalized_shape": 4},
            },
            {"function_class": "dropout", "function_parameters": {"p": 0.5}},
        ],
        own_parameters=True,
        register_processing=True,
    )
    assert isinstance(f.postprocess_functions, nn.ModuleList)
    assert [type(m) for m in f.preprocess_functions] == [tinybig.LastDimLayerNorm, nn.ReLU]
    assert [type(m) for m in f.postprocess_functions] == [nn.LayerNorm, nn.Dropout]
    names = {name for name, _ in f.named_parameters()}
    assert {"postprocess_functions.0.weight", "postprocess_functions.0.bias"} <= names
    xs = [torch.randn(64, 4), torch.randn(64, 4)]
    f(xs).sum().backward()
    assert f.postprocess_functions[0].weight.grad is not None  # the norm trains
    f.eval()  # dropout off
    torch.testing.assert_close(f(xs), f(xs))
    manual = f.postprocess_functions[0](
        torch.cat([F.relu(F.layer_norm(x, (4,))) for x in xs], -1) @ f.fusion.W.T
    )
    torch.testing.assert_close(f(xs), manual)
    f.train()
    assert (f(xs) == 0).any()


def test_processing_is_the_same_for_equal_and_unequal_input_shapes():
    seen = []

    def record(x):
        seen.append(tuple(x.shape))
        return x * 2

    for dims in ([3, 3], [3, 5]):
        seen.clear()
        f = parameterized_concatenation_fusion(
            n=3, dims=dims, preprocess_functions=record, dtype=torch.float64, own_parameters=True
        )
        xs = [torch.randn(2, d, dtype=torch.float64) for d in dims]
        assert seen == []  # construction applies nothing
        y = f(xs)
        assert seen == [(2, d) for d in dims]  # one call per input, never a stack
        torch.testing.assert_close(y, torch.cat(xs, -1) @ (2 * f.fusion.W).T)


def test_processing_errors():
    with pytest.raises(ValueError, match="not an allowed processing function"):
        parameterized_concatenation_fusion(dims=[4], preprocess_functions="os.system")
    with pytest.raises(ValueError, match="not an allowed processing function"):
        parameterized_concatenation_fusion(dims=[4], preprocess_functions=["softsign"])
    with pytest.raises(ValueError, match="not both"):
        parameterized_concatenation_fusion(
            dims=[4],
            preprocess_functions="relu",
            preprocess_function_configs={"function_class": "relu"},
        )
    with pytest.raises(TypeError, match="invalid function_parameters for torch.nn.ReLU"):
        parameterized_concatenation_fusion(
            dims=[4],
            postprocess_function_configs={
                "function_class": "torch.nn.ReLU",
                "function_parameters": {"p": 1},
            },
        )
    with pytest.raises(TypeError, match="must be a callable"):
        parameterized_concatenation_fusion(dims=[4], preprocess_functions=[3])
    f = parameterized_concatenation_fusion(
        dims=[4, 4], preprocess_functions=lambda x: x[..., :2], own_parameters=True
    )
    with pytest.raises(
        ValueError,
        match=r"preprocess_functions changed input 0 from \(2, 4\) "
        r"torch.float32 to \(2, 2\) torch.float32",
    ):
        f([torch.randn(2, 4), torch.randn(2, 4)])
    f = parameterized_concatenation_fusion(
        dims=[4], preprocess_functions=lambda x: x.double(), own_parameters=True
    )
    with pytest.raises(ValueError, match=r"to \(2, 4\) torch.float64; they must keep"):
        f([torch.randn(2, 4)])
    f = parameterized_concatenation_fusion(dims=[4])
    with pytest.raises(
        TypeError,
        match="input 0 has dtype torch.float32, but the dtype of the "
        "flat vector w is torch.float64",
    ):
        f([torch.randn(2, 4)], w=torch.zeros(1, 16, dtype=torch.float64))


def test_dropout_callable_stops_dropping_in_eval():
    # tinybig applies F.dropout in training mode whatever the module's mode.
    f = parameterized_concatenation_fusion(
        dims=[8], preprocess_functions=F.dropout, own_parameters=True
    ).eval()
    x = [torch.ones(4, 8)]
    torch.testing.assert_close(f(x), x[0] @ f.fusion.W.T)


# configs -----------------------------------------------------------------------------------------
def _all_six():
    common = dict(n=8, dims=[4, 4], own_parameters=True)
    return [
        parameterized_concatenation_fusion(**common, preprocess_functions=["relu", "layer_norm"]),
        lowrank_parameterized_concatenation_fusion(r=3, **common),
        hm_parameterized_concatenation_fusion(
            p=2, q=4, **common, postprocess_functions=nn.LayerNorm(8)
        ),
        lphm_parameterized_concatenation_fusion(2, 4, **common, layout="tinybig-0.2.1"),
        dual_lphm_parameterized_concatenation_fusion(
            1, 2, name="mine", **common, postprocess_functions=nn.Dropout(0.25)
        ),
        random_matrix_adaption_parameterized_concatenation_fusion(r=3, seed=5, **common),
    ]


@pytest.mark.parametrize("index", range(6))
def test_config_round_trip(index):
    f = _all_six()[index]
    config = json.loads(json.dumps(f.to_config()))  # JSON-serializable
    assert set(config) == {"function_class", "function_parameters"}
    assert config["function_class"] == f"hmfusion.compat.tinybig.{type(f).__name__}"
    g = from_config(config)
    assert type(g) is type(f) and g.to_config() == config
    g.load_state_dict(f.state_dict())
    f.eval(), g.eval()
    xs = [torch.randn(3, 4), torch.randn(3, 4)]
    torch.testing.assert_close(g(xs), f(xs))


def test_config_holds_only_constructor_arguments():
    for f in _all_six():
        parameters = f.to_config()["function_parameters"]
        assert set(parameters) <= set(inspect.signature(type(f)).parameters)


def test_config_accepts_tinybigs_class_paths_and_short_names():
    for name in (
        "tinybig.fusion.hm_parameterized_concatenation_fusion",
        "tinybig.fusion.parameterized_concatenation_fusion.hm_parameterized_concatenation_fusion",
        "hm_parameterized_concatenation_fusion",
    ):
        processing = [
            {"function_class": "torch.nn.functional.relu"},
            {"function_class": "torch.nn.modules.activation.GELU"},
        ]
        f = from_config(
            {
                "function_class": name,
                "function_parameters": {
                    "n": 4,
                    "dims": [4, 4],
                    "p": 2,
                    "preprocess_function_configs": processing,
                },
            }
        )
        assert isinstance(f, hm_parameterized_concatenation_fusion)
        assert [type(m) for m in f.preprocess_functions] == [nn.ReLU, nn.GELU]


def test_config_errors():
    with pytest.raises(ValueError, match="unknown function_parameters"):
        from_config(
            {
                "function_class": "parameterized_concatenation_fusion",
                "function_parameters": {"dims": [4], "bogus": None},
            }
        )
    with pytest.raises(ValueError, match="unknown keys"):
        from_config({"function_class": "parameterized_concatenation_fusion", "device": "cpu"})
    with pytest.raises(TypeError, match="config must be a dict"):
        from_config("parameterized_concatenation_fusion")
    with pytest.raises(TypeError, match="function_class.*must be a str"):
        from_config({"function_parameters": {}})
    f = parameterized_concatenation_fusion(dims=[4], postprocess_functions=lambda x: x)
    with pytest.raises(ValueError, match="cannot be written to a config"):
        f.to_config()


def test_config_with_a_bad_processing_argument_is_refused_when_loaded():
    """Found in the reliability review: GELU(approximate='evil') loaded, failing only at forward."""
    config = {
        "function_class": "parameterized_concatenation_fusion",
        "function_parameters": {
            "dims": [4],
            "preprocess_function_configs": [
                {"function_class": "torch.nn.GELU", "function_parameters": {"approximate": "evil"}}
            ],
        },
    }
    with pytest.raises(ValueError, match="approximate must be 'none' or 'tanh', got 'evil'"):
        from_config(config)


@pytest.fixture
def booby_trapped_module(tmp_path, monkeypatch):
    """A module on sys.path whose import writes a file (and which defines what configs name)."""
    marker = tmp_path / "imported.txt"
    name = "hmfusion_test_booby_trap"
    (tmp_path / f"{name}.py").write_text(
        f"open({str(marker)!r}, 'w').write('imported')\n"
        "class Fusion:\n    def __init__(self, **kwargs):\n        pass\n"
        "def relu(x):\n    return x\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name, marker
    sys.modules.pop(name, None)


def test_config_naming_other_code_raises_and_imports_nothing(booby_trapped_module):
    name, marker = booby_trapped_module
    configs = [
        {"function_class": f"{name}.Fusion", "function_parameters": {"dims": [4]}},
        {
            "function_class": "subprocess.run",
            "function_parameters": {"args": ["touch", str(marker)]},
        },
        {
            "function_class": "parameterized_concatenation_fusion",
            "function_parameters": {
                "dims": [4],
                "preprocess_function_configs": [{"function_class": f"{name}.relu"}],
            },
        },
        {
            "function_class": "parameterized_concatenation_fusion",
            "function_parameters": {
                "dims": [4],
                "postprocess_function_configs": {
                    "function_class": "os.system",
                    "function_parameters": {"command": "true"},
                },
            },
        },
        {
            "function_class": "parameterized_concatenation_fusion",
            "function_parameters": {"dims": [4], "preprocess_functions": [f"{name}.relu"]},
        },
    ]
    for config in configs:
        with pytest.raises(ValueError, match="not allowed|not an allowed"):
            from_config(config)
    assert not marker.exists()
    assert name not in sys.modules


# the documented scripts --------------------------------------------------------------------------
def _python_blocks(path: pathlib.Path, section: str | None = None) -> list[str]:
    text = path.read_text()
    if section is not None:
        start = text.find(section)
        if start < 0:
            return []
        end = text.find("\n## ", start + len(section))
        text = text[start:] if end < 0 else text[start:end]
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def _run(block: str, where: str) -> None:
    exec(compile(block, where, "exec"), {"__name__": "__doc_example__"})


def test_tinybig_users_script_runs(capsys):
    doc = ROOT / "README.md"
    script = _python_blocks(doc, "## Coming from tinybig")[0]
    import_lines = [line for line in script.splitlines() if "import" in line]
    assert import_lines[-1].startswith("from hmfusion.compat import tinybig as fusion")
    assert "# was: from tinybig import fusion" in import_lines[-1]
    _run(script, str(doc))
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in printed] == [cls.__name__ for cls in CLASSES]
    assert all(line.endswith("(4, 64)") for line in printed)


def test_documented_examples_run():
    # README.md's blocks run in test_readme.py; these are the ones in the longer doc.
    doc = ROOT / "docs" / "tinybig.md"
    for block in _python_blocks(doc, None):
        _run(block, str(doc))


def test_config_with_a_list_as_function_parameters_is_refused():
    with pytest.raises(
        TypeError, match=r"config\['function_parameters'\] must be a dict, got list"
    ):
        from_config(
            {"function_class": "hm_parameterized_concatenation_fusion", "function_parameters": []}
        )
    with pytest.raises(TypeError, match=r"function_parameters'\] must be a dict"):
        parameterized_concatenation_fusion(
            dims=[4],
            preprocess_function_configs={"function_class": "relu", "function_parameters": []},
        )


def test_device_follows_the_parameters():
    for own in (True, False):
        f = hm_parameterized_concatenation_fusion(n=4, dims=[4], p=2, own_parameters=own)
        f = f.to("meta")
        assert f.device == torch.device("meta") and f.device == "meta"
        assert f.to_config()["function_parameters"]["device"] == "meta"


@pytest.mark.parametrize(
    "params",
    [
        {"n": 10**18, "dims": [8], "p": 2},
        {"n": 10**20, "dims": [8], "p": 3},
        {"n": 10**7, "dims": [10**7], "p": 3, "q": 3, "pad": True},
    ],
)
def test_a_config_with_huge_sizes_builds_or_refuses_within_a_second(params):
    """Found in the reliability review: sizes from a config walked every divisor (35 s at
    n = 10**18, over a minute at 10**20, p=3); the issue's bound is one second."""
    import time

    config = {
        "function_class": "hm_parameterized_concatenation_fusion",
        "function_parameters": params,
    }
    started = time.monotonic()
    try:
        from_config(config)
    except ValueError as error:
        assert "too large" in str(error)
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize(
    "name",
    [
        "base",
        "basic",
        "config",
        "configkeys",
        "formula",
        "legacy",
        "metric",
        "parameterized",
        "processing",
        "random_matrix",
        "structured",
        "basic_fusion",
    ],
)
def test_docstring_examples_run(name):
    import doctest
    import importlib

    module = importlib.import_module(f"hmfusion.compat.tinybig.{name}")
    globs = {**vars(module), "torch": torch}
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    tests = [
        t
        for t in doctest.DocTestFinder().find(module, globs=globs)
        if t.examples and t.name.startswith(module.__name__)
    ]
    assert tests, "no examples found"
    for test in tests:
        runner.run(test)
    assert runner.failures == 0


# issue 21: one line, not a traceback ------------------------------------------------------------
def _hm_with(preprocess):
    return {
        "function_class": "hm_parameterized_concatenation_fusion",
        "function_parameters": {
            "n": 4,
            "dims": [4, 4],
            "p": 2,
            "preprocess_function_configs": [preprocess],
        },
    }


def test_config_with_a_huge_layer_norm_is_a_value_error():
    # Issue 21: LayerNorm(normalized_shape=10**12) in a config was an allocator traceback.
    layer_norm = {"function_class": "torch.nn.LayerNorm", "function_parameters": {}}
    layer_norm["function_parameters"]["normalized_shape"] = 10**12
    with pytest.raises(ValueError, match=r"torch.nn.LayerNorm cannot be built: .*allocate"):
        from_config(_hm_with(layer_norm))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a build or machine without CUDA")
@pytest.mark.parametrize("where", ["function_parameters", "config"])
def test_config_naming_an_absent_device_is_a_value_error(where):
    # Issue 21: device='cuda' on a CPU build was torch's AssertionError.
    layer_norm = {"function_class": "torch.nn.LayerNorm", "function_parameters": {"normalized_shape": 4}}
    (layer_norm["function_parameters"] if where == "function_parameters" else layer_norm)[
        "device"
    ] = "cuda"
    with pytest.raises(ValueError, match=r"device='cuda' is not available"):
        from_config(_hm_with(layer_norm))


def test_random_matrix_fusion_with_a_huge_r_is_a_value_error():
    # Issue 21: r=10**9 was an allocator traceback (the library class refused it cleanly).
    config = {
        "function_class": "random_matrix_adaption_parameterized_concatenation_fusion",
        "function_parameters": {"n": 4, "dims": [4, 4], "r": 10**9},
    }
    with pytest.raises(ValueError, match=r"r=1000000000 .* cannot be allocated; choose a smaller r"):
        from_config(config)
