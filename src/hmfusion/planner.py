"""The planner's public controls: what a layer will run, and how to override it.

A Kronecker-structured fusion ([`HMConcatFusion`][hmfusion.HMConcatFusion] and its relatives)
chooses per (rows, input widths, dtype, device, grad) how to apply W: form it and run one dense
GEMM (`materialize`), the fused operator that never forms W (`fused`), or the plain two-matmul
code (`composite`). `fusion.plan(m)` returns that choice as a [`Plan`][hmfusion.planner.Plan];
[`force_plan`][hmfusion.planner.force_plan] overrides it within a `with` block. The
implementation lives in `hmfusion.ops.planner`; this module is the stable import path.

Example:
    >>> import torch
    >>> from hmfusion import HMConcatFusion, planner
    >>> fusion = HMConcatFusion([8, 8], n=8, p=2)
    >>> with planner.force_plan(method="composite"):
    ...     y = fusion([torch.randn(4, 8), torch.randn(4, 8)])
    >>> y.shape
    torch.Size([4, 8])
"""

from __future__ import annotations

from hmfusion.ops.planner import Plan, force_plan

__all__ = ["Plan", "force_plan"]
