"""Fitting as pure functions: truncated SVD, nearest Kronecker product, hard impute — each
against a plain float64 construction (torch.kron, explicit loops, torch.linalg.svdvals)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from hmfusion.structures.fitting import fit_kronecker, nearest_kronecker, truncated_svd

F64 = torch.float64


def _rearranged(w: torch.Tensor, p: int, q: int) -> torch.Tensor:
    """R[(i, j), (k, l)] = W[i·s + k, j·t + l], written out with loops."""
    s, t = w.shape[0] // p, w.shape[1] // q
    out = torch.empty(p * q, s * t, dtype=w.dtype)
    for i in range(p):
        for j in range(q):
            out[i * q + j] = w[i * s : (i + 1) * s, j * t : (j + 1) * t].reshape(-1)
    return out


@given(st.integers(1, 6), st.integers(1, 6), st.integers(1, 7), st.integers(0, 2**20))
def test_truncated_svd_is_the_best_rank_r_approximation(rows, cols, rank, seed):
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(rows, cols, dtype=F64, generator=g)
    u, v = truncated_svd(m, rank)
    assert u.shape == (rows, rank) and v.shape == (cols, rank)
    sigma = torch.linalg.svdvals(m)
    # Eckart–Young: the error is the norm of the singular values left out
    assert (u @ v.T - m).norm().item() == pytest.approx(sigma[rank:].norm().item(), abs=1e-10)
    # balanced: both factors carry the same column norms
    torch.testing.assert_close(u.norm(dim=0), v.norm(dim=0))


@pytest.mark.parametrize("terms", [1, 2, 3, 7])
def test_nearest_kronecker_is_optimal(terms):
    torch.manual_seed(terms)
    p, q, s, t = 2, 3, 4, 2
    w = torch.randn(p * s, q * t, dtype=F64)
    a, b = nearest_kronecker(w, p, q, terms)
    assert a.shape == (terms, p, q) and b.shape == (terms, s, t)
    fitted = sum(torch.kron(a[j], b[j]) for j in range(terms))
    sigma = torch.linalg.svdvals(_rearranged(w, p, q))
    assert (fitted - w).norm().item() == pytest.approx(sigma[terms:].norm().item(), abs=1e-10)


def test_nearest_kronecker_recovers_an_exact_product():
    torch.manual_seed(0)
    a, b = torch.randn(3, 2, dtype=F64), torch.randn(2, 5, dtype=F64)
    fa, fb = nearest_kronecker(torch.kron(a, b), 3, 2)
    torch.testing.assert_close(torch.kron(fa[0], fb[0]), torch.kron(a, b))


def test_fit_kronecker_without_padding_is_nearest_kronecker():
    torch.manual_seed(0)
    w = torch.randn(6, 8, dtype=F64)
    for got, want in zip(fit_kronecker(w, 2, 4, 3, 2, 2), nearest_kronecker(w, 2, 4, 2)):
        assert torch.equal(got, want)


def test_hard_impute_recovers_a_padded_product_and_never_worsens():
    torch.manual_seed(0)
    full = torch.kron(torch.randn(2, 3, dtype=F64), torch.randn(4, 4, dtype=F64))  # 8×12
    given = full[:7, :10]
    a, b = fit_kronecker(given, 2, 3, 4, 4)
    fitted = torch.kron(a[0], b[0])[:7, :10]
    assert (fitted - given).norm() < 1e-8 * given.norm()
    # one round of nearest_kronecker on the zero-padded block is worse than the imputed fit
    padded = torch.nn.functional.pad(given, (0, 2, 0, 1))
    a0, b0 = nearest_kronecker(padded, 2, 3)
    assert (torch.kron(a0[0], b0[0])[:7, :10] - given).norm() > (fitted - given).norm()


def test_low_precision_inputs_are_fitted_in_float32():
    w = torch.randn(4, 6, dtype=torch.bfloat16)
    u, v = truncated_svd(w, 2)
    a, b = fit_kronecker(w, 2, 3, 2, 2)
    assert u.dtype == v.dtype == a.dtype == b.dtype == torch.float32


# issue 21: meta tensors --------------------------------------------------------------------------
def test_from_linear_on_the_meta_device_builds_an_unfitted_member():
    # Issue 21: from_linear with meta tensors was a traceback (it accepted them before).
    from hmfusion import HMConcatFusion

    linear = torch.nn.Linear(16, 8, device="meta")
    fusion = HMConcatFusion.from_linear(linear, [8, 8], p=2)
    assert all(t.is_meta for t in fusion.parameters()) and fusion.n == 8
    assert fusion([torch.empty(3, 8, device="meta")] * 2).shape == (3, 8)


def test_load_flat_parameters_refuses_a_meta_vector():
    # Issue 21: load_flat_parameters with a meta tensor was "Cannot copy out of meta tensor".
    from hmfusion import HMConcatFusion

    fusion = HMConcatFusion([8, 8], 8, p=2)
    before = fusion.flat_parameters().detach().clone()
    with pytest.raises(ValueError, match="w is a meta tensor: it holds no values to load"):
        fusion.load_flat_parameters(torch.empty(fusion.num_parameters, device="meta"))
    torch.testing.assert_close(fusion.flat_parameters().detach(), before)
    meta = HMConcatFusion([8, 8], 8, p=2, device="meta")
    meta.load_flat_parameters(torch.empty(meta.num_parameters, device="meta"))  # meta into meta
