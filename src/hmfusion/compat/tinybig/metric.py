"""tinybig 0.2.1's metric fusions: an elementwise statistic across the k inputs.

`y[..., j] = metric(pre(x_1)[..., j], …, pre(x_k)[..., j])` for inputs of one shape: max,
min, sum, mean, product, median (the lower one for even k, as `torch.median`), L1 and L2
norm. The same names and signatures as `tinybig.fusion.metric_fusion`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from hmfusion.compat.tinybig.base import fusion
from hmfusion.compat.tinybig.basic import _common_width, check_input_list

__all__ = [
    "METRICS",
    "l1_norm_fusion",
    "l2_norm_fusion",
    "max_fusion",
    "mean_fusion",
    "median_fusion",
    "metric_fusion",
    "min_fusion",
    "prod_fusion",
    "sum_fusion",
]


def batch_max(x: Tensor) -> Tensor:
    """Row-wise maximum of a (rows × k) tensor (tinybig's `batch_max`)."""
    return torch.max(x, dim=1).values


def batch_min(x: Tensor) -> Tensor:
    """Row-wise minimum of a (rows × k) tensor (tinybig's `batch_min`)."""
    return torch.min(x, dim=1).values


def batch_sum(x: Tensor) -> Tensor:
    """Row-wise sum of a (rows × k) tensor (tinybig's `batch_sum`)."""
    return torch.sum(x, dim=1)


def batch_mean(x: Tensor) -> Tensor:
    """Row-wise mean of a (rows × k) tensor (tinybig's `batch_mean`)."""
    return torch.mean(x, dim=1)


def batch_prod(x: Tensor) -> Tensor:
    """Row-wise product of a (rows × k) tensor (tinybig's `batch_prod`)."""
    return torch.prod(x, dim=1)


def batch_median(x: Tensor) -> Tensor:
    """Row-wise median of a (rows × k) tensor, the lower one for even k (`torch.median`)."""
    return torch.median(x, dim=1).values


def batch_l1_norm(x: Tensor) -> Tensor:
    """Row-wise L1 norm of a (rows × k) tensor (tinybig's `batch_l1_norm`)."""
    return torch.linalg.vector_norm(x, ord=1, dim=1)


def batch_l2_norm(x: Tensor) -> Tensor:
    """Row-wise L2 norm of a (rows × k) tensor (tinybig's `batch_l2_norm`)."""
    return torch.linalg.vector_norm(x, ord=2, dim=1)


#: the metrics a config may name, by the names tinybig's functions have
METRICS: dict[str, Callable[[Tensor], Tensor]] = {
    function.__name__: function
    for function in (
        batch_max,
        batch_min,
        batch_sum,
        batch_mean,
        batch_prod,
        batch_median,
        batch_l1_norm,
        batch_l2_norm,
    )
}


class metric_fusion(fusion):
    """tinybig's metric fusion: `y = metric` of the k inputs, elementwise.

    Args:
        dims: the input widths (all equal).
        metric: a function from a (rows × k) tensor to its (rows,) statistic, or the name of
            one in `METRICS` (`"batch_max"`, … also as `tinybig.koala...batch_max`).
        name: returned by `get_name`.
        **kwargs: the processing functions and device, as in
            [`fusion`][hmfusion.compat.tinybig.fusion].

    Raises:
        TypeError: metric is neither callable nor a str.
        ValueError: a metric name not in `METRICS`.

    Example:
        >>> f = metric_fusion(dims=[2, 2], metric=batch_max)
        >>> f([torch.tensor([[1.0, 5.0]]), torch.tensor([[3.0, 2.0]])])
        tensor([[3., 5.]])
    """

    def __init__(
        self,
        dims: Sequence[int],
        metric: Callable[[Tensor], Tensor] | str,
        name: str = "metric_fusion",
        **kwargs: Any,
    ) -> None:
        kwargs.pop("require_parameters", None)  # tinybig forces False
        super().__init__(dims=dims, name=name, require_parameters=False, **kwargs)
        if isinstance(metric, str):
            function = METRICS.get(metric.rsplit(".", 1)[-1])
            if function is None:
                raise ValueError(f"metric={metric!r} is not one of {sorted(METRICS)}")
            metric = function
        if not callable(metric):
            raise TypeError(f"metric must be callable or a name, got {type(metric).__name__}")
        self.metric = metric

    def calculate_n(self, dims: Sequence[int] | None = None, *args: Any, **kwargs: Any) -> int:
        """The common input width (all dims must be equal)."""
        return _common_width("calculate_n", self.dims if dims is None else dims)

    def calculate_l(self, *args: Any, **kwargs: Any) -> int:
        """0: metric fusions have no parameters."""
        return 0

    def forward(
        self,
        x: Sequence[Tensor],
        w: Tensor | None = None,
        device: str | torch.device | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> Tensor:
        """`post(metric(pre(x_1), …, pre(x_k)))` elementwise.

        Args:
            x: a list or tuple of k tensors of the same shape.
            w: accepted for tinybig's signature; unused.
            device: accepted for tinybig's signature; unused.
            *args: ignored, as in tinybig.
            **kwargs: ignored, as in tinybig.

        Raises:
            ValueError: x empty, of unequal shapes, or not matching dims.
        """
        inputs = check_input_list(self, x, same_shape=True)
        stacked = torch.stack([self.pre_process(item) for item in inputs], dim=-1)
        fused = self.metric(stacked.reshape(-1, len(inputs))).reshape(stacked.shape[:-1])
        return self.post_process(fused)

    def _config_parameters(self) -> dict[str, Any]:
        parameters = super()._config_parameters()
        del parameters["require_parameters"]
        name = getattr(self.metric, "__name__", None)
        if METRICS.get(name or "") is not self.metric:
            raise ValueError(f"metric {self.metric!r} cannot be written to a config")
        if type(self) is metric_fusion:
            parameters["metric"] = name
        return parameters


class _NamedMetricFusion(metric_fusion):
    """A metric fusion whose class fixes the metric (tinybig's `max_fusion`, …)."""

    _metric: Callable[[Tensor], Tensor]

    def __init__(self, name: str, *args: Any, **kwargs: Any) -> None:
        kwargs.pop("metric", None)  # written by tinybig's to_config; the class decides it
        # tinybig's (name, *args, **kwargs): args are metric_fusion's (dims first)
        super().__init__(*args, name=name, metric=type(self)._metric, **kwargs)  # type: ignore[misc]


class max_fusion(_NamedMetricFusion):
    """tinybig's max_fusion: the elementwise maximum.

    Args:
        name: returned by `get_name` (default `"max_fusion"`).
        *args: `metric_fusion`'s positional arguments after `name` (`dims` first), as in
            `metric_fusion`; its `metric` is fixed by the
            class.
        **kwargs: `dims`, the processing functions and `device`, as in
            `metric_fusion`.

    Example:
        >>> max_fusion(dims=[1, 1])([torch.tensor([[1.0]]), torch.tensor([[2.0]])])
        tensor([[2.]])
    """

    _metric = staticmethod(batch_max)

    def __init__(self, name: str = "max_fusion", *args: Any, **kwargs: Any) -> None:
        super().__init__(name, *args, **kwargs)


class min_fusion(_NamedMetricFusion):
    """tinybig's min_fusion: the elementwise minimum.

    Args:
        name: returned by `get_name` (default `"min_fusion"`).
        *args: `metric_fusion`'s positional arguments after `name` (`dims` first), as in
            `metric_fusion`; its `metric` is fixed by the
            class.
        **kwargs: `dims`, the processing functions and `device`, as in
            `metric_fusion`.

    Example:
        >>> min_fusion(dims=[1, 1])([torch.tensor([[1.0]]), torch.tensor([[2.0]])])
        tensor([[1.]])
    """

    _metric = staticmethod(batch_min)

    def __init__(self, name: str = "min_fusion", *args: Any, **kwargs: Any) -> None:
        super().__init__(name, *args, **kwargs)


class sum_fusion(_NamedMetricFusion):
    """tinybig's sum_fusion: the elementwise sum.

    Args:
        name: returned by `get_name` (default `"sum_fusion"`).
        *args: `metric_fusion`'s positional arguments after `name` (`dims` first), as in
            `metric_fusion`; its `metric` is fixed by the
            class.
        **kwargs: `dims`, the processing functions and `device`, as in
            `metric_fusion`.

    Example:
        >>> sum_fusion(dims=[1, 1])([torch.tensor([[1.0]]), torch.tensor([[2.0]])])
        tensor([[3.]])
    """

    _metric = staticmethod(batch_sum)

    def __init__(self, name: str = "sum_fusion", *args: Any, **kwargs: Any) -> None:
        super().__init__(name, *args, **kwargs)


class mean_fusion(_NamedMetricFusion):
    """tinybig's mean_fusion: the elementwise mean.

    Args:
        name: returned by `get_name` (default `"mean_fusion"`).
        *args: `metric_fusion`'s positional arguments after `name` (`dims` first), as in
            `metric_fusion`; its `metric` is fixed by the
            class.
        **kwargs: `dims`, the processing functions and `device`, as in
            `metric_fusion`.

    Example:
        >>> mean_fusion(dims=[1, 1])([torch.tensor([[1.0]]), torch.tensor([[2.0]])])
        tensor([[1.5000]])
    """

    _metric = staticmethod(batch_mean)

    def __init__(self, name: str = "mean_fusion", *args: Any, **kwargs: Any) -> None:
        super().__init__(name, *args, **kwargs)


class prod_fusion(_NamedMetricFusion):
    """tinybig's prod_fusion: the elementwise product.

    Args:
        name: returned by `get_name` (default `"prod_fusion"`).
        *args: `metric_fusion`'s positional arguments after `name` (`dims` first), as in
            `metric_fusion`; its `metric` is fixed by the
            class.
        **kwargs: `dims`, the processing functions and `device`, as in
            `metric_fusion`.

    Example:
        >>> prod_fusion(dims=[1, 1])([torch.tensor([[3.0]]), torch.tensor([[2.0]])])
        tensor([[6.]])
    """

    _metric = staticmethod(batch_prod)

    def __init__(self, name: str = "prod_fusion", *args: Any, **kwargs: Any) -> None:
        super().__init__(name, *args, **kwargs)


class median_fusion(_NamedMetricFusion):
    """tinybig's median_fusion: the elementwise median (the lower one for even k).

    Args:
        name: returned by `get_name` (default `"median_fusion"`).
        *args: `metric_fusion`'s positional arguments after `name` (`dims` first), as in
            `metric_fusion`; its `metric` is fixed by the
            class.
        **kwargs: `dims`, the processing functions and `device`, as in
            `metric_fusion`.

    Example:
        >>> median_fusion(dims=[1, 1])([torch.tensor([[3.0]]), torch.tensor([[2.0]])])
        tensor([[2.]])
    """

    _metric = staticmethod(batch_median)

    def __init__(self, name: str = "median_fusion", *args: Any, **kwargs: Any) -> None:
        super().__init__(name, *args, **kwargs)


class l1_norm_fusion(_NamedMetricFusion):
    """tinybig's l1_norm_fusion: Σ_i |x_i| elementwise.

    Args:
        name: returned by `get_name` (default `"l1_norm_fusion"`).
        *args: `metric_fusion`'s positional arguments after `name` (`dims` first), as in
            `metric_fusion`; its `metric` is fixed by the
            class.
        **kwargs: `dims`, the processing functions and `device`, as in
            `metric_fusion`.

    Example:
        >>> l1_norm_fusion(dims=[1, 1])([torch.tensor([[-3.0]]), torch.tensor([[2.0]])])
        tensor([[5.]])
    """

    _metric = staticmethod(batch_l1_norm)

    def __init__(self, name: str = "l1_norm_fusion", *args: Any, **kwargs: Any) -> None:
        super().__init__(name, *args, **kwargs)


class l2_norm_fusion(_NamedMetricFusion):
    """tinybig's l2_norm_fusion: (Σ_i x_i²)^½ elementwise.

    Args:
        name: returned by `get_name` (default `"l2_norm_fusion"`).
        *args: `metric_fusion`'s positional arguments after `name` (`dims` first), as in
            `metric_fusion`; its `metric` is fixed by the
            class.
        **kwargs: `dims`, the processing functions and `device`, as in
            `metric_fusion`.

    Example:
        >>> l2_norm_fusion(dims=[1, 1])([torch.tensor([[3.0]]), torch.tensor([[4.0]])])
        tensor([[5.]])
    """

    _metric = staticmethod(batch_l2_norm)

    def __init__(self, name: str = "l2_norm_fusion", *args: Any, **kwargs: Any) -> None:
        super().__init__(name, *args, **kwargs)
