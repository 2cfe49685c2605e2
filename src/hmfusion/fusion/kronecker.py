"""The Kronecker members: HM (and sums of Kronecker products), LPHM and dual-LPHM, one class
each, on a shared base.

The math is documented once, in [`hmfusion.structures`][hmfusion.structures].
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from hmfusion import _validation as V
from hmfusion.fusion.base import ConcatFusion, Device, setup_sizes
from hmfusion.ops import planner
from hmfusion.structures import KroneckerStructure

__all__ = ["BlockSize", "DualLPHMConcatFusion", "HMConcatFusion", "LPHMConcatFusion"]

#: A block size: a positive int, or `"auto"` to minimise the number of parameters.
BlockSize = int | Literal["auto"]


class _KroneckerFusion(ConcatFusion):
    """Shared constructor and accessors of the Kronecker members (HM, LPHM, dual-LPHM)."""

    structure: KroneckerStructure

    def __init__(
        self,
        dims: Sequence[int],
        n: int | None,
        p: BlockSize,
        q: BlockSize | None,
        *,
        terms: int = 1,
        rank_a: int | None = None,
        rank_b: int | None = None,
        pad: bool = False,
        bias: bool = False,
        device: Device = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        dims, n_checked, D = setup_sizes(dims, n)
        structure = KroneckerStructure.create(
            n_checked, D, p, q, terms=terms, rank_a=rank_a, rank_b=rank_b, pad=pad
        )
        super().__init__(dims, structure, bias=bias, device=device, dtype=dtype)

    @property
    def p(self) -> int:
        """Rows of the left factor A (resolved if given as `"auto"`)."""
        return self.structure.p

    @property
    def q(self) -> int:
        """Columns of A (resolved if given as `"auto"` or defaulted to p)."""
        return self.structure.q

    @property
    def s(self) -> int:
        """Rows of the right factor B: ⌈n/p⌉ (n/p without padding)."""
        return self.structure.s

    @property
    def t(self) -> int:
        """Columns of B: ⌈D/q⌉ (D/q without padding)."""
        return self.structure.t

    @property
    def pad(self) -> bool:
        """Whether n and D may be zero-padded to multiples of p and q."""
        return self.structure.pad

    def plan(self, m: int, *, requires_grad: bool | None = None) -> planner.Plan:
        """How a forward on m rows is computed: the planner's choice for this module's dims,
        dtype and device (cached per shape). `plan(m).method == "materialize"` means that W
        is formed for that call (where one dense GEMM is cheaper, e.g. p = q = 1); `"fused"`
        and `"composite"` never form it. `requires_grad` defaults to whether the
        parameters train. [`hmfusion.planner.force_plan`][hmfusion.planner.force_plan]
        overrides the
        choice.

        Raises:
            TypeError: m is not an int (bools included); requires_grad is not a bool.
            ValueError: m < 0.
        """
        m = V.check_row_count("m", m)
        param = next(iter(self.factors().values()))
        grad = (
            param.requires_grad
            if requires_grad is None
            else V.check_bool("requires_grad", requires_grad)
        )
        return self.structure.plan(
            m, self.dims, dtype=param.dtype, device=param.device, requires_grad=grad
        )


class HMConcatFusion(_KroneckerFusion):
    r"""HM fusion: Y = cat(x_1, …, x_k) Wᵀ with W = A ⊗ B (or Σ_j A_j ⊗ B_j with terms).

    Hierarchical-matrix fusion. A: p×q, B: s×t with s = n/p, t = D/q, so l = terms·(p·q + s·t).
    Each row of X is viewed as a q×t matrix X_r and `A X_r Bᵀ` is computed in the cheaper
    order; W is formed only when the planner picks its `materialize` plan (when forming W and
    one dense GEMM costs less: block sizes that save nothing, p = q = 1, over a large batch;
    see [`hmfusion.structures`][hmfusion.structures]): `plan(m)` says which, per number of
    rows m.
    Flat w = [A | B] ([A₁ | B₁ | A₂ | B₂ | …] with terms).

    Args:
        dims: input widths n_1 … n_k, positive ints (D = Σ n_i).
        n: output width; defaults to n_1 when all dims are equal.
        p: rows of A, dividing n; `"auto"` (default) picks the value minimising l.
        q: columns of A, dividing D; defaults to p; `"auto"` picks it independently.
        terms: number of Kronecker products summed. Default: 1.
        pad: allow any n and D by zero-padding them to multiples of p and q (W is then the
            top-left n×D block; see [`hmfusion.structures`][hmfusion.structures]). Default: `False`.
        bias: add a learnable bias of shape (n,). Default: `False`.
        device: where the parameters are created, as in `nn.Linear`.
        dtype: the parameters' floating dtype, as in `nn.Linear`.

    Shape:
        - Input: a list or tuple of k tensors, input i of shape `(*, n_i)` with the same
          leading dimensions `*` (possibly none) for all.
        - Output: `(*, n)`.

    Attributes:
        A: shape (p, q), or (terms, p, q) with terms > 1, from U(-b, b) with
            $b = \sqrt{3}\,(3 D \cdot \text{terms})^{-1/4}$, so that W has `nn.Linear`'s
            variance 1/(3D), split evenly between A and B.
        B: shape (s, t), or (terms, s, t) with terms > 1, from U(-b, b) with the same b.
        bias: shape (n,), from U(-1/√D, 1/√D), or `None`.

    Raises:
        TypeError: dims, n, p, q or terms is of the wrong kind (p and q: an int or
            `"auto"`); pad or bias is not a bool; dtype or device is of the wrong kind.
        ValueError: p or q is a string other than `"auto"` or < 1; p does not divide n or q
            does not divide D without `pad` (the message lists the valid divisors); p > n
            or q > D with `pad`; dims is empty or holds a size < 1 or > 2⁴⁸; n is missing
            while dims differ; device is not available; a factor cannot be allocated.

    Example:
        >>> fusion = HMConcatFusion([6, 10], n=8, p=2, q=4)
        >>> fusion.A.shape, fusion.B.shape
        (torch.Size([2, 4]), torch.Size([4, 4]))
        >>> fusion([torch.randn(3, 6), torch.randn(3, 10)]).shape
        torch.Size([3, 8])
    """

    def __init__(
        self,
        dims: Sequence[int],
        n: int | None = None,
        p: BlockSize = "auto",
        q: BlockSize | None = None,
        terms: int = 1,
        *,
        pad: bool = False,
        bias: bool = False,
        device: Device = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(dims, n, p, q, terms=terms, pad=pad, bias=bias, device=device, dtype=dtype)

    @property
    def terms(self) -> int:
        """The number of Kronecker products summed."""
        return self.structure.terms


class LPHMConcatFusion(_KroneckerFusion):
    r"""LPHM fusion: Y = cat(x_1, …, x_k) Wᵀ with W = A ⊗ (S Tᵀ), a low-rank right factor.

    A: p×q, S: s×r, T: t×r (s = n/p, t = D/q); l = p·q + r·(s + t). Applied as a Kronecker
    contraction whose right factor is two thin matmuls; W is formed only under the planner's
    `materialize` plan (`plan(m)` says when). Flat w = [A | S | Tᵀ].

    Args:
        dims: input widths n_1 … n_k, positive ints (D = Σ n_i).
        n: output width; defaults to n_1 when all dims are equal.
        p: rows of A, dividing n; `"auto"` (default) picks the value minimising l.
        q: columns of A, dividing D; defaults to p; `"auto"` picks it independently.
        r: rank of the right factor S Tᵀ. Default: 2.
        pad: allow any n and D by zero-padding (as in
            [`HMConcatFusion`][hmfusion.fusion.HMConcatFusion]).
        bias: add a learnable bias of shape (n,). Default: `False`.
        device: where the parameters are created, as in `nn.Linear`.
        dtype: the parameters' floating dtype, as in `nn.Linear`.

    Shape:
        - Input: a list or tuple of k tensors, input i of shape `(*, n_i)` with the same
          leading dimensions `*` (possibly none) for all.
        - Output: `(*, n)`.

    Attributes:
        A: shape (p, q), from U(-a, a) with $a = \sqrt{3}\,(3D)^{-1/4}$.
        S: shape (s, r), from U(-b, b) with $b = \sqrt{3}\,(3D)^{-1/8} r^{-1/4}$; W then has
            variance 1/(3D).
        T: shape (t, r), from U(-b, b) with the same b.
        bias: shape (n,), from U(-1/√D, 1/√D), or `None`.

    Raises:
        TypeError: dims, n, p, q or r is of the wrong kind (p and q: an int or `"auto"`);
            pad or bias is not a bool; dtype or device is of the wrong kind.
        ValueError: as [`HMConcatFusion`][hmfusion.fusion.HMConcatFusion]; r < 1.

    Example:
        >>> fusion = LPHMConcatFusion([8, 8], n=8, p=2, r=1)
        >>> fusion.S.shape, fusion.T.shape
        (torch.Size([4, 1]), torch.Size([8, 1]))
    """

    def __init__(
        self,
        dims: Sequence[int],
        n: int | None = None,
        p: BlockSize = "auto",
        q: BlockSize | None = None,
        r: int = 2,
        *,
        pad: bool = False,
        bias: bool = False,
        device: Device = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(dims, n, p, q, rank_b=r, pad=pad, bias=bias, device=device, dtype=dtype)

    @property
    def r(self) -> int:
        """The rank of the right factor S Tᵀ."""
        return self.structure.rank_b


class DualLPHMConcatFusion(_KroneckerFusion):
    r"""Dual-LPHM fusion: Y = cat(x_1, …, x_k) Wᵀ with W = (P Qᵀ) ⊗ (S Tᵀ), both rank r.

    P: p×r, Q: q×r, S: s×r, T: t×r (s = n/p, t = D/q); l = r·(p + q + s + t). W is formed only
    under the planner's `materialize` plan (`plan(m)` says when).
    Flat w = [P | Qᵀ | S | Tᵀ].

    Args:
        dims: input widths n_1 … n_k, positive ints (D = Σ n_i).
        n: output width; defaults to n_1 when all dims are equal.
        p: rows of the left factor, dividing n; `"auto"` (default) minimises l.
        q: its columns, dividing D; defaults to p; `"auto"` picks it independently.
        r: rank of both factors. Default: 2.
        pad: allow any n and D by zero-padding (as in
            [`HMConcatFusion`][hmfusion.fusion.HMConcatFusion]).
        bias: add a learnable bias of shape (n,). Default: `False`.
        device: where the parameters are created, as in `nn.Linear`.
        dtype: the parameters' floating dtype, as in `nn.Linear`.

    Shape:
        - Input: a list or tuple of k tensors, input i of shape `(*, n_i)` with the same
          leading dimensions `*` (possibly none) for all.
        - Output: `(*, n)`.

    Attributes:
        P: shape (p, r), from U(-b, b) with $b = \sqrt{3}\,(3D)^{-1/8} r^{-1/4}$, so that W
            has variance 1/(3D).
        Q: shape (q, r), from U(-b, b) with the same b.
        S: shape (s, r), likewise.
        T: shape (t, r), likewise.
        bias: shape (n,), from U(-1/√D, 1/√D), or `None`.

    Raises:
        TypeError: dims, n, p, q or r is of the wrong kind (p and q: an int or `"auto"`);
            pad or bias is not a bool; dtype or device is of the wrong kind.
        ValueError: as [`HMConcatFusion`][hmfusion.fusion.HMConcatFusion]; r < 1.

    Example:
        >>> fusion = DualLPHMConcatFusion([8, 8], n=8, p=2, r=1)
        >>> fusion.num_parameters  # r·(p + q + s + t) = 1·(2 + 2 + 4 + 8)
        16
    """

    def __init__(
        self,
        dims: Sequence[int],
        n: int | None = None,
        p: BlockSize = "auto",
        q: BlockSize | None = None,
        r: int = 2,
        *,
        pad: bool = False,
        bias: bool = False,
        device: Device = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            dims, n, p, q, rank_a=r, rank_b=r, pad=pad, bias=bias, device=device, dtype=dtype
        )

    @property
    def r(self) -> int:
        """The rank of both Kronecker factors."""
        return self.structure.rank_b
