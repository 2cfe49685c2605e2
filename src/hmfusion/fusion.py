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

import torch
from torch import Tensor, nn

from hmfusion import _validation as V
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

_SHAPE_DOC = """
    Shape:
        - Input: a list or tuple of k tensors, input i of shape ``(*, n_i)`` with the same
          leading dimensions ``*`` (possibly none) for all, where ``n_i = dims[i]``.
        - Output: ``(*, n)``.
"""


class ConcatFusion(nn.Module):
    """Base class: ``Y = cat(xs, -1) Wᵀ + bias`` with ``W = structure(factors)``, W of shape n×D.

    Subclasses choose the structure; this class registers its factors (trained factors as
    parameters, fixed ones as persistent buffers), validates inputs and applies the structure.

    Args:
        dims: the input widths n_1 … n_k (D = Σ n_i).
        structure: the structure of W; its ``n`` is the output width and its ``D`` must be
            ``sum(dims)``.
        bias: add a learnable bias of shape (n,).
        device, dtype: factory arguments for the parameters.
    """

    def __init__(
        self,
        dims: Sequence[int],
        structure: Structure,
        *,
        bias: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.dims = V.check_dims(dims)
        if structure.D != sum(self.dims):
            raise ValueError(f"structure has D={structure.D}, but sum(dims)={sum(self.dims)}")
        V.check_bool("bias", bias)
        self.structure = structure
        factory_kwargs = {"device": device, "dtype": V.check_factory_dtype(dtype)}
        for spec in structure.factor_specs:
            tensor = torch.empty(spec.shape, **factory_kwargs)
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
        """The materialized W, shape (n, D). For inspection and export; ``forward`` never forms it."""
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
    def from_linear(cls, linear: nn.Linear, dims: Sequence[int], *args, **kwargs) -> "ConcatFusion":
        """Compress a trained ``nn.Linear(D, n)``: the member of this class closest to its weight
        in Frobenius norm (see each structure's ``fit``), with the same bias, device and dtype.

        ``n`` is ``linear.out_features``; further arguments are the class's own, positional
        after ``n`` or by keyword (``p``, ``q``, ``terms``, ``r``, ``pad``…).

        Raises:
            TypeError: ``linear`` is not an ``nn.Linear``, or the class cannot be fitted
                (random-matrix adaptation).
            ValueError: ``linear.in_features != sum(dims)``, an ``n`` other than
                ``linear.out_features``, or the class's own checks fail.
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
    """Dense fusion: ``Y = cat(xs) Wᵀ`` with an unstructured W (n×D), l = n·D.

    Equivalent to ``nn.Linear(D, n)`` on the concatenation; the baseline of the family.

    Args:
        dims: input widths n_1 … n_k.
        n: output width; defaults to n_1 when all dims are equal.
        bias, device, dtype: as in ``nn.Linear``.

    Raises:
        TypeError, ValueError: invalid dims or n (see :mod:`hmfusion._validation`).
    """ + _SHAPE_DOC

    def __init__(self, dims, n=None, *, bias=False, device=None, dtype=None) -> None:
        dims, n, D = _setup(dims, n)
        super().__init__(dims, DenseStructure(n, D), bias=bias, device=device, dtype=dtype)


class LowRankConcatFusion(ConcatFusion):
    """Low-rank fusion: ``W = U Vᵀ`` with U: n×r, V: D×r; l = r·(n + D).

    Applied as two thin matmuls ``(X V) Uᵀ``. Flat w = [U (n×r) | Vᵀ (r×D)].

    Args:
        dims, n: as in :class:`DenseConcatFusion`.
        r: the rank (positive int, default 2).
        bias, device, dtype: as in ``nn.Linear``.
    """ + _SHAPE_DOC

    def __init__(self, dims, n=None, r=2, *, bias=False, device=None, dtype=None) -> None:
        dims, n, D = _setup(dims, n)
        r = V.check_positive_int("r", r)
        super().__init__(dims, LowRankStructure(n, D, r), bias=bias, device=device, dtype=dtype)

    @property
    def r(self) -> int:
        return self.structure.r


class _KroneckerFusion(ConcatFusion):
    """Shared accessors of the Kronecker members (HM, LPHM, dual-LPHM)."""

    structure: KroneckerStructure

    def __init__(self, dims, n, p, q, *, terms=1, rank_a=None, rank_b=None, pad=False,
                 bias=False, device=None, dtype=None) -> None:
        dims, n, D = _setup(dims, n)
        structure = KroneckerStructure.create(
            n, D, p, q, terms=terms, rank_a=rank_a, rank_b=rank_b, pad=pad
        )
        super().__init__(dims, structure, bias=bias, device=device, dtype=dtype)

    @property
    def p(self) -> int:
        """Rows of the left factor (resolved if given as ``"auto"``)."""
        return self.structure.p

    @property
    def q(self) -> int:
        """Columns of the left factor (resolved if given as ``"auto"`` or defaulted to p)."""
        return self.structure.q

    @property
    def s(self) -> int:
        """Rows of the right factor, n'/p."""
        return self.structure.s

    @property
    def t(self) -> int:
        """Columns of the right factor, D'/q."""
        return self.structure.t

    @property
    def pad(self) -> bool:
        return self.structure.pad

    def plan(self, m: int, *, requires_grad: bool | None = None):
        """How a forward on m rows is computed here (materialize, fused or composite; order,
        input handling, row chunk): the planner's choice for this module's dims, dtype and
        device, cached per shape. ``requires_grad`` defaults to whether the parameters train.
        See :mod:`hmfusion.planner`; :func:`hmfusion.planner.force_plan` overrides it."""
        param = next(iter(self.factors().values()))
        grad = param.requires_grad if requires_grad is None else requires_grad
        return self.structure.plan(
            m, self.dims, dtype=param.dtype, device=param.device, requires_grad=grad
        )


class HMConcatFusion(_KroneckerFusion):
    """Hierarchical-matrix (HM) fusion: ``W = A ⊗ B`` (or ``Σ_j A_j ⊗ B_j`` with ``terms > 1``).

    ``Y = cat(xs) Wᵀ`` with A: p×q and B: (n/p)×(D/q), so l = p·q + n·D/(p·q) per term. W is
    never formed: each row of X is viewed as a q×(D/q) matrix X_r and ``A X_r Bᵀ`` is computed
    in the cheaper order. Flat w = [A | B] (terms: [A₁ | B₁ | A₂ | B₂ | …]).

    Args:
        dims: input widths n_1 … n_k (D = Σ n_i).
        n: output width; defaults to n_1 when all dims are equal.
        p: rows of A; must divide n. ``"auto"`` (default) picks the value minimising l.
        q: columns of A; must divide D. Defaults to p; ``"auto"`` picks it independently.
        terms: number of Kronecker products summed (default 1).
        pad: allow any n and D by zero-padding to multiples of p and q (see
            :mod:`hmfusion.structures`).
        bias, device, dtype: as in ``nn.Linear``.

    Raises:
        TypeError: p or q is neither a positive int nor ``"auto"``; invalid dims, n or terms.
        ValueError: p does not divide n or q does not divide D (the message lists the valid
            divisors); empty dims; a non-positive dim; n missing while dims differ.
    """ + _SHAPE_DOC

    def __init__(self, dims, n=None, p="auto", q=None, terms=1, *, pad=False, bias=False,
                 device=None, dtype=None) -> None:
        super().__init__(dims, n, p, q, terms=terms, pad=pad, bias=bias,
                         device=device, dtype=dtype)

    @property
    def terms(self) -> int:
        return self.structure.terms


class LPHMConcatFusion(_KroneckerFusion):
    """Low-rank parameterized HM (LPHM) fusion: ``W = A ⊗ (S Tᵀ)``.

    A: p×q, S: (n/p)×r, T: (D/q)×r; l = p·q + r·(n/p + D/q). Applied as a Kronecker contraction
    whose right factor is two thin matmuls. Flat w = [A (p×q) | S (s×r) | Tᵀ (r×t)].

    Args:
        dims, n, p, q, pad, bias, device, dtype: as in :class:`HMConcatFusion`.
        r: rank of the right factor (default 2).
    """ + _SHAPE_DOC

    def __init__(self, dims, n=None, p="auto", q=None, r=2, *, pad=False, bias=False,
                 device=None, dtype=None) -> None:
        super().__init__(dims, n, p, q, rank_b=r, pad=pad, bias=bias, device=device, dtype=dtype)

    @property
    def r(self) -> int:
        return self.structure.rank_b


class DualLPHMConcatFusion(_KroneckerFusion):
    """Dual-LPHM fusion: ``W = (P Qᵀ) ⊗ (S Tᵀ)``, both Kronecker factors of rank r.

    P: p×r, Q: q×r, S: (n/p)×r, T: (D/q)×r; l = r·(p + q + n/p + D/q).
    Flat w = [P (p×r) | Qᵀ (r×q) | S (s×r) | Tᵀ (r×t)].

    Args:
        dims, n, p, q, pad, bias, device, dtype: as in :class:`HMConcatFusion`.
        r: rank of both factors (default 2).
    """ + _SHAPE_DOC

    def __init__(self, dims, n=None, p="auto", q=None, r=2, *, pad=False, bias=False,
                 device=None, dtype=None) -> None:
        super().__init__(dims, n, p, q, rank_a=r, rank_b=r, pad=pad, bias=bias,
                         device=device, dtype=dtype)

    @property
    def r(self) -> int:
        return self.structure.rank_b


class RandomMatrixConcatFusion(ConcatFusion):
    """Random-matrix adaptation: ``W = diag(λ₁) R₁ diag(λ₂) R₂ᵀ``; only λ₁ (n) and λ₂ (r) train.

    R₁: n×r and R₂: D×r are fixed random matrices drawn from ``seed`` and kept as persistent
    buffers, so they are saved in the ``state_dict`` and a reloaded module computes exactly the
    same outputs. l = n + r. Flat w = [λ₁ | λ₂]. ``seed`` is the constructor's: after
    ``load_state_dict`` the module holds the loaded matrices, and ``reset_parameters()`` would
    draw this seed's again.

    Args:
        dims, n: as in :class:`DenseConcatFusion`.
        r: inner dimension (default 2).
        seed: seed of the random matrices (default 0).
        bias, device, dtype: as in ``nn.Linear``.
    """ + _SHAPE_DOC

    def __init__(self, dims, n=None, r=2, seed=0, *, bias=False, device=None, dtype=None) -> None:
        dims, n, D = _setup(dims, n)
        r = V.check_positive_int("r", r)
        structure = RandomMatrixStructure(n, D, r, V.check_int("seed", seed))
        super().__init__(dims, structure, bias=bias, device=device, dtype=dtype)

    @property
    def r(self) -> int:
        return self.structure.r

    @property
    def seed(self) -> int:
        return self.structure.seed
