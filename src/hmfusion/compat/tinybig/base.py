"""tinybig 0.2.1's `fusion` base class: dims, name, device, processing functions, configs.

The base of every class in [`hmfusion.compat.tinybig`][hmfusion.compat.tinybig], with tinybig's
constructor, accessors and static helpers (`func_x`, `str_func_x`, `functions_to_configs`,
`string_to_function`), minus its `assert`s and its imports of whatever a string names.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from hmfusion import _validation as V
from hmfusion.compat.tinybig import processing as P
from hmfusion.compat.tinybig.formula import parse_formula

__all__ = ["DeviceName", "DimIndexError", "fusion"]

#: the package path written into `function_class` by `to_config`
CONFIG_PREFIX = "hmfusion.compat.tinybig"
_PROCESSING_ATTRIBUTES = {
    "preprocess_functions": "preprocess",
    "postprocess_functions": "postprocess",
}


class DeviceName(str):
    """A device as tinybig stores it (a string such as `"cpu"`), also equal to a `torch.device`.

    Example:
        >>> DeviceName("cpu") == "cpu", DeviceName("cpu") == torch.device("cpu")
        (True, True)
    """

    def __eq__(self, other: object) -> bool:
        if isinstance(other, torch.device):
            return torch.device(str(self)) == other
        return str.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    __hash__ = str.__hash__


class DimIndexError(IndexError, ValueError):
    """`get_dim(index)` out of bounds: an `IndexError` (as tinybig's list lookup raises)
    that is also the `ValueError` tinybig documents.

    Example:
        >>> issubclass(DimIndexError, IndexError) and issubclass(DimIndexError, ValueError)
        True
    """


class fusion(nn.Module):
    """tinybig's fusion base class: `fusion(x_1, …, x_k)` with pre- and post-processing.

    Subclasses define `calculate_n` (output width), `calculate_l` (length of the
    flat parameter vector w) and `forward`. Processing functions are attributes with
    tinybig's semantics: assign `None`, a callable, an `nn.Module`, an allowed name
    (`"relu"`, `"layer_norm"`, `"torch.exp"`, … see `processing`) or a list of them.

    Registration, as in tinybig: a list (or tuple, or a list of configs) is held as a plain
    Python list of modules — not registered, so not in `parameters()` or `state_dict()`: a
    `torch.nn.LayerNorm` in it does not train and is not saved. A single `nn.Module` (or a
    single config dict) is registered under the attribute's name, as torch's attribute
    assignment does in tinybig (`state_dict` keys `preprocess_functions.<name>`).
    `register_processing=True` registers every processing module (an `nn.ModuleList`:
    keys `preprocess_functions.<i>.<name>`), so that a norm trains; assigning it later stores
    the current modules anew (registered, or as a plain list). Either way the modules follow
    `train()` / `eval()` and `.to()` (tinybig's list-held modules do not).

    Args:
        dims: the input widths n_1 … n_k, or `None`; kept as given (list or tuple).
        name: returned by `get_name`.
        require_parameters: whether `forward` takes a flat parameter vector w.
        preprocess_functions: applied to each input (see above).
        postprocess_functions: applied to the output.
        preprocess_function_configs: instead of `preprocess_functions`,
            `{"function_class": <allowed name>, "function_parameters": {...}}` or a list.
        postprocess_function_configs: instead of `postprocess_functions`, in the same form.
        device: tinybig's device string (default `"cpu"`); where processing modules built
            from names are created.
        register_processing: register every processing module as a submodule (default
            `False`: tinybig's plain list, see above).

    Raises:
        TypeError: name not a str, require_parameters or register_processing not a bool,
            device not a str or `torch.device`, dims not a sequence of ints.
        ValueError: a non-positive dim, a processing name not allowed, a preprocessing module
            with `inplace=True`, both functions and configs given.

    Example:
        >>> from hmfusion.compat.tinybig import concatenation_fusion  # a subclass
        >>> f = concatenation_fusion(dims=[2, 3])
        >>> f.get_num(), f.calculate_n(), f.device == "cpu"
        (2, 5, True)
    """

    #: the stored value: a plain list, a single registered module, or an `nn.ModuleList`
    preprocess_functions: list[nn.Module] | nn.Module
    postprocess_functions: list[nn.Module] | nn.Module

    def __init__(
        self,
        dims: Sequence[int] | None = None,
        name: str = "base_fusion",
        require_parameters: bool = False,
        preprocess_functions: Any = None,
        postprocess_functions: Any = None,
        preprocess_function_configs: Any = None,
        postprocess_function_configs: Any = None,
        device: str | torch.device = "cpu",
        register_processing: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {type(name).__name__}")
        V.check_bool("require_parameters", require_parameters)
        self.register_processing = V.check_bool("register_processing", register_processing)
        self.device = device
        self.name = name
        self.require_parameters = require_parameters
        if dims is None:
            self.dims: list[int] | tuple[int, ...] | None = None
        else:
            checked = V.check_dims(dims)
            self.dims = checked if isinstance(dims, tuple) else list(checked)
        self._store_processing(
            "preprocess_functions", preprocess_functions, preprocess_function_configs
        )
        self._store_processing(
            "postprocess_functions", postprocess_functions, postprocess_function_configs
        )

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _PROCESSING_ATTRIBUTES:  # tinybig's assignable processing functions
            self._store_processing(name, value, None)
            return
        if name == "register_processing":
            V.check_bool("register_processing", value)
        super().__setattr__(name, value)
        if name == "register_processing" and "_device" in self.__dict__:  # store them anew
            for attribute in _PROCESSING_ATTRIBUTES:
                self._store_processing(attribute, self._processing(attribute), None)

    def _store_processing(self, attribute: str, functions: Any, configs: Any) -> None:
        """Build the processing modules and store them as tinybig would (see the class)."""
        what = _PROCESSING_ATTRIBUTES[attribute]
        factory = {"device": torch.device(self._device)}
        modules = P.processing_modules(what, functions, configs, factory)
        self._modules.pop(attribute, None)
        self.__dict__.pop(attribute, None)
        given = functions if functions is not None else configs
        if self.register_processing:
            super().__setattr__(attribute, modules)
        elif isinstance(given, nn.Module) or (
            isinstance(given, Mapping) and functions is None and len(modules) == 1
        ):  # one module (or one config) in tinybig is an attribute torch registers
            super().__setattr__(attribute, given if isinstance(given, nn.Module) else modules[0])
        else:  # tinybig's plain list: not registered, not saved, not trained
            self.__dict__[attribute] = list(modules)

    def _processing(self, attribute: str) -> list[nn.Module]:
        """The processing modules in order, however they are stored."""
        stored = getattr(self, attribute)
        if isinstance(stored, nn.ModuleList):
            return list(stored)
        return [stored] if isinstance(stored, nn.Module) else list(stored)

    def _held_processing(self) -> list[nn.Module]:
        """The processing modules held in plain lists (not registered)."""
        return [
            module
            for attribute in _PROCESSING_ATTRIBUTES
            if isinstance(self.__dict__.get(attribute), list)
            for module in self.__dict__[attribute]
        ]

    def train(self, mode: bool = True) -> fusion:
        """`nn.Module.train`; processing modules held in a plain list follow it too (so
        dropout stops under `eval()`), although they are not registered.

        Args:
            mode: training (`True`) or evaluation (`False`) mode.
        """
        super().train(mode)
        for module in self._held_processing():
            module.train(mode)
        return self

    def _apply(self, fn: Any, recurse: bool = True) -> fusion:
        # `.to()`, `.double()`, `.cuda()`: processing modules held in a plain list move too.
        super()._apply(fn, recurse)
        if recurse:
            for module in self._held_processing():
                module._apply(fn)
        return self

    # device ------------------------------------------------------------------------------------
    @property
    def device(self) -> DeviceName:
        """The device given (`"cpu"`, `"cuda"`, …; follows `.to()`) as tinybig stores it,
        or where the module's tensors are if they were moved elsewhere; a string that also
        equals the `torch.device`."""
        given = torch.device(self._device)
        for tensor in itertools.chain(self.parameters(), self.buffers()):
            actual = tensor.device
            if actual.type != given.type or given.index not in (None, actual.index):
                return DeviceName(str(actual))
            break
        return DeviceName(self._device)

    @device.setter
    def device(self, value: str | torch.device) -> None:
        if not isinstance(value, (str, torch.device)):
            raise TypeError(f"device must be a str or torch.device, got {type(value).__name__}")
        try:
            torch.device(value)
        except RuntimeError as error:
            raise ValueError(f"device={value!r} is not a device: {error}") from None
        self._device = str(value)

    def to(self, *args: Any, **kwargs: Any) -> fusion:
        """`nn.Module.to`; the device moved to also becomes `device` (tinybig's
        attribute), so a fusion without tensors of its own follows too.

        Args:
            *args: as in `nn.Module.to` (a device, a dtype, a tensor).
            **kwargs: as in `nn.Module.to` (`device=`, `dtype=`, `non_blocking=`).
        """
        device = torch._C._nn._parse_to(*args, **kwargs)[0]
        if device is not None:
            self._device = str(device)
        return super().to(*args, **kwargs)

    # tinybig's accessors --------------------------------------------------------------------------
    def get_name(self) -> str:
        """The name given at construction."""
        return self.name

    def get_dims(self) -> list[int] | tuple[int, ...] | None:
        """The input widths, as given (`None` if not given)."""
        return self.dims

    def get_num(self) -> int:
        """k, the number of inputs (0 without dims)."""
        return 0 if self.dims is None else len(self.dims)

    def get_dim(self, index: int) -> int | None:
        """dims[index] for 0 ≤ index < len(dims) (`None` without dims).

        Args:
            index: the input's position.

        Raises:
            TypeError: index is not an int.
            DimIndexError: index is out of bounds (an `IndexError` and a `ValueError`).
        """
        if self.dims is None:
            return None
        index = V.check_int("index", index)
        if not 0 <= index < len(self.dims):
            raise DimIndexError(
                f"index {index} is out of bounds for dims={list(self.dims)} "
                f"(0 ≤ index < {len(self.dims)})"
            )
        return self.dims[index]

    def calculate_n(self, dims: Sequence[int] | None = None, *args: Any, **kwargs: Any) -> int:
        """The output width (subclasses define it).

        Args:
            dims: the input widths (default: the fusion's own).
            *args: accepted for tinybig's signature.
            **kwargs: accepted for tinybig's signature.

        Raises:
            NotImplementedError: the class does not define it.
        """
        raise NotImplementedError(f"{type(self).__name__} does not define calculate_n")

    def calculate_l(self, *args: Any, **kwargs: Any) -> int:
        """l, the length of the flat parameter vector w (subclasses define it).

        Args:
            *args: accepted for tinybig's signature.
            **kwargs: accepted for tinybig's signature.

        Raises:
            NotImplementedError: the class does not define it.
        """
        raise NotImplementedError(f"{type(self).__name__} does not define calculate_l")

    def forward(
        self, x: Any, w: Tensor | None = None, device: Any = None, *args: Any, **kwargs: Any
    ) -> Any:
        """The fusion (subclasses define it).

        Args:
            x: the inputs, a list or tuple of tensors.
            w: the flat parameter vector, for the classes that take one.
            device: accepted for tinybig's signature.
            *args: accepted for tinybig's signature (its classes ignore them).
            **kwargs: accepted for tinybig's signature (its classes ignore them).

        Raises:
            NotImplementedError: the class does not define it.
        """
        raise NotImplementedError(f"{type(self).__name__} does not define forward")

    # processing ---------------------------------------------------------------------------------
    def pre_process(self, x: Tensor, device: str | torch.device | None = None) -> Tensor:
        """Apply the preprocessing functions, in order, to one input.

        Args:
            x: one input.
            device: accepted for tinybig's signature; unused.
        """
        for function in self._processing("preprocess_functions"):
            x = function(x)
        return x

    def post_process(self, x: Tensor, device: str | torch.device | None = None) -> Tensor:
        """Apply the postprocessing functions, in order, to the output.

        Args:
            x: the fused output.
            device: accepted for tinybig's signature; unused.
        """
        for function in self._processing("postprocess_functions"):
            x = function(x)
        return x

    @staticmethod
    def func_x(x: Tensor, functions: Any, device: str | torch.device = "cpu") -> Tensor:
        """tinybig's `function.func_x`: apply `functions` (`None`, a callable, an allowed
        name or a list of them) to x, in order.

        Raises:
            ValueError: a name not in the allowlist (nothing is imported).
            TypeError: an item that is neither callable nor a str.

        Example:
            >>> fusion.func_x(torch.tensor([-1.0, 2.0]), ["relu", torch.exp])
            tensor([1.0000, 7.3891])
        """
        items = functions if isinstance(functions, (list, tuple)) else [functions]
        for function in items:
            x = fusion.str_func_x(x, function, device=device)
        return x

    @staticmethod
    def str_func_x(x: Tensor, func: Any, device: str | torch.device = "cpu") -> Tensor:
        """tinybig's `function.str_func_x`: apply one function, given as a callable or an
        allowed name, to x (`None` returns x).

        Raises:
            ValueError: a name not in the allowlist.
            TypeError: func is neither `None`, a callable nor a str.

        Example:
            >>> fusion.str_func_x(torch.tensor([0.0]), "torch.exp")
            tensor([1.])
        """
        if func is None:
            return x
        if isinstance(func, str) or not callable(func):
            module = P.processing_modules("func", func, None, {"device": torch.device(device)})[0]
            return module(x)
        return func(x)

    @staticmethod
    def functions_to_configs(
        functions: Any,
        class_name: str = "function_class",
        parameter_name: str = "function_parameters",
    ) -> dict | list[dict] | None:
        """tinybig's `function.functions_to_configs`: the config(s) of processing functions.

        Returns `None` for `None`, one config for one function, a list for a list.

        Raises:
            ValueError: a function that is not allowlisted cannot be written to a config.

        Example:
            >>> fusion.functions_to_configs("relu")
            {'function_class': 'torch.nn.ReLU', 'function_parameters': {'inplace': False}}
        """
        if functions is None:
            return None
        single = not isinstance(functions, (list, tuple, nn.ModuleList))
        modules = P.processing_modules("postprocess", [functions] if single else list(functions))
        configs = P.processing_configs("functions", modules) or []
        renamed = [
            {class_name: c["function_class"], parameter_name: c["function_parameters"]}
            for c in configs
        ]
        return renamed[0] if single else renamed

    @staticmethod
    def string_to_function(formula: str, variable: str) -> Callable[[Any], Any]:
        """tinybig's `function.string_to_function`: a formula in one variable as a function.

        The formula is parsed, never evaluated as code: numbers, the variable, `+ - * / **`,
        parentheses and the functions `exp log sqrt sin cos tan tanh abs` (numpy's).

        Raises:
            TypeError: formula or variable is not a str.
            ValueError: the formula uses anything else.

        Example:
            >>> fusion.string_to_function("2*x**2 + 1", "x")(3.0)
            19.0
        """
        return parse_formula(formula, variable)

    # configs ------------------------------------------------------------------------------------
    def _config_parameters(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this module (subclasses add theirs)."""
        return {
            "dims": None if self.dims is None else list(self.dims),
            "name": self.name,
            "require_parameters": self.require_parameters,
            "device": str(self.device),
            "preprocess_function_configs": self._processing_configs("preprocess_functions"),
            "postprocess_function_configs": self._processing_configs("postprocess_functions"),
            "register_processing": self.register_processing,
        }

    def _processing_configs(self, attribute: str) -> list[dict] | dict | None:
        """The configs of the processing functions: one dict for a single registered module
        (so that it is registered again when rebuilt), else a list."""
        what = _PROCESSING_ATTRIBUTES[attribute]
        configs = P.processing_configs(what, nn.ModuleList(self._processing(attribute)))
        stored = getattr(self, attribute)
        single = isinstance(stored, nn.Module) and not isinstance(stored, nn.ModuleList)
        return configs[0] if single and configs else configs

    def to_config(self) -> dict:
        """`{"function_class": ..., "function_parameters": {...}}`, JSON-serializable.

        Only constructor arguments: rebuild with
        [`from_config`][hmfusion.compat.tinybig.from_config], then load the weights from a
        `state_dict`.

        Raises:
            ValueError: a processing function is not allowlisted (a user's callable or module).
        """
        return {
            "function_class": f"{CONFIG_PREFIX}.{type(self).__name__}",
            "function_parameters": self._config_parameters(),
        }
