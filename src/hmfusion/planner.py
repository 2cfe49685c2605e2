"""The planner's public controls: what a layer will run, how it is measured, how to override it.

A Kronecker-structured fusion ([`HMConcatFusion`][hmfusion.HMConcatFusion] and its relatives)
chooses per (rows, input widths, dtype, device, grad) how to apply W: form it and run one dense
GEMM (`materialize`), the fused operator that never forms W (`fused`, with its kernel and
contraction order), or the plain two-matmul code (`composite`). A cost model ranks the
candidates; where a call is predicted to take ≥ 0.1 ms the few best are timed on this machine
and the fastest is kept, in the process and as *wisdom* on disk, so the next process reuses it
(see [`hmfusion.ops.tuning`][hmfusion.ops.tuning] for the bound and where it never runs).

- `fusion.plan(m)` returns the choice as a [`Plan`][hmfusion.planner.Plan];
  [`force_plan`][hmfusion.planner.force_plan] overrides it within a `with` block;
- [`tune`][hmfusion.planner.tune] measures a module's plans ahead of time;
- [`measuring`][hmfusion.planner.measuring] / [`set_measuring`][hmfusion.planner.set_measuring]
  (or `HMFUSION_TUNE=0` in the environment) turn measuring off: the cost model decides,
  deterministically;
- [`export_wisdom`][hmfusion.planner.export_wisdom] /
  [`import_wisdom`][hmfusion.planner.import_wisdom] ship measured plans to machines like this
  one ([`fingerprint`][hmfusion.planner.fingerprint] says what "like" means;
  [`wisdom_path`][hmfusion.planner.wisdom_path] where they are kept).

The implementation lives in `hmfusion.ops.planner`, `hmfusion.ops.tuning` and
`hmfusion.ops.wisdom`; this module is the stable import path.

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
from hmfusion.ops.tuning import measuring, set_measuring, tune
from hmfusion.ops.wisdom import export_wisdom, fingerprint, import_wisdom, wisdom_path

__all__ = [
    "Plan",
    "export_wisdom",
    "fingerprint",
    "force_plan",
    "import_wisdom",
    "measuring",
    "set_measuring",
    "tune",
    "wisdom_path",
]
