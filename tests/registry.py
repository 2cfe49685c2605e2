"""The test registry: every member of the family with a plain float64 reference for its W.

As PyTorch's ``common_modules.py`` does for ``torch.nn``: one entry per member (its class, how
to build it, sample constructor arguments, l from the family table, and a reference W written
independently of hmfusion's kernels and structures with torch.kron, explicit matmuls and
torch.diag only), consumed by generic tests. Also the one dispatch-mode recorder that proves
W is never formed. W is n×D (``nn.Linear.weight`` convention), Y = cat(xs) Wᵀ + bias.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

import hmfusion
from hmfusion import ConcatFusion

F64 = torch.float64


# references ----------------------------------------------------------------------------------
def _kron_sum(a: Tensor, b: Tensor) -> Tensor:
    """Σ_j kron(a_j, b_j) for 2-D factors or (terms, ·, ·) stacks."""
    a = a if a.dim() == 3 else a[None]
    b = b if b.dim() == 3 else b[None]
    return sum(torch.kron(a[j], b[j]) for j in range(a.shape[0]))


def _dense(m) -> Tensor:
    return m.W


def _low_rank(m) -> Tensor:
    return m.U @ m.V.T


def _hm(m) -> Tensor:
    return _kron_sum(m.A, m.B)


def _lphm(m) -> Tensor:
    return torch.kron(m.A, m.S @ m.T.T)


def _dual_lphm(m) -> Tensor:
    return torch.kron(m.P @ m.Q.T, m.S @ m.T.T)


def _random(m) -> Tensor:
    return torch.diag(m.lambda1) @ m.R1 @ torch.diag(m.lambda2) @ m.R2.T


# the registry --------------------------------------------------------------------------------
@dataclass(frozen=True)
class MemberInfo:
    """One member: its class, a reference W and its parameter count from the family table."""

    kind: str
    cls: type[ConcatFusion]
    reference: Callable[[ConcatFusion], Tensor]  # the full (padded) W, before cropping
    num_parameters: Callable[..., int]  # l(n, D, p, q, r, terms, s, t), s and t padded
    samples: tuple[dict, ...] = field(default=())  # constructor kwargs for generic tests
    kronecker: bool = False  # takes p, q, pad
    fits: bool = True  # from_linear is supported

    def build(
        self,
        dims,
        n,
        p=None,
        q=None,
        r=None,
        terms=1,
        *,
        pad=False,
        bias=False,
        dtype=F64,
        device=None,
    ) -> ConcatFusion:
        """The member with these hyper-parameters (those it does not take are ignored)."""
        common = dict(bias=bias, dtype=dtype, device=device)
        if self.kind == "dense":
            return self.cls(dims, n, **common)
        if self.kind in ("lowrank",):
            return self.cls(dims, n, r, **common)
        if self.kind == "random":
            return self.cls(dims, n, r, seed=7, **common)
        if self.kind == "hm":
            return self.cls(dims, n, p, q, terms, pad=pad, **common)
        return self.cls(dims, n, p, q, r, pad=pad, **common)


MEMBERS: dict[str, MemberInfo] = {
    info.kind: info
    for info in (
        MemberInfo(
            "dense",
            hmfusion.DenseConcatFusion,
            _dense,
            lambda n, D, p, q, r, terms, s, t: n * D,
            samples=(dict(dims=[6, 10], n=8),),
        ),
        MemberInfo(
            "lowrank",
            hmfusion.LowRankConcatFusion,
            _low_rank,
            lambda n, D, p, q, r, terms, s, t: r * (n + D),
            samples=(dict(dims=[6, 10], n=8, r=3),),
        ),
        MemberInfo(
            "hm",
            hmfusion.HMConcatFusion,
            _hm,
            lambda n, D, p, q, r, terms, s, t: terms * (p * q + s * t),
            samples=(
                dict(dims=[6, 10], n=8, p=2, q=4),
                dict(dims=[6, 10], n=8, p=2, q=4, terms=3),
                dict(dims=[5, 6], n=7, p=2, q=3, pad=True),
            ),
            kronecker=True,
        ),
        MemberInfo(
            "lphm",
            hmfusion.LPHMConcatFusion,
            _lphm,
            lambda n, D, p, q, r, terms, s, t: p * q + r * (s + t),
            samples=(
                dict(dims=[6, 10], n=8, p=2, q=4, r=2),
                dict(dims=[5, 6], n=7, p=2, q=3, r=2, pad=True),
            ),
            kronecker=True,
        ),
        MemberInfo(
            "dual_lphm",
            hmfusion.DualLPHMConcatFusion,
            _dual_lphm,
            lambda n, D, p, q, r, terms, s, t: r * (p + q + s + t),
            samples=(
                dict(dims=[6, 10], n=8, p=2, q=4, r=2),
                dict(dims=[5, 6], n=7, p=2, q=3, r=2, pad=True),
            ),
            kronecker=True,
        ),
        MemberInfo(
            "random",
            hmfusion.RandomMatrixConcatFusion,
            _random,
            lambda n, D, p, q, r, terms, s, t: n + r,
            samples=(dict(dims=[6, 10], n=8, r=3, seed=5),),
            fits=False,
        ),
    )
}
KINDS = list(MEMBERS)


def member_of(module: ConcatFusion) -> MemberInfo:
    """The registry entry of ``module``'s class (subclasses included)."""
    for info in MEMBERS.values():
        if isinstance(module, info.cls):
            return info
    raise NotImplementedError(f"{type(module).__name__}: a new member needs a registry entry")


def samples() -> list[tuple[str, dict]]:
    """(kind, constructor kwargs) for every sample of every member, for parametrize."""
    return [(info.kind, kwargs) for info in MEMBERS.values() for kwargs in info.samples]


def reference_weight(module: ConcatFusion) -> Tensor:
    """The module's W (n×D), rebuilt from its factors with torch.kron / matmul / diag."""
    n, D = module.n, sum(module.dims)
    return member_of(module).reference(module)[:n, :D]  # with pad=True, the top-left block


def reference_forward(module: ConcatFusion, xs: list[Tensor]) -> Tensor:
    """``cat(xs) @ reference_weight(module).T (+ bias)``."""
    y = torch.cat(xs, dim=-1) @ reference_weight(module).T
    return y if module.bias is None else y + module.bias


def rel_err(actual: Tensor, expected: Tensor) -> float:
    """‖actual − expected‖ / ‖expected‖ (absolute when expected is zero)."""
    diff = (actual.double() - expected.double()).norm().item()
    scale = expected.double().norm().item()
    return diff / scale if scale > 0 else diff


# proof that W is not formed ------------------------------------------------------------------
class RecordShapes(TorchDispatchMode):
    """Records every tensor an operator produces: ``largest`` numel and ``ops`` (name, shape)."""

    def __init__(self):
        super().__init__()
        self.largest = 0
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
                self.ops.append((str(func), tuple(t.shape)))
        return out
