"""tinybig's module path `tinybig.fusion.metric_fusion`: its fusion classes, including
`l1_norm_fusion` and `l2_norm_fusion`, and `base_fusion` (tinybig's name there for the base class).

As in tinybig, the package attribute `hmfusion.compat.tinybig.metric_fusion` is the class;
`from hmfusion.compat.tinybig.metric_fusion import l1_norm_fusion` imports from here (the
classes are defined in `metric`).
"""

from hmfusion.compat.tinybig.base import fusion as base_fusion
from hmfusion.compat.tinybig.metric import (
    l1_norm_fusion,
    l2_norm_fusion,
    max_fusion,
    mean_fusion,
    median_fusion,
    metric_fusion,
    min_fusion,
    prod_fusion,
    sum_fusion,
)

__all__ = [
    "base_fusion",
    "l1_norm_fusion",
    "l2_norm_fusion",
    "max_fusion",
    "mean_fusion",
    "median_fusion",
    "metric_fusion",
    "min_fusion",
    "prod_fusion",
    "sum_fusion",
]
