"""`from_config`: rebuild any fusion of [`hmfusion.compat.tinybig`][hmfusion.compat.tinybig] from
its config.

Accepts what this package's `to_config()` writes and what tinybig 0.2.1's `to_config()`
returns (its `torch.nn.Module` bookkeeping and derived attributes are dropped, see
`configkeys`); every other unknown key raises. Class names are looked up in a fixed
table: nothing is ever imported or instantiated from a config besides these classes and the
allowlisted processing functions.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping

from hmfusion.compat.tinybig import basic, metric, parameterized, random_matrix, structured
from hmfusion.compat.tinybig.base import CONFIG_PREFIX, fusion
from hmfusion.compat.tinybig.configkeys import TINYBIG_ATTRIBUTE_KEYS, drop_module_state
from hmfusion.compat.tinybig.parameterized import Layout

__all__ = ["CLASSES", "PARAMETERIZED_CLASSES", "from_config"]

#: the six parameterized concatenation fusions
PARAMETERIZED_CLASSES: tuple[type[fusion], ...] = (
    parameterized.parameterized_concatenation_fusion,
    structured.lowrank_parameterized_concatenation_fusion,
    structured.hm_parameterized_concatenation_fusion,
    structured.lphm_parameterized_concatenation_fusion,
    structured.dual_lphm_parameterized_concatenation_fusion,
    random_matrix.random_matrix_adaption_parameterized_concatenation_fusion,
)

#: every class a config may name, by its tinybig submodule
_BY_SUBMODULE: dict[str, tuple[type[fusion], ...]] = {
    "basic_fusion": (
        basic.weighted_summation_fusion,
        basic.summation_fusion,
        basic.average_fusion,
        basic.parameterized_weighted_summation_fusion,
    ),
    "metric_fusion": (
        metric.metric_fusion,
        metric.max_fusion,
        metric.min_fusion,
        metric.sum_fusion,
        metric.mean_fusion,
        metric.prod_fusion,
        metric.median_fusion,
        metric.l1_norm_fusion,
        metric.l2_norm_fusion,
    ),
    "concatenation_fusion": (basic.concatenation_fusion,),
    "parameterized_concatenation_fusion": PARAMETERIZED_CLASSES,
}
CLASSES: tuple[type[fusion], ...] = tuple(c for group in _BY_SUBMODULE.values() for c in group)

# Every spelling a config may use: this package's, and tinybig's own paths (so a config written
# by tinybig loads here), each a dictionary key: nothing is imported.
_NAMES: dict[str, type[fusion]] = {}
for _submodule, _classes in _BY_SUBMODULE.items():
    for _cls in _classes:
        for _alias in (
            _cls.__name__,
            f"{CONFIG_PREFIX}.{_cls.__name__}",
            f"{CONFIG_PREFIX}.{_submodule}.{_cls.__name__}",
            f"tinybig.fusion.{_cls.__name__}",
            f"tinybig.fusion.{_submodule}.{_cls.__name__}",
        ):
            _NAMES[_alias] = _cls
_NAMES["tinybig.fusion.mean_fusion"] = metric.mean_fusion  # tinybig's namespace: metric's one

# Attributes tinybig's to_config writes that a class sets itself (and would refuse twice).
_DERIVED: dict[type[fusion], frozenset[str]] = {
    basic.summation_fusion: frozenset({"weights"}),
    basic.average_fusion: frozenset({"weights"}),
    basic.parameterized_weighted_summation_fusion: frozenset({"weights"}),
    **{cls: frozenset({"metric"}) for cls in _BY_SUBMODULE["metric_fusion"][1:]},
}


def _accepted(cls: type[fusion]) -> list[str]:
    """The keyword arguments `cls` accepts (with `**kwargs`: those of the base class)."""
    parameters = inspect.signature(cls).parameters.values()
    names = [p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        names += [name for name in inspect.signature(fusion).parameters if name not in names]
    return names


def from_config(config: Mapping, *, layout: Layout | None = None) -> fusion:
    """Rebuild a fusion from `{"function_class": ..., "function_parameters": {...}}`.

    `function_class` names one of the classes of
    [`hmfusion.compat.tinybig`][hmfusion.compat.tinybig] (also spelled `tinybig.fusion.<class>`,
    `tinybig.fusion.<submodule>.<class>` or `hmfusion.compat.tinybig.<submodule>.<class>`);
    processing configs inside must name allowlisted functions. The keys tinybig's
    `to_config()` adds that are not constructor arguments (`training`, `_parameters`,
    `_modules`, … and `parameter_fabrication`) are dropped.

    The layout of a parameterized concatenation fusion (which matters for HM, LPHM and
    dual-LPHM, see `legacy`) is, in this order: the `layout`
    argument; the config's own `"layout"` parameter (which `to_config()` writes); for a
    `function_class` spelled `tinybig.…` (a tinybig dump, or a config written for tinybig)
    `"tinybig-0.2.1"`, so that it computes what tinybig computes from it; otherwise the
    constructor's default `"kronecker"`. Read it back as `f.layout`.

    Args:
        config: the dict, e.g. from `to_config()`, JSON or `yaml.safe_load`.
        layout: `"kronecker"` or `"tinybig-0.2.1"` for a parameterized concatenation fusion
            (default `None`: as described above).

    Returns:
        The fusion module (its weights travel separately, in a `state_dict`).

    Raises:
        TypeError: config or its parameters are not dicts, or a parameter has the wrong type.
        ValueError: an unknown class or processing name, an unknown key or parameter; a
            `layout` for a class without one, unknown, or other than the config's `"layout"`.

    Example:
        >>> from_config({"function_class": "tinybig.fusion.sum_fusion",
        ...              "function_parameters": {"dims": [2, 2]}}).get_name()
        'sum_fusion'
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
    cls = _NAMES.get(name)
    if cls is None:
        raise ValueError(
            f"function_class={name!r} is not allowed: a config can name only "
            f"{[c.__name__ for c in CLASSES]} (nothing is imported from a config)"
        )
    parameters = config.get("function_parameters")
    parameters = {} if parameters is None else parameters
    if not isinstance(parameters, Mapping):
        raise TypeError(
            f"config['function_parameters'] must be a dict, got {type(parameters).__name__}"
        )
    dropped = TINYBIG_ATTRIBUTE_KEYS | _DERIVED.get(cls, frozenset())
    parameters = {k: v for k, v in drop_module_state(parameters).items() if k not in dropped}
    accepted = _accepted(cls)
    unknown = sorted(map(str, set(parameters) - set(accepted)))
    if unknown:
        raise ValueError(
            f"unknown function_parameters {unknown} for {cls.__name__}; accepted: {accepted}"
        )
    if cls in PARAMETERIZED_CLASSES:
        parameters["layout"] = _layout(name, parameters.get("layout"), layout)
    elif layout is not None:
        raise ValueError(
            f"layout={layout!r} applies only to the parameterized concatenation fusions, "
            f"not to {cls.__name__}"
        )
    return cls(**parameters)


def _layout(name: str, configured: object, given: Layout | None) -> object:
    """The layout a parameterized fusion is built with (see `from_config`)."""
    if given is not None:
        if given not in parameterized.LAYOUTS:
            raise ValueError(f"layout must be one of {list(parameterized.LAYOUTS)}, got {given!r}")
        if configured is not None and configured != given:
            raise ValueError(
                f"layout={given!r} differs from the config's layout={configured!r}; "
                f"drop one of them"
            )
        return given
    if configured is not None:
        return configured  # checked by the constructor
    return parameterized.TINYBIG_021 if name.startswith("tinybig.") else parameterized.KRONECKER
