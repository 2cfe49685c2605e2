"""tinybig's module path `tinybig.fusion.parameterized_concatenation_fusion`: the six classes.

As in tinybig, the package attribute
`hmfusion.compat.tinybig.parameterized_concatenation_fusion` is the dense class;
`from hmfusion.compat.tinybig.parameterized_concatenation_fusion import
hm_parameterized_concatenation_fusion` imports from here (the classes are defined in
`parameterized`, `structured` and `random_matrix`).
"""

from hmfusion.compat.tinybig.base import fusion
from hmfusion.compat.tinybig.parameterized import parameterized_concatenation_fusion
from hmfusion.compat.tinybig.random_matrix import (
    random_matrix_adaption_parameterized_concatenation_fusion,
)
from hmfusion.compat.tinybig.structured import (
    dual_lphm_parameterized_concatenation_fusion,
    hm_parameterized_concatenation_fusion,
    lowrank_parameterized_concatenation_fusion,
    lphm_parameterized_concatenation_fusion,
)

__all__ = [
    "dual_lphm_parameterized_concatenation_fusion",
    "fusion",
    "hm_parameterized_concatenation_fusion",
    "lowrank_parameterized_concatenation_fusion",
    "lphm_parameterized_concatenation_fusion",
    "parameterized_concatenation_fusion",
    "random_matrix_adaption_parameterized_concatenation_fusion",
]
