"""Library-level bad input (issue 10): one TypeError/ValueError naming the argument, each case
written as the failure was found (the old behaviour in a comment)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hmfusion import (
    DualLPHMConcatFusion,
    HMConcatFusion,
    LowRankConcatFusion,
    RandomMatrixConcatFusion,
)


def _module():
    return HMConcatFusion([4, 6], n=4, p=2, q=2)


# inputs of another layout: were a RuntimeError deep in the kernels ---------------------------
@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_sparse_input_is_refused_naming_the_input():
    xs = [torch.randn(3, 4).to_sparse(), torch.randn(3, 6)]
    with pytest.raises(
        TypeError,
        match=r"input 0 must be a dense \(strided\) tensor, got a "
        r"torch.sparse_coo tensor",
    ):
        _module()(xs)
    xs = [torch.randn(3, 4), torch.randn(3, 6).to_sparse_csr()]
    with pytest.raises(
        TypeError,
        match=r"input 1 must be a dense \(strided\) tensor, got a "
        r"torch.sparse_csr tensor",
    ):
        _module()(xs)


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors is in prototype")
def test_nested_input_is_refused_naming_the_input():
    nested = torch.nested.nested_tensor([torch.randn(2, 4), torch.randn(3, 4)])
    with pytest.raises(
        TypeError,
        match=r"input 0 must be a dense \(strided\) tensor, got a "
        r"nested tensor",
    ):
        _module()([nested, torch.randn(3, 6)])


# devices: device="cuda" on a CPU build raised AssertionError, device=3 a RuntimeError --------
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a build or machine without CUDA")
def test_cuda_device_without_cuda_is_a_value_error():
    with pytest.raises(
        ValueError,
        match=r"device='cuda' is not available: this PyTorch build "
        r"or machine has no cuda device",
    ):
        HMConcatFusion([8], p=2, device="cuda")


@pytest.mark.skipif(torch.accelerator.is_available(), reason="needs a machine without accelerator")
def test_integer_device_without_accelerator_is_a_value_error():
    with pytest.raises(ValueError, match=r"device=3 is not a usable device"):
        LowRankConcatFusion([8], device=3)


@pytest.mark.parametrize(
    "device,error,match",
    [
        ("bogus", ValueError, r"device='bogus' is not a usable device"),
        (
            True,
            TypeError,
            r"device must be a torch.device, a string such as 'cpu' or 'cuda:0', or "
            r"an int, got bool",
        ),
        (1.5, TypeError, r"device must be a torch.device.*got float"),
    ],
)
def test_device_of_the_wrong_kind(device, error, match):
    with pytest.raises(error, match=match):
        HMConcatFusion([8], p=2, device=device)


def test_usable_devices_still_work():
    assert HMConcatFusion([8], p=2, device="cpu").A.device.type == "cpu"
    assert HMConcatFusion([8], p=2, device=torch.device("meta")).A.device.type == "meta"


# from_linear of a weight with NaN or inf: was torch.linalg.LinAlgError ----------------------
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize(
    "cls,kwargs",
    [
        (HMConcatFusion, dict(p=2)),
        (DualLPHMConcatFusion, dict(p=2, r=1)),
        (LowRankConcatFusion, dict(r=2)),
    ],
)
def test_from_linear_refuses_non_finite_weights(cls, kwargs, bad):
    linear = torch.nn.Linear(8, 4)
    with torch.no_grad():
        linear.weight[1, 2] = bad
    with pytest.raises(
        ValueError,
        match=r"linear.weight must be finite, but it holds NaN or "
        r"infinite values",
    ):
        cls.from_linear(linear, [8], **kwargs)


def test_from_linear_refuses_a_non_finite_bias():
    linear = torch.nn.Linear(8, 4)
    with torch.no_grad():
        linear.bias[0] = float("nan")
    with pytest.raises(ValueError, match=r"linear.bias must be finite"):
        HMConcatFusion.from_linear(linear, [8], p=2)


# pad=np.bool_(True) said "must be a bool, got bool" --------------------------------------
def test_numpy_bools_are_bools():
    module = HMConcatFusion([5, 5], p=2, pad=np.bool_(True), bias=np.bool_(False))
    assert module.pad is True and module.bias is None
    with pytest.raises(TypeError, match=r"pad must be a bool \(True or False\), got int 1"):
        HMConcatFusion([5, 5], p=2, pad=1)
    with pytest.raises(TypeError, match=r"pad must be a bool \(True or False\), got ndarray"):
        HMConcatFusion([5, 5], p=2, pad=np.array([True]))


# seed=2**70 raised "Overflow when unpacking long long" without naming seed ------------------
@pytest.mark.parametrize("seed", [2**64, 2**70, -(2**63) - 1])
def test_seed_out_of_range_names_seed(seed):
    with pytest.raises(
        ValueError,
        match=rf"seed must lie in \[-2\*\*63, 2\*\*64 - 1\] \(a "
        rf"64-bit seed\), got {seed}",
    ):
        RandomMatrixConcatFusion([4, 4], r=2, seed=seed)


@pytest.mark.parametrize("seed", [2**64 - 1, -(2**63), 0])
def test_seed_at_the_ends_of_the_range_works(seed):
    a = RandomMatrixConcatFusion([4, 4], r=2, seed=seed)
    b = RandomMatrixConcatFusion([4, 4], r=2, seed=seed)
    assert torch.equal(a.R1, b.R1)


# plan(m) accepted -5, 1.7 and True ----------------------------------------------------------
@pytest.mark.parametrize(
    "m,error,match",
    [
        (-5, ValueError, r"m must be a non-negative int, got -5"),
        (1.7, TypeError, r"m must be a non-negative int, got float 1.7"),
        (True, TypeError, r"m must be a non-negative int, got bool True"),
        ("8", TypeError, r"m must be a non-negative int, got str '8'"),
    ],
)
def test_plan_checks_m(m, error, match):
    with pytest.raises(error, match=match):
        _module().plan(m)


def test_plan_accepts_zero_and_numpy_ints():
    module = _module()
    assert module.plan(0) == module.plan(np.int64(0))
    with pytest.raises(TypeError, match=r"requires_grad must be a bool"):
        module.plan(4, requires_grad="yes")


# a factor too large to allocate was the allocator's RuntimeError ---------------------------
def test_unallocatable_factor_is_a_value_error_naming_the_sizes():
    with pytest.raises(
        ValueError,
        match=r"n=281474976710656, D=8: factor B of shape "
        r"\(35184372088832, 1\) \(35184372088832 values\) "
        r"cannot be allocated",
    ):
        HMConcatFusion([8], 2**48)
