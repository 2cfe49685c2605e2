"""tinybig's module path `tinybig.fusion.concatenation_fusion`: the class of the same name.

As in tinybig, the package attribute `hmfusion.compat.tinybig.concatenation_fusion` is the
class (the package binds it after loading this module), while
`from hmfusion.compat.tinybig.concatenation_fusion import concatenation_fusion` imports it
from here (defined in `basic`).
"""

from hmfusion.compat.tinybig.base import fusion
from hmfusion.compat.tinybig.basic import concatenation_fusion

__all__ = ["concatenation_fusion", "fusion"]
