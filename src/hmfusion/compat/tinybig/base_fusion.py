"""tinybig's module path `tinybig.module.base_fusion`: the `fusion` base class.

`from hmfusion.compat.tinybig.base_fusion import fusion` works as tinybig's
`from tinybig.module.base_fusion import fusion` does; the class is
[`hmfusion.compat.tinybig.fusion`][hmfusion.compat.tinybig.fusion] (defined in `base`).
"""

from hmfusion.compat.tinybig.base import fusion

__all__ = ["fusion"]
