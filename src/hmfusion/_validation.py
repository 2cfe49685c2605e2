"""Every check on user input, in one place.

Constructors and ``forward`` call these helpers; each raises ``TypeError`` for a value of the wrong
kind and ``ValueError`` for a value of the right kind that does not fit, with a message that names
the argument and says what was expected. No ``assert`` is used for user input.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "AUTO",
    "check_block_size",
    "check_bool",
    "check_dims",
    "check_divides",
    "check_factory_dtype",
    "check_flat_vector",
    "check_inputs",
    "check_int",
    "check_positive_int",
    "divisors",
    "resolve_n",
]

AUTO = "auto"


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_positive_int(name: str, value: object) -> int:
    """Return ``value`` as an ``int`` if it is an integer ≥ 1."""
    if not _is_int(value):
        raise TypeError(f"{name} must be a positive int, got {type(value).__name__} {value!r}")
    if value < 1:  # type: ignore[operator]
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)  # type: ignore[arg-type]


def check_bool(name: str, value: object) -> bool:
    """``value`` if it is a bool (not merely truthy: ``pad=1`` is a mistake worth naming)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def check_int(name: str, value: object) -> int:
    """``value`` as an ``int`` if it is an integer (of any sign; bools are refused)."""
    if not _is_int(value):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    return int(value)  # type: ignore[arg-type]


def check_block_size(name: str, value: object, *, allow_none: bool = False) -> int | str | None:
    """A block size: a positive int, ``"auto"``, or (where allowed) ``None``."""
    if value is None and allow_none:
        return None
    if isinstance(value, str):
        if value != AUTO:
            raise ValueError(f"{name} must be a positive int or {AUTO!r}, got {value!r}")
        return AUTO
    return check_positive_int(name, value)


def check_dims(dims: object) -> tuple[int, ...]:
    """The input widths n_1 … n_k: a non-empty sequence of positive ints."""
    if isinstance(dims, (str, bytes)) or not isinstance(dims, Sequence):
        raise TypeError(
            f"dims must be a list or tuple of positive ints (one per input), got "
            f"{type(dims).__name__}"
        )
    if len(dims) == 0:
        raise ValueError("dims must name at least one input width, got an empty sequence")
    return tuple(check_positive_int(f"dims[{i}]", d) for i, d in enumerate(dims))


def resolve_n(dims: tuple[int, ...], n: object) -> int:
    """The output width: ``n`` if given, else the common input width."""
    if n is not None:
        return check_positive_int("n", n)
    if len(set(dims)) != 1:
        raise ValueError(
            f"n is required when the input widths differ (dims={list(dims)}); "
            f"n defaults to the common width only when all dims are equal"
        )
    return dims[0]


def divisors(value: int) -> list[int]:
    """All positive divisors of ``value``, ascending."""
    small, large = [], []
    for d in range(1, math.isqrt(value) + 1):
        if value % d == 0:
            small.append(d)
            if d != value // d:
                large.append(value // d)
    return small + large[::-1]


def check_divides(name: str, value: int, total_name: str, total: int, hint: str = "") -> None:
    """Raise if ``value`` does not divide ``total``; the message lists the valid choices."""
    if total % value != 0:
        raise ValueError(
            f"{name}={value} must divide {total_name}={total}; valid choices are "
            f"{divisors(total)}{hint}"
        )


def check_flat_vector(w: object, length: int, *, what: str = "w") -> Tensor:
    """A flat parameter vector of ``length`` elements, shaped (l,) or (1, l); returned as (l,)."""
    if not isinstance(w, Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(w).__name__}")
    if not w.is_floating_point():
        raise TypeError(f"{what} must be a floating-point tensor, got dtype {w.dtype}")
    if w.dim() == 2 and w.shape[0] == 1:
        w = w[0]
    if w.dim() != 1 or w.shape[0] != length:
        raise ValueError(
            f"{what} must have shape ({length},) or (1, {length}) (l = {length}), "
            f"got {tuple(w.shape)}"
        )
    return w


def _allowed_input_dtypes(device_type: str, dtype: torch.dtype) -> tuple[torch.dtype, ...]:
    """The parameters' dtype, and the autocast dtype where autocast is on for this device."""
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return (dtype, torch.get_autocast_dtype(device_type))
    return (dtype,)


def check_factory_dtype(dtype: object) -> torch.dtype | None:
    """A ``dtype=`` factory argument: ``None`` or a floating-point ``torch.dtype``."""
    if dtype is None:
        return None
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype such as torch.float32, got {dtype!r}")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point torch.dtype, got {dtype}")
    return dtype


def check_inputs(
    xs: object,
    dims: tuple[int, ...],
    *,
    dtype: torch.dtype,
    device: torch.device,
    owner: str = "the parameters",
) -> tuple[list[Tensor], torch.Size]:
    """Validate the inputs of a fusion; return them as a list and their common leading shape.

    Inputs must be a list or tuple of ``len(dims)`` floating tensors; input ``i`` has shape
    ``(*lead, dims[i])`` with the same ``*lead`` for all. Their dtype must be the parameters'
    dtype or, where autocast is on for their device, the autocast dtype (the output of a
    previous autocast layer); they must be on the parameters' device. ``owner`` names what
    holds the parameters in messages (e.g. "the flat vector w").
    """
    if isinstance(xs, Tensor) or not isinstance(xs, (list, tuple)):
        raise TypeError(
            f"expected a list or tuple of {len(dims)} tensors (one per entry of dims), got "
            f"{type(xs).__name__}"
        )
    if len(xs) != len(dims):
        raise ValueError(f"expected {len(dims)} inputs (dims={list(dims)}), got {len(xs)}")
    lead = None
    for i, x in enumerate(xs):
        if not isinstance(x, Tensor):
            raise TypeError(f"input {i} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"input {i} must be a floating-point tensor, got dtype {x.dtype}")
        if x.dim() == 0 or x.shape[-1] != dims[i]:
            got = "a scalar" if x.dim() == 0 else f"last dimension {x.shape[-1]}"
            raise ValueError(
                f"input {i} has {got} (shape {tuple(x.shape)}), expected dims[{i}] = {dims[i]}"
            )
        if lead is None:
            lead = x.shape[:-1]
        elif x.shape[:-1] != lead:
            raise ValueError(
                f"inputs must share their leading shape: input 0 has {tuple(lead)}, "
                f"input {i} has {tuple(x.shape[:-1])}"
            )
        if x.device != device:
            raise ValueError(
                f"input {i} is on device {x.device}, but the device of {owner} is {device}"
            )
        allowed = _allowed_input_dtypes(x.device.type, dtype)
        if x.dtype not in allowed:
            if len(allowed) > 1:
                raise TypeError(
                    f"input {i} has dtype {x.dtype}; under autocast the inputs must have the "
                    f"dtype of {owner} ({dtype}) or the autocast dtype ({allowed[1]})"
                )
            raise TypeError(
                f"input {i} has dtype {x.dtype}, but the dtype of {owner} is {dtype}; "
                f"convert the input or the module (module.to({dtype})), or use torch.autocast"
            )
    return list(xs), lead  # type: ignore[return-value]
