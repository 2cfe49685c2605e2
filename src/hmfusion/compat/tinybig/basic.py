"""tinybig 0.2.1's parameter-free fusions: weighted sums, averages and plain concatenation.

The same formulas, signatures and names as `tinybig.fusion.basic_fusion` and
`tinybig.fusion.concatenation_fusion`; the inputs are checked with precise errors instead of
`assert`s, and processing functions are applied to each input on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from hmfusion import _validation as V
from hmfusion.compat.tinybig.base import fusion

__all__ = [
    "average_fusion",
    "check_input_list",
    "concatenation_fusion",
    "parameterized_weighted_summation_fusion",
    "summation_fusion",
    "weighted_summation_fusion",
]


def check_input_list(owner: fusion, x: object, *, same_shape: bool) -> list[Tensor]:
    """The inputs of a parameter-free fusion as a list, checked.

    Raises:
        ValueError: x empty; a count or width other than `owner.dims` (when given); shapes
            that differ (`same_shape`) or leading shapes that differ.
        TypeError: x is not a list or tuple of tensors.

    Example:
        >>> len(check_input_list(summation_fusion([2]), [torch.ones(1, 2)], same_shape=True))
        1
    """
    if x is None or (isinstance(x, (list, tuple)) and len(x) == 0):
        raise ValueError("the input x cannot be empty: pass a list of tensors")
    if not isinstance(x, (list, tuple)):
        raise TypeError(f"x must be a list or tuple of tensors, got {type(x).__name__}")
    for i, item in enumerate(x):
        if not isinstance(item, Tensor) or item.dim() == 0:
            raise TypeError(f"input {i} must be a torch.Tensor with at least one dimension")
    dims = owner.get_dims()
    if dims is not None:
        if len(x) != len(dims):
            raise ValueError(f"expected {len(dims)} inputs (dims={list(dims)}), got {len(x)}")
        for i, item in enumerate(x):
            if item.shape[-1] != dims[i]:
                raise ValueError(
                    f"input {i} has last dimension {item.shape[-1]} (shape {tuple(item.shape)}), "
                    f"expected dims[{i}] = {dims[i]}"
                )
    for i, item in enumerate(x):
        first, this = (x[0].shape, item.shape) if same_shape else (x[0].shape[:-1], item.shape[:-1])
        if this != first:
            what = "shape" if same_shape else "leading shape"
            raise ValueError(
                f"inputs must share their {what}: input 0 has {tuple(first)}, "
                f"input {i} has {tuple(this)}"
            )
    return list(x)


def _common_width(label: str, dims: Sequence[int] | None) -> int:
    if dims is None or len(dims) == 0:
        raise ValueError(f"{label}: dims is required to compute n")
    if any(d != dims[0] for d in dims):
        raise ValueError(f"{label}: the inputs must all have the same width, got dims={list(dims)}")
    return int(dims[0])


class weighted_summation_fusion(fusion):
    """tinybig's weighted summation: `y = Σ_i α_i · pre(x_i)`, inputs of one shape.

    The weights are `weights` (fixed, not a parameter: tinybig keeps them out of the
    `state_dict` too), or the w given to `forward` when `require_parameters=True`.

    Args:
        dims: the input widths (all equal), or `None`.
        weights: k weights (tensor or sequence of numbers); required unless
            `require_parameters=True`.
        name: returned by `get_name`.
        require_parameters: take the weights from `w` (l = k) instead.
        **kwargs: the processing functions and device, as in
            [`fusion`][hmfusion.compat.tinybig.fusion].

    Raises:
        TypeError: weights neither a tensor nor numbers.

    Example:
        >>> f = weighted_summation_fusion(dims=[2, 2], weights=torch.tensor([1.0, 2.0]))
        >>> f([torch.ones(1, 2), torch.ones(1, 2)])
        tensor([[3., 3.]])
    """

    def __init__(
        self,
        dims: Sequence[int] | None = None,
        weights: Any = None,
        name: str = "weighted_summation_fusion",
        require_parameters: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(dims=dims, name=name, require_parameters=require_parameters, **kwargs)
        if weights is not None and not isinstance(weights, Tensor):
            try:
                weights = torch.as_tensor(weights, dtype=torch.get_default_dtype())
            except (TypeError, ValueError, RuntimeError):
                raise TypeError(
                    f"weights must be a tensor or a sequence of numbers, got {weights!r}"
                ) from None
        self.weights: Tensor | None = weights

    def calculate_n(self, dims: Sequence[int] | None = None, *args: Any, **kwargs: Any) -> int:
        """The common input width (all dims must be equal)."""
        return _common_width("calculate_n", self.dims if dims is None else dims)

    def calculate_l(self, *args: Any, **kwargs: Any) -> int:
        """k with `require_parameters` (the weights are w), else 0."""
        return self.get_num() if self.require_parameters else 0

    def forward(
        self,
        x: Sequence[Tensor],
        w: Tensor | None = None,
        device: str | torch.device | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> Tensor:
        """`post(Σ_i α_i · pre(x_i))` with α the weights (or w).

        Args:
            x: a list or tuple of k tensors of the same shape.
            w: the k weights, shape (1, k) or (k,), with `require_parameters`;
                otherwise unused.
            device: accepted for tinybig's signature; unused.
            *args: ignored, as in tinybig.
            **kwargs: ignored, as in tinybig.

        Raises:
            ValueError: x empty or of unequal shapes; weights (or w) missing or not holding one
                value per input.
        """
        inputs = check_input_list(self, x, same_shape=True)
        stacked = torch.stack([self.pre_process(item) for item in inputs])
        weights = w if self.require_parameters else self.weights
        what = "w" if self.require_parameters else "weights"
        if weights is None:
            raise ValueError(
                f"{what} is required: {type(self).__name__} with require_parameters="
                f"{self.require_parameters} needs {len(inputs)} weights"
                + (" passed as w" if self.require_parameters else "")
            )
        weights = V.check_flat_vector(weights, len(inputs), what=what)
        dtype = stacked.dtype if stacked.is_floating_point() else weights.dtype
        weights = weights.to(device=stacked.device, dtype=dtype)
        fused = (stacked * weights.reshape(-1, *[1] * (stacked.dim() - 1))).sum(dim=0)
        return self.post_process(fused)

    def _config_parameters(self) -> dict[str, Any]:
        parameters = super()._config_parameters()
        parameters["weights"] = None if self.weights is None else self.weights.tolist()
        return parameters


class summation_fusion(weighted_summation_fusion):
    """tinybig's summation: `y = Σ_i pre(x_i)` (all weights 1).

    Args:
        dims: the input widths (all equal).
        name: returned by `get_name`.
        require_parameters: accepted for tinybig's signature; the weights are fixed, so it is
            ignored.
        **kwargs: the processing functions and device, as in
            [`fusion`][hmfusion.compat.tinybig.fusion].

    Example:
        >>> summation_fusion([2, 2])([torch.ones(1, 2), torch.ones(1, 2)])
        tensor([[2., 2.]])
    """

    #: divide the sum by k (average_fusion)
    _average = False

    def __init__(
        self,
        dims: Sequence[int],
        name: str = "summation_fusion",
        require_parameters: bool = False,
        **kwargs: Any,
    ) -> None:
        k = len(V.check_dims(dims))
        weights = torch.ones(k, dtype=torch.float64)  # exact in every dtype
        weights = weights / k if self._average else weights
        super().__init__(dims=dims, weights=weights, name=name, **kwargs)

    def _config_parameters(self) -> dict[str, Any]:
        parameters = super()._config_parameters()
        del parameters["weights"]
        return parameters


class average_fusion(summation_fusion):
    """tinybig's average (also its `mean_fusion` in `tinybig.fusion`): `y = Σ_i pre(x_i) / k`.

    Args:
        dims: the input widths (all equal).
        name: returned by `get_name`.
        require_parameters: accepted for tinybig's signature; the weights are fixed, so it is
            ignored.
        **kwargs: the processing functions and device, as in
            [`fusion`][hmfusion.compat.tinybig.fusion].

    Example:
        >>> average_fusion([2, 2])([torch.ones(1, 2), 3 * torch.ones(1, 2)])
        tensor([[2., 2.]])
    """

    _average = True

    def __init__(
        self,
        dims: Sequence[int],
        name: str = "average_fusion",
        require_parameters: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(dims=dims, name=name, **kwargs)


class parameterized_weighted_summation_fusion(weighted_summation_fusion):
    """tinybig's learned weighted summation: `y = Σ_i w_i · pre(x_i)`, w of length k.

    Args:
        dims: the input widths (all equal).
        name: returned by `get_name`.
        require_parameters: accepted for tinybig's signature; the fusion always takes w.
        **kwargs: the processing functions and device, as in
            [`fusion`][hmfusion.compat.tinybig.fusion].

    Example:
        >>> f = parameterized_weighted_summation_fusion(dims=[2, 2])
        >>> f([torch.ones(1, 2), torch.ones(1, 2)], w=torch.tensor([[0.5, 2.0]]))
        tensor([[2.5000, 2.5000]])
    """

    def __init__(
        self,
        dims: Sequence[int] | None = None,
        name: str = "parameterized_weighted_summation_fusion",
        require_parameters: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(dims=dims, weights=None, name=name, require_parameters=True, **kwargs)

    def _config_parameters(self) -> dict[str, Any]:
        parameters = super()._config_parameters()
        del parameters["weights"]
        return parameters


class concatenation_fusion(fusion):
    """tinybig's concatenation: `y = cat(pre(x_1), …, pre(x_k))` along the last dimension.

    Args:
        dims: the input widths, or `None` (then `calculate_n` needs them).
        name: returned by `get_name`.
        require_parameters: accepted for tinybig's signature; the fusion has no parameters.
        **kwargs: the processing functions and device, as in
            [`fusion`][hmfusion.compat.tinybig.fusion].

    Example:
        >>> concatenation_fusion(dims=[1, 2])([torch.zeros(3, 1), torch.ones(3, 2)]).shape
        torch.Size([3, 3])
    """

    def __init__(
        self,
        dims: Sequence[int] | None = None,
        name: str = "concatenation_fusion",
        require_parameters: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(dims=dims, name=name, require_parameters=False, **kwargs)

    def calculate_n(self, dims: Sequence[int] | None = None, *args: Any, **kwargs: Any) -> int:
        """D = Σ dims.

        Raises:
            ValueError: no dims given here or at construction.
        """
        dims = self.dims if dims is None else dims
        if dims is None:
            raise ValueError("calculate_n: dims is required (given here or at construction)")
        return sum(V.check_dims(dims))

    def calculate_l(self, *args: Any, **kwargs: Any) -> int:
        """0: concatenation has no parameters."""
        return 0

    def forward(
        self,
        x: Sequence[Tensor],
        w: Tensor | None = None,
        device: str | torch.device | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> Tensor:
        """`post(cat(pre(x_1), …, pre(x_k), dim=-1))`.

        Args:
            x: a list or tuple of k tensors, input i of shape `(*, dims[i])`.
            w: accepted for tinybig's signature; unused.
            device: accepted for tinybig's signature; unused.
            *args: ignored, as in tinybig.
            **kwargs: ignored, as in tinybig.

        Raises:
            ValueError: x empty, leading shapes differ, or count/widths differ from dims.
        """
        inputs = check_input_list(self, x, same_shape=False)
        return self.post_process(torch.cat([self.pre_process(t) for t in inputs], dim=-1))
