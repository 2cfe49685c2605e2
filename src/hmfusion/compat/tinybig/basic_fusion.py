"""tinybig's module path `tinybig.fusion.basic_fusion`: its fusion classes, the same objects as
the flat names of [`hmfusion.compat.tinybig`][hmfusion.compat.tinybig] (defined in `basic`).

Example:
    >>> from hmfusion.compat.tinybig.basic_fusion import summation_fusion
    >>> summation_fusion(dims=[2, 2])([torch.ones(1, 2), torch.ones(1, 2)])
    tensor([[2., 2.]])
"""

from hmfusion.compat.tinybig.base import fusion
from hmfusion.compat.tinybig.basic import (
    average_fusion,
    parameterized_weighted_summation_fusion,
    summation_fusion,
    weighted_summation_fusion,
)

__all__ = [
    "average_fusion",
    "fusion",
    "parameterized_weighted_summation_fusion",
    "summation_fusion",
    "weighted_summation_fusion",
]
