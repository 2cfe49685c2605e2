"""Concatenation-fusion modules: ``Y = cat(x_1, …, x_k, dim=-1) Wᵀ (+ bias)`` with structured W.

:class:`ConcatFusion` handles the inputs (validation, leading dimensions, bias, dtype and
device) and the module conventions (``reset_parameters``, ``extra_repr``, ``state_dict``);
the structure of W — its factors, how it is fabricated and how Wᵀ is applied without forming
it — is a :class:`hmfusion.structures.Structure`. The math and its conventions are documented
once, in :mod:`hmfusion.structures`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from hmfusion import _validation as V
from hmfusion import planner
from hmfusion.structures import (
    DenseStructure,
    KroneckerStructure,
    LowRankStructure,
    RandomMatrixStructure,
    Structure,
)

__all__ = [
    "ConcatFusion",
    "DenseConcatFusion",
    "DualLPHMConcatFusion",
    "HMConcatFusion",
    "LPHMConcatFusion",
    "LowRankConcatFusion",
    "RandomMatrixConcatFusion",
]

class ConcatFusion(nn.Module):
    r"""Base class: Y = cat(x_1, …, x_k) Wᵀ + b, W = ψ(w) (n×D) given by a structure ψ.

    Subclasses choose the structure; this class registers its factors (trained factors as
    parameters, fixed ones as persistent buffers), validates inputs once in :meth:`forward`
    and applies the structure, which forms W only where its plan says so (see each member).

    Args:
        dims: the input widths n_1 … n_k (D = Σ n_i).
        structure: the structure of W; its ``n`` is the output width and its ``D`` must be
            ``sum(dims)``.
        bias: add a learnable bias of shape (n,). Default: ``False``.
        device, dtype: factory arguments for the parameters, as in ``nn.Linear``.

    Shape:
        - Input: a list or tuple of k tensors, input i of shape ``(*, n_i)`` with the same
          leading dimensions ``*`` (possibly none) for all.
        - Output: ``(*, n)``.

    Attributes:
        bias: shape (n,), from U(-1/√D, 1/√D) as ``nn.Linear``'s, or ``None``. The factors
            are attributes named by ``structure.factor_specs``, initialised by the structure.

    Raises:
        TypeError: dims is not a list or tuple of ints; bias is not a bool; dtype is not a
            floating ``torch.dtype``; device is of the wrong kind.
        ValueError: ``structure.D != sum(dims)``; device is not available; a factor cannot
            be allocated.

    Example::

        >>> from hmfusion.structures import DenseStructure
        >>> fusion = ConcatFusion([2, 3], DenseStructure(4, 5))
        >>> fusion([torch.ones(1, 2), torch.ones(1, 3)]).shape
        torch.Size([1, 4])
    """

    def __init__(
        self,
        dims: Sequence[int],
        structure: Structure,
        *,
        bias: bool = False,
        device: Device = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.dims = V.check_dims(dims)
        if structure.D != sum(self.dims):
            raise ValueError(f"structure has D={structure.D}, but sum(dims)={sum(self.dims)}")
        V.check_bool("bias", bias)
        self.structure = structure
        factory_kwargs = {
            "device": V.check_device(device), "dtype": V.check_factory_dtype(dtype)
        }
        for spec in structure.factor_specs:
            try:
                tensor = torch.empty(spec.shape, **factory_kwargs)
            except RuntimeError as error:  # the allocator's refusal (torch.OutOfMemoryError too)
                raise ValueError(
                    f"n={structure.n}, D={structure.D}: factor {spec.name} of shape "
                    f"{spec.shape} ({math.prod(spec.shape)} values) cannot be allocated; "
                    f"choose smaller sizes or other block sizes"
                ) from error
            if spec.trainable:
                self.register_parameter(spec.name, nn.Parameter(tensor))
            else:
                self.register_buffer(spec.name, tensor, persistent=True)
        if bias:
            self.bias = nn.Parameter(torch.empty(structure.n, **factory_kwargs))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    # sizes ---------------------------------------------------------------------------------
    @property
    def n(self) -> int:
        """Output width."""
        return self.structure.n

    @property
    def in_features(self) -> int:
        """D = Σ n_i, the width of the concatenated input (as ``nn.Linear.in_features``)."""
        return self.structure.D

    @property
    def out_features(self) -> int:
        """n, the output width (as ``nn.Linear.out_features``)."""
        return self.structure.n

    @property
    def num_parameters(self) -> int:
        """l, the number of trained values of W (the length of :meth:`flat_parameters`).

        The bias, if any, is not counted (as in the reference operator, which has none).
        """
        return self.structure.num_parameters

    @property
    def compression(self) -> float:
        """n·D / l: how many times fewer values than a dense n×D weight."""
        return self.n * self.in_features / self.num_parameters

    # factors -------------------------------------------------------------------------------
    def factors(self) -> dict[str, Tensor]:
        """The factor tensors by name (parameters and fixed buffers)."""
        return {spec.name: getattr(self, spec.name) for spec in self.structure.factor_specs}

    @property
    def weight(self) -> Tensor:
        """W, shape (n, D), formed from the factors (differentiable), for inspection and export.

        ``forward`` does not call it: the low-rank and random-matrix members never form W, and
        the Kronecker members form it only under the planner's ``materialize`` plan (small
        layers), which ``plan(m)`` reports."""
        return self.structure.materialize(self.factors())

    def reset_parameters(self) -> None:
        """Re-initialise: W gets the variance of ``nn.Linear``'s default weight, 1/(3D); the bias
        ``nn.Linear``'s default, U(-1/√D, 1/√D). See :mod:`hmfusion.structures`."""
        with torch.no_grad():
            self.structure.init_factors_(self.factors())
            if self.bias is not None:
                bound = 1.0 / math.sqrt(self.in_features)
                self.bias.uniform_(-bound, bound)

    def flat_parameters(self) -> Tensor:
        """w, shape (l,): the trained factors in tinybig 0.2.1's flat layout, each piece row-major.

        Differentiable (like ``torch.nn.utils.parameters_to_vector``); ``.detach()`` it to copy.
        """
        return self.structure.to_flat(self.factors())

    def load_flat_parameters(self, w: Tensor) -> None:
        """Set the trained factors from w of shape (l,) or (1, l).

        Raises:
            TypeError: w is not a floating tensor.
            ValueError: w does not hold exactly l values.
        """
        w = V.check_flat_vector(w, self.num_parameters)
        with torch.no_grad():
            for name, value in self.structure.from_flat(w).items():
                getattr(self, name).copy_(value)

    # conversion ----------------------------------------------------------------------------
    def to_linear(self) -> nn.Linear:
        """An ``nn.Linear(D, n)`` holding the materialized W (and the bias), for export."""
        param = next(iter(self.factors().values()))
        linear = nn.Linear(
            self.in_features, self.n, bias=self.bias is not None,
            device=param.device, dtype=param.dtype,
        )
        with torch.no_grad():
            linear.weight.copy_(self.weight)
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, dims: Sequence[int], *args: object, **kwargs: object
    ) -> ConcatFusion:
        """Compress a trained ``nn.Linear(D, n)``: the member of this class closest to its weight
        in Frobenius norm (see each structure's ``fit``), with the same bias, device and dtype.

        ``n`` is ``linear.out_features``; further arguments are the class's own, positional
        after ``n`` or by keyword (``p``, ``q``, ``terms``, ``r``, ``pad``…).

        Raises:
            TypeError: ``linear`` is not an ``nn.Linear``, or the class cannot be fitted
                (random-matrix adaptation).
            ValueError: ``linear.in_features != sum(dims)``, an ``n`` other than
                ``linear.out_features``, a weight or bias holding NaN or ±inf, or the class's
                own checks fail.
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be a torch.nn.Linear, got {type(linear).__name__}")
        dims_checked = V.check_dims(dims)
        if linear.in_features != sum(dims_checked):
            raise ValueError(
                f"linear.in_features={linear.in_features} must equal sum(dims)={sum(dims_checked)}"
            )
        n = kwargs.pop("n", linear.out_features)
        if n != linear.out_features:
            raise ValueError(f"n={n!r} must equal linear.out_features={linear.out_features}")
        weight = linear.weight
        V.check_finite("linear.weight", weight.detach())
        if linear.bias is not None:
            V.check_finite("linear.bias", linear.bias.detach())
        module = cls(
            dims_checked, n, *args, bias=linear.bias is not None,
            device=weight.device, dtype=weight.dtype, **kwargs,
        )
        with torch.no_grad():
            for name, value in module.structure.fit(weight.detach()).items():
                getattr(module, name).copy_(value)
            if linear.bias is not None:
                module.bias.copy_(linear.bias)
        return module

    # forward -------------------------------------------------------------------------------
    def forward(self, xs: Sequence[Tensor]) -> Tensor:
        """``cat(xs, -1) Wᵀ + bias`` without forming W: inputs ``(*, n_i)`` → output ``(*, n)``.

        Raises:
            TypeError: xs is not a list/tuple of floating tensors; an input's dtype differs
                from the parameters' (outside autocast).
            ValueError: wrong number of inputs, an input whose last dimension is not its
                ``dims[i]``, differing leading shapes, an input on another device.
        """
        factors = self.factors()
        reference = next(iter(factors.values()))
        inputs, lead = V.check_inputs(xs, self.dims, dtype=reference.dtype, device=reference.device)
        return self._fuse(inputs, lead, factors)

    def _fuse(
        self, inputs: Sequence[Tensor], lead: tuple[int, ...], factors: dict[str, Tensor]
    ) -> Tensor:
        """``cat(inputs) Wᵀ + bias`` on inputs already checked by ``V.check_inputs`` (its
        ``lead`` shape), with the given factors (``{name: tensor}`` as :meth:`factors`): views
        of an external flat vector, e.g., through which gradients then flow. No validation."""
        rows = [x.reshape(-1, x.shape[-1]) for x in inputs]
        y = self.structure.apply_concat(rows, factors)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*lead, self.n)

    def extra_repr(self) -> str:
        details = self.structure.describe()
        details = f", {details}" if details else ""
        return (
            f"dims={list(self.dims)}, n={self.n}{details}, l={self.num_parameters}, "
            f"bias={self.bias is not None}"
        )


def _setup(dims: object, n: object) -> tuple[tuple[int, ...], int, int]:
    """Validated dims, n and D (shared by every member's constructor)."""
    dims_checked = V.check_dims(dims)
    return dims_checked, V.resolve_n(dims_checked, n), sum(dims_checked)


class DenseConcatFusion(ConcatFusion):
    r"""Dense fusion: Y = cat(x_1, …, x_k) Wᵀ with W an unstructured n×D parameter.

    Equivalent to ``nn.Linear(D, n)`` on the concatenation (D = Σ n_i); the baseline of the
    family, with l = n·D trained values. W is the parameter itself.

    Args:
        dims: input widths n_1 … n_k, positive ints.
        n: output width; defaults to n_1 when all dims are equal.
        bias: add a learnable bias of shape (n,). Default: ``False``.
        device, dtype: factory arguments for the parameters, as in ``nn.Linear``.

    Shape:
        - Input: a list or tuple of k tensors, input i of shape ``(*, n_i)`` with the same
          leading dimensions ``*`` (possibly none) for all.
        - Output: ``(*, n)``.

    Attributes:
        W: the weight, shape (n, D), initialised from U(-1/√D, 1/√D) as ``nn.Linear``'s.
        bias: shape (n,), from U(-1/√D, 1/√D), or ``None``.

    Raises:
        TypeError: dims is not a list or tuple of ints; n is not an int; bias is not a bool;
            dtype is not a floating ``torch.dtype``; device is of the wrong kind.
        ValueError: dims is empty or holds a size < 1 or > 2⁴⁸; n is missing while dims
            differ; device is not available; a factor cannot be allocated.

    Example::

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
        dims, n_checked, D = _setup(dims, n)
        super().__init__(dims, DenseStructure(n_checked, D), bias=bias, device=device, dtype=dtype)


class LowRankConcatFusion(ConcatFusion):
    r"""Low-rank fusion: Y = cat(x_1, …, x_k) Wᵀ with W = U Vᵀ (U: n×r, V: D×r).

    Applied as two thin matmuls ``(X V) Uᵀ``; W is never formed. Flat w = [U | Vᵀ].

    Args:
        dims: input widths n_1 … n_k, positive ints.
        n: output width; defaults to n_1 when all dims are equal.
        r: the rank, a positive int. Default: 2.
        bias: add a learnable bias of shape (n,). Default: ``False``.
        device, dtype: factory arguments for the parameters, as in ``nn.Linear``.

    Shape:
        - Input: a list or tuple of k tensors, input i of shape ``(*, n_i)`` with the same
          leading dimensions ``*`` (possibly none) for all.
        - Output: ``(*, n)``.

    Attributes:
        U: shape (n, r), V: shape (D, r), both from U(-b, b) with
            :math:`b = \sqrt{3}\,(3 D r)^{-1/4}`, so that W has ``nn.Linear``'s variance 1/(3D).
        bias: shape (n,), from U(-1/√D, 1/√D), or ``None``.

    Raises:
        TypeError: dims, n or r is not an int (or a list of ints); bias is not a bool; dtype
            or device is of the wrong kind.
        ValueError: r < 1; dims is empty or holds a size < 1 or > 2⁴⁸; n is missing while
            dims differ; device is not available; a factor cannot be allocated.

    Example::

        >>> fusion = LowRankConcatFusion([3, 5], n=4, r=2)
        >>> fusion([torch.randn(2, 3), torch.randn(2, 5)]).shape, fusion.num_parameters
        (torch.Size([2, 4]), 24)
    """

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
        dims, n_checked, D = _setup(dims, n)
        structure = LowRankStructure(n_checked, D, V.check_positive_int("r", r))
        super().__init__(dims, structure, bias=bias, device=device, dtype=dtype)

    @property
    def r(self) -> int:
        """The rank of W = U Vᵀ."""
        return self.structure.r


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
        dims, n_checked, D = _setup(dims, n)
        structure = KroneckerStructure.create(
            n_checked, D, p, q, terms=terms, rank_a=rank_a, rank_b=rank_b, pad=pad
        )
        super().__init__(dims, structure, bias=bias, device=device, dtype=dtype)

    @property
    def p(self) -> int:
        """Rows of the left factor A (resolved if given as ``"auto"``)."""
        return self.structure.p

    @property
    def q(self) -> int:
        """Columns of A (resolved if given as ``"auto"`` or defaulted to p)."""
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
        dtype and device (cached per shape). ``plan(m).method == "materialize"`` means that W
        is formed for that call (small layers, where one dense GEMM is cheaper); ``"fused"``
        and ``"composite"`` never form it. ``requires_grad`` defaults to whether the
        parameters train. :func:`hmfusion.planner.force_plan` overrides the choice.

        Raises:
            TypeError: m is not an int (bools included); requires_grad is not a bool.
            ValueError: m < 0.
        """
        m = V.check_row_count("m", m)
        param = next(iter(self.factors().values()))
        grad = param.requires_grad if requires_grad is None else V.check_bool(
            "requires_grad", requires_grad)
        return self.structure.plan(
            m, self.dims, dtype=param.dtype, device=param.device, requires_grad=grad
        )


class HMConcatFusion(_KroneckerFusion):
    r"""HM fusion: Y = cat(x_1, …, x_k) Wᵀ with W = A ⊗ B (or Σ_j A_j ⊗ B_j with terms).

    Hierarchical-matrix fusion. A: p×q, B: s×t with s = n/p, t = D/q, so l = terms·(p·q + s·t).
    Each row of X is viewed as a q×t matrix X_r and ``A X_r Bᵀ`` is computed in the cheaper
    order; W is formed only when the planner picks its ``materialize`` plan (small layers where
    one dense GEMM is cheaper): ``plan(m)`` says which, per number of rows m.
    Flat w = [A | B] ([A₁ | B₁ | A₂ | B₂ | …] with terms).

    Args:
        dims: input widths n_1 … n_k, positive ints (D = Σ n_i).
        n: output width; defaults to n_1 when all dims are equal.
        p: rows of A, dividing n; ``"auto"`` (default) picks the value minimising l.
        q: columns of A, dividing D; defaults to p; ``"auto"`` picks it independently.
        terms: number of Kronecker products summed. Default: 1.
        pad: allow any n and D by zero-padding them to multiples of p and q (W is then the
            top-left n×D block; see :mod:`hmfusion.structures`). Default: ``False``.
        bias: add a learnable bias of shape (n,). Default: ``False``.
        device, dtype: factory arguments for the parameters, as in ``nn.Linear``.

    Shape:
        - Input: a list or tuple of k tensors, input i of shape ``(*, n_i)`` with the same
          leading dimensions ``*`` (possibly none) for all.
        - Output: ``(*, n)``.

    Attributes:
        A: shape (p, q) ((terms, p, q) with terms > 1), B: shape (s, t) (likewise), both from
            U(-b, b) with :math:`b = \sqrt{3}\,(3 D \cdot terms)^{-1/4}`, so that W has
            ``nn.Linear``'s variance 1/(3D), split evenly between A and B.
        bias: shape (n,), from U(-1/√D, 1/√D), or ``None``.

    Raises:
        TypeError: dims, n, p, q or terms is of the wrong kind (p and q: an int or
            ``"auto"``); pad or bias is not a bool; dtype or device is of the wrong kind.
        ValueError: p or q is a string other than ``"auto"`` or < 1; p does not divide n or q
            does not divide D without ``pad`` (the message lists the valid divisors); p > n
            or q > D with ``pad``; dims is empty or holds a size < 1 or > 2⁴⁸; n is missing
            while dims differ; device is not available; a factor cannot be allocated.

    Example::

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
        super().__init__(dims, n, p, q, terms=terms, pad=pad, bias=bias,
                         device=device, dtype=dtype)

    @property
    def terms(self) -> int:
        """The number of Kronecker products summed."""
        return self.structure.terms


class LPHMConcatFusion(_KroneckerFusion):
    r"""LPHM fusion: Y = cat(x_1, …, x_k) Wᵀ with W = A ⊗ (S Tᵀ), a low-rank right factor.

    A: p×q, S: s×r, T: t×r (s = n/p, t = D/q); l = p·q + r·(s + t). Applied as a Kronecker
    contraction whose right factor is two thin matmuls; W is formed only under the planner's
    ``materialize`` plan (small layers; ``plan(m)`` says). Flat w = [A | S | Tᵀ].

    Args:
        dims: input widths n_1 … n_k, positive ints (D = Σ n_i).
        n: output width; defaults to n_1 when all dims are equal.
        p: rows of A, dividing n; ``"auto"`` (default) picks the value minimising l.
        q: columns of A, dividing D; defaults to p; ``"auto"`` picks it independently.
        r: rank of the right factor S Tᵀ. Default: 2.
        pad: allow any n and D by zero-padding (as in :class:`HMConcatFusion`).
        bias: add a learnable bias of shape (n,). Default: ``False``.
        device, dtype: factory arguments for the parameters, as in ``nn.Linear``.

    Shape:
        - Input: a list or tuple of k tensors, input i of shape ``(*, n_i)`` with the same
          leading dimensions ``*`` (possibly none) for all.
        - Output: ``(*, n)``.

    Attributes:
        A: shape (p, q), from U(-a, a) with :math:`a = \sqrt{3}\,(3D)^{-1/4}`.
        S: shape (s, r), T: shape (t, r), from U(-b, b) with
            :math:`b = \sqrt{3}\,(3D)^{-1/8} r^{-1/4}`; W then has variance 1/(3D).
        bias: shape (n,), from U(-1/√D, 1/√D), or ``None``.

    Raises:
        TypeError: dims, n, p, q or r is of the wrong kind (p and q: an int or ``"auto"``);
            pad or bias is not a bool; dtype or device is of the wrong kind.
        ValueError: as :class:`HMConcatFusion`; r < 1.

    Example::

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
        return self.structure.rank_b  # type: ignore[return-value]


class DualLPHMConcatFusion(_KroneckerFusion):
    r"""Dual-LPHM fusion: Y = cat(x_1, …, x_k) Wᵀ with W = (P Qᵀ) ⊗ (S Tᵀ), both rank r.

    P: p×r, Q: q×r, S: s×r, T: t×r (s = n/p, t = D/q); l = r·(p + q + s + t). W is formed only
    under the planner's ``materialize`` plan (small layers; ``plan(m)`` says).
    Flat w = [P | Qᵀ | S | Tᵀ].

    Args:
        dims: input widths n_1 … n_k, positive ints (D = Σ n_i).
        n: output width; defaults to n_1 when all dims are equal.
        p: rows of the left factor, dividing n; ``"auto"`` (default) minimises l.
        q: its columns, dividing D; defaults to p; ``"auto"`` picks it independently.
        r: rank of both factors. Default: 2.
        pad: allow any n and D by zero-padding (as in :class:`HMConcatFusion`).
        bias: add a learnable bias of shape (n,). Default: ``False``.
        device, dtype: factory arguments for the parameters, as in ``nn.Linear``.

    Shape:
        - Input: a list or tuple of k tensors, input i of shape ``(*, n_i)`` with the same
          leading dimensions ``*`` (possibly none) for all.
        - Output: ``(*, n)``.

    Attributes:
        P, Q, S, T: shapes (p, r), (q, r), (s, r), (t, r), all from U(-b, b) with
            :math:`b = \sqrt{3}\,(3D)^{-1/8} r^{-1/4}`, so that W has variance 1/(3D).
        bias: shape (n,), from U(-1/√D, 1/√D), or ``None``.

    Raises:
        TypeError: dims, n, p, q or r is of the wrong kind (p and q: an int or ``"auto"``);
            pad or bias is not a bool; dtype or device is of the wrong kind.
        ValueError: as :class:`HMConcatFusion`; r < 1.

    Example::

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
        super().__init__(dims, n, p, q, rank_a=r, rank_b=r, pad=pad, bias=bias,
                         device=device, dtype=dtype)

    @property
    def r(self) -> int:
        """The rank of both Kronecker factors."""
        return self.structure.rank_b  # type: ignore[return-value]


class RandomMatrixConcatFusion(ConcatFusion):
    r"""Random-matrix adaptation: Y = cat(x_1, …, x_k) Wᵀ, W = diag(λ₁) R₁ diag(λ₂) R₂ᵀ.

    R₁: n×r and R₂: D×r are fixed random matrices; only λ₁ (n) and λ₂ (r) train, l = n + r.
    Applied as ``((X R₂) ⊙ λ₂) R₁ᵀ ⊙ λ₁``; W is never formed. R₁ and R₂ are persistent
    buffers, saved in the ``state_dict``, so a reloaded module computes exactly the same
    outputs. ``seed`` is the constructor's: after ``load_state_dict`` the module holds the
    loaded matrices, and ``reset_parameters()`` would draw this seed's again.
    Flat w = [λ₁ | λ₂].

    Args:
        dims: input widths n_1 … n_k, positive ints (D = Σ n_i).
        n: output width; defaults to n_1 when all dims are equal.
        r: inner dimension. Default: 2.
        seed: seed of the random matrices, a 64-bit int. Default: 0.
        bias: add a learnable bias of shape (n,). Default: ``False``.
        device, dtype: factory arguments for the parameters, as in ``nn.Linear``.

    Shape:
        - Input: a list or tuple of k tensors, input i of shape ``(*, n_i)`` with the same
          leading dimensions ``*`` (possibly none) for all.
        - Output: ``(*, n)``.

    Attributes:
        R1, R2: shapes (n, r), (D, r), from U(-√3, √3) (unit variance) drawn in float64 on the
            CPU by ``torch.Generator().manual_seed(seed)``, the same on every device.
        lambda1: shape (n,), all 1; lambda2: shape (r,), all :math:`1/\sqrt{3 D r}`, so that
            W has ``nn.Linear``'s variance 1/(3D).
        bias: shape (n,), from U(-1/√D, 1/√D), or ``None``.

    Raises:
        TypeError: dims, n, r or seed is of the wrong kind; bias is not a bool; dtype or
            device is of the wrong kind.
        ValueError: r < 1; seed outside [-2⁶³, 2⁶⁴ - 1]; dims is empty or holds a size < 1
            or > 2⁴⁸; n is missing while dims differ; device is not available; a factor
            cannot be allocated.

    Example::

        >>> fusion = RandomMatrixConcatFusion([3, 5], n=4, r=2, seed=7)
        >>> [name for name, _ in fusion.named_parameters()], fusion.num_parameters
        (['lambda1', 'lambda2'], 6)
    """

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
        dims, n_checked, D = _setup(dims, n)
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
