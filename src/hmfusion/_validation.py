"""Every check on user input, in one place.

Constructors and `forward` call these helpers; each raises `TypeError` for a value of the wrong
kind and `ValueError` for a value of the right kind that does not fit, with a message that names
the argument and says what was expected. No `assert` is used for user input.
"""

from __future__ import annotations

import numbers
import operator
from collections.abc import MutableMapping, Sequence
from typing import Literal, TypeGuard

import numpy as np
import torch
from torch import Tensor

from hmfusion.ops import kernels
from hmfusion.ops.costmodel import KronSpec
from hmfusion.structures import blocksizes

__all__ = [
    "AUTO",
    "check_block_size",
    "check_block_sizes_fit",
    "check_bool",
    "check_device",
    "check_dims",
    "check_divides",
    "check_factory_dtype",
    "check_finite",
    "check_flat_vector",
    "check_inputs",
    "check_inputs_once",
    "check_int",
    "check_kronecker_arguments",
    "check_kronecker_structure",
    "check_positive_int",
    "check_row_count",
    "check_seed",
    "check_size",
    "resolve_n",
]

AUTO = blocksizes.AUTO
#: Valid seeds of `torch.Generator.manual_seed`: a signed or unsigned 64-bit integer.
SEED_RANGE = (-(2**63), 2**64 - 1)
#: Messages list at most this many valid divisors (the first and last half of them).
_LISTED_DIVISORS = 24


def _is_int(value: object) -> TypeGuard[numbers.Integral]:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_positive_int(name: str, value: object) -> int:
    """Return `value` as an `int` if it is an integer ≥ 1."""
    if not _is_int(value):
        raise TypeError(f"{name} must be a positive int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def check_size(name: str, value: object) -> int:
    """A width: a positive int of at most `hmfusion.structures.blocksizes.MAX_SIZE` (2⁴⁸)."""
    value = check_positive_int(name, value)
    if value > blocksizes.MAX_SIZE:
        raise ValueError(
            f"{name}={value} is too large: sizes are at most 2**48 = {blocksizes.MAX_SIZE} "
            f"(one row would not fit in memory)"
        )
    return value


def check_row_count(name: str, value: object) -> int:
    """A number of rows: an int ≥ 0 (bools are refused)."""
    if not _is_int(value):
        raise TypeError(f"{name} must be a non-negative int, got {type(value).__name__} {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return int(value)


def check_bool(name: str, value: object) -> bool:
    """`value` as a bool if it is a Python or NumPy bool (not merely truthy: `pad=1` is a
    mistake worth naming)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(
            f"{name} must be a bool (True or False), got {type(value).__name__} {value!r}"
        )
    return bool(value)


def check_seed(name: str, value: object) -> int:
    """A seed for `torch.Generator.manual_seed`: an int in [-2⁶³, 2⁶⁴ - 1]."""
    value = check_int(name, value)
    low, high = SEED_RANGE
    if not low <= value <= high:
        raise ValueError(f"{name} must lie in [-2**63, 2**64 - 1] (a 64-bit seed), got {value}")
    return value


def check_device(value: object) -> torch.device | None:
    """A `device=` factory argument: `None`, or a device this machine has.

    Accepts what `torch.device` accepts (a `torch.device`, a string such as `"cuda:0"`,
    an accelerator index); refuses devices whose backend is missing or has fewer devices.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, torch.device, int)):
        raise TypeError(
            f"device must be a torch.device, a string such as 'cpu' or 'cuda:0', or an int, "
            f"got {type(value).__name__}"
        )
    try:
        device = torch.device(value)
    except RuntimeError as error:  # unknown type, or an index with no accelerator
        raise ValueError(f"device={value!r} is not a usable device: {error}") from None
    if device.type in ("cpu", "meta"):
        return device
    backend = getattr(torch, device.type, None)
    is_available = getattr(backend, "is_available", None)
    if is_available is None or not is_available():
        raise ValueError(
            f"device={value!r} is not available: this PyTorch build or machine has no "
            f"{device.type} device; use 'cpu' or an available accelerator"
        )
    count = getattr(backend, "device_count", lambda: None)()
    if device.index is not None and count is not None and device.index >= count:
        raise ValueError(f"device={value!r} does not exist: {count} {device.type} device(s)")
    return device


def check_finite(name: str, tensor: Tensor) -> None:
    """Raise if `tensor` holds NaN or ±inf."""
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} must be finite, but it holds NaN or infinite values")


def check_int(name: str, value: object) -> int:
    """`value` as an `int` if it is an integer (of any sign; bools are refused)."""
    if not _is_int(value):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    return int(value)


def check_block_size(
    name: str, value: object, *, allow_none: bool = False
) -> int | Literal["auto"] | None:
    """A block size: a positive int, `"auto"`, or (where allowed) `None`."""
    if value is None and allow_none:
        return None
    return _block_size(name, value)


def _block_size(name: str, value: object) -> int | Literal["auto"]:
    if isinstance(value, str):
        if value != AUTO:
            raise ValueError(f"{name} must be a positive int or {AUTO!r}, got {value!r}")
        return AUTO
    return check_positive_int(name, value)


def check_kronecker_arguments(
    p: object, q: object, terms: object, rank_a: object, rank_b: object, pad: object
) -> tuple[int | Literal["auto"], int | Literal["auto"] | None, int, int | None, int | None, bool]:
    """The hyper-parameters of a Kronecker member, each checked (ranks are named `r`)."""
    checked = (
        _block_size("p", p),
        None if q is None else _block_size("q", q),
        check_positive_int("terms", terms),
        None if rank_a is None else check_positive_int("r", rank_a),
        None if rank_b is None else check_positive_int("r", rank_b),
        check_bool("pad", pad),
    )
    if checked[2] > 1 and (rank_a is not None or rank_b is not None):
        raise ValueError("terms > 1 is supported for HM factors only (no low-rank factors)")
    return checked


def check_kronecker_structure(
    n: object,
    D: object,
    p: object,
    q: object,
    terms: object,
    rank_a: object,
    rank_b: object,
    pad: object,
) -> tuple[KronSpec, bool]:
    """The sizes of a Kronecker structure, each checked, `"auto"` block sizes resolved
    ([`choose_block_sizes`][hmfusion.structures.blocksizes.choose_block_sizes]), with s = ⌈n/p⌉
    and t = ⌈D/q⌉; and `pad` as a bool. Errors as `KroneckerStructure.create` states them."""
    n, D = check_size("n", n), check_size("D", D)
    p, q, terms, rank_a, rank_b, pad = check_kronecker_arguments(p, q, terms, rank_a, rank_b, pad)
    p_val, q_val = blocksizes.choose_block_sizes(
        n, D, p, q, pad=pad, terms=terms, rank_a=rank_a, rank_b=rank_b
    )
    check_block_sizes_fit(n, D, p_val, q_val, tied=q is None, pad=pad)
    s, t = -(-n // p_val), -(-D // q_val)
    return KronSpec(n, D, p_val, q_val, s, t, terms, rank_a, rank_b), pad


def check_block_sizes_fit(n: int, D: int, p: int, q: int, *, tied: bool, pad: bool) -> None:
    """Without padding p | n and q | D (the message lists the divisors); with it p ≤ n, q ≤ D.

    `tied` says q defaulted to p (the message then says so)."""
    q_name = "q (defaulting to p)" if tied else "q"
    if pad:
        if p > n:
            raise ValueError(f"p={p} must be at most n={n}")
        if q > D:
            raise ValueError(f"{q_name}={q} must be at most D={D}")
    else:
        hint = "; or pass pad=True to zero-pad"
        check_divides("p", p, "n", n, hint)
        check_divides(q_name, q, "D", D, hint)


def check_dims(dims: object) -> tuple[int, ...]:
    """The input widths n_1 … n_k: a non-empty sequence of positive ints."""
    if isinstance(dims, (str, bytes)) or not isinstance(dims, Sequence):
        raise TypeError(
            f"dims must be a list or tuple of positive ints (one per input), got "
            f"{type(dims).__name__}"
        )
    if len(dims) == 0:
        raise ValueError("dims must name at least one input width, got an empty sequence")
    checked = tuple(check_size(f"dims[{i}]", d) for i, d in enumerate(dims))
    check_size("sum(dims)", sum(checked))
    return checked


def resolve_n(dims: tuple[int, ...], n: object) -> int:
    """The output width: `n` if given, else the common input width."""
    if n is not None:
        return check_size("n", n)
    if len(set(dims)) != 1:
        raise ValueError(
            f"n is required when the input widths differ (dims={list(dims)}); "
            f"n defaults to the common width only when all dims are equal"
        )
    return dims[0]


def check_divides(name: str, value: int, total_name: str, total: int, hint: str = "") -> None:
    """Raise if `value` does not divide `total`; the message lists the valid choices."""
    if total % value != 0:
        valid = blocksizes.divisors(total)
        half = _LISTED_DIVISORS // 2
        listed = (
            str(valid)
            if len(valid) <= _LISTED_DIVISORS
            else (
                f"the {len(valid)} divisors {str(valid[:half])[:-1]}, …, {str(valid[-half:])[1:]}"
            )
        )
        raise ValueError(
            f"{name}={value} must divide {total_name}={total}; valid choices are {listed}{hint}"
        )


def check_flat_vector(w: object, length: int, *, what: str = "w", meta_ok: bool = False) -> Tensor:
    """A flat parameter vector of `length` elements, shaped (l,) or (1, l); returned as (l,).
    A meta tensor (no values) only where `meta_ok` (the parameters are meta too)."""
    if not isinstance(w, Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(w).__name__}")
    if not w.is_floating_point():
        raise TypeError(f"{what} must be a floating-point tensor, got dtype {w.dtype}")
    if w.is_meta and not meta_ok:
        raise ValueError(f"{what} is a meta tensor: it holds no values to load")
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
    autocast = kernels.autocast_dtype_for(device_type)
    return (dtype,) if autocast is None else (dtype, autocast)


def check_factory_dtype(dtype: object) -> torch.dtype | None:
    """A `dtype=` factory argument: `None` or a floating-point `torch.dtype`."""
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

    Inputs must be a list or tuple of `len(dims)` dense (strided, not sparse or nested)
    floating tensors; input `i` has shape `(*lead, dims[i])` with the same `*lead` for
    all. Their dtype must be the parameters' dtype or, where autocast is on for their device,
    the autocast dtype (the output of a previous autocast layer); they must be on the
    parameters' device. `owner` names what holds the parameters in messages (e.g. "the flat
    vector w").
    """
    if isinstance(xs, Tensor) or not isinstance(xs, (list, tuple)):
        raise TypeError(
            f"expected a list or tuple of {len(dims)} tensors (one per entry of dims), got "
            f"{type(xs).__name__}"
        )
    if len(xs) != len(dims):
        raise ValueError(f"expected {len(dims)} inputs (dims={list(dims)}), got {len(xs)}")
    # (once per call, not per input: the autocast state of the parameters' device; an input
    # on another device is refused before its dtype is looked at)
    allowed = _allowed_input_dtypes(device.type, dtype)
    lead = None
    for i, x in enumerate(xs):
        if not isinstance(x, Tensor):
            raise TypeError(f"input {i} must be a torch.Tensor, got {type(x).__name__}")
        if x.layout != torch.strided or x.is_nested:
            kind = "nested" if x.is_nested else f"{x.layout}"
            raise TypeError(
                f"input {i} must be a dense (strided) tensor, got a {kind} tensor; "
                f"convert it first (e.g. x.to_dense() or torch.nested.to_padded_tensor)"
            )
        x_dtype = x.dtype
        if not x_dtype.is_floating_point:
            raise TypeError(f"input {i} must be a floating-point tensor, got dtype {x_dtype}")
        shape = x.shape
        if not shape or shape[-1] != dims[i]:
            got = "a scalar" if not shape else f"last dimension {shape[-1]}"
            raise ValueError(
                f"input {i} has {got} (shape {tuple(shape)}), expected dims[{i}] = {dims[i]}"
            )
        if lead is None:
            lead = shape[:-1]
        elif shape[:-1] != lead:
            raise ValueError(
                f"inputs must share their leading shape: input 0 has {tuple(lead)}, "
                f"input {i} has {tuple(shape[:-1])}"
            )
        if x.device != device:
            raise ValueError(
                f"input {i} is on device {x.device}, but the device of {owner} is {device}"
            )
        if x_dtype not in allowed:
            if len(allowed) > 1:
                raise TypeError(
                    f"input {i} has dtype {x_dtype}; under autocast the inputs must have the "
                    f"dtype of {owner} ({dtype}) or the autocast dtype ({allowed[1]})"
                )
            raise TypeError(
                f"input {i} has dtype {x_dtype}, but the dtype of {owner} is {dtype}; "
                f"convert the input or the module (module.to({dtype})), or use torch.autocast"
            )
    return list(xs), lead  # type: ignore[return-value]


#: What `check_inputs` reads of each input (with the container's type, the parameters' dtype and
#: device and the autocast state, the key under which a passed check is remembered).
_INPUT_SIGNATURE = operator.attrgetter(
    "__class__", "shape", "dtype", "device", "layout", "is_nested"
)
#: Signatures remembered per module at most (then forgotten all at once).
_MAX_SIGNATURES = 64


def check_inputs_once(
    xs: object,
    dims: tuple[int, ...],
    checked: MutableMapping[tuple, torch.Size],
    *,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Size:
    """`check_inputs`, remembered per input signature: the leading shape of inputs that passed.

    The key holds everything `check_inputs` reads (the container's type; per input its class,
    shape, dtype, device, layout and nestedness; `dims`, the parameters' dtype and device, the
    autocast dtype of their device), so a hit skips only checks that passed on the same
    signature; anything new runs the full check (and raises its errors). Inputs are checked
    for what they are, never for their values, so nothing is skipped that a value could fail.
    While torch.compile traces, nothing is remembered (the traced graph holds the checks' guards).

    Args:
        xs: the inputs, as for `check_inputs`.
        dims: the widths n_1 … n_k.
        checked: the caller's memory of passed signatures (a dict kept by the module).
        dtype: the parameters' dtype.
        device: the parameters' device.

    Returns:
        The inputs' common leading shape.

    Raises:
        TypeError, ValueError: as `check_inputs`.
    """
    if type(xs) not in (list, tuple) or torch.compiler.is_compiling():
        return check_inputs(xs, dims, dtype=dtype, device=device)[1]
    try:
        signature = tuple(map(_INPUT_SIGNATURE, xs))  # type: ignore[call-overload]
    except (AttributeError, RuntimeError):  # not a tensor, or a nested one: the full check
        return check_inputs(xs, dims, dtype=dtype, device=device)[1]
    key = (type(xs), signature, dims, dtype, device, kernels.autocast_dtype_for(device.type))
    lead = checked.get(key)
    if lead is None:
        lead = check_inputs(xs, dims, dtype=dtype, device=device)[1]
        if len(checked) >= _MAX_SIGNATURES:
            checked.clear()
        checked[key] = lead
    return lead
