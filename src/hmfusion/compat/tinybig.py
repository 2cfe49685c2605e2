"""tinybig 0.2.1's parameterized concatenation fusions, as thin adapters over the hmfusion family.

Replace ``from tinybig import fusion`` by ``from hmfusion.compat import tinybig as fusion`` (or
import the class names from here): the six classes keep tinybig's names, constructor signatures
(positional order included), methods and flat parameter vector w of shape (1, l), and compute the
operator tinybig's documentation describes, ``y = cat(x_1, …, x_k) Wᵀ`` with W (n×D) = ψ(w)
(tinybig's docs write ``x W`` with a D×n W: its W is our Wᵀ). The parameters, the math and the
fast application of Wᵀ are the hmfusion family's (:mod:`hmfusion.fusion`,
:mod:`hmfusion.structures`); this module only translates the interface.

Flat layout of w (each piece row-major, as tinybig 0.2.1; the prefixes name the classes):

- ``parameterized_concatenation_fusion`` (dense): W (n×D)
- ``lowrank_…``: [U (n×r) | Vᵀ (r×D)], W = U Vᵀ
- ``hm_…``: [A (p×q) | B (s×t)]
- ``lphm_…``: [A (p×q) | S (s×r) | Tᵀ (r×t)]
- ``dual_lphm_…``: [P (p×r) | Qᵀ (r×q) | S (s×r) | Tᵀ (r×t)]
- ``random_matrix_adaption_…``: [λ₁ (n) | λ₂ (r)]

with s = n/p, t = D/q; B = S Tᵀ for LPHM, A = P Qᵀ and B = S Tᵀ for dual-LPHM; random-matrix
adaptation has W = diag(λ₁) R₁ diag(λ₂) R₂ᵀ with fixed R₁ (n×r), R₂ (D×r).

Layouts
-------
``layout="kronecker"`` (the default) gives the documented operator W = A ⊗ B. tinybig 0.2.1 does
not compute it for the HM, LPHM and dual-LPHM classes: it takes the outer product of the
*flattened* factors and reshapes it row-major to n×D,

    W[i, j] = a[(i·D + j) div (s·t)] · b[(i·D + j) mod (s·t)],   a = vec(A), b = vec(B),

i.e. vec(W) = a ⊗ b. That agrees with A ⊗ B only when s = 1 or q = 1 (the sizes of tinybig's own
tests); otherwise W is another matrix, its rows made of scaled pieces of b, usually of far lower
rank (rank 1 at n = D = 1024, p = q = 32, where A ⊗ B has rank 1024).
``layout="tinybig-0.2.1"`` reproduces that W exactly (:class:`TinybigLegacyStructure`), so that a
model trained with tinybig keeps its outputs; it is not the default because it is not the
operator the documentation (and the name HM) promise. Dense, low-rank and random-matrix
adaptation are the same in both layouts.

What differs from tinybig 0.2.1 (deliberately)
-----------------------------------------------
- The Kronecker product is a true Kronecker product, applied without forming W.
- No ``assert`` on user input: bad arguments raise ``TypeError``/``ValueError`` naming them;
  each input's width is checked against ``dims`` (tinybig only checks the total).
- ``forward(x)`` without ``w`` uses the parameters the module owns (tinybig crashes).
- ``get_dim(i)`` accepts 0 ≤ i < len(dims) (tinybig also lets i = len(dims) through).
- Random-matrix adaptation keeps R₁, R₂ as seeded persistent buffers (saved in the
  ``state_dict``), instead of unseeded ``torch.randn`` redrawn in every new process.
- Pre/post-processing functions are ``nn.Module``s registered as submodules (``eval()`` turns
  dropout off; a norm's parameters train), applied to each input separately whether or not the
  input shapes agree (tinybig stacks equal-shaped inputs first, so a function that mixes
  along the first axis behaves differently depending on the widths).
- Configs name only this module's six classes and an allowlist of processing functions, by a
  dictionary lookup: nothing is ever imported from a config (tinybig instantiates any importable
  dotted path, so a config naming ``subprocess.run`` runs a command).
- ``dims`` is required at construction (hmfusion creates the parameters there).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hmfusion import _validation as V
from hmfusion.fusion import (
    ConcatFusion,
    DenseConcatFusion,
    DualLPHMConcatFusion,
    HMConcatFusion,
    LowRankConcatFusion,
    LPHMConcatFusion,
    RandomMatrixConcatFusion,
)
from hmfusion.structures import FactorSpec, FlatPiece, KroneckerStructure, Structure

__all__ = [
    "KRONECKER",
    "LAYOUTS",
    "TINYBIG_021",
    "LastDimLayerNorm",
    "TinybigLegacyStructure",
    "dual_lphm_parameterized_concatenation_fusion",
    "from_config",
    "hm_parameterized_concatenation_fusion",
    "lowrank_parameterized_concatenation_fusion",
    "lphm_parameterized_concatenation_fusion",
    "parameterized_concatenation_fusion",
    "random_matrix_adaption_parameterized_concatenation_fusion",
]

KRONECKER = "kronecker"
TINYBIG_021 = "tinybig-0.2.1"
LAYOUTS = (KRONECKER, TINYBIG_021)


# tinybig 0.2.1's fabrication of the Kronecker family -----------------------------------------
@dataclass(frozen=True)
class TinybigLegacyStructure(Structure):
    """tinybig 0.2.1's W for HM, LPHM and dual-LPHM: vec(W) = vec(A) ⊗ vec(B), not A ⊗ B.

    W[i, j] = a[(i·D + j) div (s·t)] · b[(i·D + j) mod (s·t)] with a = vec(A), b = vec(B)
    (B = S Tᵀ for LPHM; also A = P Qᵀ for dual-LPHM). The factors, their flat layout and their
    initialisation are those of the wrapped :class:`~hmfusion.structures.KroneckerStructure`;
    only the fabrication differs. Legacy behaviour, kept to reproduce models trained with
    tinybig: W is materialized and applied with ``F.linear``.
    """

    kronecker: KroneckerStructure

    @property
    def n(self) -> int:  # type: ignore[override]
        return self.kronecker.n

    @property
    def D(self) -> int:  # type: ignore[override]
        return self.kronecker.D

    @property
    def p(self) -> int:
        return self.kronecker.p

    @property
    def q(self) -> int:
        return self.kronecker.q

    @property
    def rank_b(self) -> int | None:
        return self.kronecker.rank_b

    @property
    def pad(self) -> bool:
        return False

    @property
    def factor_specs(self) -> tuple[FactorSpec, ...]:
        return self.kronecker.factor_specs

    @property
    def flat_layout(self) -> tuple[FlatPiece, ...]:
        return self.kronecker.flat_layout

    def materialize(self, f) -> Tensor:
        a, b = self.kronecker.dense_factors(f)
        return torch.outer(a.reshape(-1), b.reshape(-1)).reshape(self.n, self.D)

    def apply_transposed(self, x: Tensor, f) -> Tensor:
        return F.linear(x, self.materialize(f))

    def init_factors_(self, f, generator: torch.Generator | None = None) -> None:
        # The entries of W are products a_i·b_j either way, so the variances carry over.
        self.kronecker.init_factors_(f, generator)

    def describe(self) -> str:
        return f"{self.kronecker.describe()}, layout={TINYBIG_021!r}"


# pre/post-processing ---------------------------------------------------------------------------
class LastDimLayerNorm(nn.Module):
    """Layer norm over the last dimension, whatever its width, without affine parameters.

    tinybig's ``"layer_norm"`` (``F.layer_norm(x, [x.size(-1)])``). For a norm whose weight and
    bias train, use ``torch.nn.LayerNorm`` (by name ``"torch.nn.LayerNorm"`` in a config).
    """

    def __init__(self, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, x.shape[-1:], eps=self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


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
_PROCESSING_CLASSES: dict[type, tuple[str, Callable[[nn.Module], dict]]] = {
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
    LastDimLayerNorm: ("layer_norm", _attributes("eps")),
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
    F.relu: nn.ReLU, torch.relu: nn.ReLU,
    F.gelu: nn.GELU,
    F.sigmoid: nn.Sigmoid, torch.sigmoid: nn.Sigmoid,
    F.tanh: nn.Tanh, torch.tanh: nn.Tanh,
    F.softplus: nn.Softplus,
    F.silu: nn.SiLU,
    F.leaky_relu: nn.LeakyReLU,
    F.celu: nn.CELU,
    F.elu: nn.ELU,
    F.dropout: nn.Dropout,
    F.layer_norm: LastDimLayerNorm,
}


def _processing_class(label: str, name: str) -> type:
    """The allowlisted class ``name`` stands for: a dictionary lookup, never an import."""
    cls = _PROCESSING_NAMES.get(name if "." in name else name.lower())
    if cls is None:
        raise ValueError(
            f"{label}={name!r} is not an allowed processing function; allowed are "
            f"{sorted(_SHORT_NAMES)} and "
            f"{sorted(n for n, _ in _PROCESSING_CLASSES.values() if '.' in n)}. "
            f"Pass a callable or an nn.Module to use anything else (configs never import code)"
        )
    return cls


def _processing_from_function(label: str, item: object, factory: dict) -> nn.Module:
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


def _processing_from_config(label: str, config: object, factory: dict) -> nn.Module:
    if not isinstance(config, Mapping):
        raise TypeError(
            f"{label} must be a dict {{'function_class': ..., 'function_parameters': {{...}}}}, "
            f"got {type(config).__name__}"
        )
    unknown = sorted(map(str, set(config) - {"function_class", "function_parameters"}))
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
    try:
        module = cls(**parameters)
    except TypeError as error:
        raise TypeError(f"{label}: invalid function_parameters for {name}: {error}") from None
    return module.to(**factory)


def _processing_modules(
    what: str, functions: object, configs: object, factory: dict
) -> nn.ModuleList:
    """``preprocess_*`` / ``postprocess_*`` arguments as a list of modules."""
    if functions is not None and configs is not None:
        raise ValueError(f"pass {what}_functions or {what}_function_configs, not both")
    if functions is not None:
        items = list(functions) if isinstance(functions, (list, tuple)) else [functions]
        return nn.ModuleList(
            _processing_from_function(f"{what}_functions[{i}]", item, factory)
            for i, item in enumerate(items)
        )
    if configs is not None:
        if isinstance(configs, Mapping):
            configs = [configs]
        if not isinstance(configs, (list, tuple)):
            raise TypeError(
                f"{what}_function_configs must be a dict or a list of dicts, got "
                f"{type(configs).__name__}"
            )
        return nn.ModuleList(
            _processing_from_config(f"{what}_function_configs[{i}]", config, factory)
            for i, config in enumerate(configs)
        )
    return nn.ModuleList()


def _processing_configs(what: str, modules: nn.ModuleList) -> list[dict] | None:
    if len(modules) == 0:
        return None
    configs = []
    for i, module in enumerate(modules):
        entry = _PROCESSING_CLASSES.get(type(module))
        if entry is None:
            raise ValueError(
                f"{what}_functions[{i}] ({module!r}) cannot be written to a config: only the "
                f"allowlisted processing functions can ({sorted(_SHORT_NAMES)}, torch.nn.LayerNorm"
                f" and the torch.nn classes of the others)"
            )
        name, arguments = entry
        configs.append({"function_class": name, "function_parameters": arguments(module)})
    return configs


# the fusions ------------------------------------------------------------------------------------
def _kronecker_fusion(
    family: type[ConcatFusion], dims, n, layout, factory, *, p, q, pad, r=None, dual=False
) -> ConcatFusion:
    """An HM / LPHM / dual-LPHM family module, or its tinybig-0.2.1-layout twin."""
    V.check_bool("pad", pad)
    rank = {} if r is None else {"r": r}
    if layout == KRONECKER:
        return family(dims, n, p, q, **rank, pad=pad, **factory)
    if pad:
        raise ValueError(
            f"pad=True needs layout={KRONECKER!r}: layout={TINYBIG_021!r} requires p | n and q | D"
        )
    kronecker = KroneckerStructure.create(
        n, sum(dims), p, q, rank_a=r if dual else None, rank_b=r
    )
    return ConcatFusion(dims, TinybigLegacyStructure(kronecker), **factory)


class parameterized_concatenation_fusion(nn.Module):
    """tinybig's dense parameterized concatenation fusion: ``y = cat(x_1, …, x_k) Wᵀ``, W: n×D.

    l = n·D; w is W flattened row-major. The base class of the five structured members, which
    share its methods and keyword arguments.

    Args:
        n: output width; ``None`` means all dims are equal and n = dims[0].
        dims: the input widths n_1 … n_k (required; D = Σ n_i).
        name: returned by :meth:`get_name`.
        require_parameters: accepted for tinybig's signature; like tinybig, the fusion always
            requires parameters (its own, or the ``w`` given to :meth:`forward`).
        preprocess_functions: applied to each input before concatenation; a callable, an
            ``nn.Module``, an allowed name (``"relu"``, ``"layer_norm"``, ``"dropout"``, …, see
            :mod:`hmfusion.compat.tinybig`) or a list of them.
        postprocess_functions: the same, applied to the output.
        preprocess_function_configs, postprocess_function_configs: instead of the functions,
            ``{"function_class": <allowed name>, "function_parameters": {...}}`` or a list of
            those (as written by :meth:`to_config`).
        device: where the parameters and processing modules are created (default ``"cpu"``).
        layout: ``"kronecker"`` (default) or ``"tinybig-0.2.1"``; the same for this class.
        dtype: dtype of the parameters (default: torch's default dtype).

    Raises:
        TypeError: an argument of the wrong type (name not a str, dims not a sequence of ints…).
        ValueError: dims missing or empty, n missing while dims differ, an unknown layout or
            processing name, both a function list and its configs given.
    """

    #: the class's own constructor arguments beyond tinybig's common ones (for to_config)
    _own_arguments: tuple[str, ...] = ()

    def __init__(
        self,
        n: int | None = None,
        dims: Sequence[int] | None = None,
        name: str = "parameterized_concatenation_fusion",
        require_parameters: bool = True,
        *,
        preprocess_functions=None,
        postprocess_functions=None,
        preprocess_function_configs=None,
        postprocess_function_configs=None,
        device: str | torch.device = "cpu",
        layout: str = KRONECKER,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self._init_fusion(
            lambda dims, n, factory: DenseConcatFusion(dims, n, **factory),
            n=n, dims=dims, name=name, require_parameters=require_parameters,
            preprocess_functions=preprocess_functions,
            postprocess_functions=postprocess_functions,
            preprocess_function_configs=preprocess_function_configs,
            postprocess_function_configs=postprocess_function_configs,
            device=device, layout=layout, dtype=dtype,
        )

    def _init_fusion(
        self,
        build: Callable[[tuple[int, ...], int, dict], ConcatFusion],
        *,
        n,
        dims,
        name,
        require_parameters,
        preprocess_functions,
        postprocess_functions,
        preprocess_function_configs,
        postprocess_function_configs,
        device,
        layout,
        dtype,
    ) -> None:
        """The construction shared by the six classes; ``build`` makes the family module."""
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {type(name).__name__}")
        V.check_bool("require_parameters", require_parameters)
        if not isinstance(layout, str):
            raise TypeError(f"layout must be a str, got {type(layout).__name__}")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {list(LAYOUTS)}, got {layout!r}")
        if not isinstance(device, (str, torch.device)):
            raise TypeError(f"device must be a str or torch.device, got {type(device).__name__}")
        if dims is None:
            raise ValueError(
                "dims is required: the input widths n_1 … n_k, e.g. dims=[32, 32] "
                "(hmfusion creates the fusion's parameters at construction)"
            )
        dims_checked = V.check_dims(dims)
        n_checked = V.resolve_n(dims_checked, n)
        factory = {"device": device, "dtype": dtype}

        self.name = name
        self.require_parameters = True  # tinybig 0.2.1 forces it too
        self.layout = layout
        self.n = n_checked
        self.dims = list(dims_checked)
        #: the hmfusion module holding W's factors (state_dict keys ``fusion.<factor>``)
        self.fusion = build(dims_checked, n_checked, factory)
        self.preprocess_functions = _processing_modules(
            "preprocess", preprocess_functions, preprocess_function_configs, factory
        )
        self.postprocess_functions = _processing_modules(
            "postprocess", postprocess_functions, postprocess_function_configs, factory
        )

    # tinybig's accessors ----------------------------------------------------------------------
    def get_name(self) -> str:
        return self.name

    def get_dims(self) -> list[int]:
        return list(self.dims)

    def get_num(self) -> int:
        """k, the number of inputs."""
        return len(self.dims)

    def get_dim(self, index: int) -> int:
        """dims[index] for 0 ≤ index < len(dims).

        Raises:
            TypeError: index is not an int.
            ValueError: index is out of bounds.
        """
        index = V.check_int("index", index)
        if not 0 <= index < len(self.dims):
            raise ValueError(
                f"index {index} is out of bounds for dims={self.dims} "
                f"(0 ≤ index < {len(self.dims)})"
            )
        return self.dims[index]

    def calculate_n(self, dims: Sequence[int] | None = None) -> int:
        """The output width n (``dims`` is accepted for tinybig's signature; n is fixed)."""
        return self.n

    def calculate_l(self, *args, **kwargs) -> int:
        """l, the length of w. Arguments are accepted for tinybig's signature and ignored."""
        return self.fusion.num_parameters

    # processing --------------------------------------------------------------------------------
    def pre_process(self, x: Tensor, device: str = "cpu") -> Tensor:
        """Apply the preprocessing functions to one input (``device`` is unused)."""
        for function in self.preprocess_functions:
            x = function(x)
        return x

    def post_process(self, x: Tensor, device: str = "cpu") -> Tensor:
        """Apply the postprocessing functions to the output (``device`` is unused)."""
        for function in self.postprocess_functions:
            x = function(x)
        return x

    # configs ------------------------------------------------------------------------------------
    def to_config(self) -> dict:
        """``{"function_class": ..., "function_parameters": {...}}``, JSON-serializable.

        Only constructor arguments: rebuild with :func:`from_config`, then load the weights
        from a ``state_dict`` (the config holds no parameters, and not the dtype).

        Raises:
            ValueError: a processing function is not allowlisted (a user's callable or module).
        """
        parameters = {
            "n": self.n,
            "dims": list(self.dims),
            "name": self.name,
            "require_parameters": self.require_parameters,
        }
        parameters.update({arg: getattr(self, arg) for arg in self._own_arguments})
        parameters.update(
            layout=self.layout,
            device=str(self.device),  # where the parameters are now
            preprocess_function_configs=_processing_configs(
                "preprocess", self.preprocess_functions
            ),
            postprocess_function_configs=_processing_configs(
                "postprocess", self.postprocess_functions
            ),
        )
        return {
            "function_class": f"{__name__}.{type(self).__name__}",
            "function_parameters": parameters,
        }

    # forward -------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Where the parameters are (follows ``.to()``; tinybig's attribute of that name)."""
        return next(iter(self.fusion.factors().values())).device

    def _factors(self, w: object) -> dict[str, Tensor]:
        """The factors of W: the module's own, or the trained ones held in w (as views)."""
        if w is None:
            return self.fusion.factors()
        structure = self.fusion.structure
        flat = V.check_flat_vector(w, structure.num_parameters)
        factors = structure.from_flat(flat)
        for spec in structure.factor_specs:
            if not spec.trainable:  # the random matrices are the module's
                factors[spec.name] = getattr(self.fusion, spec.name).to(flat)
        return factors

    def forward(
        self, x: Sequence[Tensor], w: Tensor | None = None, device: str = "cpu"
    ) -> Tensor:
        """``post_process(cat(pre_process(x_1), …, pre_process(x_k)) Wᵀ)`` with W = ψ(w).

        Args:
            x: a list or tuple of k tensors, input i of shape ``(*, dims[i])``, the same
                leading dimensions ``*`` for all.
            w: the flat parameter vector, shape (1, l) or (l,) (gradients flow into it); if
                ``None``, the module's own parameters.
            device: accepted for tinybig's signature; the computation runs where x and the
                parameters are (they must agree).

        Returns:
            Tensor of shape ``(*, n)``.

        Raises:
            ValueError: x is empty; wrong number of inputs; an input's width is not its
                dims[i]; differing leading shapes; w does not hold l values; preprocessing
                changed an input's shape; an input on another device than the parameters.
            TypeError: x is not a list/tuple of floating tensors, w is not a floating tensor,
                or their dtypes differ.
        """
        if x is None or (isinstance(x, (list, tuple)) and len(x) == 0):
            raise ValueError(
                f"the input x cannot be empty: pass a list of {len(self.dims)} tensors "
                f"(one per entry of dims={self.dims})"
            )
        factors = self._factors(w)
        owner = "the parameters" if w is None else "the flat vector w"
        reference = next(iter(factors.values()))
        inputs, lead = V.check_inputs(
            x, tuple(self.dims), dtype=reference.dtype, device=reference.device, owner=owner
        )
        processed = [self.pre_process(value) for value in inputs]
        for i, (before, after) in enumerate(zip(inputs, processed)):
            if after.shape != before.shape or after.dtype != before.dtype:
                raise ValueError(
                    f"preprocess_functions changed input {i} from {tuple(before.shape)} "
                    f"{before.dtype} to {tuple(after.shape)} {after.dtype}; they must keep each "
                    f"input's shape and dtype"
                )
        return self.post_process(self.fusion._fuse(processed, lead, factors))

    def extra_repr(self) -> str:
        return f"name={self.name!r}, layout={self.layout!r}"


class lowrank_parameterized_concatenation_fusion(parameterized_concatenation_fusion):
    """tinybig's low-rank fusion: W = U Vᵀ, U: n×r, V: D×r; w = [U (n×r) | Vᵀ (r×D)], l = r·(n+D).

    Args:
        r: the rank (default 2).
        name, n, dims, and the keyword arguments: as in
            :class:`parameterized_concatenation_fusion`.
    """

    _own_arguments = ("r",)

    def __init__(
        self,
        r: int = 2,
        name: str = "lowrank_parameterized_concatenation_fusion",
        n: int | None = None,
        dims: Sequence[int] | None = None,
        *,
        require_parameters: bool = True,
        preprocess_functions=None,
        postprocess_functions=None,
        preprocess_function_configs=None,
        postprocess_function_configs=None,
        device: str | torch.device = "cpu",
        layout: str = KRONECKER,
        dtype: torch.dtype | None = None,
    ) -> None:
        nn.Module.__init__(self)
        self._init_fusion(
            lambda dims, n, factory: LowRankConcatFusion(dims, n, r, **factory),
            n=n, dims=dims, name=name, require_parameters=require_parameters,
            preprocess_functions=preprocess_functions,
            postprocess_functions=postprocess_functions,
            preprocess_function_configs=preprocess_function_configs,
            postprocess_function_configs=postprocess_function_configs,
            device=device, layout=layout, dtype=dtype,
        )
        self.r = self.fusion.r


class hm_parameterized_concatenation_fusion(parameterized_concatenation_fusion):
    """tinybig's HM fusion: W = A ⊗ B, A: p×q, B: (n/p)×(D/q); w = [A | B], l = p·q + n·D/(p·q).

    Applied without forming W (:class:`hmfusion.HMConcatFusion`). With
    ``layout="tinybig-0.2.1"``, W is tinybig 0.2.1's vec(A) ⊗ vec(B) reshaped to n×D instead.

    Args:
        p: rows of A; must divide n.
        q: columns of A; must divide D; defaults to p.
        name, n, dims, and the keyword arguments: as in
            :class:`parameterized_concatenation_fusion`.
        pad: (hmfusion, ``layout="kronecker"`` only) allow p ∤ n or q ∤ D by zero-padding.

    Raises:
        ValueError: p does not divide n or q does not divide D (the message lists the valid
            choices), besides the base class's errors.
    """

    _own_arguments = ("p", "q", "pad")

    def __init__(
        self,
        p: int,
        q: int | None = None,
        name: str = "hm_parameterized_concatenation_fusion",
        n: int | None = None,
        dims: Sequence[int] | None = None,
        *,
        require_parameters: bool = True,
        pad: bool = False,
        preprocess_functions=None,
        postprocess_functions=None,
        preprocess_function_configs=None,
        postprocess_function_configs=None,
        device: str | torch.device = "cpu",
        layout: str = KRONECKER,
        dtype: torch.dtype | None = None,
    ) -> None:
        nn.Module.__init__(self)
        self._init_fusion(
            lambda dims, n, factory: _kronecker_fusion(
                HMConcatFusion, dims, n, layout, factory, p=p, q=q, pad=pad
            ),
            n=n, dims=dims, name=name, require_parameters=require_parameters,
            preprocess_functions=preprocess_functions,
            postprocess_functions=postprocess_functions,
            preprocess_function_configs=preprocess_function_configs,
            postprocess_function_configs=postprocess_function_configs,
            device=device, layout=layout, dtype=dtype,
        )
        structure = self.fusion.structure
        self.p, self.q, self.pad = structure.p, structure.q, structure.pad


class lphm_parameterized_concatenation_fusion(parameterized_concatenation_fusion):
    """tinybig's LPHM fusion: W = A ⊗ (S Tᵀ), A: p×q, S: (n/p)×r, T: (D/q)×r.

    w = [A (p×q) | S (s×r) | Tᵀ (r×t)], l = p·q + r·(s + t).

    Args:
        r: rank of the right factor.
        p, q, pad: as in :class:`hm_parameterized_concatenation_fusion`.
        name, n, dims, and the keyword arguments: as in
            :class:`parameterized_concatenation_fusion`.
    """

    _own_arguments = ("r", "p", "q", "pad")

    def __init__(
        self,
        r: int,
        p: int,
        q: int | None = None,
        name: str = "lphm_parameterized_concatenation_fusion",
        n: int | None = None,
        dims: Sequence[int] | None = None,
        *,
        require_parameters: bool = True,
        pad: bool = False,
        preprocess_functions=None,
        postprocess_functions=None,
        preprocess_function_configs=None,
        postprocess_function_configs=None,
        device: str | torch.device = "cpu",
        layout: str = KRONECKER,
        dtype: torch.dtype | None = None,
    ) -> None:
        nn.Module.__init__(self)
        self._init_fusion(
            lambda dims, n, factory: _kronecker_fusion(
                LPHMConcatFusion, dims, n, layout, factory, p=p, q=q, pad=pad, r=r
            ),
            n=n, dims=dims, name=name, require_parameters=require_parameters,
            preprocess_functions=preprocess_functions,
            postprocess_functions=postprocess_functions,
            preprocess_function_configs=preprocess_function_configs,
            postprocess_function_configs=postprocess_function_configs,
            device=device, layout=layout, dtype=dtype,
        )
        structure = self.fusion.structure
        self.r = structure.rank_b
        self.p, self.q, self.pad = structure.p, structure.q, structure.pad


class dual_lphm_parameterized_concatenation_fusion(parameterized_concatenation_fusion):
    """tinybig's dual-LPHM fusion: W = (P Qᵀ) ⊗ (S Tᵀ), P: p×r, Q: q×r, S: (n/p)×r, T: (D/q)×r.

    w = [P (p×r) | Qᵀ (r×q) | S (s×r) | Tᵀ (r×t)], l = r·(p + q + s + t).

    Args:
        r: rank of both factors.
        p, q, pad: as in :class:`hm_parameterized_concatenation_fusion`.
        name, n, dims, and the keyword arguments: as in
            :class:`parameterized_concatenation_fusion`.
    """

    _own_arguments = ("r", "p", "q", "pad")

    def __init__(
        self,
        r: int,
        p: int,
        q: int | None = None,
        name: str = "dual_lphm_parameterized_concatenation_fusion",
        n: int | None = None,
        dims: Sequence[int] | None = None,
        *,
        require_parameters: bool = True,
        pad: bool = False,
        preprocess_functions=None,
        postprocess_functions=None,
        preprocess_function_configs=None,
        postprocess_function_configs=None,
        device: str | torch.device = "cpu",
        layout: str = KRONECKER,
        dtype: torch.dtype | None = None,
    ) -> None:
        nn.Module.__init__(self)
        self._init_fusion(
            lambda dims, n, factory: _kronecker_fusion(
                DualLPHMConcatFusion, dims, n, layout, factory, p=p, q=q, pad=pad, r=r, dual=True
            ),
            n=n, dims=dims, name=name, require_parameters=require_parameters,
            preprocess_functions=preprocess_functions,
            postprocess_functions=postprocess_functions,
            preprocess_function_configs=preprocess_function_configs,
            postprocess_function_configs=postprocess_function_configs,
            device=device, layout=layout, dtype=dtype,
        )
        structure = self.fusion.structure
        self.r = structure.rank_b
        self.p, self.q, self.pad = structure.p, structure.q, structure.pad


class random_matrix_adaption_parameterized_concatenation_fusion(parameterized_concatenation_fusion):
    """tinybig's random-matrix adaptation: W = diag(λ₁) R₁ diag(λ₂) R₂ᵀ; w = [λ₁ (n) | λ₂ (r)].

    R₁ (n×r) and R₂ (D×r) are fixed: persistent buffers drawn from ``seed`` (saved in the
    ``state_dict``), or set with :meth:`set_random_matrices`, e.g. to the ones a tinybig model
    drew, to reproduce its outputs. l = n + r.

    Args:
        r: inner dimension (default 2).
        name, n, dims, and the keyword arguments: as in
            :class:`parameterized_concatenation_fusion`.
        seed: (hmfusion) seed of R₁ and R₂ (default 0).
    """

    _own_arguments = ("r", "seed")

    def __init__(
        self,
        r: int = 2,
        name: str = "random_matrix_adaption_parameterized_concatenation_fusion",
        n: int | None = None,
        dims: Sequence[int] | None = None,
        *,
        require_parameters: bool = True,
        seed: int = 0,
        preprocess_functions=None,
        postprocess_functions=None,
        preprocess_function_configs=None,
        postprocess_function_configs=None,
        device: str | torch.device = "cpu",
        layout: str = KRONECKER,
        dtype: torch.dtype | None = None,
    ) -> None:
        nn.Module.__init__(self)
        self._init_fusion(
            lambda dims, n, factory: RandomMatrixConcatFusion(dims, n, r, seed, **factory),
            n=n, dims=dims, name=name, require_parameters=require_parameters,
            preprocess_functions=preprocess_functions,
            postprocess_functions=postprocess_functions,
            preprocess_function_configs=preprocess_function_configs,
            postprocess_function_configs=postprocess_function_configs,
            device=device, layout=layout, dtype=dtype,
        )
        self.r, self.seed = self.fusion.r, self.fusion.seed

    def set_random_matrices(self, R1: Tensor, R2: Tensor) -> None:
        """Set the fixed matrices R₁ (n×r) and R₂ (D×r) (tinybig's ``A`` and ``B``).

        They are copied into the module's buffers (its device and dtype) and saved with its
        ``state_dict``; ``reset_parameters()`` would redraw them from the seed.

        Raises:
            TypeError: R1 or R2 is not a floating tensor.
            ValueError: a shape is not (n, r) / (D, r).
        """
        D = sum(self.dims)
        for label, value, shape in (("R1", R1, (self.n, self.r)), ("R2", R2, (D, self.r))):
            if not isinstance(value, Tensor) or not value.is_floating_point():
                raise TypeError(f"{label} must be a floating-point torch.Tensor")
            if tuple(value.shape) != shape:
                raise ValueError(
                    f"{label} must have shape {shape} ({'n' if label == 'R1' else 'D'}×r with "
                    f"n={self.n}, D={D}, r={self.r}), got {tuple(value.shape)}"
                )
        with torch.no_grad():
            self.fusion.R1.copy_(R1)
            self.fusion.R2.copy_(R2)


# configs ------------------------------------------------------------------------------------------
_FUSION_CLASSES = (
    parameterized_concatenation_fusion,
    lowrank_parameterized_concatenation_fusion,
    hm_parameterized_concatenation_fusion,
    lphm_parameterized_concatenation_fusion,
    dual_lphm_parameterized_concatenation_fusion,
    random_matrix_adaption_parameterized_concatenation_fusion,
)

# Every name a config may use for them: this module's, and tinybig's own paths (so a
# hand-written tinybig config loads here), each a dictionary key: nothing is imported.
_FUSION_NAMES: dict[str, type] = {
    alias: cls
    for cls in _FUSION_CLASSES
    for alias in (
        cls.__name__,
        f"{__name__}.{cls.__name__}",
        f"tinybig.fusion.{cls.__name__}",
        f"tinybig.fusion.parameterized_concatenation_fusion.{cls.__name__}",
    )
}


def from_config(config: Mapping) -> parameterized_concatenation_fusion:
    """Rebuild a fusion from ``{"function_class": ..., "function_parameters": {...}}``.

    ``function_class`` must name one of the six classes of this module (also spelled
    ``tinybig.fusion.<class>``); processing configs inside must name allowlisted functions.
    Names are looked up in fixed tables: no config can import or instantiate anything else.

    Raises:
        TypeError: config or its parameters are not dicts, or a parameter has the wrong type.
        ValueError: an unknown class or processing name, an unknown key or parameter.
    """
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a dict, got {type(config).__name__}")
    unknown = sorted(map(str, set(config) - {"function_class", "function_parameters"}))
    if unknown:
        raise ValueError(
            f"config has unknown keys {unknown}; expected 'function_class' and "
            f"'function_parameters'"
        )
    name = config.get("function_class")
    if not isinstance(name, str):
        raise TypeError(f"config['function_class'] must be a str, got {type(name).__name__}")
    cls = _FUSION_NAMES.get(name)
    if cls is None:
        raise ValueError(
            f"function_class={name!r} is not allowed: a config can name only "
            f"{[c.__name__ for c in _FUSION_CLASSES]} (nothing is imported from a config)"
        )
    parameters = config.get("function_parameters")
    parameters = {} if parameters is None else parameters
    if not isinstance(parameters, Mapping):
        raise TypeError(
            f"config['function_parameters'] must be a dict, got {type(parameters).__name__}"
        )
    accepted = list(inspect.signature(cls).parameters)
    unknown = sorted(map(str, set(parameters) - set(accepted)))
    if unknown:
        raise ValueError(
            f"unknown function_parameters {unknown} for {cls.__name__}; accepted: {accepted}"
        )
    return cls(**parameters)
