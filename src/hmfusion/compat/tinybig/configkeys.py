"""The keys tinybig 0.2.1's `to_config()` writes that are not constructor arguments.

tinybig's `to_config()` dumps `self.__dict__` of the module: `torch.nn.Module`'s own
bookkeeping (`training`, `_parameters`, `_backward_hooks`, …) and attributes its
constructors set (`parameter_fabrication`).
[`hmfusion.compat.tinybig.from_config`][hmfusion.compat.tinybig.from_config] drops exactly these
keys, whatever their values, and still refuses every other unknown key.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

__all__ = ["MODULE_STATE_KEYS", "TINYBIG_ATTRIBUTE_KEYS", "drop_module_state"]

#: `torch.nn.Module`'s instance attributes (torch 2.x; those of this torch are added).
MODULE_STATE_KEYS: frozenset[str] = frozenset(
    {
        "training",
        "_parameters",
        "_buffers",
        "_non_persistent_buffers_set",
        "_backward_pre_hooks",
        "_backward_hooks",
        "_is_full_backward_hook",
        "_forward_hooks",
        "_forward_hooks_with_kwargs",
        "_forward_hooks_always_called",
        "_forward_pre_hooks",
        "_forward_pre_hooks_with_kwargs",
        "_state_dict_hooks",
        "_state_dict_pre_hooks",
        "_load_state_dict_pre_hooks",
        "_load_state_dict_post_hooks",
        "_modules",
    }
    | set(vars(nn.Module()))
)

#: attributes tinybig's fusion constructors set that are derived, not passed in.
TINYBIG_ATTRIBUTE_KEYS: frozenset[str] = frozenset({"parameter_fabrication"})


def drop_module_state(parameters: Mapping) -> dict:
    """`parameters` without `torch.nn.Module`'s bookkeeping keys (`MODULE_STATE_KEYS`).

    Example:
        >>> drop_module_state({"training": True, "_modules": {}, "p": 0.5})
        {'p': 0.5}
    """
    return {key: value for key, value in parameters.items() if key not in MODULE_STATE_KEYS}
