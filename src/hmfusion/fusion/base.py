"""The base of the fusion modules: `Y = cat(x_1, …, x_k, dim=-1) Wᵀ (+ bias)`, W from a structure.

[`ConcatFusion`][hmfusion.fusion.ConcatFusion] handles the inputs (validation, leading dimensions,
bias, dtype and device) and the module conventions (`reset_parameters`, `extra_repr`, `state_dict`);
the structure of W — its factors, how it is fabricated and how Wᵀ is applied — is a
[`hmfusion.structures.Structure`][hmfusion.structures.Structure]. The math and its conventions are
documented once, in [`hmfusion.structures`][hmfusion.structures].
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from hmfusion import _validation as V
from hmfusion.structures import Structure

__all__ = ["ConcatFusion", "Device", "setup_sizes"]

#: What a `device=` argument may be (as for `nn.Linear`).
Device = torch.device | str | int | None


class ConcatFusion(nn.Module):
    r"""Base class: Y = cat(x_1, …, x_k) Wᵀ + b, W = ψ(w) (n×D) given by a structure ψ.

    Subclasses choose the structure; this class registers its factors (trained factors as
    parameters, fixed ones as persistent buffers), validates inputs once in `forward`
    and applies the structure, which forms W only where its plan says so (see each member).

    Args:
        dims: the input widths n_1 … n_k (D = Σ n_i).
        structure: the structure of W; its `n` is the output width and its `D` must be
            `sum(dims)`.
        bias: add a learnable bias of shape (n,). Default: `False`.
        device: where the parameters are created, as in `nn.Linear`.
        dtype: the parameters' floating dtype, as in `nn.Linear`.

    Shape:
        - Input: a list or tuple of k tensors, input i of shape `(*, n_i)` with the same
          leading dimensions `*` (possibly none) for all.
        - Output: `(*, n)`.

    Attributes:
        bias: shape (n,), from U(-1/√D, 1/√D) as `nn.Linear`'s, or `None`. The factors
            are attributes named by `structure.factor_specs`, initialised by the structure.

    Raises:
        TypeError: dims is not a list or tuple of ints; bias is not a bool; dtype is not a
            floating `torch.dtype`; device is of the wrong kind.
        ValueError: `structure.D != sum(dims)`; device is not available; a factor cannot
            be allocated.

    Example:
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
        # (forward reads the factors by these names on every call: built once)
        self._factor_names = tuple(spec.name for spec in structure.factor_specs)
        # input signatures that passed validation, with their leading shape (`V.check_inputs_once`)
        self._checked: dict[tuple, torch.Size] = {}
        device, dtype = V.check_device(device), V.check_factory_dtype(dtype)
        for spec in structure.factor_specs:
            try:
                tensor = torch.empty(spec.shape, device=device, dtype=dtype)
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
            self.bias = nn.Parameter(torch.empty(structure.n, device=device, dtype=dtype))
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
        """D = Σ n_i, the width of the concatenated input (as `nn.Linear.in_features`)."""
        return self.structure.D

    @property
    def out_features(self) -> int:
        """n, the output width (as `nn.Linear.out_features`)."""
        return self.structure.n

    @property
    def num_parameters(self) -> int:
        """l, the number of trained values of W (the length of `flat_parameters`).

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
        return {name: getattr(self, name) for name in self._factor_names}

    @property
    def weight(self) -> Tensor:
        """W, shape (n, D), formed from the factors (differentiable), for inspection and export.

        `forward` does not call it: the low-rank and random-matrix members never form W, and
        the Kronecker members form it only under the planner's `materialize` plan (small
        layers), which `plan(m)` reports."""
        return self.structure.materialize(self.factors())

    def reset_parameters(self) -> None:
        """Re-initialise: W gets the variance of `nn.Linear`'s default weight, 1/(3D); the bias
        `nn.Linear`'s default, U(-1/√D, 1/√D). See [`hmfusion.structures`][hmfusion.structures]."""
        with torch.no_grad():
            self.structure.init_factors_(self.factors())
            if self.bias is not None:
                bound = 1.0 / math.sqrt(self.in_features)
                self.bias.uniform_(-bound, bound)

    def flat_parameters(self) -> Tensor:
        """w, shape (l,): the trained factors in tinybig 0.2.1's flat layout, each piece row-major.

        Differentiable (like `torch.nn.utils.parameters_to_vector`); `.detach()` it to copy.
        """
        return self.structure.to_flat(self.factors())

    def load_flat_parameters(self, w: Tensor) -> None:
        """Set the trained factors from w of shape (l,) or (1, l).

        Args:
            w: the flat vector, laid out as `flat_parameters()` returns it.

        Raises:
            TypeError: w is not a floating tensor.
            ValueError: w does not hold exactly l values, or is a meta tensor (no values)
                while the parameters are not.
        """
        meta = next(iter(self.factors().values())).is_meta
        w = V.check_flat_vector(w, self.num_parameters, meta_ok=meta)
        with torch.no_grad():
            for name, value in self.structure.from_flat(w).items():
                getattr(self, name).copy_(value)

    # conversion ----------------------------------------------------------------------------
    def to_linear(self) -> nn.Linear:
        """An `nn.Linear(D, n)` holding the materialized W (and the bias), for export."""
        param = next(iter(self.factors().values()))
        linear = nn.Linear(
            self.in_features,
            self.n,
            bias=self.bias is not None,
            device=param.device,
            dtype=param.dtype,
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
        """Compress a trained `nn.Linear(D, n)`: the member of this class closest to its weight
        in Frobenius norm (see each structure's `fit`), with the same bias, device and dtype.

        `n` is `linear.out_features`; further arguments are the class's own, positional
        after `n` or by keyword (`p`, `q`, `terms`, `r`, `pad`…). A `linear` on the meta device
        (shapes, no values) gives the member on the meta device, unfitted.

        Raises:
            TypeError: `linear` is not an `nn.Linear`, or the class cannot be fitted
                (random-matrix adaptation).
            ValueError: `linear.in_features != sum(dims)`, an `n` other than
                `linear.out_features`, a weight or bias holding NaN or ±inf, or the class's
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
        fitted = not weight.is_meta  # meta: shapes only, nothing to fit
        if fitted:
            V.check_finite("linear.weight", weight.detach())
        if fitted and linear.bias is not None:
            V.check_finite("linear.bias", linear.bias.detach())
        module = cls(  # a member's signature: (dims, n, its own arguments…)
            dims_checked,
            n,  # type: ignore[arg-type]  # members take (dims, n, …), not a Structure
            *args,
            bias=linear.bias is not None,
            device=weight.device,
            dtype=weight.dtype,
            **kwargs,
        )
        if not fitted:
            return module
        with torch.no_grad():
            for name, value in module.structure.fit(weight.detach()).items():
                getattr(module, name).copy_(value)
            if linear.bias is not None:
                module.bias.copy_(linear.bias)
        return module

    # forward -------------------------------------------------------------------------------
    def forward(self, xs: Sequence[Tensor]) -> Tensor:
        """`cat(xs, -1) Wᵀ + bias`: inputs `(*, n_i)` → output `(*, n)`.

        W is applied as the structure says: low-rank and random-matrix members never form it,
        Kronecker members form it only under the planner's `materialize` plan (`plan(m)`).

        Args:
            xs: the k inputs, a list or tuple of tensors of shapes `(*, n_i)` with the same
                leading shape, in the parameters' dtype and on their device.

        Returns:
            Y, of shape `(*, n)`.

        Raises:
            TypeError: xs is not a list/tuple of floating tensors; an input is sparse or
                nested (not strided); an input's dtype differs from the parameters' (outside
                autocast).
            ValueError: wrong number of inputs, an input whose last dimension is not its
                `dims[i]`, differing leading shapes, an input on another device.
        """
        factors = self.factors()
        reference = factors[self._factor_names[0]]
        lead = V.check_inputs_once(
            xs, self.dims, self._checked, dtype=reference.dtype, device=reference.device
        )
        return self._fuse(xs, lead, factors)

    def _fuse(
        self, inputs: Sequence[Tensor], lead: tuple[int, ...], factors: dict[str, Tensor]
    ) -> Tensor:
        """`cat(inputs) Wᵀ + bias` on inputs already checked by `V.check_inputs` (its
        `lead` shape), with the given factors (`{name: tensor}` as `factors`): views
        of an external flat vector, e.g., through which gradients then flow. No validation."""
        if len(lead) == 1:  # (m, n_i) inputs, the common case: no reshapes
            y = self.structure.apply_concat(inputs, factors)
        else:
            y = self.structure.apply_concat([x.reshape(-1, x.shape[-1]) for x in inputs], factors)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y if len(lead) == 1 else y.reshape(*lead, self.n)

    def extra_repr(self) -> str:
        details = self.structure.describe()
        details = f", {details}" if details else ""
        return (
            f"dims={list(self.dims)}, n={self.n}{details}, l={self.num_parameters}, "
            f"bias={self.bias is not None}"
        )


def setup_sizes(dims: object, n: object) -> tuple[tuple[int, ...], int, int]:
    """Validated `dims`, `n` and D = Σ dims (shared by every member's constructor)."""
    dims_checked = V.check_dims(dims)
    return dims_checked, V.resolve_n(dims_checked, n), sum(dims_checked)
