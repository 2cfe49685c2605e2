"""The members whose W is not Kronecker-structured: dense, low-rank and random-matrix
adaptation, one class each.

The math is documented once, in [`hmfusion.structures`][hmfusion.structures].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hmfusion import _validation as V
from hmfusion.fusion.base import ConcatFusion, Device, setup_sizes
from hmfusion.structures import DenseStructure, LowRankStructure, RandomMatrixStructure

__all__ = ["DenseConcatFusion", "LowRankConcatFusion", "RandomMatrixConcatFusion"]


class DenseConcatFusion(ConcatFusion):
    r"""Dense fusion: Y = cat(x_1, …, x_k) Wᵀ with W an unstructured n×D parameter.

    Equivalent to `nn.Linear(D, n)` on the concatenation (D = Σ n_i); the baseline of the
    family, with l = n·D trained values. W is the parameter itself.

    Args:
        dims: input widths n_1 … n_k, positive ints.
        n: output width; defaults to n_1 when all dims are equal.
        bias: add a learnable bias of shape (n,). Default: `False`.
        device: where the parameters are created, as in `nn.Linear`.
        dtype: the parameters' floating dtype, as in `nn.Linear`.

    Shape:
        - Input: a list or tuple of k tensors, input i of shape `(*, n_i)` with the same
          leading dimensions `*` (possibly none) for all.
        - Output: `(*, n)`.

    Attributes:
        W: the weight, shape (n, D), initialised from U(-1/√D, 1/√D) as `nn.Linear`'s.
        bias: shape (n,), from U(-1/√D, 1/√D), or `None`.

    Raises:
        TypeError: dims is not a list or tuple of ints; n is not an int; bias is not a bool;
            dtype is not a floating `torch.dtype`; device is of the wrong kind.
        ValueError: dims is empty or holds a size < 1 or > 2⁴⁸; n is missing while dims
            differ; device is not available; a factor cannot be allocated.

    Example:
        >>> fusion = DenseConcatFusion([3, 5], n=4)
        >>> fusion([torch.randn(2, 3), torch.randn(2, 5)]).shape
        torch.Size([2, 4])
    """

    def __init__(
        self,
        dims: Sequence[int],
        n: int | None = None,
        *,
        bias: bool = False,
        device: Device = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        dims, n_checked, D = setup_sizes(dims, n)
        super().__init__(dims, DenseStructure(n_checked, D), bias=bias, device=device, dtype=dtype)


class LowRankConcatFusion(ConcatFusion):
    r"""Low-rank fusion: Y = cat(x_1, …, x_k) Wᵀ with W = U Vᵀ (U: n×r, V: D×r).

    Applied as two thin matmuls `(X V) Uᵀ`; W is never formed. Flat w = [U | Vᵀ].

    Args:
        dims: input widths n_1 … n_k, positive ints.
        n: output width; defaults to n_1 when all dims are equal.
        r: the rank, a positive int. Default: 2.
        bias: add a learnable bias of shape (n,). Default: `False`.
        device: where the parameters are created, as in `nn.Linear`.
        dtype: the parameters' floating dtype, as in `nn.Linear`.

    Shape:
        - Input: a list or tuple of k tensors, input i of shape `(*, n_i)` with the same
          leading dimensions `*` (possibly none) for all.
        - Output: `(*, n)`.

    Attributes:
        U: shape (n, r), from U(-b, b) with $b = \sqrt{3}\,(3 D r)^{-1/4}$, so that W has
            `nn.Linear`'s variance 1/(3D).
        V: shape (D, r), from U(-b, b) with the same b.
        bias: shape (n,), from U(-1/√D, 1/√D), or `None`.

    Raises:
        TypeError: dims, n or r is not an int (or a list of ints); bias is not a bool; dtype
            or device is of the wrong kind.
        ValueError: r < 1; dims is empty or holds a size < 1 or > 2⁴⁸; n is missing while
            dims differ; device is not available; a factor cannot be allocated.

    Example:
        >>> fusion = LowRankConcatFusion([3, 5], n=4, r=2)
        >>> fusion([torch.randn(2, 3), torch.randn(2, 5)]).shape, fusion.num_parameters
        (torch.Size([2, 4]), 24)
    """

    structure: LowRankStructure

    def __init__(
        self,
        dims: Sequence[int],
        n: int | None = None,
        r: int = 2,
        *,
        bias: bool = False,
        device: Device = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        dims, n_checked, D = setup_sizes(dims, n)
        structure = LowRankStructure(n_checked, D, V.check_positive_int("r", r))
        super().__init__(dims, structure, bias=bias, device=device, dtype=dtype)

    @property
    def r(self) -> int:
        """The rank of W = U Vᵀ."""
        return self.structure.r


class RandomMatrixConcatFusion(ConcatFusion):
    r"""Random-matrix adaptation: Y = cat(x_1, …, x_k) Wᵀ, W = diag(λ₁) R₁ diag(λ₂) R₂ᵀ.

    R₁: n×r and R₂: D×r are fixed random matrices; only λ₁ (n) and λ₂ (r) train, l = n + r.
    Applied as `((X R₂) ⊙ λ₂) R₁ᵀ ⊙ λ₁`; W is never formed. R₁ and R₂ are persistent
    buffers, saved in the `state_dict`, so a reloaded module computes exactly the same
    outputs. `seed` is the constructor's: after `load_state_dict` the module holds the
    loaded matrices, and `reset_parameters()` would draw this seed's again.
    Flat w = [λ₁ | λ₂].

    Args:
        dims: input widths n_1 … n_k, positive ints (D = Σ n_i).
        n: output width; defaults to n_1 when all dims are equal.
        r: inner dimension. Default: 2.
        seed: seed of the random matrices, a 64-bit int. Default: 0.
        bias: add a learnable bias of shape (n,). Default: `False`.
        device: where the parameters are created, as in `nn.Linear`.
        dtype: the parameters' floating dtype, as in `nn.Linear`.

    Shape:
        - Input: a list or tuple of k tensors, input i of shape `(*, n_i)` with the same
          leading dimensions `*` (possibly none) for all.
        - Output: `(*, n)`.

    Attributes:
        R1: shape (n, r), fixed, from U(-√3, √3) (unit variance) drawn in float64 on the CPU by
            `torch.Generator().manual_seed(seed)`, the same on every device.
        R2: shape (D, r), fixed, drawn likewise after R1.
        lambda1: shape (n,), all 1.
        lambda2: shape (r,), all $1/\sqrt{3 D r}$, so that W has `nn.Linear`'s variance 1/(3D).
        bias: shape (n,), from U(-1/√D, 1/√D), or `None`.

    Raises:
        TypeError: dims, n, r or seed is of the wrong kind; bias is not a bool; dtype or
            device is of the wrong kind.
        ValueError: r < 1; seed outside [-2⁶³, 2⁶⁴ - 1]; dims is empty or holds a size < 1
            or > 2⁴⁸; n is missing while dims differ; device is not available; a factor
            cannot be allocated.

    Example:
        >>> fusion = RandomMatrixConcatFusion([3, 5], n=4, r=2, seed=7)
        >>> [name for name, _ in fusion.named_parameters()], fusion.num_parameters
        (['lambda1', 'lambda2'], 6)
    """

    structure: RandomMatrixStructure

    def __init__(
        self,
        dims: Sequence[int],
        n: int | None = None,
        r: int = 2,
        seed: int = 0,
        *,
        bias: bool = False,
        device: Device = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        dims, n_checked, D = setup_sizes(dims, n)
        r = V.check_positive_int("r", r)
        structure = RandomMatrixStructure(n_checked, D, r, V.check_seed("seed", seed))
        super().__init__(dims, structure, bias=bias, device=device, dtype=dtype)

    @property
    def r(self) -> int:
        """The inner dimension of W (columns of R₁ and R₂)."""
        return self.structure.r

    @property
    def seed(self) -> int:
        """The constructor's seed of R₁ and R₂ (see the class docstring after loading)."""
        return self.structure.seed
