"""tinybig 0.2.1's six parameterized concatenation fusions over the hmfusion family.

`y = post(cat(pre(x_1), …, pre(x_k)) Wᵀ)` with W (n×D) = ψ(w). As in tinybig, the flat
vector w belongs to the layer that owns the fusion and is passed to `forward`: by default
a fusion owns no parameters and adds nothing to its owner's `state_dict`. With
`own_parameters=True` it holds them in `self.fusion` (the hmfusion module, state_dict keys
`fusion.<factor>`) and `f(x)` without `w` uses them.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from hmfusion import _validation as V
from hmfusion.compat.tinybig.base import fusion
from hmfusion.compat.tinybig.legacy import TinybigLegacyKronecker
from hmfusion.fusion import ConcatFusion, DenseConcatFusion

__all__ = [
    "KRONECKER",
    "LAYOUTS",
    "TINYBIG_021",
    "Family",
    "Layout",
    "parameterized_concatenation_fusion",
    "shared_signature",
    "tinybig_size",
]

Layout = Literal["kronecker", "tinybig-0.2.1"]
KRONECKER: Layout = "kronecker"
TINYBIG_021: Layout = "tinybig-0.2.1"
LAYOUTS: tuple[Layout, ...] = (KRONECKER, TINYBIG_021)

#: the module that computes with W's factors: a member of the hmfusion family, or tinybig's W
Family = ConcatFusion | TinybigLegacyKronecker


class parameterized_concatenation_fusion(fusion):
    """tinybig's dense parameterized concatenation fusion: `y = cat(x_1, …, x_k) Wᵀ`, W: n×D.

    l = n·D; w is W flattened row-major. The base class of the five structured members, which
    share its keyword arguments (declared here once) and methods.

    Args:
        n: output width; `None` means all dims are equal and n = dims[0].
        dims: the input widths n_1 … n_k (required; D = Σ n_i); kept as given.
        name: returned by `get_name`.
        require_parameters: accepted for tinybig's signature; like tinybig, the fusion always
            requires parameters (the `w` given to `forward`, or its own).
        preprocess_functions: applied to each input, as in
            [`fusion`][hmfusion.compat.tinybig.fusion].
        postprocess_functions: applied to the output, as in
            [`fusion`][hmfusion.compat.tinybig.fusion].
        preprocess_function_configs: instead of `preprocess_functions`, as in
            [`fusion`][hmfusion.compat.tinybig.fusion].
        postprocess_function_configs: instead of `postprocess_functions`, as in
            [`fusion`][hmfusion.compat.tinybig.fusion].
        device: tinybig's device string, as in [`fusion`][hmfusion.compat.tinybig.fusion].
        register_processing: register the processing modules as submodules (default `False`:
            a list of them is held unregistered, as in tinybig; see
            [`fusion`][hmfusion.compat.tinybig.fusion]).
        layout: `"kronecker"` (default) or `"tinybig-0.2.1"` (tinybig's W for HM, LPHM,
            dual-LPHM; the same for the other classes).
        dtype: dtype of owned parameters and fixed matrices (default: torch's default dtype).
        own_parameters: hold the factors of W as parameters (`self.fusion`) so that
            `f(x)` works without `w`; default `False`, as tinybig: the owner passes w.

    Raises:
        TypeError: an argument of the wrong type (name not a str, dims not a sequence of ints…).
        ValueError: dims missing or empty, n missing while dims differ, an unknown layout or
            processing name, both a function list and its configs given.

    Shape:
        - Input: k tensors, input i of shape `(*, dims[i])`; w of shape (1, l) or (l,).
        - Output: `(*, n)`.

    Example:
        >>> f = parameterized_concatenation_fusion(n=2, dims=[3, 1])
        >>> f(x=[torch.ones(5, 3), torch.ones(5, 1)], w=torch.ones(1, 8)).shape
        torch.Size([5, 2])
    """

    #: the class's own constructor arguments beyond the shared ones (written by to_config)
    _own_arguments: tuple[str, ...] = ()

    def __init__(
        self,
        n: int | None = None,
        dims: Sequence[int] | None = None,
        name: str = "parameterized_concatenation_fusion",
        require_parameters: bool = True,
        *,
        preprocess_functions: Any = None,
        postprocess_functions: Any = None,
        preprocess_function_configs: Any = None,
        postprocess_function_configs: Any = None,
        device: str | torch.device = "cpu",
        register_processing: bool = False,
        layout: Layout = KRONECKER,
        dtype: torch.dtype | None = None,
        own_parameters: bool = False,
    ) -> None:
        if dims is None:
            raise ValueError(
                "dims is required: the input widths n_1 … n_k, e.g. dims=[32, 32] "
                "(hmfusion builds W's structure at construction)"
            )
        super().__init__(
            dims=dims,
            name=name,
            require_parameters=require_parameters,
            preprocess_functions=preprocess_functions,
            postprocess_functions=postprocess_functions,
            preprocess_function_configs=preprocess_function_configs,
            postprocess_function_configs=postprocess_function_configs,
            device=device,
            register_processing=register_processing,
        )
        self.require_parameters = True  # tinybig 0.2.1 forces it too
        if not isinstance(layout, str):
            raise TypeError(f"layout must be a str, got {type(layout).__name__}")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {list(LAYOUTS)}, got {layout!r}")
        self.layout = layout
        self.own_parameters = V.check_bool("own_parameters", own_parameters)
        self.n = V.resolve_n(tuple(self.get_dims() or ()), tinybig_size(n))
        self.__dict__["_dtype"] = V.check_factory_dtype(dtype)
        self._attach(self.__dict__["_dtype"])
        self.__dict__["_constructed"] = True

    # sizes assigned after construction --------------------------------------------------------
    def __setattr__(self, name: str, value: Any) -> None:
        if self.__dict__.get("_constructed", False):
            if name in ("n", "dims"):
                self._resize(name, value)
                return
            if name in (*self._own_arguments, "layout", "own_parameters"):
                raise AttributeError(
                    f"{name} cannot change after construction (tinybig 0.2.1 would ignore it: "
                    f"its parameter fabrication keeps the value given); build a new "
                    f"{type(self).__name__}"
                )
        super().__setattr__(name, value)

    def _resize(self, name: str, value: Any) -> None:
        """`f.n = …` / `f.dims = …` as tinybig follows them: W's structure is rebuilt (and
        l with it); refused where the module holds tensors shaped by them."""
        if self.own_parameters:
            raise AttributeError(
                f"{name} cannot change after construction with own_parameters=True: the "
                f"parameters' shapes follow it; build a new {type(self).__name__}"
            )
        if name == "n":
            value = V.check_size("n", tinybig_size(value))
        elif value is None:
            raise ValueError("dims cannot be None: the input widths n_1 … n_k are required")
        else:
            checked = V.check_dims(value)
            value = checked if isinstance(value, tuple) else list(checked)
        before = self.__dict__[name]
        self.__dict__["_constructed"] = False
        try:
            super().__setattr__(name, value)
            self._attach(self.__dict__["_dtype"])
        except (TypeError, ValueError):
            super().__setattr__(name, before)
            self._attach(self.__dict__["_dtype"])
            raise
        finally:
            self.__dict__["_constructed"] = True

    # the hmfusion module ----------------------------------------------------------------------
    def _family(self, dims: tuple[int, ...], factory: dict) -> Family:
        """The module that computes W's product (subclasses: their member of the family)."""
        return DenseConcatFusion(dims, self.n, **factory)

    def _attach(self, dtype: torch.dtype | None) -> None:
        dims = tuple(self.get_dims() or ())
        if self.own_parameters:
            #: the hmfusion module holding W's factors (only with own_parameters=True)
            self.fusion: Family | None = self._family(
                dims, {"device": torch.device(self._device), "dtype": dtype}
            )
            applier = self.fusion
        else:  # computes with the w given to forward; no tensors of its own, no RNG drawn
            self.fusion = None
            applier = self._family(dims, {"device": "meta", "dtype": dtype})
        self.__dict__["_applier"] = applier  # not a submodule: no state_dict keys

    def _fixed_factors(self) -> dict[str, Tensor]:
        """Factors that are not in w (the random matrices), by name."""
        return {}

    def _factors(self, w: object) -> dict[str, Tensor]:
        """The factors of W: views into w, or the module's own ones."""
        applier: Family = self.__dict__["_applier"]
        if w is None:
            if self.fusion is None:
                raise ValueError(
                    "w is required: this fusion owns no parameters (as in tinybig, the layer "
                    "that owns the fusion passes its flat vector w); pass w=…, or construct it "
                    "with own_parameters=True to call f(x)"
                )
            return self.fusion.factors()
        flat = V.check_flat_vector(w, self.calculate_l())
        if isinstance(applier, TinybigLegacyKronecker):
            factors = applier.factors_from_flat(flat)
        else:
            factors = applier.structure.from_flat(flat)
        factors.update({k: v.to(flat) for k, v in self._fixed_factors().items()})
        return factors

    def _materialize(self, factors: dict[str, Tensor]) -> Tensor:
        applier: Family = self.__dict__["_applier"]
        if isinstance(applier, TinybigLegacyKronecker):
            return applier.materialize(factors)
        return applier.structure.materialize(factors)

    # tinybig's methods ------------------------------------------------------------------------
    def calculate_n(self, dims: Sequence[int] | None = None, *args: Any, **kwargs: Any) -> int:
        """The output width n (`dims` is accepted for tinybig's signature; n is fixed)."""
        return self.n

    def calculate_l(self, *args: Any, **kwargs: Any) -> int:
        """l, the length of w. Arguments are accepted for tinybig's signature and ignored."""
        applier: Family = self.__dict__["_applier"]
        return applier.num_parameters

    def parameter_fabrication(
        self,
        w: Tensor,
        n: int | None = None,
        D: int | None = None,
        device: str | torch.device | None = None,
    ) -> Tensor:
        """tinybig's ψ: the matrix W (n×D) that w stands for, materialized (for inspection;
        `forward` forms W only for the dense class, in the `"tinybig-0.2.1"` layout, and when
        hmfusion's planner picks its `materialize` plan for a small Kronecker layer).

        Args:
            w: the flat parameter vector, shape (1, l) or (l,).
            n: accepted for tinybig's call `parameter_fabrication(w=w, n=n, D=D)`; if given,
                it must equal the module's n.
            D: likewise; if given, it must equal the module's D.
            device: where to return W (default: where w is).

        Returns:
            W, of shape (n, D), differentiable in w.

        Raises:
            ValueError: n or D differ from the module's; w does not hold l values.
            TypeError: w is not a floating tensor.

        Example:
            >>> f = parameterized_concatenation_fusion(n=2, dims=[2])
            >>> f.parameter_fabrication(torch.arange(4.0)[None])
            tensor([[0., 1.],
                    [2., 3.]])
        """
        D_module = sum(self.get_dims() or ())
        for label, given, actual in (("n", n, self.n), ("D", D, D_module)):
            if given is not None and given != actual:
                raise ValueError(f"{label}={given!r} differs from this fusion's {label}={actual}")
        W = self._materialize(self._factors(w))
        return W if device is None else W.to(device)

    def to_linear(self, w: Tensor | None = None) -> torch.nn.Linear:
        """An `nn.Linear(D, n, bias=False)` holding W = ψ(w) (or of the own parameters), in
        either layout: `y = cat(x) Wᵀ` is `linear(cat(x))`.

        The route from a tinybig-trained model to a true Kronecker product: fit one to this
        weight and fine-tune, `hmfusion.HMConcatFusion.from_linear(f.to_linear(w), dims, p=…,
        terms=…)`.

        Args:
            w: the flat parameter vector, shape (1, l) or (l,); `None`: the own parameters.

        Raises:
            ValueError: w is `None` and the fusion owns no parameters; w does not hold l values.
            TypeError: w is not a floating tensor.

        Example:
            >>> f = parameterized_concatenation_fusion(n=2, dims=[2])
            >>> f.to_linear(torch.arange(4.0)).weight
            Parameter containing:
            tensor([[0., 1.],
                    [2., 3.]], requires_grad=True)
        """
        W = self._materialize(self._factors(w)).detach()
        linear = torch.nn.Linear(W.shape[1], W.shape[0], bias=False, device=W.device, dtype=W.dtype)
        with torch.no_grad():
            linear.weight.copy_(W)
        return linear

    def forward(
        self,
        x: Sequence[Tensor],
        w: Tensor | None = None,
        device: str | torch.device | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> Tensor:
        """`post_process(cat(pre_process(x_1), …, pre_process(x_k)) Wᵀ)` with W = ψ(w).

        Args:
            x: a list or tuple of k tensors, input i of shape `(*, dims[i])`, the same
                leading dimensions `*` for all.
            w: the flat parameter vector, shape (1, l) or (l,) (gradients flow into it); if
                `None`, the module's own parameters (`own_parameters=True`).
            device: W's factors are moved there (the inputs must be there too); `None`
                (default): where w or the parameters are.
            *args: ignored, as in tinybig.
            **kwargs: ignored, as in tinybig.

        Returns:
            Tensor of shape `(*, n)`.

        Raises:
            ValueError: x is empty; wrong number of inputs; an input's width is not its
                dims[i]; differing leading shapes; w missing without own parameters, or not
                holding l values; preprocessing changed an input's shape; an input on another
                device than W.
            TypeError: x is not a list/tuple of floating tensors, w is not a floating tensor,
                or the inputs' promoted dtype is not w's; device is not a str or torch.device.

        Inputs of different dtypes are promoted as `torch.cat` promotes them (as tinybig
        concatenates them first): float32 and float64 inputs with a float64 w give float64.
        """
        if x is None or (isinstance(x, (list, tuple)) and len(x) == 0):
            raise ValueError(
                f"the input x cannot be empty: pass a list of {self.get_num()} tensors "
                f"(one per entry of dims={list(self.get_dims() or ())})"
            )
        factors = self._factors(w)
        if device is not None:
            if not isinstance(device, (str, torch.device)):
                raise TypeError(f"device must be a str or torch.device, got {device!r}")
            factors = {name: value.to(device) for name, value in factors.items()}
        owner = "the parameters" if w is None else "the flat vector w"
        reference = next(iter(factors.values()))
        x = _promoted(x, reference.dtype)
        inputs, lead = V.check_inputs(
            x,
            tuple(self.get_dims() or ()),
            dtype=reference.dtype,
            device=reference.device,
            owner=owner,
        )
        processed = [self.pre_process(value) for value in inputs]
        for i, (before, after) in enumerate(zip(inputs, processed, strict=True)):
            if after.shape != before.shape or after.dtype != before.dtype:
                raise ValueError(
                    f"preprocess_functions changed input {i} from {tuple(before.shape)} "
                    f"{before.dtype} to {tuple(after.shape)} {after.dtype}; they must keep each "
                    f"input's shape and dtype"
                )
        applier: Family = self.__dict__["_applier"]
        return self.post_process(applier._fuse(processed, tuple(lead), factors))

    def _config_parameters(self) -> dict[str, Any]:
        parameters = {"n": self.n, **super()._config_parameters()}
        parameters.update({arg: getattr(self, arg) for arg in self._own_arguments})
        parameters.update(layout=self.layout, own_parameters=self.own_parameters)
        return parameters

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, n={self.n}, dims={list(self.get_dims() or ())}, "
            f"l={self.calculate_l()}, layout={self.layout!r}, "
            f"own_parameters={self.own_parameters}"
        )


def tinybig_size(value: Any) -> Any:
    """A size as tinybig takes it: an integral float (`p=4.0`) or a one-element tensor
    (`n=torch.tensor(16)`) as an int; anything else unchanged (and checked by the caller).

    Example:
        >>> tinybig_size(4.0), tinybig_size(torch.tensor(16)), tinybig_size(4.5)
        (4, 16, 4.5)
    """
    if isinstance(value, Tensor) and value.numel() == 1 and not value.is_complex():
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _promoted(x: Any, dtype: torch.dtype) -> Any:
    """The inputs cast to their promoted dtype (as `torch.cat` promotes) when that is w's
    dtype; otherwise unchanged, for the input check to report."""
    if not isinstance(x, (list, tuple)) or not all(isinstance(t, Tensor) for t in x):
        return x
    promoted = functools.reduce(torch.promote_types, [t.dtype for t in x])
    if promoted != dtype or all(t.dtype == dtype for t in x):
        return x
    return [t.to(dtype) for t in x]


_SHARED = [
    parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY)
    for name, parameter in inspect.signature(parameterized_concatenation_fusion).parameters.items()
    if name not in ("n", "dims", "name")
]


def shared_signature(cls: type) -> type:
    """Show the shared keyword arguments in `cls`'s signature (it takes them as `**kwargs`
    and passes them to `parameterized_concatenation_fusion`, which declares them)."""
    init = cls.__dict__["__init__"]
    own = list(inspect.signature(init).parameters.values())
    own = [p for p in own if p.kind is not inspect.Parameter.VAR_KEYWORD]
    keyword_only = [p for p in own if p.kind is inspect.Parameter.KEYWORD_ONLY]
    positional = [p for p in own if p.kind is not inspect.Parameter.KEYWORD_ONLY]
    init.__signature__ = inspect.Signature(positional + keyword_only + _SHARED)
    return cls
