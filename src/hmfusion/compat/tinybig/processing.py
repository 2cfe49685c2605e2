"""Pre/post-processing functions: tinybig's names, callables and configs as allowlisted modules.

tinybig 0.2.1 accepts, wherever a fusion takes processing functions, `None`, a callable, a
string or a list of those, and instantiates configs by importing whatever dotted path they name.
Here every one of them becomes an `nn.Module` (stored by the fusion as tinybig stores it:
a list unregistered, a single module registered, all registered with `register_processing=True`;
see [`fusion`][hmfusion.compat.tinybig.fusion]), names are looked up in fixed tables (nothing is
ever imported), and a preprocessing module that would write into the caller's tensors
(`inplace=True`) is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hmfusion import _validation as V
from hmfusion.compat.tinybig.configkeys import drop_module_state

__all__ = [
    "Exp",
    "LastDimLayerNorm",
    "LastDimSoftmax",
    "processing_configs",
    "processing_modules",
]


class LastDimLayerNorm(nn.Module):
    """Layer norm over the last dimension, whatever its width, without affine parameters.

    tinybig's `"layer_norm"`: `F.layer_norm(x, [x.size(-1)])`. For a norm whose weight and
    bias train, use `torch.nn.LayerNorm` (by name `"torch.nn.LayerNorm"` in a config).

    Args:
        eps: added to the variance (default 1e-5).

    Shape:
        - Input: `(*, d)`; Output: `(*, d)`.

    Example:
        >>> LastDimLayerNorm()(torch.tensor([[1.0, 3.0]]))
        tensor([[-1.0000,  1.0000]])
    """

    def __init__(self, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, x.shape[-1:], eps=self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


class Exp(nn.Module):
    """The elementwise exponential, `torch.exp` as a module (tinybig's `"torch.exp"`).

    Shape:
        - Input: any; Output: the same shape.

    Example:
        >>> Exp()(torch.zeros(2))
        tensor([1., 1.])
    """

    def forward(self, x: Tensor) -> Tensor:
        return torch.exp(x)


class LastDimSoftmax(nn.Softmax):
    """Softmax over the last dimension: `"softmax"` as a processing name.

    tinybig 0.2.1 warns and returns x unchanged for the string `"softmax"`; here the function
    named is applied, over the last dimension (`torch.nn.Softmax(dim=-1)`). The callable
    `F.softmax` is called as tinybig calls it.

    Args:
        dim: the dimension normalised (default -1, the last).

    Shape:
        - Input: any; Output: the same shape, summing to 1 along `dim`.

    Example:
        >>> LastDimSoftmax()(torch.zeros(1, 2))
        tensor([[0.5000, 0.5000]])
    """

    def __init__(self, dim: int = -1) -> None:
        super().__init__(dim=dim)


class _CallableProcessing(nn.Module):
    """A user's callable as a processing step (works; cannot be written to a config)."""

    def __init__(self, function: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.function = function

    def forward(self, x: Tensor) -> Tensor:
        return self.function(x)

    def extra_repr(self) -> str:
        return getattr(self.function, "__qualname__", repr(self.function))


def _attributes(*names: str) -> Callable[[nn.Module], dict]:
    return lambda module: {name: getattr(module, name) for name in names}


def _layer_norm_arguments(module: nn.LayerNorm) -> dict:
    return {
        "normalized_shape": list(module.normalized_shape),
        "eps": module.eps,
        "elementwise_affine": module.elementwise_affine,
        "bias": module.bias is not None,
    }


# The allowlist: processing class -> (its name in configs, its constructor arguments read back).
_PROCESSING_CLASSES: dict[type, tuple[str, Callable[[Any], dict]]] = {
    nn.ReLU: ("torch.nn.ReLU", _attributes("inplace")),
    nn.GELU: ("torch.nn.GELU", _attributes("approximate")),
    nn.Sigmoid: ("torch.nn.Sigmoid", _attributes()),
    nn.Tanh: ("torch.nn.Tanh", _attributes()),
    nn.Softplus: ("torch.nn.Softplus", _attributes("beta", "threshold")),
    nn.SiLU: ("torch.nn.SiLU", _attributes("inplace")),
    nn.LeakyReLU: ("torch.nn.LeakyReLU", _attributes("negative_slope", "inplace")),
    nn.CELU: ("torch.nn.CELU", _attributes("alpha", "inplace")),
    nn.ELU: ("torch.nn.ELU", _attributes("alpha", "inplace")),
    nn.Dropout: ("torch.nn.Dropout", _attributes("p", "inplace")),
    nn.LayerNorm: ("torch.nn.LayerNorm", _layer_norm_arguments),
    nn.Identity: ("torch.nn.Identity", _attributes()),
    nn.Softmax: ("torch.nn.Softmax", _attributes("dim")),
    LastDimSoftmax: ("softmax", _attributes("dim")),
    LastDimLayerNorm: ("layer_norm", _attributes("eps")),
    Exp: ("torch.exp", _attributes()),
}

# tinybig's short names (and their torch.nn.functional spellings), which it applies functionally.
_SHORT_NAMES: dict[str, type] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
    "silu": nn.SiLU,
    "leaky_relu": nn.LeakyReLU,
    "celu": nn.CELU,
    "elu": nn.ELU,
    "dropout": nn.Dropout,
    "layer_norm": LastDimLayerNorm,
    "identity": nn.Identity,
    "softmax": LastDimSoftmax,
}


def _processing_names() -> dict[str, type]:
    names: dict[str, type] = {}
    for short, cls in _SHORT_NAMES.items():
        names[short] = cls
        if hasattr(F, short):
            names[f"torch.nn.functional.{short}"] = cls
    for cls, (config_name, _) in _PROCESSING_CLASSES.items():
        names[config_name] = cls
        if cls.__module__.startswith("torch.nn"):  # tinybig's to_config writes the full path
            names[f"{cls.__module__}.{cls.__name__}"] = cls
    return names


_PROCESSING_NAMES = _processing_names()

# torch functions tinybig users pass as callables, mapped onto the allowlisted modules (so that
# they serialize, and F.dropout stops dropping in eval mode).
_PROCESSING_CALLABLES: dict[Callable, type] = {
    F.relu: nn.ReLU,
    torch.relu: nn.ReLU,
    F.gelu: nn.GELU,
    F.sigmoid: nn.Sigmoid,
    torch.sigmoid: nn.Sigmoid,
    F.tanh: nn.Tanh,
    torch.tanh: nn.Tanh,
    F.softplus: nn.Softplus,
    F.silu: nn.SiLU,
    F.leaky_relu: nn.LeakyReLU,
    F.celu: nn.CELU,
    F.elu: nn.ELU,
    F.dropout: nn.Dropout,
    F.layer_norm: LastDimLayerNorm,
    torch.exp: Exp,
}  # not F.softmax: called as tinybig calls it, its implicit dim is not always the last


def _processing_class(label: str, name: str) -> type:
    """The allowlisted class `name` stands for: a dictionary lookup, never an import."""
    cls = _PROCESSING_NAMES.get(name if "." in name else name.lower())
    if cls is None:
        raise ValueError(
            f"{label}={name!r} is not an allowed processing function; allowed are "
            f"{sorted(_SHORT_NAMES)} and "
            f"{sorted(n for n, _ in _PROCESSING_CLASSES.values() if '.' in n)}. "
            f"Pass a callable or an nn.Module to use anything else (configs never import code)"
        )
    return cls


def _refuse_in_place(label: str, module: nn.Module) -> nn.Module:
    if getattr(module, "inplace", False) is True:
        raise ValueError(
            f"{label} ({module!r}) has inplace=True: as a preprocessing step it would write into "
            f"the caller's input tensors; use inplace=False"
        )
    return module


def _from_function(label: str, item: object, factory: dict) -> nn.Module:
    if isinstance(item, nn.Module):
        return item
    if isinstance(item, str):
        return _processing_class(label, item)().to(**factory)
    if callable(item):
        cls = _PROCESSING_CALLABLES.get(item) if isinstance(item, Hashable) else None
        return cls().to(**factory) if cls is not None else _CallableProcessing(item)
    raise TypeError(
        f"{label} must be a callable, an nn.Module or an allowed name, got {type(item).__name__}"
    )


def _from_config(label: str, config: object, factory: dict) -> nn.Module:
    if not isinstance(config, Mapping):
        raise TypeError(
            f"{label} must be a dict {{'function_class': ..., 'function_parameters': {{...}}}}, "
            f"got {type(config).__name__}"
        )
    # tinybig's instantiation_functions writes a top-level "device" into a processing config.
    unknown = sorted(map(str, set(config) - {"function_class", "function_parameters", "device"}))
    if unknown:
        raise ValueError(f"{label} has unknown keys {unknown}")
    name = config.get("function_class")
    if not isinstance(name, str):
        raise TypeError(f"{label}['function_class'] must be a str, got {type(name).__name__}")
    cls = _processing_class(f"{label}['function_class']", name)
    parameters = config.get("function_parameters")
    parameters = {} if parameters is None else parameters
    if not isinstance(parameters, Mapping) or not all(isinstance(k, str) for k in parameters):
        raise TypeError(f"{label}['function_parameters'] must be a dict with str keys")
    # tinybig's to_config dumps every attribute of the module (nn.Module's bookkeeping too).
    parameters = drop_module_state(parameters)
    for where in (parameters, config):  # torch asserts (a traceback) on a missing backend
        if where.get("device") is not None:
            try:
                V.check_device(where["device"])
            except (TypeError, ValueError) as error:
                raise ValueError(f"{label}: {error}") from None
    try:
        module = cls(**parameters)
    except TypeError as error:
        raise TypeError(f"{label}: invalid function_parameters for {name}: {error}") from None
    except RuntimeError as error:  # the allocator's refusal (a huge normalized_shape, ...)
        first = (str(error).strip().splitlines() or [""])[0]
        raise ValueError(f"{label}: {name} cannot be built: {first}") from None
    if isinstance(module, nn.GELU) and module.approximate not in ("none", "tanh"):
        raise ValueError(
            f"{label}: approximate must be 'none' or 'tanh', got {module.approximate!r}"
        )
    return module.to(**factory)


def processing_modules(
    what: str,
    functions: object,
    configs: object = None,
    factory: dict | None = None,
) -> nn.ModuleList:
    """tinybig's `<what>_functions` / `<what>_function_configs` as a list of modules.

    Args:
        what: `"preprocess"` or `"postprocess"` (names the argument in messages; a
            preprocessing module with `inplace=True` is refused).
        functions: `None`, a callable, an `nn.Module`, an allowed name or a list/tuple of
            them (tinybig's `func_x` semantics, in order).
        configs: instead, `{"function_class": name, "function_parameters": {...}}` or a list
            of those.
        factory: `device`/`dtype` for modules built from names and configs.

    Returns:
        An `nn.ModuleList` (empty for `None`).

    Raises:
        ValueError: both given, a name not in the allowlist, an unknown config key, a
            preprocessing module with `inplace=True`.
        TypeError: an item that is neither callable nor a name, a config of the wrong shape.

    Example:
        >>> processing_modules("preprocess", ["relu", torch.exp])
        ModuleList(
          (0): ReLU()
          (1): Exp()
        )
    """
    factory = {} if factory is None else factory
    if functions is not None and configs is not None:
        raise ValueError(f"pass {what}_functions or {what}_function_configs, not both")
    if functions is not None:
        if isinstance(functions, (list, tuple, nn.ModuleList)):
            items: list[object] = list(functions)
        else:
            items = [functions]
        modules = [
            _from_function(f"{what}_functions[{i}]", item, factory) for i, item in enumerate(items)
        ]
        label = f"{what}_functions"
    elif configs is not None:
        if isinstance(configs, Mapping):
            configs = [configs]
        if not isinstance(configs, (list, tuple)):
            raise TypeError(
                f"{what}_function_configs must be a dict or a list of dicts, got "
                f"{type(configs).__name__}"
            )
        modules = [
            _from_config(f"{what}_function_configs[{i}]", config, factory)
            for i, config in enumerate(configs)
        ]
        label = f"{what}_function_configs"
    else:
        return nn.ModuleList()
    if what == "preprocess":
        for i, module in enumerate(modules):
            _refuse_in_place(f"{label}[{i}]", module)
    return nn.ModuleList(modules)


def processing_configs(what: str, modules: nn.ModuleList) -> list[dict] | None:
    """The configs `processing_modules` rebuilds `modules` from (`None` if empty).

    Raises:
        ValueError: a module is not allowlisted (a user's callable or module).

    Example:
        >>> processing_configs("postprocess", processing_modules("postprocess", "relu"))
        [{'function_class': 'torch.nn.ReLU', 'function_parameters': {'inplace': False}}]
    """
    if len(modules) == 0:
        return None
    configs = []
    for i, module in enumerate(modules):
        entry = _PROCESSING_CLASSES.get(type(module))
        if entry is None:
            raise ValueError(
                f"{what}_functions[{i}] ({module!r}) cannot be written to a config: only the "
                f"allowlisted processing functions can ({sorted(_SHORT_NAMES)}, torch.exp, "
                f"torch.nn.LayerNorm and the torch.nn classes of the others)"
            )
        name, arguments = entry
        configs.append({"function_class": name, "function_parameters": arguments(module)})
    return configs
