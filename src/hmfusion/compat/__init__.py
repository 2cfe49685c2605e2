"""Drop-in interfaces of other libraries, as thin adapters over the hmfusion family.

- [`hmfusion.compat.tinybig`][hmfusion.compat.tinybig]: tinybig 0.2.1's whole `tinybig.fusion`
  namespace (import `from hmfusion.compat import tinybig as fusion` where tinybig users wrote
  `from tinybig import fusion`).
"""
