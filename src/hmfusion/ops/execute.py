"""Running a plan: `cat(xs) Wᵀ` by the method, kernel and order the planner chose.

[`hmfusion.ops.planner`][hmfusion.ops.planner] decides; this module only executes: forming W
and one GEMM (`materialize`, [`kron_linear`][hmfusion.ops.kernels.kron_linear]), the
two-matmul code (`composite`, [`kron_matmul`][hmfusion.ops.kernels.kron_matmul]) or the fused
operator ([`fused_kron_concat`][hmfusion.ops.native.fused_kron_concat]). The measuring planner
([`hmfusion.ops.tuning`][hmfusion.ops.tuning]) times its candidates through the same `run`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

from hmfusion.ops import kernels, native
from hmfusion.ops.costmodel import KronSpec
from hmfusion.ops.kernels import Factor

if TYPE_CHECKING:
    from hmfusion.ops.planner import Plan

__all__ = ["cast", "run"]


def _as_stack(factor: Factor) -> Tensor:
    """A dense (terms, rows, cols) stack from a matrix, a stack or a low-rank pair."""
    if isinstance(factor, tuple):
        return kernels.dense_factor(factor).unsqueeze(0)
    return factor if factor.dim() == 3 else factor.unsqueeze(0)


def _as_list(factor: Factor) -> list[Factor]:
    """Per-term factors (kernels.kron_matmul's form) from a matrix, a stack or a low-rank pair."""
    if isinstance(factor, tuple):
        return [factor]
    return [factor] if factor.dim() == 2 else list(factor.unbind(0))


def cast(value: Factor, dtype: torch.dtype) -> Factor:
    """`value` (a factor, a stack or a low-rank pair) in `dtype`; float64 stays as it is, as
    autocast leaves it.

    Args:
        value: a tensor or a pair of tensors.
        dtype: the dtype wanted.

    Returns:
        The same form in `dtype` (the tensors themselves where nothing changes).
    """
    if isinstance(value, tuple):
        return (cast(value[0], dtype), cast(value[1], dtype))  # type: ignore[return-value]
    # autocast leaves float64 alone; so do we
    return value if value.dtype in (dtype, torch.float64) else value.to(dtype)


def run(plan: Plan, spec: KronSpec, xs: Sequence[Tensor], left: Factor, right: Factor) -> Tensor:
    """`cat(xs, -1) Wᵀ` by `plan`: form W (`materialize`), the two-matmul code (`composite`)
    or the operator `hmfusion::fused_kron_concat` (`fused`, with the plan's kernel, order,
    inputs and row chunk). No choice is made here: the planner made it.

    Args:
        plan: what to run (`hmfusion.ops.planner.Plan`).
        spec: the structure of W.
        xs: the inputs, (m, n_i) each, in the dtype the plan computes in.
        left: A as a (p, q) or (terms, p, q) tensor, or a low-rank pair (P, Q).
        right: B likewise.

    Returns:
        Y of shape (m, n).
    """
    first = xs[0]
    if plan.method == "materialize":
        x = torch.cat(list(xs), dim=-1) if len(xs) > 1 else first
        return kernels.kron_linear(x, _as_stack(left), _as_stack(right), spec.n, spec.D)
    if plan.method == "composite":
        x = kernels.pad_concat(xs, spec.q * spec.t)
        shape = (spec.p, spec.q, spec.s, spec.t)
        y = kernels.kron_matmul(x, _as_list(left), _as_list(right), shape, plan.order)
    else:
        inputs: Literal["gather", "split"] = "split" if plan.inputs == "split" else "gather"
        # (a matrix or a stack as it is: no unsqueeze for autograd to record)
        y = native.fused_kron_concat(
            xs,
            left if isinstance(left, Tensor) else kernels.dense_factor(left),
            right if isinstance(right, Tensor) else kernels.dense_factor(right),
            plan.order,
            plan.chunk_rows,
            inputs,
            tiled=plan.kernel == "tiled",
            fallback=plan.kernel == "pytorch",
            triton=plan.kernel == "triton",
        )
    return y[:, : spec.n] if spec.p * spec.s != spec.n else y
