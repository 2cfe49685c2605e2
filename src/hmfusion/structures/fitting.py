"""Fitting factors to a dense weight: truncated SVD, nearest Kronecker product, hard impute.

Pure functions of tensors (no modules, no state), used by `from_linear` through each
structure's `fit`. Each is optimal in the Frobenius norm where stated.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hmfusion.ops import kernels

__all__ = ["IMPUTE_MAX_ITERATIONS", "fit_kronecker", "nearest_kronecker", "truncated_svd"]

#: Hard impute (padded fits) runs at most this many rounds, stopping earlier once the fitted W
#: changes by less than 100 ulps of its norm.
IMPUTE_MAX_ITERATIONS = 1000


def _svd_dtype(matrix: Tensor) -> Tensor:
    """`matrix` in a dtype that `torch.linalg.svd` supports (at least float32)."""
    return matrix if matrix.dtype in (torch.float32, torch.float64) else matrix.float()


def truncated_svd(matrix: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """Balanced factors of the best rank-`rank` approximation: `matrix ≈ U Vᵀ`.

    `U = U_r Σ_r^{1/2}` and `V = V_r Σ_r^{1/2}` from the SVD (Eckart–Young: optimal in
    Frobenius norm). Columns beyond the matrix's rank are zero.

    Args:
        matrix: a floating (rows, cols) tensor; 16-bit inputs are computed in float32.
        rank: the number of columns of U and V (a positive int).

    Returns:
        U of shape (rows, rank) and V of shape (cols, rank), in float32 or float64.

    Example:
        >>> u, v = truncated_svd(torch.ones(3, 4, dtype=torch.float64), 2)
        >>> torch.allclose(u @ v.T, torch.ones(3, 4, dtype=torch.float64))
        True
    """
    matrix = _svd_dtype(matrix)
    u, sigma, vh = torch.linalg.svd(matrix, full_matrices=False)
    k = min(rank, sigma.shape[0])
    root = sigma[:k].sqrt()
    left = matrix.new_zeros(matrix.shape[0], rank)
    right = matrix.new_zeros(matrix.shape[1], rank)
    left[:, :k] = u[:, :k] * root
    right[:, :k] = vh[:k].transpose(0, 1) * root
    return left, right


def nearest_kronecker(weight: Tensor, p: int, q: int, terms: int = 1) -> tuple[Tensor, Tensor]:
    """The sum of `terms` Kronecker products closest to `weight` (Van Loan & Pitsianis).

    Rearranging the (p·s)×(q·t) weight so that block (i, j) becomes row i·q + j gives
    R = Σ_τ vec(A_τ) vec(B_τ)ᵀ, so the best pairs are R's top singular pairs, split evenly
    (optimal in Frobenius norm). Pairs beyond the rank of R are zero.

    Args:
        weight: a floating (p·s, q·t) tensor; 16-bit inputs are computed in float32.
        p: rows of each A_τ; it must divide weight's rows.
        q: columns of each A_τ; it must divide weight's columns.
        terms: the number of Kronecker products.

    Returns:
        A of shape (terms, p, q) and B of shape (terms, s, t).

    Example:
        >>> a, b = torch.randn(2, 3, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
        >>> fa, fb = nearest_kronecker(torch.kron(a, b), 2, 3)
        >>> torch.allclose(torch.kron(fa[0], fb[0]), torch.kron(a, b))
        True
    """
    w = _svd_dtype(weight)
    s, t = w.shape[0] // p, w.shape[1] // q
    r = w.reshape(p, s, q, t).permute(0, 2, 1, 3).reshape(p * q, s * t)
    u, sigma, vh = torch.linalg.svd(r, full_matrices=False)
    used = min(terms, sigma.shape[0])
    root = sigma[:used].sqrt()
    a = w.new_zeros(terms, p * q)
    b = w.new_zeros(terms, s * t)
    a[:used] = (u[:, :used] * root).transpose(0, 1)
    b[:used] = vh[:used] * root[:, None]
    return a.reshape(terms, p, q), b.reshape(terms, s, t)


def fit_kronecker(
    weight: Tensor, p: int, q: int, s: int, t: int, terms: int = 1
) -> tuple[Tensor, Tensor]:
    """Nearest Σ_τ A_τ ⊗ B_τ whose top-left block is `weight` (hard impute when padded).

    When the n×D `weight` is smaller than p·s × q·t, the padded entries are missing: they are
    filled with the current fit, alternating with
    [`nearest_kronecker`][hmfusion.structures.fitting.nearest_kronecker] (the error on the given
    block never
    increases), until the fit changes by less than 100 ulps of its norm or after
    [`IMPUTE_MAX_ITERATIONS`][hmfusion.structures.fitting.IMPUTE_MAX_ITERATIONS] rounds. Without
    padding this
    is one [`nearest_kronecker`][hmfusion.structures.fitting.nearest_kronecker].

    Args:
        weight: a floating (n, D) tensor with n ≤ p·s and D ≤ q·t.
        p: rows of each A_τ.
        q: columns of each A_τ.
        s: rows of each B_τ.
        t: columns of each B_τ.
        terms: the number of Kronecker products.

    Returns:
        A of shape (terms, p, q) and B of shape (terms, s, t), in float32 or float64.

    Example:
        >>> full = torch.kron(torch.randn(2, 3, dtype=torch.float64),
        ...                   torch.randn(4, 4, dtype=torch.float64))
        >>> a, b = fit_kronecker(full[:7, :10], 2, 3, 4, 4)
        >>> bool((torch.kron(a[0], b[0])[:7, :10] - full[:7, :10]).norm() < 1e-6)
        True
    """
    n, D = weight.shape
    w = torch.nn.functional.pad(_svd_dtype(weight), (0, q * t - D, 0, p * s - n))
    a, b = nearest_kronecker(w, p, q, terms)
    if (n, D) == (p * s, q * t):
        return a, b
    given = torch.zeros_like(w, dtype=torch.bool)
    given[:n, :D] = True
    tolerance = 100 * torch.finfo(w.dtype).eps
    fitted = kernels.kron_weight(a, b)
    for _ in range(IMPUTE_MAX_ITERATIONS):
        a, b = nearest_kronecker(torch.where(given, w, fitted), p, q, terms)
        previous, fitted = fitted, kernels.kron_weight(a, b)
        if (fitted - previous).norm() <= tolerance * fitted.norm():
            break
    return a, b
