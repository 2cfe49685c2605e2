"""Plain float64 references for the tests: W built explicitly from a module's factors.

Written independently of hmfusion's kernels and structures: torch.kron, explicit matmuls and
torch.diag only. W is n×D (``nn.Linear.weight`` convention), Y = cat(xs) Wᵀ + bias.
"""

from __future__ import annotations

import torch
from torch import Tensor

import hmfusion


def reference_weight(module: torch.nn.Module) -> Tensor:
    """The module's W (n×D), rebuilt from its factors with torch.kron / matmul / diag."""
    n, D = module.n, sum(module.dims)
    if isinstance(module, hmfusion.DenseConcatFusion):
        return module.W
    if isinstance(module, hmfusion.LowRankConcatFusion):
        return module.U @ module.V.T
    if isinstance(module, hmfusion.RandomMatrixConcatFusion):
        return torch.diag(module.lambda1) @ module.R1 @ torch.diag(module.lambda2) @ module.R2.T
    if isinstance(module, hmfusion.HMConcatFusion):
        a = module.A if module.A.dim() == 3 else module.A[None]
        b = module.B if module.B.dim() == 3 else module.B[None]
        w = sum(torch.kron(a[j], b[j]) for j in range(a.shape[0]))
    elif isinstance(module, hmfusion.DualLPHMConcatFusion):
        w = torch.kron(module.P @ module.Q.T, module.S @ module.T.T)
    elif isinstance(module, hmfusion.LPHMConcatFusion):
        w = torch.kron(module.A, module.S @ module.T.T)
    else:  # pragma: no cover - a new member needs a reference here
        raise NotImplementedError(type(module).__name__)
    return w[:n, :D]  # with pad=True, W is the top-left block


def reference_forward(module: torch.nn.Module, xs: list[Tensor]) -> Tensor:
    y = torch.cat(xs, dim=-1) @ reference_weight(module).T
    return y if module.bias is None else y + module.bias


def rel_err(actual: Tensor, expected: Tensor) -> float:
    """‖actual − expected‖ / ‖expected‖ (absolute when expected is zero)."""
    diff = (actual.double() - expected.double()).norm().item()
    scale = expected.double().norm().item()
    return diff / scale if scale > 0 else diff
