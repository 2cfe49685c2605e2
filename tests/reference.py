"""The old home of the float64 references: kept importable, they live in :mod:`registry`."""

from registry import RecordShapes, reference_forward, reference_weight, rel_err

__all__ = ["RecordShapes", "reference_forward", "reference_weight", "rel_err"]
