"""The budgets `hmfusion sweep` trains: one [`BudgetPoint`][hmfusion.apps.train.budgets.BudgetPoint]
per fusion setting, the grid of them, and the Pareto front of what they scored.

A budget is a fusion layer's number of trained values (its bias included), for a fusion
$D \\to n$ (D = Σ of the fused widths): HM with `terms` products
$\\text{terms}\\cdot(pq + st) + n$, LPHM $pq + r(s + t) + n$, dual-LPHM $r(p + q + s + t) + n$,
low-rank $r(n + D) + n$, random $n + r + n$, dense $nD + n$, mean 0 (s = ⌈n/p⌉, t = ⌈D/q⌉).
The grid walks each fusion through its budgets: HM and LPHM over the block sizes p that divide n
(with q = p, which must divide D unless the layer pads), HM also over `terms`, and low-rank,
dual-LPHM and random over the ranks r; points at or above dense's budget are left out (dense
itself is the reference).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hmfusion.structures.blocksizes import divisors, num_parameters

__all__ = ["BudgetPoint", "budget_grid", "pareto_front"]


@dataclass(frozen=True)
class BudgetPoint:
    """One fusion setting of a sweep: the fusion and the options that set its budget.

    Attributes:
        fusion: a name of [`FUSIONS`][hmfusion.apps.train.model.FUSIONS].
        p: rows of the Kronecker factor A (hm, lphm; None: the layer's own choice).
        terms: Kronecker products summed (hm only).
        rank: r of lowrank, lphm, dual_lphm and random.

    Example:
        >>> BudgetPoint("hm", p=8, terms=2).key
        'hm p=8 terms=2'
        >>> BudgetPoint("lowrank", rank=4).options()
        {'rank': 4}
    """

    fusion: str
    p: int | None = None
    terms: int | None = None
    rank: int | None = None

    @property
    def key(self) -> str:
        """The point's name, unique within a sweep (`results.json` is keyed by it)."""
        parts = [self.fusion]
        for name, value in (("p", self.p), ("terms", self.terms), ("r", self.rank)):
            if value is not None:
                parts.append(f"{name}={value}")
        return " ".join(parts)

    def options(self) -> dict[str, Any]:
        """The [`TrainConfig`][hmfusion.apps.train.loop.TrainConfig] fields this point sets
        (q is tied to p)."""
        fields: dict[str, Any] = {}
        if self.p is not None:
            fields.update(p=self.p, q=self.p)
        if self.terms is not None:
            fields["terms"] = self.terms
        if self.rank is not None:
            fields["rank"] = self.rank
        return fields


def _kronecker_count(n: int, D: int, p: int, terms: int, rank: int | None) -> int:
    """Fusion parameters of HM (`rank` None) or LPHM at q = p, the bias (n) included."""
    return num_parameters(n, D, p, p, terms, rank_b=rank) + n


def budget_grid(
    n: int,
    D: int,
    fusions: Sequence[str],
    *,
    ranks: Sequence[int],
    terms: Sequence[int],
    lphm_rank: int,
    pad: bool,
    block_sizes: Sequence[int] | None = None,
) -> list[BudgetPoint]:
    """Every point a sweep of `fusions` trains for a fusion $D \\to n$, in the order given.

    HM: p over the divisors of n (and of D unless `pad`), q = p, times `terms`; LPHM: the same
    p at rank `lphm_rank`; low-rank and dual-LPHM (p chosen by the layer): every r of `ranks`
    below min(n, D); random: every r ≤ D; dense and mean: one point each. Points whose budget
    (the module docstring's formulas) reaches dense's $nD + n$ are left out, and with
    `block_sizes` HM and LPHM keep only those p.

    Raises:
        ValueError: n or D below 1, or a rank or terms value below 1.

    Example:
        >>> grid = budget_grid(8, 16, ["hm", "lowrank", "dense"], ranks=[1, 8], terms=[1],
        ...     lphm_rank=2, pad=False)
        >>> print(", ".join(point.key for point in grid))
        hm p=2 terms=1, hm p=4 terms=1, hm p=8 terms=1, lowrank r=1, dense
    """
    if n < 1 or D < 1:
        raise ValueError(f"a fusion needs n >= 1 and D >= 1, got n={n}, D={D}")
    bad = [value for value in (*ranks, *terms, lphm_rank) if value < 1]
    if bad:
        raise ValueError(f"ranks and terms must be at least 1, got {bad[0]}")
    dense = n * D + n
    ps = [p for p in divisors(n) if (pad or D % p == 0)]
    if block_sizes is not None:
        ps = [p for p in ps if p in block_sizes]
    points: list[BudgetPoint] = []
    for fusion in fusions:
        if fusion == "hm":
            points += [
                BudgetPoint("hm", p=p, terms=k)
                for k in terms
                for p in ps
                if _kronecker_count(n, D, p, k, None) < dense
            ]
        elif fusion == "lphm":
            points += [
                BudgetPoint("lphm", p=p, rank=lphm_rank)
                for p in ps
                if _kronecker_count(n, D, p, 1, lphm_rank) < dense
            ]
        elif fusion in ("lowrank", "dual_lphm"):
            points += [BudgetPoint(fusion, rank=r) for r in ranks if r < min(n, D)]
        elif fusion == "random":
            points += [BudgetPoint("random", rank=r) for r in ranks if r <= D]
        else:
            points.append(BudgetPoint(fusion))
    return points


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points (parameters, accuracy) that no other point beats: none has at
    most as many parameters and at least the accuracy, one of the two strictly. Sorted by
    parameters; of equal points the first is kept.

    Example:
        >>> pareto_front([(10, 0.9), (100, 0.95), (50, 0.8), (0, 0.5), (100, 0.95)])
        [3, 0, 1]
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1], i))
    front, best = [], -math.inf
    for i in order:  # cheapest first: a point is on the front if it beats all cheaper ones
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front
