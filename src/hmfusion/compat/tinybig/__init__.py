"""tinybig 0.2.1's `tinybig.fusion` namespace, as a drop-in over the hmfusion family.

Replace `from tinybig import fusion` by `from hmfusion.compat import tinybig as fusion` (or
import the class names from here). All 19 names of `tinybig.fusion` 0.2.1 are here with
tinybig's signatures (positional order included), methods and outputs — `fusion` (the base
class), `weighted_summation_fusion`, `summation_fusion`, `average_fusion`,
`parameterized_weighted_summation_fusion`, `metric_fusion`, `mean_fusion`, `prod_fusion`,
`max_fusion`, `min_fusion`, `median_fusion`, `sum_fusion`, `concatenation_fusion` and
the six parameterized concatenation fusions — plus `l1_norm_fusion` and `l2_norm_fusion`
from `tinybig.fusion.metric_fusion`.

The parameterized concatenation fusions compute `y = cat(x_1, …, x_k) Wᵀ` with W (n×D) = ψ(w)
(tinybig's docs write `x W` with a D×n W: its W is our Wᵀ); the math and the fast application
of Wᵀ are the hmfusion family's ([`hmfusion.fusion`][hmfusion.fusion]), this package translates the
interface. As in tinybig, w belongs to the layer that owns the fusion: a fusion owns no parameters
unless built with `own_parameters=True`. `layout="kronecker"` (default) gives the documented
W = A ⊗ B; `layout="tinybig-0.2.1"` reproduces tinybig's own W (see `legacy`).

tinybig's module paths work too: `base_fusion`, `basic_fusion`, `metric_fusion`,
`concatenation_fusion` and `parameterized_concatenation_fusion` are modules here, so
`from hmfusion.compat.tinybig.metric_fusion import l1_norm_fusion` works as in tinybig (and, as
there, the package attribute of a class's name is the class).

Modules: `base` (the `fusion` base class), `processing` (allowlisted processing functions),
`formula` (`string_to_function`'s parser), `basic` (sums, averages, concatenation), `metric`,
`legacy` (tinybig's W), `parameterized` (the dense class and the shared arguments), `structured`
(low-rank, HM, LPHM, dual-LPHM), `random_matrix`, `config` (`from_config`), `configkeys` (the
tinybig keys a config may carry). `docs/tinybig.md` lists every deliberate difference from
tinybig 0.2.1.
"""

# tinybig's submodule paths, loaded first: as in tinybig.fusion, the class names bound below
# (concatenation_fusion, metric_fusion, parameterized_concatenation_fusion) then replace the
# package attributes that loading a submodule of the same name sets.
from hmfusion.compat.tinybig import base_fusion as _m1  # noqa: F401
from hmfusion.compat.tinybig import basic_fusion as _m2  # noqa: F401
from hmfusion.compat.tinybig import concatenation_fusion as _m3  # noqa: F401
from hmfusion.compat.tinybig import metric_fusion as _m4  # noqa: F401
from hmfusion.compat.tinybig import parameterized_concatenation_fusion as _m5  # noqa: F401
from hmfusion.compat.tinybig.base import DeviceName, DimIndexError, fusion
from hmfusion.compat.tinybig.basic import (
    average_fusion,
    concatenation_fusion,
    parameterized_weighted_summation_fusion,
    summation_fusion,
    weighted_summation_fusion,
)
from hmfusion.compat.tinybig.config import from_config
from hmfusion.compat.tinybig.legacy import TinybigLegacyKronecker
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
from hmfusion.compat.tinybig.parameterized import (
    KRONECKER,
    LAYOUTS,
    TINYBIG_021,
    Layout,
    parameterized_concatenation_fusion,
)
from hmfusion.compat.tinybig.processing import Exp, LastDimLayerNorm, LastDimSoftmax
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
    "KRONECKER",
    "LAYOUTS",
    "TINYBIG_021",
    "DeviceName",
    "DimIndexError",
    "Exp",
    "LastDimLayerNorm",
    "LastDimSoftmax",
    "Layout",
    "TinybigLegacyKronecker",
    "average_fusion",
    "concatenation_fusion",
    "dual_lphm_parameterized_concatenation_fusion",
    "from_config",
    "fusion",
    "hm_parameterized_concatenation_fusion",
    "l1_norm_fusion",
    "l2_norm_fusion",
    "lowrank_parameterized_concatenation_fusion",
    "lphm_parameterized_concatenation_fusion",
    "max_fusion",
    "mean_fusion",
    "median_fusion",
    "metric_fusion",
    "min_fusion",
    "parameterized_concatenation_fusion",
    "parameterized_weighted_summation_fusion",
    "prod_fusion",
    "random_matrix_adaption_parameterized_concatenation_fusion",
    "sum_fusion",
    "summation_fusion",
    "weighted_summation_fusion",
]
